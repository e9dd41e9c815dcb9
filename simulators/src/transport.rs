//! MQTT over every transport the hub listens on: TCP, TLS (mutual TLS with a device's
//! certificate), WebSocket (`ws` and `wss`, path `/mqtt`, subprotocol `mqtt`) and QUIC (ALPN
//! `mqtt`, one bidirectional stream per MQTT connection). Each gives a byte stream that
//! [`Client::handshake`] runs MQTT over, so the protocol code is the same on all of them.
//!
//! TLS uses rustls with ring only (the workspace rule), trusting the PEM CA given (the hub's
//! `server-ca`) and presenting the device's certificate when it has one.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::client::{Client, ClientError, ClientOptions};

/// A transport the hub listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
    Quic,
}

impl Transport {
    /// Every transport, in the order the fleet assigns them.
    pub const ALL: [Transport; 5] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
        Transport::Quic,
    ];

    /// Its lowercase name (`tcp`, `tls`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Quic => "quic",
        }
    }

    /// Does a device on this transport present a client certificate? Plain TCP and ws carry
    /// no certificate, so their devices must allow insecure connections.
    #[must_use]
    pub fn uses_certificate(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Quic)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Transport::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown transport {s:?}: expected tcp, tls, ws, wss or quic"))
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no address given for the {0} listener")]
    NoAddress(Transport),
    #[error("{0} needs the server CA (--server-ca, or the API's server-ca)")]
    NoServerCa(Transport),
    #[error("invalid server CA PEM: {0}")]
    ServerCa(String),
    #[error("invalid client certificate or key: {0}")]
    ClientCert(String),
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{transport} connection to {addr}: {source}")]
    Io {
        transport: Transport,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("WebSocket handshake with {addr}: {reason}")]
    WebSocket { addr: SocketAddr, reason: String },
    #[error("QUIC connection to {addr}: {reason}")]
    Quic { addr: SocketAddr, reason: String },
    #[error("MQTT over {transport}: {source}")]
    Mqtt {
        transport: Transport,
        source: ClientError,
    },
}

/// Where the hub's listeners are and how to trust its server certificate.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    /// The name the server certificate must carry (`localhost` for the generated one).
    pub server_name: String,
    /// PEM of the CA that signed the server certificate.
    pub server_ca_pem: Option<String>,
}

impl Listeners {
    /// The address of `transport`'s listener.
    pub fn addr(&self, transport: Transport) -> Result<SocketAddr, TransportError> {
        match transport {
            Transport::Tcp => self.tcp,
            Transport::Tls => self.tls,
            Transport::Ws => self.ws,
            Transport::Wss => self.wss,
            Transport::Quic => self.quic,
        }
        .ok_or(TransportError::NoAddress(transport))
    }
}

/// A device's client certificate chain and private key (PEM).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What every transport's stream is: bytes in both directions.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An MQTT client over any transport.
pub type AnyClient = Client<Box<dyn Io>>;

/// Opens `transport` to the hub and performs the MQTT CONNECT, presenting `identity` on the
/// TLS-based transports when given.
pub async fn connect(
    transport: Transport,
    listeners: &Listeners,
    identity: Option<&ClientIdentity>,
    options: &ClientOptions,
) -> Result<AnyClient, TransportError> {
    let addr = listeners.addr(transport)?;
    let io_err = |source| TransportError::Io {
        transport,
        addr,
        source,
    };
    let stream: Box<dyn Io> = match transport {
        Transport::Tcp => Box::new(tcp(addr, options).await.map_err(io_err)?),
        Transport::Tls => {
            let tcp = tcp(addr, options).await.map_err(io_err)?;
            Box::new(tls(transport, listeners, identity, tcp, addr).await?)
        }
        Transport::Ws => {
            let tcp = tcp(addr, options).await.map_err(io_err)?;
            Box::new(websocket("ws", addr, tcp).await?)
        }
        Transport::Wss => {
            let tcp = tcp(addr, options).await.map_err(io_err)?;
            let tls = tls(transport, listeners, identity, tcp, addr).await?;
            Box::new(websocket("wss", addr, tls).await?)
        }
        Transport::Quic => Box::new(quic(listeners, identity, addr).await?),
    };
    Client::handshake(stream, options)
        .await
        .map_err(|source| TransportError::Mqtt { transport, source })
}

async fn tcp(addr: SocketAddr, options: &ClientOptions) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A rustls client configuration (ring) trusting the server CA and presenting `identity`.
fn client_config(
    transport: Transport,
    listeners: &Listeners,
    identity: Option<&ClientIdentity>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TransportError> {
    let ca = listeners
        .server_ca_pem
        .as_deref()
        .ok_or(TransportError::NoServerCa(transport))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let cert = cert.map_err(|e| TransportError::ServerCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TransportError::ServerCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TransportError::ServerCa("no certificate in it".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| TransportError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TransportError::ClientCert(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .map_err(|e| TransportError::ClientCert(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TransportError::ClientCert(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

async fn tls(
    transport: Transport,
    listeners: &Listeners,
    identity: Option<&ClientIdentity>,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransportError> {
    let config = client_config(transport, listeners, identity, &[])?;
    let name = ServerName::try_from(listeners.server_name.clone())
        .map_err(|_| TransportError::ServerName(listeners.server_name.clone()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| TransportError::Io {
            transport,
            addr,
            source,
        })
}

async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    scheme: &str,
    addr: SocketAddr,
    stream: S,
) -> Result<WsStream<S>, TransportError> {
    let ws_err = |reason: String| TransportError::WebSocket { addr, reason };
    let mut request = format!("{scheme}://{addr}/mqtt")
        .into_client_request()
        .map_err(|e| ws_err(e.to_string()))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| ws_err(e.to_string()))?;
    Ok(WsStream {
        ws,
        read: Bytes::new(),
    })
}

async fn quic(
    listeners: &Listeners,
    identity: Option<&ClientIdentity>,
    addr: SocketAddr,
) -> Result<QuicStream, TransportError> {
    let quic_err = |reason: String| TransportError::Quic { addr, reason };
    let config = client_config(Transport::Quic, listeners, identity, &[b"mqtt"])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|e| quic_err(e.to_string()))?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(local).map_err(|e| quic_err(e.to_string()))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(addr, &listeners.server_name)
        .map_err(|e| quic_err(e.to_string()))?
        .await
        .map_err(|e| quic_err(e.to_string()))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| quic_err(e.to_string()))?;
    Ok(QuicStream {
        io: tokio::io::join(recv, send),
        _connection: connection,
        _endpoint: endpoint,
    })
}

/// One MQTT connection on a QUIC bidirectional stream; holds the connection and endpoint so
/// they live as long as the stream.
struct QuicStream {
    io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
    _connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A WebSocket as a byte stream: each write is one binary message, reads concatenate the
/// binary messages received (MQTT packets may span or share messages, MQTT-6.0.0-2).
struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary message not yet read.
    read: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.read = data,
                // End of stream: a read of zero bytes.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // tungstenite answers pings itself; text is not MQTT.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_by_name_and_unknown_ones_are_refused() {
        for t in Transport::ALL {
            assert_eq!(t.name().parse::<Transport>(), Ok(t));
        }
        let err = "udp".parse::<Transport>().unwrap_err();
        assert!(err.contains("udp") && err.contains("quic"), "{err}");
    }

    #[test]
    fn a_missing_listener_or_ca_is_named() {
        let listeners = Listeners::default();
        assert!(matches!(
            listeners.addr(Transport::Quic),
            Err(TransportError::NoAddress(Transport::Quic))
        ));
        assert!(matches!(
            client_config(Transport::Tls, &listeners, None, &[]),
            Err(TransportError::NoServerCa(Transport::Tls))
        ));
        let bad = Listeners {
            server_ca_pem: Some("not a pem".into()),
            ..Listeners::default()
        };
        assert!(matches!(
            client_config(Transport::Tls, &bad, None, &[]),
            Err(TransportError::ServerCa(_))
        ));
    }
}
