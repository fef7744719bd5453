//! The daemon's CNI service: the unix socket `evio-cni` forwards kubelet's requests to.
//! One JSON request line in, one JSON reply out, per connection. Concurrent requests run
//! concurrently (requests for the same attachment in turn), each within the dataplane's
//! deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use evio_cni::dataplane::{netlink, Limits, PodNetwork};
use evio_cni::spec::{
    code, version_result, CniError, Command, Plugin, Reply, Request, LATEST_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// evio-ipam's reservations, under the data dir.
pub const IPAM_DIR: &str = "ipam";

/// Requests are small JSON documents; anything bigger is refused.
const MAX_REQUEST: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("CNI socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI service: {0}")]
    Netlink(#[from] netlink::NetlinkError),
}

pub struct CniService {
    path: PathBuf,
    listener: UnixListener,
    pods: Arc<PodNetwork>,
}

impl CniService {
    /// Binds the socket (replacing a stale one left by a crash), owner-only, with the
    /// dataplane's request deadline and OVSDB timeout; evio-ipam keeps its reservations
    /// under `ipam_dir`.
    pub fn bind(path: &Path, limits: Limits, ipam_dir: PathBuf) -> Result<Self, ServiceError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let err = |source| ServiceError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(path).map_err(err)?;
            }
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            pods: Arc::new(PodNetwork::with_limits(limits)?.with_ipam_dir(ipam_dir)),
        })
    }

    /// The pod networking behind the socket (its attachments are `GET /v1/node/pods`; the
    /// daemon hands evio-ipam the node's blocks through it).
    pub fn pods(&self) -> Arc<PodNetwork> {
        self.pods.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the task is dropped or aborted.
    pub async fn run(self) {
        match self.pods.adopt_attached().await {
            Ok(0) => {}
            Ok(found) => tracing::info!(found, "pod interfaces attached before this start"),
            Err(e) => tracing::warn!(error = %e, "cannot list the pod interfaces already attached"),
        }
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "CNI socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let pods = self.pods.clone();
            tokio::spawn(async move { serve_one(stream, &pods).await });
        }
    }
}

impl Drop for CniService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(mut stream: UnixStream, pods: &PodNetwork) {
    let mut bytes = Vec::new();
    let reply = match (&mut stream)
        .take(MAX_REQUEST)
        .read_to_end(&mut bytes)
        .await
    {
        Err(e) => Reply::Error(
            CniError::new(LATEST_VERSION, code::IO_FAILURE, "reading the request")
                .with_details(e.to_string()),
        ),
        Ok(_) => match serde_json::from_slice::<Request>(&bytes) {
            Err(e) => Reply::Error(
                CniError::new(
                    LATEST_VERSION,
                    code::DECODE_FAILURE,
                    "unreadable request from evio-cni",
                )
                .with_details(e.to_string()),
            ),
            Ok(request) => dispatch(pods, &request).await,
        },
    };
    let out = serde_json::to_vec(&reply).unwrap_or_default();
    if let Err(e) = stream.write_all(&out).await {
        tracing::warn!(error = %e, "CNI reply could not be sent");
    }
}

async fn dispatch(pods: &PodNetwork, request: &Request) -> Reply {
    let started = std::time::Instant::now();
    let outcome = match request.command {
        Command::Version => Ok(version_result(
            &serde_json::to_vec(&request.config).unwrap_or_default(),
        )),
        _ if request.plugin == Plugin::EvioIpam => pods.ipam(request).await,
        Command::Add => pods.add(request).await,
        Command::Del => pods.del(request).await,
        Command::Check => pods.check(request).await,
        Command::Status => pods.status(request).await,
        Command::Gc => pods.gc(request).await,
    };
    match &outcome {
        Ok(_) => {
            tracing::info!(command = ?request.command, plugin = ?request.plugin, container = %request.container_id, ifname = %request.ifname, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "CNI request done")
        }
        Err(e) => {
            tracing::warn!(command = ?request.command, plugin = ?request.plugin, container = %request.container_id, code = e.code, error = %e.msg, details = %e.details, "CNI request failed")
        }
    }
    match outcome {
        Ok(value) => Reply::Ok(value),
        Err(e) => Reply::Error(e),
    }
}

/// Keeps evio-ipam's blocks equal to this node's lease (none while it holds none).
pub async fn follow_lease(
    replica: Arc<evio_raft::Replica>,
    pods: Arc<PodNetwork>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut metrics = replica.watch_applied();
    let node = replica.node().name.clone();
    loop {
        let blocks: Vec<ipnetwork::IpNetwork> = replica
            .local()
            .read()
            .table
            .get(&node)
            .map(|lease| lease.subnets())
            .unwrap_or_default();
        if blocks != pods.allocator().node_blocks() {
            tracing::info!(?blocks, "evio-ipam allocates from this node's block");
            pods.allocator().set_node_blocks(blocks);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
