//! Opening the control plane at start: the data directory, the registry database and its
//! migrations, the admin account of a first start, and loading every stored hub, device and
//! hub CA into the runtime (the engine, and the TLS listeners' trust).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use iothub_control::registry::RegistryConfig;
use iothub_control::{Registry, Runtime, SqlStore, Store};
use tracing::info;

use crate::config::Config;

/// File in the data directory that holds the admin API key created at the first start.
pub const ADMIN_KEY_FILE: &str = "admin-api-key";

/// Opens the registry and loads its hubs, devices and hub CAs into `runtime`. Fails (and
/// the hub does not start) when the database cannot be opened or migrated.
pub async fn open(config: &Config, runtime: Arc<dyn Runtime>) -> anyhow::Result<Arc<Registry>> {
    create_private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let url = config.store_url();
    let shown = redact(&url);
    let store = SqlStore::open(&url)
        .await
        .with_context(|| format!("cannot open the registry database {shown}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the registry database {shown}"))?;
    let registry = Arc::new(Registry::new(
        Arc::new(store),
        runtime.clone(),
        RegistryConfig {
            region: config.api.region.clone(),
            quotas: config.quotas.clone(),
        },
    ));
    if let Some((account, key)) = registry
        .bootstrap_admin()
        .await
        .context("cannot create the admin account")?
    {
        let path = config.data_dir.join(ADMIN_KEY_FILE);
        write_private_file(&path, &key)
            .with_context(|| format!("cannot write the admin API key to {}", path.display()))?;
        info!(
            "first start: created the admin account {} with the API key {key} \
             (shown once; also written to {}, mode 0600)",
            account.id,
            path.display()
        );
    }
    let hubs = registry.all_hubs().await.context("loading hubs")?;
    for hub in &hubs {
        runtime.hub_upserted(hub);
    }
    let devices = registry.all_devices().await.context("loading devices")?;
    for device in &devices {
        runtime.device_upserted(device);
    }
    // Every hub's CA (made now for hubs older than certificates), so TLS handshakes trust
    // them before the first listener accepts.
    let cas = registry.all_hub_cas().await.context("loading hub CAs")?;
    for ca in &cas {
        runtime.hub_ca_upserted(ca.hub_id, &ca.cert_pem, ca.is_custom);
    }
    let networks = registry.all_networks().await.context("loading networks")?;
    for network in &networks {
        runtime.network_upserted(network);
    }
    let lorawan = registry
        .all_lorawan_devices()
        .await
        .context("loading LoRaWAN devices")?;
    for device in &lorawan {
        runtime.lorawan_device_upserted(device);
    }
    registry
        .finish_interrupted_transitions()
        .await
        .context("completing interrupted hub transitions")?;
    info!(
        "registry {shown}: {} hubs, {} devices",
        hubs.len(),
        devices.len()
    );
    Ok(registry)
}

/// Starts the stored routes. Called once the durable state is restored (`serve`): a route's
/// tap is journaled like a persistent session, so it must find its restored session (and
/// the messages acknowledged to publishers before a crash) rather than open a new one that
/// would make the restore drop the old.
pub async fn start_routes(registry: &Registry, runtime: &dyn Runtime) -> anyhow::Result<()> {
    let routes = registry.all_routes().await.context("loading routes")?;
    for route in &routes {
        runtime.route_upserted(route);
    }
    if !routes.is_empty() {
        info!("{} routes loaded", routes.len());
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, shown) in [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "sqlite://data/iothub.db?mode=rwc",
                "sqlite://data/iothub.db?mode=rwc",
            ),
        ] {
            assert_eq!(redact(url), shown);
        }
    }
}
