//! `iothub hub|device|route|network …`: the management API from the command line.
//!
//! Every command is one HTTP request to the API (`--endpoint`, default the local hub), with
//! the account's key in `X-Auth-Token`. Output is a table by default and the API's JSON with
//! `-o json`. API errors are printed with the field they name and exit with status 1.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

/// Where the API is and who calls it; accepted before or after the resource command.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the hub's API.
    #[arg(
        long,
        global = true,
        env = "IOTHUB_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub endpoint: String,
    /// API key (X-Auth-Token). Default: the admin key the hub wrote into
    /// ./iothub-data/admin-api-key at its first start, when that file exists.
    #[arg(long, global = true, env = "IOTHUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Region in the API paths.
    #[arg(long, global = true, env = "IOTHUB_REGION", default_value = "fr-par")]
    pub region: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum HubCmd {
    /// Create a hub (it is ready at once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value_t = PlanArg::Dedicated)]
        plan: PlanArg,
        #[arg(long)]
        disable_events: bool,
        #[arg(long)]
        events_topic_prefix: Option<String>,
        /// Admit MQTT clients that are not registered devices (dedicated and HA plans).
        #[arg(long)]
        allow_anonymous: bool,
    },
    /// List hubs.
    List {
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    Get {
        id: String,
    },
    /// Change a hub (the plan only while it is disabled).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum)]
        plan: Option<PlanArg>,
        #[arg(long)]
        disable_events: Option<bool>,
        #[arg(long)]
        events_topic_prefix: Option<String>,
        #[arg(long)]
        allow_anonymous: Option<bool>,
    },
    /// Delete a hub; with --delete-devices its devices go too (otherwise a hub with devices is kept).
    Delete {
        id: String,
        #[arg(long)]
        delete_devices: bool,
    },
    Enable {
        id: String,
    },
    /// Disable a hub: its connections are closed and new ones refused.
    Disable {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// Register a device in a hub.
    Create {
        #[arg(long)]
        hub_id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Let it connect without a client certificate (plain TCP, or username = device id).
        #[arg(long)]
        allow_insecure: bool,
        #[arg(long)]
        allow_multiple_connections: bool,
        #[command(flatten)]
        filters: FilterArgs,
    },
    List {
        #[arg(long)]
        hub_id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    Get {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        allow_insecure: Option<bool>,
        #[arg(long)]
        allow_multiple_connections: Option<bool>,
        /// Move the device to another hub of the same account.
        #[arg(long)]
        hub_id: Option<String>,
        #[command(flatten)]
        filters: FilterArgs,
    },
    Delete {
        id: String,
    },
    Enable {
        id: String,
    },
    /// Disable a device: its connections are closed and new ones refused.
    Disable {
        id: String,
    },
}

/// Message filters as `POLICY:TOPIC,TOPIC` (policy `accept` or `reject`; an empty topic list
/// with `reject` allows everything). Topics may use `{{ device.id }}`-style templates.
#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    #[arg(long, value_name = "POLICY:TOPICS")]
    publish_filter: Option<String>,
    #[arg(long, value_name = "POLICY:TOPICS")]
    subscribe_filter: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Create a route: --type rest (--verb, --uri, --header K=V), s3 (--bucket-region,
    /// --bucket-name, --object-prefix, --strategy, and for an S3-compatible server
    /// --endpoint, --access-key-id, --secret-access-key), database (--engine, --host,
    /// --port, --dbname, --username, --password, --query) or wasm (--component FILE.wasm,
    /// --config JSON, --http-origin URL, --hub-publish, --grants JSON).
    Create {
        #[arg(long)]
        hub_id: String,
        #[arg(long)]
        name: String,
        /// MQTT filter of the messages the route receives.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        config: Box<RouteConfigArgs>,
    },
    List {
        #[arg(long)]
        hub_id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    Get {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        topic: Option<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct RouteConfigArgs {
    #[arg(long = "type", value_enum)]
    route_type: RouteType,
    #[arg(long)]
    verb: Option<String>,
    #[arg(long)]
    uri: Option<String>,
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    #[arg(long)]
    bucket_region: Option<String>,
    #[arg(long)]
    bucket_name: Option<String>,
    #[arg(long)]
    object_prefix: Option<String>,
    #[arg(long)]
    strategy: Option<String>,
    #[arg(long)]
    engine: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    dbname: Option<String>,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    #[arg(long)]
    query: Option<String>,
    /// S3-compatible server's base URL (s3).
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long)]
    access_key_id: Option<String>,
    #[arg(long)]
    secret_access_key: Option<String>,
    /// The component file (wasm): uploaded in base64.
    #[arg(long, value_name = "FILE")]
    component: Option<std::path::PathBuf>,
    /// The JSON object the component's init receives (wasm).
    #[arg(long, value_name = "JSON")]
    config: Option<String>,
    /// The one HTTP origin the component may call (wasm).
    #[arg(long, value_name = "URL")]
    http_origin: Option<String>,
    /// Let the component publish back into its hub (wasm).
    #[arg(long)]
    hub_publish: bool,
    /// Every grant as JSON (wasm; see `wasm_config.grants` in the API), merged under
    /// --http-origin and --hub-publish.
    #[arg(long, value_name = "JSON")]
    grants: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RouteType {
    Rest,
    S3,
    Database,
    Wasm,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network; its secret is printed once.
    Create {
        #[arg(long)]
        hub_id: String,
        #[arg(long)]
        name: String,
        #[arg(long = "type", value_enum)]
        network_type: NetworkTypeArg,
        #[arg(long)]
        topic_prefix: String,
    },
    List {
        #[arg(long)]
        hub_id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NetworkTypeArg {
    Rest,
    Sigfox,
    Lorawan,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PlanArg {
    Shared,
    Dedicated,
    Ha,
}

impl PlanArg {
    fn api(self) -> &'static str {
        match self {
            PlanArg::Shared => "plan_shared",
            PlanArg::Dedicated => "plan_dedicated",
            PlanArg::Ha => "plan_ha",
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct PageArgs {
    #[arg(long)]
    page: Option<u32>,
    #[arg(long)]
    page_size: Option<u32>,
    /// e.g. created_at_asc, name_desc
    #[arg(long)]
    order_by: Option<String>,
}

/// One API call.
struct Call {
    method: hyper::Method,
    /// Path below `/iot/v1/regions/{region}`.
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    /// Key of the list in a list answer, for the table.
    columns: &'static [&'static str],
}

impl Call {
    fn new(method: hyper::Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            columns: &[],
        }
    }
    fn body(mut self, v: Value) -> Self {
        self.body = Some(v);
        self
    }
    fn query(mut self, k: &str, v: Option<impl ToString>) -> Self {
        if let Some(v) = v {
            self.query.push((k.to_string(), v.to_string()));
        }
        self
    }
    fn page(self, p: &PageArgs) -> Self {
        self.query("page", p.page)
            .query("page_size", p.page_size)
            .query("order_by", p.order_by.as_ref())
    }
    fn columns(mut self, c: &'static [&'static str]) -> Self {
        self.columns = c;
        self
    }
}

const HUB_COLUMNS: &[&str] = &["id", "name", "status", "product_plan", "device_count"];
const DEVICE_COLUMNS: &[&str] = &[
    "id",
    "name",
    "hub_id",
    "status",
    "allow_insecure",
    "is_connected",
];
const ROUTE_COLUMNS: &[&str] = &["id", "name", "hub_id", "topic", "type"];
const NETWORK_COLUMNS: &[&str] = &["id", "name", "hub_id", "type", "topic_prefix"];

/// Drops `null` members so an update sends only what was given.
fn object(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if !v.is_null() {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

fn parse_filter(s: &str) -> anyhow::Result<Value> {
    let (policy, topics) = s.split_once(':').ok_or_else(|| {
        anyhow!("filter {s:?}: expected POLICY:TOPIC,TOPIC (e.g. accept:sensors/#)")
    })?;
    if policy != "accept" && policy != "reject" {
        bail!("filter {s:?}: the policy must be accept or reject");
    }
    let topics: Vec<&str> = topics.split(',').filter(|t| !t.is_empty()).collect();
    Ok(json!({ "policy": policy, "topics": topics }))
}

fn filters(f: &FilterArgs) -> anyhow::Result<Value> {
    let publish = f.publish_filter.as_deref().map(parse_filter).transpose()?;
    let subscribe = f
        .subscribe_filter
        .as_deref()
        .map(parse_filter)
        .transpose()?;
    if publish.is_none() && subscribe.is_none() {
        return Ok(Value::Null);
    }
    Ok(object(vec![
        ("publish", publish.unwrap_or(Value::Null)),
        ("subscribe", subscribe.unwrap_or(Value::Null)),
    ]))
}

fn route_config(c: &RouteConfigArgs) -> anyhow::Result<(&'static str, Value)> {
    Ok(match c.route_type {
        RouteType::Rest => {
            let mut headers = Map::new();
            for h in &c.headers {
                let (k, v) = h
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--header {h:?}: expected NAME=VALUE"))?;
                headers.insert(k.to_string(), Value::String(v.to_string()));
            }
            (
                "rest_config",
                object(vec![
                    ("verb", json!(c.verb.as_deref().unwrap_or("post"))),
                    (
                        "uri",
                        json!(
                            c.uri
                                .as_ref()
                                .context("--uri is required for a rest route")?
                        ),
                    ),
                    ("headers", Value::Object(headers)),
                ]),
            )
        }
        RouteType::S3 => {
            let mut fields = vec![
                ("bucket_region", json!(c.bucket_region)),
                ("bucket_name", json!(c.bucket_name)),
                ("object_prefix", json!(c.object_prefix)),
                (
                    "strategy",
                    json!(c.strategy.as_deref().unwrap_or("per_topic")),
                ),
            ];
            for (key, value) in [
                ("endpoint", &c.endpoint),
                ("access_key_id", &c.access_key_id),
                ("secret_access_key", &c.secret_access_key),
            ] {
                if let Some(v) = value {
                    fields.push((key, json!(v)));
                }
            }
            ("s3_config", object(fields))
        }
        RouteType::Wasm => {
            use base64::Engine as _;
            let path = c
                .component
                .as_ref()
                .context("--component FILE.wasm is required for a wasm route")?;
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the component {}", path.display()))?;
            let config: Value = match &c.config {
                Some(text) => serde_json::from_str(text).context("--config is not JSON")?,
                None => json!({}),
            };
            let mut grants: Map<String, Value> = match &c.grants {
                Some(text) => {
                    serde_json::from_str(text).context("--grants is not a JSON object")?
                }
                None => Map::new(),
            };
            if let Some(origin) = &c.http_origin {
                grants.insert("http_origin".into(), json!(origin));
            }
            if c.hub_publish {
                grants.insert("hub_publish".into(), json!(true));
            }
            (
                "wasm_config",
                object(vec![
                    (
                        "component",
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    ),
                    ("config", config),
                    ("grants", Value::Object(grants)),
                ]),
            )
        }
        RouteType::Database => (
            "db_config",
            object(vec![
                ("engine", json!(c.engine.as_deref().unwrap_or("postgresql"))),
                ("host", json!(c.host)),
                ("port", json!(c.port)),
                ("dbname", json!(c.dbname)),
                ("username", json!(c.username)),
                ("password", json!(c.password)),
                ("query", json!(c.query)),
            ]),
        ),
    })
}

fn hub_call(cmd: HubCmd) -> anyhow::Result<Call> {
    use hyper::Method as M;
    Ok(match cmd {
        HubCmd::Create {
            name,
            plan,
            disable_events,
            events_topic_prefix,
            allow_anonymous,
        } => Call::new(M::POST, "/hubs").body(object(vec![
            ("name", json!(name)),
            ("product_plan", json!(plan.api())),
            ("disable_events", json!(disable_events)),
            ("events_topic_prefix", json!(events_topic_prefix)),
            ("allow_anonymous", json!(allow_anonymous)),
        ])),
        HubCmd::List { name, page } => Call::new(M::GET, "/hubs")
            .query("name", name)
            .page(&page)
            .columns(HUB_COLUMNS),
        HubCmd::Get { id } => Call::new(M::GET, format!("/hubs/{id}")),
        HubCmd::Update {
            id,
            name,
            plan,
            disable_events,
            events_topic_prefix,
            allow_anonymous,
        } => Call::new(M::PATCH, format!("/hubs/{id}")).body(object(vec![
            ("name", json!(name)),
            ("product_plan", json!(plan.map(PlanArg::api))),
            ("disable_events", json!(disable_events)),
            ("events_topic_prefix", json!(events_topic_prefix)),
            ("allow_anonymous", json!(allow_anonymous)),
        ])),
        HubCmd::Delete { id, delete_devices } => Call::new(M::DELETE, format!("/hubs/{id}"))
            .query("delete_devices", delete_devices.then_some("true")),
        HubCmd::Enable { id } => Call::new(M::POST, format!("/hubs/{id}/enable")).body(json!({})),
        HubCmd::Disable { id } => Call::new(M::POST, format!("/hubs/{id}/disable")).body(json!({})),
    })
}

fn device_call(cmd: DeviceCmd) -> anyhow::Result<Call> {
    use hyper::Method as M;
    Ok(match cmd {
        DeviceCmd::Create {
            hub_id,
            name,
            description,
            allow_insecure,
            allow_multiple_connections,
            filters: f,
        } => Call::new(M::POST, "/devices").body(object(vec![
            ("hub_id", json!(hub_id)),
            ("name", json!(name)),
            ("description", json!(description)),
            ("allow_insecure", json!(allow_insecure)),
            (
                "allow_multiple_connections",
                json!(allow_multiple_connections),
            ),
            ("message_filters", filters(&f)?),
        ])),
        DeviceCmd::List { hub_id, name, page } => Call::new(M::GET, "/devices")
            .query("hub_id", hub_id)
            .query("name", name)
            .page(&page)
            .columns(DEVICE_COLUMNS),
        DeviceCmd::Get { id } => Call::new(M::GET, format!("/devices/{id}")),
        DeviceCmd::Update {
            id,
            description,
            allow_insecure,
            allow_multiple_connections,
            hub_id,
            filters: f,
        } => Call::new(M::PATCH, format!("/devices/{id}")).body(object(vec![
            ("description", json!(description)),
            ("allow_insecure", json!(allow_insecure)),
            (
                "allow_multiple_connections",
                json!(allow_multiple_connections),
            ),
            ("hub_id", json!(hub_id)),
            ("message_filters", filters(&f)?),
        ])),
        DeviceCmd::Delete { id } => Call::new(M::DELETE, format!("/devices/{id}")),
        DeviceCmd::Enable { id } => {
            Call::new(M::POST, format!("/devices/{id}/enable")).body(json!({}))
        }
        DeviceCmd::Disable { id } => {
            Call::new(M::POST, format!("/devices/{id}/disable")).body(json!({}))
        }
    })
}

fn route_call(cmd: RouteCmd) -> anyhow::Result<Call> {
    use hyper::Method as M;
    Ok(match cmd {
        RouteCmd::Create {
            hub_id,
            name,
            topic,
            config,
        } => {
            let (key, value) = route_config(&config)?;
            Call::new(M::POST, "/routes").body(object(vec![
                ("hub_id", json!(hub_id)),
                ("name", json!(name)),
                ("topic", json!(topic)),
                (key, value),
            ]))
        }
        RouteCmd::List { hub_id, name, page } => Call::new(M::GET, "/routes")
            .query("hub_id", hub_id)
            .query("name", name)
            .page(&page)
            .columns(ROUTE_COLUMNS),
        RouteCmd::Get { id } => Call::new(M::GET, format!("/routes/{id}")),
        RouteCmd::Update { id, name, topic } => Call::new(M::PATCH, format!("/routes/{id}"))
            .body(object(vec![("name", json!(name)), ("topic", json!(topic))])),
        RouteCmd::Delete { id } => Call::new(M::DELETE, format!("/routes/{id}")),
    })
}

fn network_call(cmd: NetworkCmd) -> anyhow::Result<Call> {
    use hyper::Method as M;
    Ok(match cmd {
        NetworkCmd::Create {
            hub_id,
            name,
            network_type,
            topic_prefix,
        } => {
            let t = match network_type {
                NetworkTypeArg::Rest => "rest",
                NetworkTypeArg::Sigfox => "sigfox",
                NetworkTypeArg::Lorawan => "lorawan",
            };
            Call::new(M::POST, "/networks").body(json!({
                "hub_id": hub_id, "name": name, "type": t, "topic_prefix": topic_prefix,
            }))
        }
        NetworkCmd::List { hub_id, name, page } => Call::new(M::GET, "/networks")
            .query("hub_id", hub_id)
            .query("name", name)
            .page(&page)
            .columns(NETWORK_COLUMNS),
        NetworkCmd::Get { id } => Call::new(M::GET, format!("/networks/{id}")),
        NetworkCmd::Delete { id } => Call::new(M::DELETE, format!("/networks/{id}")),
    })
}

pub enum Resource {
    Hub(HubCmd),
    Device(DeviceCmd),
    Route(RouteCmd),
    Network(NetworkCmd),
}

/// The key file the hub writes at its first start, relative to where it was started.
const DEFAULT_KEY_FILE: &str = "iothub-data/admin-api-key";

fn api_key(args: &ApiArgs) -> anyhow::Result<String> {
    if let Some(k) = &args.api_key {
        return Ok(k.clone());
    }
    let path = PathBuf::from(DEFAULT_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(k) => Ok(k.trim().to_string()),
        Err(_) => bail!(
            "no API key: pass --api-key or set IOTHUB_API_KEY (the hub printed the admin key at its \
             first start and wrote it to <data_dir>/admin-api-key)"
        ),
    }
}

/// Runs one resource command; the exit status is the caller's.
pub async fn run(args: ApiArgs, resource: Resource) -> anyhow::Result<()> {
    let call = match resource {
        Resource::Hub(c) => hub_call(c)?,
        Resource::Device(c) => device_call(c)?,
        Resource::Route(c) => route_call(c)?,
        Resource::Network(c) => network_call(c)?,
    };
    let key = api_key(&args)?;
    let mut url = format!(
        "{}/iot/v1/regions/{}{}",
        args.endpoint.trim_end_matches('/'),
        args.region,
        call.path
    );
    if !call.query.is_empty() {
        let q: Vec<String> = call
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        url.push('?');
        url.push_str(&q.join("&"));
    }
    let body = match &call.body {
        Some(v) => Bytes::from(serde_json::to_vec(v)?),
        None => Bytes::new(),
    };
    let mut request = hyper::Request::builder()
        .method(call.method.clone())
        .uri(&url)
        .header("X-Auth-Token", key);
    if call.body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(body))
        .with_context(|| format!("invalid request URL {url}"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("cannot reach the API at {}", args.endpoint))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the API's answer")?
        .to_bytes();
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if !status.is_success() {
        bail!("{}", describe_error(status, &value));
    }
    match args.output {
        Output::Json => {
            if !value.is_null() {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
        }
        Output::Table => print_table(&value, call.columns),
    }
    Ok(())
}

fn describe_error(status: hyper::StatusCode, v: &Value) -> String {
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_string);
    let mut out = format!("API error {}: {message}", status.as_u16());
    if let Some(details) = v.get("details").and_then(Value::as_array) {
        for d in details {
            let field = d.get("argument_name").and_then(Value::as_str);
            let help = d
                .get("help_message")
                .and_then(Value::as_str)
                .or_else(|| d.get("reason").and_then(Value::as_str));
            match (field, help) {
                (Some(f), Some(h)) => out.push_str(&format!("\n  {f}: {h}")),
                _ => out.push_str(&format!("\n  {d}")),
            }
        }
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(v: &Value, columns: &[&str]) {
    let Some(obj) = v.as_object() else {
        if !v.is_null() {
            println!("{}", cell(v));
        }
        return;
    };
    // A list answer: {"<things>": [...], "total_count": N}.
    if let Some(items) = obj.values().find_map(Value::as_array) {
        let widths: Vec<usize> = columns
            .iter()
            .map(|c| {
                items
                    .iter()
                    .map(|i| cell(&i[*c]).len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(c.len())
            })
            .collect();
        let line = |cells: Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(columns.iter().map(|c| c.to_uppercase()).collect());
        for i in items {
            line(columns.iter().map(|c| cell(&i[*c])).collect());
        }
        if let Some(total) = obj.get("total_count") {
            println!("({} in all)", cell(total));
        }
        return;
    }
    // One resource, possibly wrapped ({"device": {...}, "secret": "..."}).
    let mut rows: Vec<(String, String)> = Vec::new();
    for (k, val) in obj {
        match val {
            Value::Object(inner)
                if matches!(
                    k.as_str(),
                    "device" | "network" | "hub" | "route" | "certificate"
                ) =>
            {
                for (ik, iv) in inner {
                    rows.push((ik.clone(), cell(iv)));
                }
            }
            other => rows.push((k.clone(), cell(other))),
        }
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, val) in rows {
        println!("{k:<w$}  {val}");
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        let table: &[(&str, Result<Value, &str>)] = &[
            (
                "accept:a/#,b/+",
                Ok(json!({"policy":"accept","topics":["a/#","b/+"]})),
            ),
            ("reject:", Ok(json!({"policy":"reject","topics":[]}))),
            ("allow:a", Err("the policy must be accept or reject")),
            ("a/#", Err("expected POLICY:TOPIC")),
        ];
        for (input, expect) in table {
            match (parse_filter(input), expect) {
                (Ok(v), Ok(e)) => assert_eq!(&v, e, "{input}"),
                (Err(err), Err(e)) => assert!(err.to_string().contains(e), "{input}: {err}"),
                (got, _) => panic!("{input}: got {got:?}"),
            }
        }
    }

    #[test]
    fn updates_send_only_given_fields() {
        let call = hub_call(HubCmd::Update {
            id: "x".into(),
            name: Some("n".into()),
            plan: None,
            disable_events: None,
            events_topic_prefix: None,
            allow_anonymous: Some(true),
        })
        .unwrap();
        assert_eq!(call.body, Some(json!({"name":"n","allow_anonymous":true})));
        assert_eq!(call.path, "/hubs/x");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
