use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; the maximum is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} must not contain the NUL character")]
    Nul { kind: &'static str },
    #[error("{kind} {value:?} is not a UUID")]
    NotUuid { kind: &'static str, value: String },
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A hub: one isolated MQTT namespace with its own devices, routes and networks.
    HubId,
    "hub id"
);
uuid_id!(
    /// A registered device of a hub.
    DeviceId,
    "device id"
);

uuid_id!(
    /// An account: the owner of hubs and API keys (the reference's organization/project).
    AccountId,
    "account id"
);
uuid_id!(
    /// A route of a hub: messages matching its topic go to an outside target.
    RouteId,
    "route id"
);
uuid_id!(
    /// A device-unaware network of a hub (REST, SigFox, LoRaWAN ingress).
    NetworkId,
    "network id"
);
uuid_id!(
    /// The public half of an API key (its "access key"). The secret half is the token a
    /// client sends in `X-Auth-Token`; only its hash is stored.
    ApiKeyId,
    "api key id"
);

/// An MQTT client identifier: 1 to 65535 bytes of UTF-8 without NUL. Cheap to clone
/// (shared), because sessions, queues and events all hold it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub const MAX_LEN: usize = 65_535;

    pub fn new(s: &str) -> Result<Self, IdError> {
        const KIND: &str = "client id";
        if s.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                kind: KIND,
                len: s.len(),
                max: Self::MAX_LEN,
            });
        }
        if s.contains('\0') {
            return Err(IdError::Nul { kind: KIND });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", &*self.0)
    }
}

impl From<DeviceId> for ClientId {
    /// A device's client id is its device id (DESIGN.md, identity).
    fn from(id: DeviceId) -> Self {
        Self(Arc::from(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_validation() {
        assert!(ClientId::new("sensor-1").is_ok());
        assert_eq!(ClientId::new(""), Err(IdError::Empty { kind: "client id" }));
        assert_eq!(
            ClientId::new("a\0b"),
            Err(IdError::Nul { kind: "client id" })
        );
        let long = "x".repeat(ClientId::MAX_LEN + 1);
        assert!(matches!(
            ClientId::new(&long),
            Err(IdError::TooLong { len: 65_536, .. })
        ));
    }

    #[test]
    fn uuid_ids_parse_and_print() {
        let id: HubId = "0b2c7a5e-1f44-4c1b-9a53-3f0c2d1e6a11".parse().unwrap();
        assert_eq!(id.to_string(), "0b2c7a5e-1f44-4c1b-9a53-3f0c2d1e6a11");
        let err = "nope".parse::<DeviceId>().unwrap_err();
        assert_eq!(err.to_string(), "device id \"nope\" is not a UUID");
        let device = DeviceId::new_random();
        assert_eq!(ClientId::from(device).as_str(), device.to_string());
    }
}
