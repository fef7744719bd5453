//! Kubernetes integration (`evio-node run --kubernetes`, `--join-from-kubernetes`):
//!
//! - [`bootstrap`]: a create-if-absent ConfigMap decides the one node that creates the cluster;
//! - [`annotate`]: this node's Node object carries its pod subnet and evio's API address;
//! - [`peers`]: other members found through those annotations, for joining;
//! - [`node_gc`]: the Raft leader returns the leases of deleted Nodes to the pool.
//!
//! Kubernetes is otherwise only a hint source: nothing here blocks the daemon or a lease grant
//! (only a node that is not yet a member waits for the cluster record).

pub mod annotate;
pub mod bootstrap;
pub mod node_gc;
pub mod peers;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use evio_api::KubernetesJson;

use crate::daemon::backoff::Backoff;

/// The Node annotation holding this node's pod subnet (`10.244.3.0/24`).
pub const POD_SUBNET_ANNOTATION: &str = "evio.io/pod-subnet";
/// The Node annotation holding every family's pod subnet of this node, IPv4 first
/// (`10.244.3.0/24,fd00:10:244:3::/64`); on an IPv6-only network `pod-subnet` is the IPv6 one.
pub const POD_SUBNETS_ANNOTATION: &str = "evio.io/pod-subnets";
/// The Node annotation holding evio's API address (`host:port`, what peers dial).
pub const API_ADDRESS_ANNOTATION: &str = "evio.io/api-address";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration found (in-cluster service account, $KUBECONFIG or ~/.kube/config); pass --kubeconfig")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// A client from `kubeconfig` when given, else in-cluster (service account) or $KUBECONFIG /
/// ~/.kube/config, as `kube::Config::infer` finds them.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await?,
    };
    kube::Client::try_from(config).map_err(KubeError::Client)
}

/// The integration's state as `GET /v1/node` shows it, written by [`annotate`] and
/// [`node_gc`].
#[derive(Clone, Default)]
pub struct KubeStatus(Arc<RwLock<KubernetesJson>>);

impl KubeStatus {
    pub fn enabled(node_name: &str) -> Self {
        Self(Arc::new(RwLock::new(KubernetesJson {
            enabled: true,
            node_name: Some(node_name.to_string()),
            ..KubernetesJson::default()
        })))
    }

    pub fn get(&self) -> KubernetesJson {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut KubernetesJson)) {
        change(&mut self.0.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records a failed Kubernetes call (`what` failed: `error`).
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.update(|s| {
            s.errors += 1;
            s.last_error = Some(format!("{what}: {error}"));
            s.last_error_at = Some(evio_api::types::rfc3339(std::time::SystemTime::now()));
        });
    }
}

/// Retrying Kubernetes calls: 500 ms doubling to 30 s.
pub const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
