//! Serving a member's HTTP API until a shutdown signal, then stopping Raft cleanly.

use std::sync::Arc;

use evio_raft::Replica;
use tokio::net::TcpListener;

/// Resolves on Ctrl-C or SIGTERM (what kubelet sends to stop a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Spawns the API server on `listener`; it stops accepting when `shutdown` resolves.
pub fn spawn_api(
    listener: TcpListener,
    replica: Arc<Replica>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let app = evio_api::router(replica);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    })
}
