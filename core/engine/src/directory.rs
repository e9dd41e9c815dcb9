//! The device directory: what the registry tells the engine about each device, and the
//! admission decision of [`crate::Engine::resolve_client`].
//!
//! The directory is one map behind a read-write lock (with an index by hub and name, for
//! certificates that name a device by its name), shared by the engine (which writes it on
//! administration) and every hub (which reads it under its session lock at CONNECT, so a
//! CONNECT racing with a live change either sees the change or is seen by it). Records are
//! immutable `Arc`s, replaced whole.

use std::collections::HashMap;
use std::sync::Arc;

use iothub_model::{ClientId, DeviceId, FilterError, HubId, MessageFilters, TemplateVars};
use parking_lot::RwLock;
use uuid::Uuid;

use crate::certificate::{CertificateFingerprint, CertificateProof, VerifiedCertificate};
use crate::engine::{ConnectError, Identity};
use crate::state::SessionFilters;

/// A device, as the registry pushes it into the engine ([`crate::Engine::upsert_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub id: DeviceId,
    pub hub: HubId,
    /// Unique in its hub; `{{ device.name }}` in filters.
    pub name: String,
    /// A disabled device is refused at CONNECT (`DeviceDisabled`).
    pub enabled: bool,
    /// May connect without a client certificate (client id or username = device id).
    pub allow_insecure: bool,
    /// Several connections at once, each with its own session (dedicated and HA plans);
    /// otherwise a new connection takes the session over.
    pub allow_multiple_connections: bool,
    pub filters: MessageFilters,
    /// The device's current registered certificate (issued by the hub's managed CA, or a
    /// custom one pinned to it), if any. Only this certificate identifies the device as
    /// [`CertificateProof::Registered`]; when it changes (renewed, replaced, removed) the
    /// device's live connections are closed.
    pub certificate_fingerprint: Option<CertificateFingerprint>,
}

/// What a CONNECT presents to identify itself ([`crate::Engine::resolve_client`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// As sent; may be empty.
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    /// No password, or an empty one.
    pub password_is_empty: bool,
    /// The device a verified client certificate names, and how; TLS listeners (and wss,
    /// QUIC) fill it, plain ones pass `None`.
    pub certificate: Option<VerifiedCertificate>,
}

/// One device's record in the engine.
#[derive(Debug, Clone)]
pub(crate) struct DeviceEntry {
    pub(crate) hub: HubId,
    pub(crate) name: String,
    /// The device id as a client id, made once so CONNECT does not format it.
    pub(crate) client_id: ClientId,
    pub(crate) enabled: bool,
    pub(crate) allow_insecure: bool,
    pub(crate) allow_multiple_connections: bool,
    /// As registered, for re-expansion when the hub is renamed.
    pub(crate) raw_filters: MessageFilters,
    pub(crate) filters: SessionFilters,
    pub(crate) certificate_fingerprint: Option<CertificateFingerprint>,
    /// Increases with every change of any device (see `Inner::admitted`).
    pub(crate) version: u64,
}

/// The devices by id, and by hub and name.
#[derive(Default)]
pub(crate) struct Devices {
    by_id: HashMap<DeviceId, Arc<DeviceEntry>>,
    /// Names are unique in a hub (the registry enforces it); kept in step with `by_id`.
    by_name: HashMap<HubId, HashMap<String, DeviceId>>,
}

impl Devices {
    pub(crate) fn get(&self, id: &DeviceId) -> Option<&Arc<DeviceEntry>> {
        self.by_id.get(id)
    }

    pub(crate) fn by_name(&self, hub: HubId, name: &str) -> Option<DeviceId> {
        self.by_name.get(&hub)?.get(name).copied()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&DeviceId, &Arc<DeviceEntry>)> {
        self.by_id.iter()
    }

    /// Inserts or replaces a device; returns the record it replaced.
    pub(crate) fn insert(
        &mut self,
        id: DeviceId,
        entry: Arc<DeviceEntry>,
    ) -> Option<Arc<DeviceEntry>> {
        self.by_name
            .entry(entry.hub)
            .or_default()
            .insert(entry.name.clone(), id);
        let old = self.by_id.insert(id, entry);
        if let Some(old) = &old {
            let current = &self.by_id[&id];
            if old.hub != current.hub || old.name != current.name {
                self.unindex(id, old);
            }
        }
        old
    }

    pub(crate) fn remove(&mut self, id: &DeviceId) -> Option<Arc<DeviceEntry>> {
        let old = self.by_id.remove(id)?;
        self.unindex(*id, &old);
        Some(old)
    }

    /// Forgets `old`'s name, unless another device took it since.
    fn unindex(&mut self, id: DeviceId, old: &DeviceEntry) {
        if let Some(names) = self.by_name.get_mut(&old.hub) {
            if names.get(&old.name) == Some(&id) {
                names.remove(&old.name);
            }
            if names.is_empty() {
                self.by_name.remove(&old.hub);
            }
        }
    }
}

pub(crate) type Directory = RwLock<Devices>;

fn expand(
    filters: &MessageFilters,
    id: DeviceId,
    hub: HubId,
    hub_name: &str,
    name: &str,
) -> Result<SessionFilters, FilterError> {
    if filters.is_open() {
        return Ok(SessionFilters::default());
    }
    let device_id = id.to_string();
    let vars = TemplateVars {
        hub_id: hub,
        hub_name,
        device_id: &device_id,
        device_name: name,
    };
    Ok(SessionFilters::new(filters.expand(&vars)?))
}

impl DeviceEntry {
    pub(crate) fn new(spec: DeviceSpec, hub_name: &str, version: u64) -> Result<Self, FilterError> {
        let filters = expand(&spec.filters, spec.id, spec.hub, hub_name, &spec.name)?;
        Ok(Self {
            hub: spec.hub,
            client_id: ClientId::from(spec.id),
            name: spec.name,
            enabled: spec.enabled,
            allow_insecure: spec.allow_insecure,
            allow_multiple_connections: spec.allow_multiple_connections,
            raw_filters: spec.filters,
            filters,
            certificate_fingerprint: spec.certificate_fingerprint,
            version,
        })
    }

    /// The same device after its hub was renamed to `hub_name`.
    pub(crate) fn renamed(
        &self,
        id: DeviceId,
        hub_name: &str,
        version: u64,
    ) -> Result<Self, FilterError> {
        let filters = expand(&self.raw_filters, id, self.hub, hub_name, &self.name)?;
        Ok(Self {
            filters,
            version,
            ..self.clone()
        })
    }

    /// Whether a client that proved to be device `id` with `certificate` may send
    /// `client_id` (its session's client id is the device id either way): empty, the
    /// device id, or, for a device its hub's own CA names by its name, that name (firmware
    /// that knows its certificate's CN but not the id the hub gave the device).
    pub(crate) fn certificate_client_id(
        &self,
        id: DeviceId,
        certificate: &CertificateProof,
        client_id: &str,
    ) -> bool {
        client_id.is_empty()
            || parse_uuid(client_id) == Some(*id.as_uuid())
            || (*certificate == CertificateProof::HubCa && client_id == self.name)
    }

    /// The admission rules of a device: enabled, and a certificate unless insecure is
    /// allowed; a registered certificate must be the device's current one.
    pub(crate) fn admit(&self, certificate: Option<&CertificateProof>) -> Result<(), ConnectError> {
        if !self.enabled {
            return Err(ConnectError::DeviceDisabled);
        }
        match certificate {
            None if !self.allow_insecure => Err(ConnectError::MutualTlsRequired),
            Some(CertificateProof::Registered(fp))
                if self.certificate_fingerprint.as_ref() != Some(fp) =>
            {
                Err(ConnectError::CertificateNotCurrent)
            }
            _ => Ok(()),
        }
    }
}

/// Parses a UUID without allocating; `None` for anything else.
pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    // Only the hyphenated form: a client id is compared as the text of the device id.
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// Steps 1–3 of [`crate::Engine::resolve_client`]: `None` when the client is not a device.
pub(crate) fn resolve(
    directory: &Directory,
    credentials: &Credentials<'_>,
) -> Option<Result<(HubId, Identity), ConnectError>> {
    let devices = directory.read();
    let device = |id: DeviceId, certificate: Option<CertificateProof>| {
        let entry = devices.get(&id)?;
        Some(
            entry
                .admit(certificate.as_ref())
                .map(|()| (entry.hub, Identity::Device { id, certificate })),
        )
    };
    if let Some(cert) = credentials.certificate {
        if let Some(entry) = devices.get(&cert.device) {
            // A certificate of hub A never opens a session on hub B.
            if entry.hub != cert.hub {
                return Some(Err(ConnectError::CertificateOtherHub));
            }
            if !entry.certificate_client_id(cert.device, &cert.proof, credentials.client_id) {
                return Some(Err(ConnectError::ClientIdInvalid));
            }
        }
        return Some(
            device(cert.device, Some(cert.proof)).unwrap_or(Err(ConnectError::NotAuthorized)),
        );
    }
    if let Some(uuid) = parse_uuid(credentials.client_id)
        && let Some(found) = device(DeviceId::from_uuid(uuid), None)
    {
        return Some(found);
    }
    if credentials.password_is_empty
        && let Some(uuid) = credentials.username.and_then(parse_uuid)
        && let Some(found) = device(DeviceId::from_uuid(uuid), None)
    {
        return Some(found);
    }
    None
}

/// Whom a refused CONNECT's credentials name among the devices (see
/// [`crate::Engine::refusal_subject`]): the device and its hub, or, for a certificate of a
/// device the engine does not know, the hub whose CA verified it.
pub(crate) fn subject(
    directory: &Directory,
    credentials: &Credentials<'_>,
) -> Option<(HubId, Option<DeviceId>)> {
    let devices = directory.read();
    let known = |id: DeviceId| devices.get(&id).map(|e| (e.hub, Some(id)));
    if let Some(cert) = credentials.certificate {
        return known(cert.device).or(Some((cert.hub, None)));
    }
    let by_client_id =
        parse_uuid(credentials.client_id).and_then(|u| known(DeviceId::from_uuid(u)));
    by_client_id.or_else(|| {
        credentials
            .username
            .and_then(parse_uuid)
            .and_then(|u| known(DeviceId::from_uuid(u)))
    })
}
