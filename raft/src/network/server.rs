//! The server side of Raft RPC: axum routes that hand each request to the local openraft
//! and send its result back as JSON for the caller's openraft to interpret (a stopped
//! Raft's fatal error included). The API router mounts [`router`] behind its token check.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::de::DeserializeOwned;

use super::{
    decode_snapshot_chunk, APPEND_PATH, CLUSTER_HEADER, RPC_BODY_LIMIT, SNAPSHOT_PATH,
    TARGET_HEADER, VOTE_PATH,
};
use crate::replica::Replica;
use crate::types::{NodeId, TypeConfig, Vote};

/// Why a Raft RPC was not handed to openraft. Answered as the API's JSON error body
/// `{error, code}`.
#[derive(Debug, thiserror::Error)]
pub enum RpcRefusal {
    #[error("invalid {what} body: {source}")]
    InvalidBody {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid install-snapshot body: {0}")]
    InvalidChunk(#[from] super::ChunkError),
    #[error("this is node {me}, the RPC is for node {target:?}")]
    WrongNode { me: NodeId, target: Option<String> },
    #[error("this member belongs to cluster {ours}, the request to {theirs:?}")]
    ClusterMismatch {
        ours: String,
        theirs: Option<String>,
    },
}

impl RpcRefusal {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RpcRefusal::InvalidBody { .. } | RpcRefusal::InvalidChunk(_) => {
                (StatusCode::BAD_REQUEST, "invalid_body")
            }
            RpcRefusal::WrongNode { .. } => (StatusCode::MISDIRECTED_REQUEST, "wrong_node"),
            RpcRefusal::ClusterMismatch { .. } => (StatusCode::FORBIDDEN, "cluster_mismatch"),
        }
    }
}

impl IntoResponse for RpcRefusal {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": self.to_string(), "code": code });
        (status, Json(body)).into_response()
    }
}

/// The Raft RPC routes, for any outer router state. Authentication is the caller's: the
/// API checks the cluster token on every path under [`super::PATH_PREFIX`].
pub fn router<S>(replica: Arc<Replica>) -> Router<S> {
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route_layer(middleware::from_fn_with_state(
            replica.clone(),
            same_cluster,
        ))
        .layer(DefaultBodyLimit::max(RPC_BODY_LIMIT))
        .with_state(replica)
}

/// Raft RPC from another cluster (or from a sender that does not say) is refused once this
/// member knows its own cluster; RPC meant for another node id (this address used to belong
/// to a member that is gone) is refused always.
async fn same_cluster(
    State(replica): State<Arc<Replica>>,
    request: Request,
    next: Next,
) -> Response {
    let target = header(&request, TARGET_HEADER);
    let theirs = header(&request, CLUSTER_HEADER);
    let me = replica.node_id();
    if target.as_deref() != Some(me.to_string().as_str()) {
        tracing::debug!(?target, me, "refused Raft RPC meant for another node");
        return RpcRefusal::WrongNode { me, target }.into_response();
    }
    if let Some(ours) = replica.cluster_id() {
        if theirs.as_deref() != Some(ours.as_str()) {
            tracing::warn!(ours, theirs, "refused Raft RPC from another cluster");
            return RpcRefusal::ClusterMismatch { ours, theirs }.into_response();
        }
    }
    next.run(request).await
}

/// An owned copy: a borrow of the request (its body is not `Sync`) must not live across an
/// await.
fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The sender of an RPC is the leader or candidate its vote names.
fn heard(replica: &Replica, vote: &Vote) {
    if let Some(sender) = vote.leader_id().voted_for() {
        replica.peers().contacts().heard(sender);
    }
}

/// Bodies are parsed here, not by axum's `Json`, so garbage gets a JSON 400.
fn parse<T: DeserializeOwned>(body: &Bytes, what: &'static str) -> Result<T, RpcRefusal> {
    serde_json::from_slice(body).map_err(|source| RpcRefusal::InvalidBody { what, source })
}

async fn append(State(replica): State<Arc<Replica>>, body: Bytes) -> Result<Response, RpcRefusal> {
    let rpc: AppendEntriesRequest<TypeConfig> = parse(&body, "append-entries")?;
    heard(&replica, &rpc.vote);
    Ok(Json(replica.raft().append_entries(rpc).await).into_response())
}

async fn vote(State(replica): State<Arc<Replica>>, body: Bytes) -> Result<Response, RpcRefusal> {
    let rpc: VoteRequest<NodeId> = parse(&body, "vote")?;
    heard(&replica, &rpc.vote);
    Ok(Json(replica.raft().vote(rpc).await).into_response())
}

async fn snapshot(
    State(replica): State<Arc<Replica>>,
    body: Bytes,
) -> Result<Response, RpcRefusal> {
    let rpc = decode_snapshot_chunk(&body)?;
    heard(&replica, &rpc.vote);
    replica.note_snapshot_bytes(rpc.data.len());
    Ok(Json(replica.raft().install_snapshot(rpc).await).into_response())
}
