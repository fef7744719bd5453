//! The API listener: hyper's HTTP/1 server with the limits that keep a client without
//! credentials from holding resources (issue 14 item 1).
//!
//! - Header-read timeout: a connection that has not sent a complete request head within
//!   [`ServeLimits::header_read_timeout`] is closed. Hyper arms the same timer while a
//!   keep-alive connection waits for its next request, so it is the idle timeout too.
//! - Connection caps: connections from trusted addresses (loopback, i.e. the local CLI, and
//!   the cluster's members, i.e. Raft peers) count against their own reserved share, so a
//!   flood from anywhere else cannot lock them out. Beyond its cap a connection is closed
//!   at once.
//! - Per-route body limits and request timeouts are tower layers on the router
//!   ([`crate::server`]), not here.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of the API listener.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Time to send a complete request head (and the longest a keep-alive connection idles).
    pub header_read_timeout: Duration,
    /// Open connections from addresses that are not trusted.
    pub max_connections: usize,
    /// Open connections from trusted addresses (loopback and members), reserved for them.
    pub max_trusted_connections: usize,
    /// How long in-flight requests get to finish at shutdown.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_trusted_connections: 256,
            drain: Duration::from_secs(5),
        }
    }
}

/// Decides whether a client address gets the reserved share of connections.
pub type Trusted = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Trusts loopback only (the local CLI and tests).
pub fn loopback_only() -> Trusted {
    Arc::new(|ip: IpAddr| ip.is_loopback())
}

/// Trusts loopback and the address of every member in `replica`'s membership (Raft peers).
pub fn loopback_and_members(replica: Arc<evio_raft::Replica>) -> Trusted {
    Arc::new(move |ip: IpAddr| {
        ip.is_loopback()
            || replica
                .metrics()
                .membership_config
                .membership()
                .nodes()
                .any(|(_, node)| member_ip(&node.addr) == Some(ip))
    })
}

/// The IP of a member's `host:port` address (`None` for a name, which never matches).
fn member_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (at most `limits.drain`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    trusted: Trusted,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let general = Arc::new(Semaphore::new(limits.max_connections));
    let reserved = Arc::new(Semaphore::new(limits.max_trusted_connections));
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
        let pool = if trusted(peer.ip()) {
            &reserved
        } else {
            &general
        };
        let Ok(permit) = pool.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; closing the new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
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
