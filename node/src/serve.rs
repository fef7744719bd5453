//! Serving a member's HTTP API until a shutdown signal, then stopping Raft cleanly.

use std::sync::Arc;

use evio_raft::Replica;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Ctrl-C (SIGINT) and SIGTERM (what kubelet sends to stop a pod), registered once at start
/// so a signal arriving at any moment afterwards is kept until someone waits for it.
pub struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves when either signal has arrived (now or since `install`).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        tracing::info!("shutting down");
    }
}

/// Spawns the API server on `listener` with the listener limits (header-read timeout,
/// connection caps with a share reserved for the members, loopback exempt); it stops accepting
/// when `shutdown` resolves.
pub fn spawn_api(
    listener: TcpListener,
    replica: Arc<Replica>,
    options: evio_api::ApiOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let app = evio_api::router(replica.clone(), options);
    let tls = replica.peers().tls().cloned();
    let classify = evio_api::listener::loopback_exempt_members_reserved(replica);
    tokio::spawn(evio_api::serve(
        listener,
        app,
        evio_api::ServeLimits::default(),
        classify,
        tls,
        shutdown,
    ))
}

/// Binds the API listener; the error names the `--listen` value.
pub async fn bind(listen: &str) -> anyhow::Result<(TcpListener, std::net::SocketAddr)> {
    use anyhow::Context;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on --listen {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    Ok((listener, addr))
}

/// Serves until a shutdown signal (Ok) or until the API server dies (the error says how).
pub async fn until_signal(
    signals: &mut ShutdownSignals,
    server: &mut tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = signals.recv() => Ok(()),
        result = server => Err(match result {
            Ok(Ok(())) => anyhow::anyhow!("the API server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the API server failed"),
            Err(e) => anyhow::Error::new(e).context("the API server task failed"),
        }),
    }
}
