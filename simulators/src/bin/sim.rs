//! `iothub-sim`: the world around a hub. Subcommands: `fleet` (devices created through the
//! management API, publishing over tcp/tls/ws/wss/quic), `rest` (a service posting to a REST
//! network), `sigfox` (the Sigfox backend's DATA callbacks, BIDIR included) and `lorawan` (a
//! LoRaWAN network server: raw encrypted PHYPayloads, ChirpStack v4 or TTS v3 JSON, downlinks).
//!
//! Each prints a progress bar on stderr (when it is a terminal) and a summary on stdout (text,
//! or JSON with `--json`). Exit status: 0 when every message was accepted and every check
//! passed, 1 otherwise or when the run could not start, 2 for invalid arguments.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use iothub_mqtt_codec::{ProtocolVersion, QoS};
use iothub_simulators::fleet::{self, FleetConfig};
use iothub_simulators::http::ManagementApi;
use iothub_simulators::lorawan_sim::{self, LoraDevice, LorawanConfig, Mode};
use iothub_simulators::rest_sim::{self, RestConfig};
use iothub_simulators::sigfox_sim::{self, BIDIR_TEMPLATE, SigfoxConfig, UPLINK_TEMPLATE};
use iothub_simulators::summary::Report;
use iothub_simulators::transport::{Listeners, Transport};
use iothub_simulators::util::{SplitMix, unhex};

/// Simulators for iothub: a device fleet, a REST publisher, the Sigfox backend and a LoRaWAN
/// network server.
#[derive(Debug, Parser)]
#[command(name = "iothub-sim", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Devices created through the management API, publishing over tcp/tls/ws/wss/quic.
    Fleet(FleetArgs),
    /// A service posting messages to a REST network (X-Secret, X-Topic).
    Rest(RestArgs),
    /// The Sigfox backend posting DATA/UPLINK and DATA/BIDIR callbacks to a SigFox network.
    Sigfox(SigfoxArgs),
    /// A LoRaWAN network server posting uplinks to a LoRaWAN network and taking downlinks.
    Lorawan(LorawanArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Print the summary as JSON (with a log of every message) on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Seconds to wait for any one answer (and for the downlinks expected).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Messages per second per device or publisher; 0 = back to back.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages per device or publisher.
    #[arg(long, default_value_t = 10)]
    messages: u32,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// The management API's region URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/iot/v1/regions/fr-par")]
    api: String,
    /// API key (X-Auth-Token).
    #[arg(long, env = "IOTHUB_API_KEY", hide_env_values = true)]
    token: String,
}

#[derive(Debug, Args)]
struct FleetArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    api: ApiArgs,
    /// Hub to create the devices in (default: a new hub named fleet-<random>).
    #[arg(long)]
    hub_id: Option<String>,
    /// Number of devices.
    #[arg(long, default_value_t = 4)]
    devices: u32,
    /// Transports, comma separated, assigned round robin.
    #[arg(long, value_delimiter = ',', default_value = "tcp,tls,ws,quic")]
    transports: Vec<Transport>,
    /// MQTT over TCP listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    tcp: SocketAddr,
    /// MQTT over TLS listener.
    #[arg(long, default_value = "127.0.0.1:8883")]
    tls: SocketAddr,
    /// MQTT over WebSocket listener (path /mqtt).
    #[arg(long, default_value = "127.0.0.1:8083")]
    ws: SocketAddr,
    /// MQTT over secure WebSocket listener (path /mqtt).
    #[arg(long, default_value = "127.0.0.1:8084")]
    wss: SocketAddr,
    /// MQTT over QUIC listener (UDP).
    #[arg(long, default_value = "127.0.0.1:14567")]
    quic: SocketAddr,
    /// The name the server certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM file of the server's CA (default: the API's server-ca).
    #[arg(long)]
    server_ca: Option<std::path::PathBuf>,
    /// QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "5", value_parser = ["3.1.1", "5"])]
    mqtt_version: String,
    /// Topic of each message: {transport}, {device} (its name) and {seq} are replaced.
    #[arg(long, default_value = "fleet/{transport}/{device}")]
    topic: String,
    /// Prefix of the devices' names.
    #[arg(long)]
    name_prefix: Option<String>,
    /// Delete the devices at the end.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Debug, Args)]
struct NetworkArgs {
    /// The network's endpoint, e.g. http://127.0.0.1:8080/networks/<network id>.
    #[arg(long)]
    url: String,
    /// The network's secret (X-Secret).
    #[arg(long, env = "IOTHUB_NETWORK_SECRET", hide_env_values = true)]
    secret: String,
}

#[derive(Debug, Args)]
struct RestArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    network: NetworkArgs,
    /// X-Topic: {publisher} and {seq} are replaced.
    #[arg(long, default_value = "rest/{publisher}")]
    topic: String,
    /// Body of each message: {publisher} and {seq} are replaced.
    #[arg(long, default_value = r#"{"publisher":{publisher},"seq":{seq}}"#)]
    body: String,
    /// Number of publishers, each sending its messages in turn.
    #[arg(long, default_value_t = 1)]
    publishers: u32,
}

#[derive(Debug, Args)]
struct SigfoxArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    network: NetworkArgs,
    /// X-Topic as configured in the callback (Sigfox variables such as {device} allowed).
    #[arg(long, default_value = "{device}")]
    topic: String,
    /// Replace the Sigfox variables in X-Topic before sending (default: the hub does).
    #[arg(long)]
    expand_topic: bool,
    /// A device id (hex, up to 8 digits); repeat for more. Default: --devices made up.
    #[arg(long = "device")]
    device_ids: Vec<String>,
    /// Number of made-up devices when no --device is given.
    #[arg(long, default_value_t = 2)]
    devices: u32,
    /// seqNumber of each device's first message.
    #[arg(long, default_value_t = 1)]
    seq_start: u32,
    /// Every n-th message is a DATA/BIDIR callback with ack=true (0: never).
    #[arg(long, default_value_t = 0)]
    bidir_every: u32,
    /// Body template of DATA/UPLINK callbacks.
    #[arg(long, default_value = UPLINK_TEMPLATE)]
    uplink_template: String,
    /// Body template of DATA/BIDIR callbacks.
    #[arg(long, default_value = BIDIR_TEMPLATE)]
    bidir_template: String,
    /// Seed of the made-up ids and data (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, Args)]
struct LorawanArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    network: NetworkArgs,
    /// How uplinks are posted: phy (raw PHYPayload), phy-json, chirpstack or tts.
    #[arg(long, default_value = "phy")]
    mode: Mode,
    /// A device: DEV_EUI:DEV_ADDR:NWK_S_KEY:APP_S_KEY[:APP_KEY[:JOIN_EUI]] (hex, MSB-first);
    /// repeat for more. Default: --devices made up.
    #[arg(long = "device")]
    device_specs: Vec<LoraDevice>,
    /// Number of made-up devices when no --device is given.
    #[arg(long, default_value_t = 2)]
    devices: u32,
    /// Register the devices (session keys, AppKey) through the management API first.
    #[arg(long)]
    register: bool,
    /// The management API's region URL (for --register).
    #[arg(long, default_value = "http://127.0.0.1:8080/iot/v1/regions/fr-par")]
    api: String,
    /// API key (X-Auth-Token) for --register.
    #[arg(long, env = "IOTHUB_API_KEY", hide_env_values = true)]
    token: Option<String>,
    /// The 32-bit FCnt of each device's first uplink.
    #[arg(long, default_value_t = 0)]
    f_cnt_start: u32,
    /// FPort of the uplinks (0 = MAC commands, encrypted with the NwkSKey).
    #[arg(long, default_value_t = 1)]
    f_port: u8,
    /// Confirmed uplinks.
    #[arg(long)]
    confirmed: bool,
    /// FRMPayload of every uplink, hex (default: device index and FCnt, 6 bytes).
    #[arg(long)]
    payload_hex: Option<String>,
    /// Send a join-request (AppKey MIC) per device first (phy modes).
    #[arg(long)]
    join: bool,
    /// Post each accepted frame again and check the hub refuses the replay (phy modes).
    #[arg(long)]
    replay: bool,
    /// Poll the downlink queue at the end until this many items came (or --timeout).
    #[arg(long, default_value_t = 0)]
    expect_downlinks: u32,
    /// ChirpStack mode: also post these events once per device before its uplinks
    /// (join,status,ack,txack,log,location).
    #[arg(long, value_delimiter = ',', value_parser = lorawan_sim::CHIRPSTACK_EVENTS)]
    events: Vec<String>,
    /// Seed of the made-up devices (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
}

fn network_id(url: &str) -> anyhow::Result<String> {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("{url} does not end with a network id"))
}

async fn run(cli: Cli) -> anyhow::Result<(Report, bool)> {
    let secs = |s: f64| {
        Duration::try_from_secs_f64(s).context("--timeout must be a positive number of seconds")
    };
    match cli.command {
        Command::Fleet(a) => {
            let api = ManagementApi::new(&a.api.api, &a.api.token);
            let server_ca_pem = match &a.server_ca {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let run_id = format!(
                "{:06x}",
                SplitMix::new(SplitMix::clock_seed()).next_u64() & 0xff_ffff
            );
            let config = FleetConfig {
                hub_id: a.hub_id,
                hub_name: format!("fleet-{run_id}"),
                devices: a.devices,
                transports: a.transports,
                listeners: Listeners {
                    tcp: Some(a.tcp),
                    tls: Some(a.tls),
                    ws: Some(a.ws),
                    wss: Some(a.wss),
                    quic: Some(a.quic),
                    server_name: a.server_name,
                    server_ca_pem,
                },
                messages: a.common.messages,
                rate: a.common.rate,
                qos: if a.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
                version: if a.mqtt_version == "5" {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                },
                topic: a.topic,
                name_prefix: a.name_prefix.unwrap_or_else(|| format!("fleet-{run_id}")),
                cleanup: a.cleanup,
                timeout: secs(a.common.timeout)?,
                quiet: a.common.quiet,
            };
            Ok((fleet::run(&api, config).await?, a.common.json))
        }
        Command::Rest(a) => {
            let config = RestConfig {
                url: a.network.url,
                secret: a.network.secret,
                topic: a.topic,
                body: a.body,
                publishers: a.publishers,
                messages: a.common.messages,
                rate: a.common.rate,
                timeout: secs(a.common.timeout)?,
                quiet: a.common.quiet,
            };
            Ok((rest_sim::run(config).await, a.common.json))
        }
        Command::Sigfox(a) => {
            let seed = a.seed.unwrap_or_else(SplitMix::clock_seed);
            for d in &a.device_ids {
                anyhow::ensure!(
                    !d.is_empty() && d.len() <= 8 && d.bytes().all(|b| b.is_ascii_hexdigit()),
                    "--device {d:?}: a Sigfox device id is 1 to 8 hex digits"
                );
            }
            let devices = if a.device_ids.is_empty() {
                sigfox_sim::generate_devices(a.devices, seed)
            } else {
                a.device_ids
            };
            let config = SigfoxConfig {
                url: a.network.url,
                secret: a.network.secret,
                topic: a.topic,
                expand_topic: a.expand_topic,
                devices,
                messages: a.common.messages,
                seq_start: a.seq_start,
                bidir_every: a.bidir_every,
                uplink_template: a.uplink_template,
                bidir_template: a.bidir_template,
                rate: a.common.rate,
                seed,
                timeout: secs(a.common.timeout)?,
                quiet: a.common.quiet,
            };
            Ok((sigfox_sim::run(config).await, a.common.json))
        }
        Command::Lorawan(a) => {
            let seed = a.seed.unwrap_or_else(SplitMix::clock_seed);
            let devices = if a.device_specs.is_empty() {
                let mut rng = SplitMix::new(seed);
                (0..a.devices)
                    .map(|_| LoraDevice::generate(&mut rng))
                    .collect()
            } else {
                a.device_specs
            };
            let register = if a.register {
                let token = a
                    .token
                    .context("--register needs --token (or IOTHUB_API_KEY)")?;
                Some((
                    ManagementApi::new(&a.api, &token),
                    network_id(&a.network.url)?,
                ))
            } else {
                None
            };
            anyhow::ensure!(
                a.f_port != 0 || !matches!(a.mode, Mode::Phy | Mode::PhyJson),
                "--f-port 0 carries MAC commands, which the phy modes do not build: use 1 to 223"
            );
            let payload = a
                .payload_hex
                .as_deref()
                .map(unhex)
                .transpose()
                .context("--payload-hex")?;
            let config = LorawanConfig {
                url: a.network.url.trim_end_matches('/').to_owned(),
                secret: a.network.secret,
                mode: a.mode,
                devices,
                register,
                messages: a.common.messages,
                f_cnt_start: a.f_cnt_start,
                f_port: a.f_port,
                confirmed: a.confirmed,
                payload,
                join: a.join,
                replay: a.replay,
                expect_downlinks: a.expect_downlinks,
                chirpstack_events: a.events,
                rate: a.common.rate,
                seed,
                timeout: secs(a.common.timeout)?,
                quiet: a.common.quiet,
            };
            Ok((lorawan_sim::run(config).await, a.common.json))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IOTHUB_SIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iothub-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok((report, json)) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("iothub-sim: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.to_text());
            }
            if report.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("iothub-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
