//! Ids of the control plane's own records. Hub and device ids come from `iothub-model`
//! because the engine knows them too; accounts, routes, networks and API keys exist only
//! here.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use iothub_model::IdError;

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
