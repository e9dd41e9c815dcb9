//! `iothub`: the composition root. It reads the configuration, builds the engine, binds the
//! listeners and the HTTP API, and wires them together; it is the only crate that knows every
//! other one. Nothing depends on it.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the hub cannot start or run (a port that cannot
//! be bound, for example), 2 for a configuration mistake.

mod cli;
mod config;
mod control_plane;
mod metrics;
mod routes;
mod runtime;
mod serve;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "iothub",
    version,
    about = "A self-hosted, multi-tenant IoT hub (MQTT 3.1.1 and 5)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    api: cli::ApiArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub. Without --config it runs on the embedded default configuration
    /// (`iothub generate-config` prints it): one development hub admitting any MQTT client
    /// on 127.0.0.1:1883, the API and /metrics on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Print the embedded default configuration (YAML) to stdout, to start a config file from.
    GenerateConfig,
    /// Manage hubs through the API.
    #[command(subcommand)]
    Hub(cli::HubCmd),
    /// Manage devices through the API.
    #[command(subcommand)]
    Device(cli::DeviceCmd),
    /// Manage routes through the API.
    #[command(subcommand)]
    Route(cli::RouteCmd),
    /// Manage networks through the API.
    #[command(subcommand)]
    Network(cli::NetworkCmd),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Configuration file (YAML). Unknown keys are errors.
    #[arg(long, short, env = "IOTHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Bind address of the first MQTT listener, overriding the config (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", env = "IOTHUB_MQTT_ADDR")]
    mqtt_addr: Option<SocketAddr>,
    /// Bind address of the first MQTT-over-TLS listener (listeners.tls), overriding the config.
    #[arg(long, value_name = "ADDR", env = "IOTHUB_TLS_ADDR")]
    tls_addr: Option<SocketAddr>,
    /// Bind address of the first WebSocket listener (listeners.ws), overriding the config.
    #[arg(long, value_name = "ADDR", env = "IOTHUB_WS_ADDR")]
    ws_addr: Option<SocketAddr>,
    /// Bind address of the first WebSocket-over-TLS listener (listeners.wss), overriding the config.
    #[arg(long, value_name = "ADDR", env = "IOTHUB_WSS_ADDR")]
    wss_addr: Option<SocketAddr>,
    /// Bind address (UDP) of the first QUIC listener (listeners.quic), overriding the config.
    #[arg(long, value_name = "ADDR", env = "IOTHUB_QUIC_ADDR")]
    quic_addr: Option<SocketAddr>,
    /// Bind address of the HTTP API and /metrics, overriding the config.
    #[arg(long, value_name = "ADDR", env = "IOTHUB_API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// Log filter, e.g. `info`, `debug`, `iothub_engine=trace` (RUST_LOG syntax).
    #[arg(
        long,
        value_name = "FILTER",
        env = "IOTHUB_LOG",
        default_value = "info"
    )]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateConfig => {
            print!("{}", config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve_command(args),
        Command::Hub(c) => api_command(cli.api, cli::Resource::Hub(c)),
        Command::Device(c) => api_command(cli.api, cli::Resource::Device(c)),
        Command::Route(c) => api_command(cli.api, cli::Resource::Route(c)),
        Command::Network(c) => api_command(cli.api, cli::Resource::Network(c)),
    }
}

fn api_command(args: cli::ApiArgs, resource: cli::Resource) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iothub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args, resource)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iothub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_command(args: ServeArgs) -> ExitCode {
    if let Err(e) = init_logging(&args.log) {
        eprintln!("iothub: invalid --log filter {:?}: {e}", args.log);
        return ExitCode::from(2);
    }
    // ring is the only crypto provider built in (DESIGN.md); installing it makes every
    // rustls user that asks for the process default (quinn, clients) agree. It fails only
    // when one is installed already, which is then ring too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = match config::Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iothub: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = args.mqtt_addr {
        match config.listeners.mqtt.first_mut() {
            Some(l) => l.bind = addr,
            None => {
                eprintln!(
                    "iothub: configuration error: --mqtt-addr given but the configuration declares no MQTT listener"
                );
                return ExitCode::from(2);
            }
        }
    }
    for (flag, addr, listeners) in [
        ("--tls-addr", args.tls_addr, &mut config.listeners.tls),
        ("--ws-addr", args.ws_addr, &mut config.listeners.ws),
        ("--wss-addr", args.wss_addr, &mut config.listeners.wss),
        ("--quic-addr", args.quic_addr, &mut config.listeners.quic),
    ] {
        let Some(addr) = addr else { continue };
        match listeners.first_mut() {
            Some(l) => l.bind = addr,
            None => {
                eprintln!(
                    "iothub: configuration error: {flag} given but the configuration declares no such listener"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(addr) = args.api_addr {
        config.api.bind = addr;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iothub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(config, serve::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iothub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}
