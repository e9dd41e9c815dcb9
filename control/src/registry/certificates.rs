//! The registry's certificate rules: hub CAs (managed or custom), device certificates
//! (issued, renewed, or set by the user), auto-provisioning, and the CAs the binary loads
//! at start.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;

use iothub_model::{DeviceId, HubId};

use super::error::invalid;
use super::{Attempt, DeviceInfo, HubInfo, Registry, RegistryError, UPDATE_ATTEMPTS};
use crate::pki::{self, DeviceCredentials};
use crate::records::{
    AccountRecord, DeviceCertificateRecord, DeviceRecord, DeviceStatus, HubCaRecord, HubRecord,
    HubStatus, MessageFilters,
};
use crate::store::StoreError;
use crate::time::Timestamp;
use crate::validate;

const CA_HELP: &str = "send the PEM of your CA certificate (basicConstraints CA:TRUE, allowed to sign certificates, currently valid)";
const CERTIFICATE_HELP: &str = "send the PEM of one currently valid leaf certificate usable for TLS client authentication (self-signed or signed by your CA)";

fn challenge_help(hub: HubId) -> String {
    format!(
        "sign a certificate whose common name is the hub id {hub} with the key of the CA in ca_cert_pem, and send its PEM"
    )
}

impl Registry {
    /// The CA of `hub`, made now when the hub has none yet (hubs created before
    /// certificates existed), in which case the runtime is told.
    pub(super) async fn ensure_hub_ca(
        &self,
        hub: &HubRecord,
    ) -> Result<HubCaRecord, RegistryError> {
        if let Some(ca) = self.store.get_hub_ca(hub.id).await? {
            return Ok(ca);
        }
        if hub.has_custom_ca {
            return Err(StoreError::Corrupt {
                table: "hub_cas",
                column: "hub_id",
                value: hub.id.to_string(),
                reason: "the hub has a custom CA but no CA is stored".into(),
            }
            .into());
        }
        let now = Timestamp::now();
        let generated = pki::generate_hub_ca(hub.id, now)?;
        let ca = HubCaRecord {
            hub_id: hub.id,
            cert_pem: generated.cert_pem,
            key_pem: Some(generated.key_pem),
            is_custom: false,
            created_at: now,
        };
        match self.store.insert_hub_ca(&ca).await {
            Ok(()) => {
                tracing::info!(message = "made the CA of a hub that had none", hub_id = %hub.id);
                self.runtime.hub_ca_upserted(hub.id, &ca.cert_pem, false);
                Ok(ca)
            }
            // Made at the same instant by another request: theirs is the CA.
            Err(StoreError::Duplicate { .. }) => {
                self.store
                    .get_hub_ca(hub.id)
                    .await?
                    .ok_or_else(|| RegistryError::NotFound {
                        resource: "hub",
                        id: hub.id.to_string(),
                    })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A new key and certificate for `device` from a managed CA.
    pub(super) fn issue(
        ca: &HubCaRecord,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<(DeviceCredentials, DeviceCertificateRecord), RegistryError> {
        let Some(key) = ca.key_pem.as_deref() else {
            return Err(RegistryError::FailedPrecondition {
                message: format!(
                    "hub {} has a custom CA, whose key the hub never holds: it issues no certificates",
                    ca.hub_id
                ),
            });
        };
        let issued = pki::issue_device_certificate(&ca.cert_pem, key, device, now)?;
        let record = DeviceCertificateRecord {
            device_id: device,
            cert_pem: issued.credentials.crt.clone(),
            fingerprint_sha256: issued.fingerprint_sha256,
            is_custom: false,
            not_after: issued.not_after,
            created_at: now,
        };
        Ok((issued.credentials, record))
    }

    /// The PEM of a hub's CA (managed or custom), which devices' certificates chain to.
    pub async fn get_hub_ca(
        &self,
        caller: &AccountRecord,
        id: HubId,
    ) -> Result<String, RegistryError> {
        let hub = self.hub_of(caller, id).await?;
        Ok(self.ensure_hub_ca(&hub).await?.cert_pem)
    }

    /// Installs a custom CA on a disabled hub, proven by `challenge_cert_pem` (CN = the
    /// hub id, signed by the CA). There is no way back to a managed CA (its key is
    /// dropped); another custom CA may replace this one, again only while the hub is
    /// disabled. Every device certificate of the hub is deleted: devices then present a
    /// chain to the custom CA and are identified by CN = device name.
    pub async fn set_hub_ca(
        &self,
        caller: &AccountRecord,
        id: HubId,
        ca_cert_pem: &str,
        challenge_cert_pem: &str,
        if_version: Option<i64>,
    ) -> Result<HubInfo, RegistryError> {
        let (hub, ca, devices) = retry_raced!("hub", id, if_version, {
            let hub = self.hub_of(caller, id).await?;
            Self::check_version("hub", &id, if_version, hub.version)?;
            if hub.enabled || hub.status != HubStatus::Disabled {
                return Err(RegistryError::FailedPrecondition {
                    message: format!("hub {id} must be disabled before its CA changes"),
                });
            }
            let now = Timestamp::now();
            let checked =
                pki::check_custom_ca(ca_cert_pem, challenge_cert_pem, id, now).map_err(|e| {
                    let help = match e.field {
                        "challenge_cert_pem" => challenge_help(id),
                        _ => CA_HELP.to_owned(),
                    };
                    invalid(e.field, e.error.to_string(), help)
                })?;
            let next = HubRecord {
                has_custom_ca: true,
                updated_at: now,
                ..hub.clone()
            };
            let ca = HubCaRecord {
                hub_id: id,
                cert_pem: checked.cert_pem,
                key_pem: None,
                is_custom: true,
                created_at: now,
            };
            match self.store.set_hub_ca(&next, hub.version, &ca).await {
                Ok((stored, devices)) => Ok(Attempt::Done((stored, ca, devices))),
                Err(StoreError::VersionConflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e.into()),
            }
        });
        self.runtime.hub_upserted(&hub);
        self.runtime.hub_ca_upserted(id, &ca.cert_pem, true);
        for device in devices {
            if let Some(device) = self.store.get_device(device).await? {
                self.runtime.device_upserted(&device);
            }
        }
        self.hub_info(hub).await
    }

    /// A new key and certificate for a device of a hub without a custom CA. The old
    /// certificate stops working at once (the runtime hears of the new fingerprint).
    pub async fn renew_device_certificate(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        if_version: Option<i64>,
    ) -> Result<(DeviceInfo, DeviceCredentials), RegistryError> {
        let (stored, credentials) = retry_raced!("device", id, if_version, {
            let device = self.device_of(caller, id).await?;
            Self::check_version("device", &id, if_version, device.version)?;
            let hub = self.device_hub(caller, &device).await?;
            if hub.has_custom_ca {
                return Err(RegistryError::FailedPrecondition {
                    message: format!(
                        "hub {} has a custom CA, so it issues no certificates: sign the device's certificate with your CA (CN = the device name {:?})",
                        hub.id, device.name
                    ),
                });
            }
            let ca = self.ensure_hub_ca(&hub).await?;
            let now = Timestamp::now();
            let (credentials, certificate) = Self::issue(&ca, id, now)?;
            let version = device.version;
            let next = DeviceRecord {
                updated_at: now,
                ..device
            };
            match self
                .store
                .replace_device_certificate(&next, version, &certificate)
                .await
            {
                Ok(stored) => Ok(Attempt::Done((stored, credentials))),
                Err(StoreError::VersionConflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e.into()),
            }
        });
        self.runtime.device_upserted(&stored);
        Ok((self.device_info(stored), credentials))
    }

    /// Pins a device to a certificate of the user's (self-signed or from their CA): the
    /// device is then identified by exactly that certificate, and its previous one stops
    /// working at once. Answers the certificate as stored (one normalised PEM block).
    pub async fn set_device_certificate(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
        certificate_pem: &str,
        if_version: Option<i64>,
    ) -> Result<(DeviceInfo, String), RegistryError> {
        let checked = pki::check_device_certificate(certificate_pem, Timestamp::now())
            .map_err(|e| invalid("certificate_pem", e.to_string(), CERTIFICATE_HELP))?;
        let stored = retry_raced!("device", id, if_version, {
            let device = self.device_of(caller, id).await?;
            Self::check_version("device", &id, if_version, device.version)?;
            let now = Timestamp::now();
            let certificate = DeviceCertificateRecord {
                device_id: id,
                cert_pem: checked.cert_pem.clone(),
                fingerprint_sha256: checked.info.fingerprint_sha256.clone(),
                is_custom: true,
                not_after: checked.info.not_after,
                created_at: now,
            };
            let version = device.version;
            let next = DeviceRecord {
                updated_at: now,
                ..device
            };
            match self
                .store
                .replace_device_certificate(&next, version, &certificate)
                .await
            {
                Ok(stored) => Ok(Attempt::Done(stored)),
                Err(StoreError::VersionConflict { .. }) => Ok(Attempt::Raced),
                Err(e) => Err(e.into()),
            }
        });
        self.runtime.device_upserted(&stored);
        Ok((self.device_info(stored), checked.cert_pem))
    }

    /// A device's current certificate (PEM); `NotFound` (resource `device certificate`)
    /// when it has none (devices of a hub with a custom CA, until one is set).
    pub async fn get_device_certificate(
        &self,
        caller: &AccountRecord,
        id: DeviceId,
    ) -> Result<(DeviceInfo, String), RegistryError> {
        let device = self.device_of(caller, id).await?;
        let certificate = self
            .store
            .get_device_certificate(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                resource: "device certificate",
                id: id.to_string(),
            })?;
        Ok((self.device_info(device), certificate.cert_pem))
    }

    /// The hub of a device the caller owns (its absence is the device's).
    async fn device_hub(
        &self,
        caller: &AccountRecord,
        device: &DeviceRecord,
    ) -> Result<HubRecord, RegistryError> {
        self.hub_of(caller, device.hub_id)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound { .. } => RegistryError::NotFound {
                    resource: "device",
                    id: device.id.to_string(),
                },
                other => other,
            })
    }

    /// Creates the device a client certificate names, for the TLS listener: `hub` must
    /// have a custom CA (which verified the chain) and auto-provisioning on, and be
    /// enabled. The device is named `common_name`, described as auto-provisioned from
    /// `source_address`, with no message filters, `allow_insecure` and
    /// `allow_multiple_connections` off (the certificate is one physical device); the
    /// hub's device quota applies. When a device of that name exists already (two first
    /// connections at once), that device is the answer.
    pub async fn auto_provision(
        &self,
        hub_id: HubId,
        common_name: &str,
        source_address: IpAddr,
    ) -> Result<DeviceRecord, RegistryError> {
        let hub = self
            .store
            .get_hub(hub_id)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                resource: "hub",
                id: hub_id.to_string(),
            })?;
        if !hub.has_custom_ca || !hub.enable_device_auto_provisioning {
            return Err(RegistryError::FailedPrecondition {
                message: format!(
                    "hub {hub_id} does not auto-provision devices (it needs a custom CA and enable_device_auto_provisioning)"
                ),
            });
        }
        if !hub.enabled {
            return Err(RegistryError::FailedPrecondition {
                message: format!("hub {hub_id} is disabled"),
            });
        }
        if common_name.is_empty() {
            return Err(invalid(
                "common_name",
                "the certificate has no common name (CN)",
                "issue device certificates with CN = the device name",
            ));
        }
        validate::topic_safe_name("common_name", common_name)?;
        if let Some(existing) = self.store.find_device_by_name(hub_id, common_name).await? {
            return Ok(existing);
        }
        let now = Timestamp::now();
        let device = DeviceRecord {
            id: DeviceId::new_random(),
            hub_id,
            account_id: hub.account_id,
            name: common_name.to_owned(),
            description: format!("auto-provisioned from {source_address}"),
            status: DeviceStatus::Enabled,
            allow_insecure: false,
            allow_multiple_connections: false,
            message_filters: MessageFilters::default(),
            has_custom_certificate: false,
            certificate_fingerprint: None,
            last_activity_at: Timestamp::EPOCH,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        match self
            .store
            .insert_device(&device, None, self.config.quotas.devices_per_hub)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Duplicate { .. }) => {
                if let Some(existing) = self.store.find_device_by_name(hub_id, common_name).await? {
                    return Ok(existing);
                }
                return Err(RegistryError::Conflict {
                    resource: "device",
                    id: common_name.chars().take(64).collect(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(message = "device auto-provisioned", hub_id = %hub_id, device_id = %device.id, name = common_name, %source_address);
        self.runtime.device_upserted(&device);
        Ok(device)
    }

    /// Every hub's CA, for the binary to give the TLS listener at start. A hub without one
    /// (created before certificates existed) gets its managed CA now.
    pub async fn all_hub_cas(&self) -> Result<Vec<HubCaRecord>, RegistryError> {
        let mut cas: BTreeMap<HubId, HubCaRecord> = self
            .store
            .list_hub_cas()
            .await?
            .into_iter()
            .map(|ca| (ca.hub_id, ca))
            .collect();
        for hub in self.all_hubs().await? {
            if let Entry::Vacant(slot) = cas.entry(hub.id) {
                match self.ensure_hub_ca(&hub).await {
                    Ok(ca) => {
                        slot.insert(ca);
                    }
                    // Deleted since it was listed.
                    Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(cas.into_values().collect())
    }
}
