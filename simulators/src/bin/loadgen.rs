//! `iothub-loadgen`: drives an MQTT broker with publishers and subscribers and reports
//! delivered messages per second, latency percentiles, loss and its own CPU use.
//!
//! A thin CLI over [`iothub_simulators::loadgen::run`]: argument parsing, a progress bar on
//! stderr, and the summary (text or `--json`) on stdout. Exit status: 0 when every client
//! lasted the run, 1 when one failed or the run could not start, 2 for bad arguments.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use iothub_mqtt_codec::{ProtocolVersion, QoS};
use iothub_simulators::loadgen::{self, Live, LoadConfig, Scenario};

/// Load generator for MQTT brokers (iothub, Mosquitto, ...).
///
/// Scenarios: fan-in (N publishers on their own topics -> M subscribers on a wildcard),
/// fan-out (N publishers on one topic -> M subscribers on it), pairs (publisher i ->
/// subscriber i). Topics are <topic-prefix>/<run id>/..., so runs never see each other.
#[derive(Debug, Parser)]
#[command(name = "iothub-loadgen", version, about, long_about)]
struct Args {
    /// Broker address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Number of publishing clients.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Number of subscribing clients.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 16: timestamp, publisher, sequence).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per second per publisher; 0 = as fast as the inflight window or socket allows.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Seconds of publishing before measuring starts.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    warmup: Duration,
    /// Seconds subscribers wait for in-flight messages once publishing stops.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    drain: Duration,
    /// First levels of every topic.
    #[arg(long, default_value = "loadgen")]
    topic_prefix: String,
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value = "5")]
    mqtt_version: Version,
    /// Traffic shape, or a connection scenario: ramp (idle connections in steps, the broker's
    /// RSS per connection) or connects (connect, CONNACK, close with a RST, per second).
    #[arg(long, default_value = "fan-in",
        value_parser = PossibleValuesParser::new(
            Scenario::ALL.map(Scenario::name).into_iter().chain(["ramp", "connects"]))
            .try_map(|s| Mode::parse(&s)))]
    scenario: Mode,
    /// ramp: idle connections to open (capped by the generator's and the broker's open-files
    /// limits).
    #[arg(long, default_value_t = 1_000)]
    connections: u64,
    /// ramp: steps, each followed by a reading of the broker's RSS.
    #[arg(long, default_value_t = 10)]
    ramp_steps: usize,
    /// Connections opened at once while connecting; connects: the number of connectors.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The broker's process id: its CPU time and RSS go in the report (needed for the ramp's
    /// memory per connection).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// QoS 1/2 messages in flight per publisher (the broker's Receive Maximum may lower it).
    #[arg(long, default_value_t = 64)]
    inflight: u16,
    /// Subscribers connect with persistent sessions (clean start 0, MQTT 5 session expiry
    /// 300 s): a durable broker stores their queued messages before acknowledging.
    #[arg(long)]
    persistent_sessions: bool,
    /// Keep-alive in seconds (0: off).
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// End-to-end window: messages a publisher may be ahead of its subscribers' receipt
    /// (0: no bound), so unpaced runs measure the broker rather than its queues overflowing.
    #[arg(long, default_value_t = 0)]
    window: u64,
    /// Local addresses to connect from, comma-separated, used round robin (e.g.
    /// 127.0.0.2,127.0.0.3) so many connections do not exhaust one address's ports.
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
    /// Print the summary as JSON on stdout (for scripts).
    #[arg(long)]
    json: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

/// What `--scenario` names.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Traffic(Scenario),
    Ramp,
    Connects,
}

impl Mode {
    fn parse(s: &str) -> Result<Self, loadgen::UnknownScenario> {
        match s {
            "ramp" => Ok(Self::Ramp),
            "connects" => Ok(Self::Connects),
            other => other.parse().map(Self::Traffic),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Version {
    #[value(name = "3.1.1", alias = "311")]
    V311,
    #[value(name = "5")]
    V5,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let broker = tokio::net::lookup_host(&args.broker)
        .await
        .with_context(|| format!("cannot resolve --broker {}", args.broker))?
        .next()
        .with_context(|| format!("--broker {} resolves to no address", args.broker))?;
    let mut config = LoadConfig::new(broker);
    config.version = match args.mqtt_version {
        Version::V311 => ProtocolVersion::V311,
        Version::V5 => ProtocolVersion::V5,
    };
    if let Mode::Traffic(scenario) = args.scenario {
        config.scenario = scenario;
    }
    config.connections = args.connections;
    config.ramp_steps = args.ramp_steps;
    config.connect_concurrency = args.connect_concurrency;
    config.broker_pid = args.broker_pid;
    config.window = args.window;
    config.publishers = args.publishers;
    config.subscribers = args.subscribers;
    config.qos = QoS::try_from(args.qos).context("--qos")?;
    config.payload = args.payload;
    config.rate = args.rate;
    config.duration = args.duration;
    config.warmup = args.warmup;
    config.drain = args.drain;
    config.topic_prefix = args.topic_prefix;
    config.inflight = args.inflight;
    config.keep_alive = args.keep_alive;
    config.persistent_sessions = args.persistent_sessions;
    config.source_addrs = args.source_addrs;
    if let Err(e) = config.validate() {
        eprintln!("iothub-loadgen: {e}");
        return Ok(ExitCode::from(2));
    }

    let conns = match args.scenario {
        Mode::Traffic(_) => None,
        Mode::Ramp => Some(loadgen::run_ramp(&config).await?),
        Mode::Connects => Some(loadgen::run_connects(&config).await?),
    };
    if let Some(report) = conns {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).context("cannot serialise the report")?
            );
        } else {
            print!("{report}");
        }
        // A ramp ends at the first refused connection by design; connects count failures.
        return Ok(ExitCode::SUCCESS);
    }

    let live = Arc::new(Live::default());
    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:20}] {wide_msg}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.set_message("connecting");
    let ticker = tokio::spawn(show_progress(bar.clone(), Arc::clone(&live)));
    let result = loadgen::run(&config, live).await;
    ticker.abort();
    bar.finish_and_clear();
    let report = result?;

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot serialise the report")?
        );
    } else {
        print!("{report}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Redraws the bar four times a second with the phase and the current rates.
async fn show_progress(bar: ProgressBar, live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_sent, mut last_delivered) = (0, 0);
    loop {
        tick.tick().await;
        let Some(clock) = live.clock() else {
            bar.tick();
            continue;
        };
        let total = clock.warmup + clock.duration;
        let elapsed = clock.start.elapsed();
        bar.set_length(total.as_millis().max(1) as u64);
        bar.set_position(elapsed.min(total).as_millis() as u64);
        let phase = if elapsed < clock.warmup {
            "warm-up"
        } else if elapsed < total {
            "measuring"
        } else {
            "draining"
        };
        let (sent, delivered) = (live.sent(), live.delivered());
        bar.set_message(format!(
            "{phase}: sent {sent} ({}/s), delivered {delivered} ({}/s)",
            (sent - last_sent) * 4,
            (delivered - last_delivered) * 4
        ));
        (last_sent, last_delivered) = (sent, delivered);
    }
}
