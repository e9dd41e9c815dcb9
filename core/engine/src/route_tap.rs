//! The engine side of routes (issue 7): a route reads its hub's messages through a session
//! of its own, its *tap*, opened with [`Engine::connect_route`]. The tap subscribes like a
//! client (the trie does the matching, the session queue and its bound apply, QoS 1
//! messages stay inflight until the route acknowledges them, which it does once they are in
//! its durable queue), but it is not a client: it has no message filters, it is admitted on
//! any hub (also one without anonymous clients), it is not a device (the API's connected
//! device counts never see it), live changes of anonymous clients never end it, and no
//! client may take its client id ([`ROUTE_CLIENT_PREFIX`]).
//!
//! What the route publishes back goes through the same session, so a No Local
//! subscription keeps those messages from coming back to it. Events about the route
//! (`<prefix>/error/route/<route-id>`) are the runtime's to skip: the engine publishes
//! events as the hub, not as the route.

use iothub_model::{ClientId, HubId};

use crate::engine::{ConnectError, ConnectRequest, Connected, Engine, Identity};

/// Client ids starting with this belong to route taps; clients are refused them
/// (`ConnectError::ClientIdInvalid`).
pub const ROUTE_CLIENT_PREFIX: &str = "$route/";

/// Who a CONNECT admits: a client as [`Engine::resolve_client`] named it, or a route tap.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Admit {
    Client(Identity),
    Route,
}

impl Engine {
    /// Opens the tap of route `route` (its id, e.g. a UUID) on `hub`: a clean session with
    /// client id `$route/<route>` that ends with the returned [`Connected::session`]. An
    /// earlier tap of the same route is taken over. Refused only for an unknown or disabled
    /// hub (the caller retries while the hub is disabled).
    pub fn connect_route(
        &self,
        hub: HubId,
        route: &str,
        receive_maximum: u16,
    ) -> Result<Connected, ConnectError> {
        let client_id = ClientId::new(&format!("{ROUTE_CLIENT_PREFIX}{route}"))
            .map_err(|_| ConnectError::ClientIdInvalid)?;
        let hub = self.hub(hub).ok_or(ConnectError::UnknownHub)?;
        hub.connect(
            Admit::Route,
            ConnectRequest {
                hub: hub.id,
                client_id: Some(client_id),
                clean_start: true,
                session_expiry_secs: 0,
                receive_maximum,
                will: None,
            },
        )
    }
}
