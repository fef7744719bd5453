//! The axum router: lease API, cluster status, health, metrics, and the Raft RPC endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use evio_raft::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use evio_raft::types::TypeConfig;
use evio_raft::{validate_node_name, Replica, RequestError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::metrics::ApiMetrics;
use crate::types::{AcquireBody, ClusterJson, Consistency, ErrorBody, LeaseJson, MemberJson};

#[derive(Clone)]
pub struct ApiState {
    pub replica: Arc<Replica>,
    pub metrics: Arc<ApiMetrics>,
}

/// An error response: status, stable code, message, and `Retry-After` when retrying helps.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, error = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::InvalidNodeName(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_node_name", e.to_string())
            }
            RequestError::PoolExhausted { .. } => {
                ApiError::new(StatusCode::CONFLICT, "pool_exhausted", e.to_string())
            }
            // No leader known means no quorum this member can reach.
            RequestError::NotLeader { leader: None } => ApiError::unavailable(
                "no_quorum",
                "no leader is known: this member cannot reach a quorum",
            ),
            RequestError::NotLeader { .. } => ApiError::unavailable("not_leader", e.to_string()),
            RequestError::NoQuorum(_) => ApiError::unavailable("no_quorum", e.to_string()),
            RequestError::Fatal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

/// Parses the query string by hand so a bad value gets our JSON error, not axum's text.
fn read_params(RawQuery(query): RawQuery) -> Result<Consistency, ApiError> {
    let query = query.unwrap_or_default();
    let mut consistency = Consistency::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("consistency", "local") => consistency = Consistency::Local,
            ("consistency", "linearizable") => consistency = Consistency::Linearizable,
            ("consistency", other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "invalid consistency {other:?}: expected \"local\" or \"linearizable\""
                    ),
                ))
            }
            (other, _) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("unknown query parameter {other:?}"),
                ))
            }
        }
    }
    Ok(consistency)
}

pub fn router(replica: Arc<Replica>) -> Router {
    let state = ApiState {
        replica,
        metrics: Arc::new(ApiMetrics::new()),
    };
    Router::new()
        .route("/v1/leases", get(list_leases))
        .route(
            "/v1/leases/{node}",
            get(get_lease).put(put_lease).delete(delete_lease),
        )
        .route("/v1/cluster", get(cluster))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(APPEND_PATH, post(raft_append))
        .route(VOTE_PATH, post(raft_vote))
        .route(SNAPSHOT_PATH, post(raft_snapshot))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

fn checked_name(node: &str) -> Result<(), ApiError> {
    validate_node_name(node).map_err(|e| RequestError::from(e).into())
}

async fn consistent(state: &ApiState, consistency: Consistency) -> Result<(), ApiError> {
    if consistency == Consistency::Linearizable {
        state.replica.linearizable_barrier().await?;
    }
    Ok(())
}

async fn list_leases(
    State(state): State<ApiState>,
    query: RawQuery,
) -> Result<Json<Vec<LeaseJson>>, ApiError> {
    consistent(&state, read_params(query)?).await?;
    let applied = state.replica.local().read();
    Ok(Json(
        applied.table.leases().iter().map(LeaseJson::from).collect(),
    ))
}

async fn get_lease(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    query: RawQuery,
) -> Result<Json<LeaseJson>, ApiError> {
    checked_name(&node)?;
    consistent(&state, read_params(query)?).await?;
    let applied = state.replica.local().read();
    applied
        .table
        .get(&node)
        .map(|lease| Json(LeaseJson::from(&lease)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("node {node:?} holds no lease"),
            )
        })
}

async fn put_lease(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    checked_name(&node)?;
    let body: AcquireBody = if body.iter().all(u8::is_ascii_whitespace) {
        AcquireBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!(
                    "invalid request body: {e} (expected {{\"hostIP\": \"<IPv4>\"}} or nothing)"
                ),
            )
        })?
    };
    let (lease, created) = state.replica.acquire(&node, body.host_ip).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(LeaseJson::from(&lease))).into_response())
}

async fn delete_lease(
    State(state): State<ApiState>,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    checked_name(&node)?;
    state.replica.release(&node).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cluster(State(state): State<ApiState>) -> Json<ClusterJson> {
    let replica = &state.replica;
    let metrics = replica.metrics();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let role = if metrics.current_leader == Some(*id) {
                "leader"
            } else if voters.contains(id) {
                "voter"
            } else {
                "learner"
            };
            MemberJson {
                id: *id,
                name: node.name.clone(),
                addr: node.addr.clone(),
                role: role.to_string(),
            }
        })
        .collect();
    Json(ClusterJson {
        node_id: replica.node_id(),
        node_name: replica.node().name.clone(),
        leader_id: metrics.current_leader,
        term: metrics.current_term,
        last_applied: metrics.last_applied.map(|id| id.index),
        pod_cidr: replica.pool().pod_cidr(),
        node_bits: replica.pool().node_bits(),
        members,
    })
}

async fn healthz(State(state): State<ApiState>) -> Response {
    match &state.replica.metrics().running_state {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response(),
        Err(fatal) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "raft_stopped",
            format!("raft stopped: {fatal}"),
        )
        .into_response(),
    }
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.replica.is_ready() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response()
    } else {
        ApiError::unavailable(
            "not_ready",
            "the local replica has not yet applied the committed log or joined a cluster",
        )
        .into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render(&state.replica)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// Raft RPC: openraft's own result (including a stopped Raft's fatal error) goes back as JSON
// for the caller's openraft to interpret.
async fn raft_append(
    State(state): State<ApiState>,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    Json(state.replica.raft().append_entries(rpc).await).into_response()
}

async fn raft_vote(State(state): State<ApiState>, Json(rpc): Json<VoteRequest<u64>>) -> Response {
    Json(state.replica.raft().vote(rpc).await).into_response()
}

async fn raft_snapshot(
    State(state): State<ApiState>,
    Json(rpc): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    Json(state.replica.raft().install_snapshot(rpc).await).into_response()
}
