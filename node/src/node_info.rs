//! What this daemon tells `GET /v1/node` and `GET /v1/node/pods` about its node: the CNI
//! socket and the pods attached through it, and the Kubernetes integration's state.

use std::path::PathBuf;
use std::sync::Arc;

use evio_api::{KubernetesJson, NodeProvider, PodJson, PodsError, PodsFuture};
use evio_cni::dataplane::PodNetwork;

use crate::kube::KubeStatus;

pub struct NodeInfo {
    pub cni_socket: PathBuf,
    pub pods: Arc<PodNetwork>,
    /// Absent without `--kubernetes`.
    pub kubernetes: Option<KubeStatus>,
}

impl NodeProvider for NodeInfo {
    fn cni_socket(&self) -> Option<String> {
        Some(self.cni_socket.display().to_string())
    }

    fn pods(&self) -> PodsFuture<'_> {
        Box::pin(async move {
            let attached = self
                .pods
                .attached()
                .await
                .map_err(|e| PodsError(Box::new(e)))?;
            Ok(attached
                .into_iter()
                .map(|pod| PodJson {
                    container_id: pod.container_id,
                    interface: pod.ifname,
                    network: pod.network,
                    addresses: pod.addresses,
                    host_interface: pod.host_veth,
                    attached_at: pod.attached_at.map(evio_api::types::rfc3339),
                })
                .collect())
        })
    }

    fn kubernetes(&self) -> KubernetesJson {
        self.kubernetes
            .as_ref()
            .map(KubeStatus::get)
            .unwrap_or_default()
    }
}
