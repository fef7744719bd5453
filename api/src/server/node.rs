//! This member's node: `GET /v1/node` (lease, CNI, etcd mirror, Kubernetes integration) and
//! `GET /v1/node/pods` (pods attached through its CNI socket). What only the daemon knows
//! comes through [`NodeProvider`], so this crate needs none of the CNI or Kubernetes code.

use std::future::Future;
use std::pin::Pin;

use axum::extract::State;
use axum::Json;

use super::cluster::etcd_mirror_now;
use super::errors::ApiError;
use super::ApiState;
use crate::types::{
    CniJson, ErrorBody, ErrorCode, KubernetesJson, LeaseJson, NodeJson, NodePodsJson, PodJson,
};

/// Why the attached pods could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("listing the attached pods: {0}")]
pub struct PodsError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

pub type PodsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<PodJson>, PodsError>> + Send + 'a>>;

/// What the daemon beside the API knows about its node.
pub trait NodeProvider: Send + Sync {
    /// The CNI socket served, if any.
    fn cni_socket(&self) -> Option<String>;
    /// The pod interfaces attached through it, sorted; local work only (no network).
    fn pods(&self) -> PodsFuture<'_>;
    /// The Kubernetes integration's state (`enabled: false` without `--kubernetes`).
    fn kubernetes(&self) -> KubernetesJson;
}

#[utoipa::path(get, path = "/v1/node", tag = "node",
    responses((status = 200, description = "this member: its lease (local replica), CNI socket, etcd mirror and Kubernetes integration", body = NodeJson),
        (status = 401, description = "`unauthorized` (with --auth-reads)", body = ErrorBody)))]
pub(super) async fn node(State(state): State<ApiState>) -> Json<NodeJson> {
    let replica = &state.replica;
    let me = replica.node();
    let lease = replica.local().read().table.get(&me.name);
    let provider = state.options.node.as_deref();
    Json(NodeJson {
        node_id: replica.node_id(),
        node_name: me.name.clone(),
        addr: me.addr.clone(),
        lease: lease.as_ref().map(LeaseJson::from),
        cni: CniJson {
            socket: provider.and_then(NodeProvider::cni_socket),
            enabled: provider.is_some_and(|p| p.cni_socket().is_some()),
        },
        etcd_mirror: etcd_mirror_now(&state),
        kubernetes: provider.map(NodeProvider::kubernetes).unwrap_or_default(),
    })
}

#[utoipa::path(get, path = "/v1/node/pods", tag = "node",
    responses((status = 200, description = "the pod interfaces attached through this node's CNI socket", body = NodePodsJson),
        (status = 401, description = "`unauthorized` (with --auth-reads)", body = ErrorBody),
        (status = 500, description = "`internal`: the host's links could not be listed", body = ErrorBody)))]
pub(super) async fn pods(State(state): State<ApiState>) -> Result<Json<NodePodsJson>, ApiError> {
    let node_name = state.replica.node().name.clone();
    let Some(provider) = state.options.node.as_deref() else {
        return Ok(Json(NodePodsJson {
            node_name,
            cni: false,
            pods: Vec::new(),
        }));
    };
    let pods = provider
        .pods()
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(NodePodsJson {
        node_name,
        cni: provider.cni_socket().is_some(),
        pods,
    }))
}
