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

use iothub_model::{ClientId, HubId, Plan};

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
    /// Opens the tap of route `route` (its id, e.g. a UUID) on `hub`, client id
    /// `$route/<route>`; an earlier connection of the same tap is taken over. With `resume`,
    /// the session outlives its connection and, with a journal, is journaled like a client's
    /// persistent session (so the PUBACK of a message routed to it waits until its queue
    /// entry is durable, and [`Engine::restore`] brings the tap back offline after a crash):
    /// a tap that was kicked (hub disabled, server stopping, the process killed) gets back
    /// what was queued for it and its unacknowledged messages again (the route's queue may
    /// then hold duplicates: at least once); without it (and always on the shared plan,
    /// which has no persistent sessions) the session is new and ends with the connection,
    /// which is how a deleted route's tap is ended (its journaled state is ended with it). Refused only for an unknown or disabled
    /// hub (the caller retries while the hub is disabled).
    pub fn connect_route(
        &self,
        hub: HubId,
        route: &str,
        receive_maximum: u16,
        resume: bool,
    ) -> Result<Connected, ConnectError> {
        let client_id = ClientId::new(&format!("{ROUTE_CLIENT_PREFIX}{route}"))
            .map_err(|_| ConnectError::ClientIdInvalid)?;
        let hub = self.hub(hub).ok_or(ConnectError::UnknownHub)?;
        let keep = resume && hub.config().plan != Plan::Shared;
        hub.connect(
            Admit::Route,
            ConnectRequest {
                hub: hub.id,
                client_id: Some(client_id),
                clean_start: !keep,
                session_expiry_secs: if keep { u32::MAX } else { 0 },
                receive_maximum,
                will: None,
            },
        )
    }
}
