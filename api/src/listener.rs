//! The API listener: hyper's HTTP/1 server with the limits that keep a client without
//! credentials from holding resources (issue 14 item 1).
//!
//! - Header-read timeout: a connection that has not sent a complete request head within
//!   [`ServeLimits::header_read_timeout`] is closed. Hyper arms the same timer while a
//!   keep-alive connection waits for its next request, so it is the idle timeout too.
//! - Connection caps: connections from the cluster's members (Raft peers, forwarding) count
//!   against a share reserved for them, so a flood from anywhere else cannot lock them out;
//!   loopback (the local CLI, probes) is exempt from the caps, so a flood from loopback
//!   cannot lock the CLI out either (it is bounded by the header-read timeout and the fd
//!   limit). Beyond its cap a connection is closed at once.
//! - TLS: with a [`TlsContext`] every connection must start a TLS 1.3 handshake within the
//!   header-read timeout (a plaintext request gets a 400 saying so, then the connection is
//!   closed); the client certificate's identity is put on each request ([`TlsPeer`]).
//! - Per-route body limits and request timeouts are tower layers on the router
//!   ([`crate::server`]), not here.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use evio_raft::tls::{peer_identity, TlsContext, TlsPeer};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Limits of the API listener.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Time to send a complete request head (and the longest a keep-alive connection idles).
    pub header_read_timeout: Duration,
    /// Open connections from other addresses.
    pub max_connections: usize,
    /// Open connections from members, reserved for them.
    pub max_peer_connections: usize,
    /// How long in-flight requests get to finish at shutdown.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_peer_connections: 256,
            drain: Duration::from_secs(5),
        }
    }
}

/// Which connection budget a client address draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not counted (loopback: the local CLI and probes).
    Exempt,
    /// The share reserved for members.
    Peer,
    /// Everyone else.
    Other,
}

/// Classifies a client address.
pub type Classify = Arc<dyn Fn(IpAddr) -> Admission + Send + Sync>;

/// Loopback exempt, everyone else counted (tests without members).
pub fn loopback_exempt() -> Classify {
    Arc::new(|ip: IpAddr| {
        if ip.is_loopback() {
            Admission::Exempt
        } else {
            Admission::Other
        }
    })
}

/// Loopback exempt; the address of every member in `replica`'s membership gets the peers'
/// share.
pub fn loopback_exempt_members_reserved(replica: Arc<evio_raft::Replica>) -> Classify {
    Arc::new(move |ip: IpAddr| {
        if ip.is_loopback() {
            return Admission::Exempt;
        }
        let is_member = replica
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .any(|(_, node)| member_ip(&node.addr) == Some(ip));
        if is_member {
            Admission::Peer
        } else {
            Admission::Other
        }
    })
}

/// The IP of a member's `host:port` address (`None` for a name, which never matches).
fn member_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// What a plaintext HTTP request to a TLS port gets before the connection is closed.
const TLS_REQUIRED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 92\r\n\r\n{\"error\":\"this evio API speaks TLS: use https:// (plaintext refused)\",\"code\":\"tls_required\"}";

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (at most `limits.drain`). With `tls`, only TLS is spoken.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    classify: Classify,
    tls: Option<Arc<TlsContext>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let general = Arc::new(Semaphore::new(limits.max_connections));
    let reserved = Arc::new(Semaphore::new(limits.max_peer_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of fds or similar: the caps above keep this rare; back off a little
                    // instead of spinning.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match classify(peer.ip()) {
            Admission::Exempt => Some(None),
            Admission::Peer => reserved.clone().try_acquire_owned().ok().map(Some),
            Admission::Other => general.clone().try_acquire_owned().ok().map(Some),
        };
        let Some(permit) = permit else {
            tracing::debug!(%peer, "connection cap reached; closing the new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls.clone() else {
            let service = TowerToHyperService::new(app.clone());
            let connection =
                graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "API connection ended");
                }
                drop(permit);
            });
            continue;
        };
        // The handshake runs in the connection's task (bounded by the header-read timeout),
        // so a slow client never holds up the accept loop.
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let Some((stream, identity)) =
                tokio::time::timeout(timeout, handshake(stream, &tls, peer))
                    .await
                    .ok()
                    .flatten()
            else {
                drop(permit);
                return;
            };
            let service = tower::ServiceBuilder::new()
                .map_request(move |mut request: axum::http::Request<_>| {
                    request.extensions_mut().insert(TlsPeer(identity.clone()));
                    request
                })
                .service(app);
            let service = TowerToHyperService::new(service);
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("API connections still open after the drain time; closing them");
    }
    Ok(())
}

/// Accepts TLS on `stream`; `None` (logged) when the client spoke plaintext or the
/// handshake failed (unknown CA, expired certificate, ...).
async fn handshake(
    mut stream: TcpStream,
    tls: &TlsContext,
    peer: std::net::SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<evio_raft::tls::PeerIdentity>,
)> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1..) if first[0] == TLS_HANDSHAKE => {}
        Ok(1..) => {
            tracing::warn!(%peer, "refused a plaintext connection: this API speaks TLS");
            let _ = stream.write_all(TLS_REQUIRED).await;
            let _ = stream.shutdown().await;
            return None;
        }
        _ => return None,
    }
    let config = match tls.server_config() {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused a TLS connection: no certificate to serve yet");
            return None;
        }
    };
    match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
        Ok(stream) => {
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(peer_identity);
            Some((stream, identity))
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused a TLS connection: handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_exempt_and_others_are_counted() {
        let classify = loopback_exempt();
        for ip in ["127.0.0.1", "127.0.0.2", "::1"] {
            let ip: IpAddr = ip
                .parse()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            assert_eq!(classify(ip), Admission::Exempt, "{ip}");
        }
        assert_eq!(
            classify(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 3, 7))),
            Admission::Other
        );
        assert_eq!(
            member_ip("10.10.0.2:7700"),
            Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 10, 0, 2)))
        );
        assert_eq!(member_ip("edge-2:7700"), None);
    }
}
