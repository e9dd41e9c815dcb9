//! `iothub-retained-bench`: how long iothub takes to start with a million retained messages
//! (issue 6: "startup time with 1M retained messages is measured and stated").
//!
//! It runs the `iothub` binary itself, in a working directory of its own: fills one hub with
//! `--count` retained messages (QoS 1, distinct topics `bench/<i / 1000>/<i % 1000>`, payloads
//! of `--payload` bytes) over `--publishers` connections, stops it with SIGTERM, measures the
//! write-ahead log on disk, starts it again on the same data directory and measures the time
//! until the MQTT listener accepts a connection and until a subscription to `bench/#` has
//! returned every retained message, then the process's resident memory. The figures go to
//! BENCHMARKS.md with the command that made them.
//!
//! Exit status: 0 when every message was stored and came back; 1 otherwise (the reason is
//! printed); 2 for invalid arguments.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use iothub_model::{ClientId, TopicFilter, TopicName};
use iothub_mqtt_codec::QoS;
use iothub_simulators::client::{Client, ClientOptions, Event, Outgoing};
use iothub_simulators::loadgen::broker::memory_of;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "iothub-retained-bench",
    about = "Fill iothub with retained messages, restart it, and measure startup time, memory and the log's size"
)]
struct Args {
    /// The iothub binary to run.
    #[arg(long)]
    iothub: PathBuf,
    /// Retained messages to store (distinct topics).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Connections filling the hub at once.
    #[arg(long, default_value_t = 4)]
    publishers: u64,
    /// fsync policy of the hub's write-ahead log.
    #[arg(long, value_enum, default_value = "grouped")]
    fsync: Fsync,
    /// With `--fsync grouped`: the longest time between a write and its fsync.
    #[arg(long, default_value_t = 10)]
    fsync_interval_ms: u32,
    /// Working directory for the hub (its data directory goes there); default: a new
    /// directory under the system's temporary directory, removed afterwards.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fsync {
    Always,
    Grouped,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct Figures {
    count: u64,
    payload_bytes: usize,
    fsync: &'static str,
    /// Filling: seconds and messages/s.
    fill_secs: f64,
    fill_per_sec: f64,
    /// The hub's resident memory after the fill (bytes).
    rss_after_fill: u64,
    /// SIGTERM to exit.
    shutdown_secs: f64,
    /// Files and bytes in `<data_dir>/wal` after the shutdown.
    wal_files: u64,
    wal_bytes: u64,
    /// Process start to the MQTT listener accepting a connection (CONNACK received).
    startup_to_connack_secs: f64,
    /// Process start to the last retained message of the `bench/#` subscription received.
    startup_to_all_retained_secs: f64,
    /// Retained messages the subscription returned.
    retained_received: u64,
    /// The hub's resident memory after the restart and the subscription, and its peak.
    rss_after_restart: u64,
    peak_rss_after_restart: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.count == 0 || args.publishers == 0 || args.payload == 0 {
        eprintln!("iothub-retained-bench: --count, --publishers and --payload must be > 0");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("iothub-retained-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(figures) => {
            if args.json {
                match serde_json::to_string_pretty(&figures) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("iothub-retained-bench: {e}"),
                }
            } else {
                print_figures(&figures);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iothub-retained-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_figures(f: &Figures) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{} retained messages of {} B, fsync {}",
        f.count, f.payload_bytes, f.fsync
    );
    println!(
        "  fill       {:.1} s ({:.0} msgs/s), hub RSS {:.0} MiB",
        f.fill_secs,
        f.fill_per_sec,
        mib(f.rss_after_fill)
    );
    println!(
        "  shutdown   {:.2} s (SIGTERM to exit); log {:.0} MiB in {} files",
        f.shutdown_secs,
        mib(f.wal_bytes),
        f.wal_files
    );
    println!(
        "  restart    CONNACK after {:.2} s; all {} retained received after {:.2} s",
        f.startup_to_connack_secs, f.retained_received, f.startup_to_all_retained_secs
    );
    println!(
        "  memory     RSS {:.0} MiB after the restart (peak {:.0} MiB)",
        mib(f.rss_after_restart),
        mib(f.peak_rss_after_restart)
    );
}

async fn run(args: &Args) -> anyhow::Result<Figures> {
    let temp;
    let workdir = match &args.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let fsync = match args.fsync {
        Fsync::Always => "always",
        Fsync::Grouped => "grouped",
    };
    // The hub's budget holds every retained message and, while the subscription drains,
    // its queue entry too (topic and fixed cost included, with room to spare); the session's
    // queue takes them all at once, since a new subscription queues every match.
    let budget = args.count.saturating_mul(4 * (args.payload as u64 + 256));
    let queue_messages = u32::try_from(args.count.saturating_add(1_000))
        .context("--count is too large for a session queue bound")?;
    let config = format!(
        "data_dir: data\n\
         persistence:\n  enabled: true\n  fsync: {fsync}\n  fsync_interval_ms: {}\n\
         listeners:\n  mqtt:\n    - name: mqtt\n      bind: 127.0.0.1:0\n      anonymous_hub: default\n\
         api:\n  bind: 127.0.0.1:0\n\
         hubs:\n  - name: default\n    plan: plan_dedicated\n    allow_anonymous: true\n    limits:\n\
         \x20     budget_bytes: {budget}\n\
         \x20     max_session_queue_messages: {queue_messages}\n\
         \x20     max_session_queue_bytes: {budget}\n",
        args.fsync_interval_ms,
    );
    std::fs::write(workdir.join("iothub.yaml"), config).context("cannot write iothub.yaml")?;

    let mut hub = HubProcess::start(&args.iothub, &workdir)?;
    eprintln!("filling {} retained messages...", args.count);
    let fill_start = Instant::now();
    fill(hub.mqtt, args).await?;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let rss_after_fill = memory_of(&hub.pid().to_string())
        .map(|m| m.rss)
        .unwrap_or(0);
    let shutdown_start = Instant::now();
    hub.terminate(Duration::from_secs(120))?;
    let shutdown_secs = shutdown_start.elapsed().as_secs_f64();
    let (wal_files, wal_bytes) = dir_size(&workdir.join("data").join("wal"))?;
    ensure!(
        wal_files > 0,
        "no write-ahead log in {}: is persistence enabled in this iothub?",
        workdir.join("data").join("wal").display()
    );

    eprintln!("restarting...");
    let started = Instant::now();
    let hub = HubProcess::start(&args.iothub, &workdir)?;
    let mut options = ClientOptions::new(ClientId::new("retainedbenchsub")?);
    options.connect_timeout = Duration::from_secs(120);
    let mut sub = Client::connect_tcp(hub.mqtt, &options).await?;
    let startup_to_connack_secs = started.elapsed().as_secs_f64();
    sub.subscribe(&[TopicFilter::new("bench/#")?], QoS::AtMostOnce)
        .await?;
    let mut retained_received = 0u64;
    while retained_received < args.count {
        match tokio::time::timeout(Duration::from_secs(30), sub.next_event()).await {
            Ok(Ok(Event::Message(p))) if p.retain => retained_received += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("subscriber failed after {retained_received} messages: {e}"),
            Err(_) => bail!(
                "only {retained_received} of {} retained messages came back (nothing for 30 s)",
                args.count
            ),
        }
    }
    let startup_to_all_retained_secs = started.elapsed().as_secs_f64();
    let memory = memory_of(&hub.pid().to_string()).unwrap_or_default();
    Ok(Figures {
        count: args.count,
        payload_bytes: args.payload,
        fsync,
        fill_secs,
        fill_per_sec: args.count as f64 / fill_secs,
        rss_after_fill,
        shutdown_secs,
        wal_files,
        wal_bytes,
        startup_to_connack_secs,
        startup_to_all_retained_secs,
        retained_received,
        rss_after_restart: memory.rss,
        peak_rss_after_restart: memory.peak,
    })
}

/// `--publishers` connections publish their share of the retained messages at QoS 1, a full
/// window each; any refusal fails the run.
async fn fill(broker: SocketAddr, args: &Args) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.publishers {
        let range = (p * args.count / args.publishers)..((p + 1) * args.count / args.publishers);
        let payload = Bytes::from(vec![b'x'; args.payload]);
        tasks.spawn(async move {
            let options = ClientOptions::new(ClientId::new(&format!("retainedbenchpub{p}"))?);
            let mut client = Client::connect_tcp(broker, &options).await?;
            let mut next = range.start;
            let mut acked = 0u64;
            let total = range.end - range.start;
            while acked < total {
                while next < range.end && client.can_publish() {
                    let topic = TopicName::new(&format!("bench/{}/{}", next / 1000, next % 1000))?;
                    let mut template = Outgoing::new(&topic, QoS::AtLeastOnce, true);
                    client.publish(&mut template, payload.clone())?;
                    next += 1;
                }
                match client.next_event().await? {
                    Event::Acked { reason, .. } if reason.is_error() => {
                        bail!("a retained publish was refused with {:#04x}", reason.0)
                    }
                    Event::Acked { .. } => acked += 1,
                    _ => {}
                }
            }
            client.disconnect().await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a publisher task failed")??;
    }
    Ok(())
}

/// Files and bytes under `dir` (one level: the log keeps its segments flat).
fn dir_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// An `iothub serve` child process; killed on drop if still running.
struct HubProcess {
    child: Child,
    mqtt: SocketAddr,
}

impl HubProcess {
    fn start(bin: &Path, workdir: &Path) -> anyhow::Result<HubProcess> {
        let mut child = Command::new(bin)
            .current_dir(workdir)
            .args(["serve", "--config", "iothub.yaml"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        // Reads the log for the whole life of the hub, so a full pipe never blocks it.
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = mqtt_addr(&line) {
                    let _ = tx.send(Ok(addr));
                }
                // Problems, and compactions (with the pause commits saw): part of the figures.
                if line.contains("WARN") || line.contains("ERROR") || line.contains("store compact")
                {
                    eprintln!("iothub: {line}");
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            let _ = tx.send(Err(tail.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(Ok(mqtt)) => Ok(HubProcess { child, mqtt }),
            Ok(Err(log)) => bail!("iothub exited before listening:\n{log}"),
            Err(_) => bail!("iothub did not report its MQTT listener within 600 s"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (through kill(1): this crate uses no libc), then waits for an exit 0.
    fn terminate(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "iothub exited with {status} after SIGTERM"
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "iothub still running {timeout:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `listening listener=mqtt addr=<ip:port>`.
fn mqtt_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening listener=mqtt addr=")? + 29..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A directory removed on drop (the crate has tempfile only as a dev-dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "iothub-retained-bench-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
