//! MQTT over WebSocket (MQTT 5 §6, MQTT 3.1.1 §6): the `ws` and `wss` listeners.
//!
//! A connection is a TCP socket (wrapped in TLS for wss, by our own rustls acceptor — the
//! WebSocket library never sees TLS), then an HTTP upgrade, then binary WebSocket messages that
//! carry the MQTT byte stream. [`WsIo`] turns the message stream back into a byte stream, so
//! the same [`connection::run`](crate::connection::run) as TCP serves it: WebSocket message
//! boundaries mean nothing to MQTT (one packet may span several messages, one message may
//! hold several packets [MQTT-6.0.0-2]).
//!
//! The upgrade is accepted only on the path [`WS_PATH`] and only when the client offers the
//! `mqtt` subprotocol [MQTT-6.0.0-3]; the answer then selects it [MQTT-6.0.0-4]. Anything else
//! gets an HTTP error and no MQTT session is ever created. The TLS and WebSocket handshakes
//! together must finish within the listener's connect timeout, like the CONNECT on TCP.
//!
//! wss shares the TLS listeners' [`TlsContext`]: the same server certificate and client
//! verification, and a client certificate identifies the device exactly as on the TLS port
//! ([`tls::identify`](crate::tls::identify)); without one, only devices that allow insecure
//! connections and anonymous clients get in.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use iothub_engine::Engine;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ListenerSettings;
use crate::connection::{self, Transport};
use crate::tls::{self, PeerCertificate, TlsContext};
use crate::tls_trust::TlsError;

/// The only HTTP path that upgrades to MQTT (the reference product's and most clients' default).
pub const WS_PATH: &str = "/mqtt";
/// The WebSocket subprotocol a client must offer and that the answer selects.
pub const SUBPROTOCOL: &str = "mqtt";
/// Read buffer per connection: small, since most devices send little; tungstenite grows it
/// for a larger message.
const READ_BUFFER: usize = 8 * 1024;

/// Why an upgrade request was refused: the HTTP status and a reason for the client and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefusal {
    #[error("not found: MQTT over WebSocket is served on {WS_PATH}")]
    WrongPath,
    #[error("the client must offer the WebSocket subprotocol \"mqtt\" (Sec-WebSocket-Protocol)")]
    NoMqttSubprotocol,
}

impl UpgradeRefusal {
    pub fn status(self) -> StatusCode {
        match self {
            UpgradeRefusal::WrongPath => StatusCode::NOT_FOUND,
            UpgradeRefusal::NoMqttSubprotocol => StatusCode::BAD_REQUEST,
        }
    }
}

/// Decides an upgrade from its path and every `Sec-WebSocket-Protocol` header value (each a
/// comma-separated list of tokens; subprotocol names are case-sensitive, RFC 6455 §4.1).
pub fn check_upgrade<'a>(
    path: &str,
    offered: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), UpgradeRefusal> {
    if path != WS_PATH {
        return Err(UpgradeRefusal::WrongPath);
    }
    let offers_mqtt = offered.into_iter().any(|value| {
        value
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii() == SUBPROTOCOL.as_bytes())
    });
    if offers_mqtt {
        Ok(())
    } else {
        Err(UpgradeRefusal::NoMqttSubprotocol)
    }
}

/// What a wss listener adds to a ws one: the TLS acceptor and the identification of devices
/// by their client certificates.
#[derive(Clone)]
pub struct WssTls {
    acceptor: TlsAcceptor,
    context: TlsContext,
}

impl WssTls {
    /// The acceptor uses the shared trust's configuration (server certificate and client
    /// verifier follow its updates) with ALPN `http/1.1`: the upgrade is an HTTP/1.1 request,
    /// and a browser that offers `h2` as well must not be told to speak HTTP/2.
    pub fn new(context: TlsContext) -> Result<Self, TlsError> {
        let config = context.trust.server_config(&[b"http/1.1"])?;
        Ok(Self {
            acceptor: TlsAcceptor::from(config),
            context,
        })
    }
}

/// The WebSocket limits for a listener: a message may not exceed the largest MQTT packet by
/// more than a little (a message may hold a packet and the start of the next one); writes go
/// out at once, since the connection task already batches them.
fn ws_config(max_packet_size: u32) -> WebSocketConfig {
    let max = usize::try_from(max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    config.write_buffer_size = 0;
    config.max_message_size = Some(max);
    config.max_frame_size = Some(max);
    config
}

/// Accepts WebSocket connections until `stop` is cancelled: plain `ws` when `tls` is `None`,
/// `wss` otherwise. Each connection runs on `tracker`; its handshakes happen there too, so a
/// slow or hostile client never holds up the accept loop.
pub async fn serve_ws(
    listener: TcpListener,
    tls: Option<WssTls>,
    engine: Engine,
    settings: ListenerSettings,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let settings = Arc::new(settings);
    let transport = Transport::new(if tls.is_some() { "wss" } else { "ws" }, &settings.name);
    let config = ws_config(settings.max_packet_size);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(message = "cannot set TCP_NODELAY", %peer, %e);
                    }
                    tracker.spawn(accept_one(
                        stream,
                        peer,
                        tls.clone(),
                        config,
                        engine.clone(),
                        settings.clone(),
                        transport.clone(),
                    ));
                }
                Err(e) => {
                    warn!(message = "accept failed", listener = %settings.name, %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn accept_one(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<WssTls>,
    config: WebSocketConfig,
    engine: Engine,
    settings: Arc<ListenerSettings>,
    transport: Transport,
) {
    let timeout = settings.connect_timeout;
    match tls {
        None => {
            let Ok(upgraded) = tokio::time::timeout(timeout, upgrade(stream, peer, config)).await
            else {
                debug!(message = "WebSocket handshake not finished in time; closing", %peer);
                return;
            };
            if let Some(ws) = upgraded {
                connection::run(WsIo::new(ws), peer, engine, settings, transport).await;
            }
        }
        Some(wss) => {
            let handshakes = async {
                let stream = match wss.acceptor.accept(stream).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        match tls::handshake_failure(&e) {
                            tls::HandshakeFailure::Certificate(refusal) => {
                                info!(message = "TLS handshake refused: client certificate", listener = %settings.name, %peer, reason = %refusal);
                            }
                            other => {
                                debug!(message = "TLS handshake failed", listener = %settings.name, %peer, reason = other.label(), error = %e);
                            }
                        }
                        return None;
                    }
                };
                // Identified after the upgrade: a refused upgrade must not auto-provision a
                // device.
                let ws = upgrade(stream, peer, config).await?;
                let chain = ws.get_ref().get_ref().1.peer_certificates();
                let certificate: PeerCertificate =
                    tls::identify(&wss.context, &engine, chain, peer).await;
                Some((ws, certificate))
            };
            let Ok(upgraded) = tokio::time::timeout(timeout, handshakes).await else {
                debug!(message = "TLS or WebSocket handshake not finished in time; closing", %peer);
                return;
            };
            if let Some((ws, certificate)) = upgraded {
                connection::run_with_certificate(
                    WsIo::new(ws),
                    peer,
                    engine,
                    settings,
                    transport,
                    certificate,
                )
                .await;
            }
        }
    }
}

/// Runs the HTTP upgrade; `None` (logged) when it is refused or fails.
// The callback's error type (a whole HTTP response) is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    config: WebSocketConfig,
) -> Option<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut refused = None;
    let callback = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .map(HeaderValue::as_bytes);
        match check_upgrade(request.uri().path(), offered) {
            Ok(()) => {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(SUBPROTOCOL),
                );
                Ok(response)
            }
            Err(why) => {
                refused = Some(why);
                Err(error_response(why))
            }
        }
    };
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await {
        Ok(ws) => Some(ws),
        Err(e) => {
            match refused {
                Some(why) => debug!(message = "WebSocket upgrade refused", %peer, reason = %why),
                None => debug!(message = "WebSocket handshake failed", %peer, error = %e),
            }
            None
        }
    }
}

fn error_response(why: UpgradeRefusal) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{why}\n")));
    *response.status_mut() = why.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An MQTT byte stream over a WebSocket: reads concatenate the payloads of binary messages,
/// each write is sent as one binary message.
///
/// A text message is a protocol violation [MQTT-6.0.0-1] and reads as an `InvalidData` error,
/// which closes the connection like any malformed input. Pings are answered by tungstenite;
/// a close message reads as end of stream.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> AsyncRead for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                // End of stream (the peer's close handshake, or the connection is gone).
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message; MQTT travels in binary messages only",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn upgrade_needs_the_path_and_the_mqtt_subprotocol() {
        type Case = (
            &'static str,
            &'static [&'static str],
            Result<(), UpgradeRefusal>,
        );
        let cases: &[Case] = &[
            ("/mqtt", &["mqtt"], Ok(())),
            ("/mqtt", &["mqttv3.1, mqtt"], Ok(())),
            ("/mqtt", &["foo", " mqtt "], Ok(())),
            ("/mqtt", &[], Err(UpgradeRefusal::NoMqttSubprotocol)),
            (
                "/mqtt",
                &["mqttv3.1"],
                Err(UpgradeRefusal::NoMqttSubprotocol),
            ),
            ("/mqtt", &["MQTT"], Err(UpgradeRefusal::NoMqttSubprotocol)),
            (
                "/mqtt",
                &["mqtt-x,xmqtt"],
                Err(UpgradeRefusal::NoMqttSubprotocol),
            ),
            ("/", &["mqtt"], Err(UpgradeRefusal::WrongPath)),
            ("/mqtt/", &["mqtt"], Err(UpgradeRefusal::WrongPath)),
            ("/MQTT", &["mqtt"], Err(UpgradeRefusal::WrongPath)),
        ];
        for (path, offered, want) in cases {
            let got = check_upgrade(path, offered.iter().map(|s| s.as_bytes()));
            assert_eq!(got, *want, "{path} {offered:?}");
        }
    }

    #[test]
    fn refusals_are_client_errors() {
        for why in [UpgradeRefusal::WrongPath, UpgradeRefusal::NoMqttSubprotocol] {
            let response = error_response(why);
            assert!(response.status().is_client_error(), "{why:?}");
            assert!(
                response
                    .body()
                    .as_deref()
                    .is_some_and(|b| b.contains(&why.to_string())),
                "{why:?}"
            );
        }
    }

    /// A server `WsIo` and the raw client-side WebSocket, joined in memory.
    async fn pair() -> (WsIo<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (WsIo::new(server), client)
    }

    #[tokio::test]
    async fn message_boundaries_do_not_matter() {
        use futures_util::SinkExt;
        // (messages the client sends, reads of this size on the server) -> the bytes read.
        let cases: &[(&[&[u8]], usize)] = &[
            (&[b"\x10\x02ab"], 64),
            (&[b"\x10", b"\x02a", b"b"], 64),
            (&[b"\x10\x02ab\xc0\x00"], 64),
            (&[b"\x10\x02ab\xc0\x00"], 1),
            (&[b"", b"\x10\x02", b"", b"ab"], 3),
        ];
        for (messages, chunk) in cases {
            let (mut server, mut client) = pair().await;
            let mut want = Vec::new();
            for m in *messages {
                want.extend_from_slice(m);
                client
                    .send(Message::Binary(Bytes::copy_from_slice(m)))
                    .await
                    .unwrap();
            }
            let mut got = vec![0u8; want.len()];
            let mut at = 0;
            while at < want.len() {
                let end = (at + chunk).min(want.len());
                let n = server.read(&mut got[at..end]).await.unwrap();
                assert!(n > 0, "early end of stream in {messages:?}");
                at += n;
            }
            assert_eq!(got, want, "{messages:?} read by {chunk}");
        }
    }

    #[tokio::test]
    async fn writes_are_binary_messages_and_close_ends_the_stream() {
        use futures_util::{SinkExt, StreamExt};
        let (mut server, mut client) = pair().await;
        server.write_all(b"\x20\x02\x00\x00").await.unwrap();
        server.flush().await.unwrap();
        let got = client.next().await.unwrap().unwrap();
        assert_eq!(
            got,
            Message::Binary(Bytes::from_static(b"\x20\x02\x00\x00"))
        );
        // A ping in between is not data.
        client.send(Message::Ping(Bytes::new())).await.unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"\xe0\x00")))
            .await
            .unwrap();
        client.close(None).await.unwrap();
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"\xe0\x00");
    }

    #[tokio::test]
    async fn a_text_message_is_an_error() {
        use futures_util::SinkExt;
        let (mut server, mut client) = pair().await;
        client.send(Message::text("\u{10}")).await.unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
