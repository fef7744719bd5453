//! The axum router: lease API, cluster status, health, metrics; it mounts the Raft RPC routes
//! of `evio_raft::network::server`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use evio_raft::network;
use evio_raft::{validate_node_name, validate_owner, Refusal, Replica, RequestError};
use evio_raft::{AdmitError, JoinRequest, JoinResponse};

use crate::metrics::ApiMetrics;
use crate::types::{
    AcquireBody, ClaimBody, ClusterJson, Consistency, ErrorBody, EtcdMirrorJson, LeaseJson,
    MemberJson, ReserveBody,
};

#[derive(Clone)]
pub struct ApiState {
    pub replica: Arc<Replica>,
    pub metrics: Arc<ApiMetrics>,
    pub options: ApiOptions,
}

/// The etcd mirror's state, written by the mirror task and read by `/v1/cluster` and
/// `/metrics`.
pub type EtcdMirrorStatus = Arc<std::sync::RwLock<EtcdMirrorJson>>;

/// How the API guards itself. Mutating calls and Raft RPC always need the cluster token.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Also require the token for lease reads.
    pub auth_reads: bool,
    /// Set when this member runs an etcd mirror.
    pub etcd_mirror: Option<EtcdMirrorStatus>,
}

/// The mirror's state with the lag computed now, so it is never stale.
pub fn etcd_mirror_now(state: &ApiState) -> Option<EtcdMirrorJson> {
    let status = state.options.etcd_mirror.as_ref()?;
    let mut json = status.read().unwrap_or_else(|p| p.into_inner()).clone();
    let applied = state
        .replica
        .local()
        .read()
        .last_applied
        .map_or(0, |id| id.index);
    json.lag_revisions = if json.active {
        applied.saturating_sub(json.mirrored_revision)
    } else {
        0
    };
    Some(json)
}

/// A member sends at most this many hops to reach the leader.
const MAX_HOPS: u32 = 3;
const HOPS_HEADER: &str = "x-evio-hops";
/// Unix milliseconds after which a forwarded request is pointless.
const DEADLINE_HEADER: &str = "x-evio-deadline-ms";
/// Forwarded request bodies are small JSON documents.
const MAX_BODY: usize = 1 << 20;

/// Set on a response that failed only because this member is not the leader: the
/// forwarding layer then sends the request on.
#[derive(Debug, Clone)]
struct NotLeaderHint(Option<(u64, evio_raft::EvioNode)>);

/// An error response: status, stable code, message, and `Retry-After` when retrying helps.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    not_leader: Option<NotLeaderHint>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            not_leader: None,
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
        if let Some(hint) = self.not_leader {
            response.extensions_mut().insert(hint);
        }
        response
    }
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::PoolMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "pool_mismatch", e.to_string())
            }
            AdmitError::DuplicateName { .. } => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_node_name", e.to_string())
            }
            AdmitError::Request(e) => e.into(),
        }
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
            // Answered as 503 only when forwarding to the leader is impossible too.
            RequestError::NotLeader { ref leader } => ApiError {
                not_leader: Some(NotLeaderHint(leader.clone())),
                ..match leader {
                    None => ApiError::unavailable(
                        "no_quorum",
                        "no leader is known: this member cannot reach a quorum",
                    ),
                    Some(_) => ApiError::unavailable("not_leader", e.to_string()),
                }
            },
            RequestError::NoQuorum(_) => ApiError::unavailable("no_quorum", e.to_string()),
            RequestError::Refused(ref refusal) => {
                let (status, code) = match refusal {
                    Refusal::OutsidePool { .. } => (StatusCode::BAD_REQUEST, "outside_pool"),
                    Refusal::BlockTaken { .. } => (StatusCode::CONFLICT, "block_taken"),
                    Refusal::OwnerHoldsOther { .. } => (StatusCode::CONFLICT, "holds_other_lease"),
                    Refusal::NoSuchLease { .. } => (StatusCode::NOT_FOUND, "not_found"),
                };
                ApiError::new(status, code, e.to_string())
            }
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

pub fn router(replica: Arc<Replica>, options: ApiOptions) -> Router {
    let state = ApiState {
        replica,
        metrics: Arc::new(ApiMetrics::new()),
        options,
    };
    // Lease calls and joins reach the leader from any member.
    let leader_bound = Router::new()
        .route("/v1/leases", get(list_leases))
        .route(
            "/v1/leases/{node}",
            get(get_lease).put(put_lease).delete(delete_lease),
        )
        .route("/v1/leases/reserve", post(reserve_lease))
        .route("/v1/leases/{node}/claim", post(claim_lease))
        .route("/v1/cluster/join", post(join))
        .route_layer(middleware::from_fn_with_state(state.clone(), forwarding));
    let raft_rpc = network::router(state.replica.clone());
    Router::new()
        .merge(leader_bound)
        .merge(raft_rpc)
        .route("/v1/cluster", get(cluster))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Raft RPC, joins and lease changes need the cluster token; lease reads only with
/// `auth_reads`. Health, readiness, metrics and cluster status stay open for probes.
async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let is_read = request.method() == axum::http::Method::GET;
    let needs_token = if path.starts_with(network::PATH_PREFIX) || path == "/v1/cluster/join" {
        true
    } else if path.starts_with("/v1/leases") {
        !is_read || state.options.auth_reads
    } else {
        false
    };
    if !needs_token {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.replica.peers().token();
    if expected.is_empty() || !token_matches(given.as_bytes(), expected.as_bytes()) {
        tracing::warn!(
            method = %request.method(),
            path,
            token_present = !given.is_empty(),
            "refused unauthenticated request"
        );
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong cluster token (Authorization: Bearer <token>)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Runs the handler; when it failed only because this member is not the leader, sends the
/// same request to the leader, or through another member when the leader is unreachable.
async fn forwarding(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_body",
            format!("request body larger than {MAX_BODY} bytes"),
        )
        .into_response();
    };
    let response = next
        .run(Request::from_parts(
            parts.clone(),
            Body::from(bytes.clone()),
        ))
        .await;
    let Some(NotLeaderHint(leader)) = response.extensions().get::<NotLeaderHint>().cloned() else {
        return response;
    };
    match forward(&state, &parts, bytes, leader).await {
        Some(forwarded) => forwarded,
        None => response,
    }
}

/// Tries the leader, then every other member; `None` when no path worked (the caller then
/// answers with its own 503).
async fn forward(
    state: &ApiState,
    parts: &axum::http::request::Parts,
    body: Bytes,
    leader: Option<(u64, evio_raft::EvioNode)>,
) -> Option<Response> {
    let header_u64 = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let hops = header_u64(HOPS_HEADER).unwrap_or(0);
    if hops >= u64::from(MAX_HOPS) {
        return None;
    }
    let unix_ms = evio_raft::replica::unix_millis;
    let deadline_ms = header_u64(DEADLINE_HEADER)
        .unwrap_or(unix_ms() + state.replica.request_timeout().as_millis() as u64);

    let replica = &state.replica;
    let metrics = replica.metrics();
    let me = replica.node_id();
    let leader_id = leader.as_ref().map(|(id, _)| *id);
    let mut targets: Vec<(u64, String)> = leader
        .into_iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, node)| (id, node.addr))
        .collect();
    targets.extend(
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me && Some(**id) != leader_id)
            .map(|(id, node)| (*id, node.addr.clone())),
    );
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    for (target, addr) in targets {
        let now_ms = unix_ms();
        if now_ms >= deadline_ms {
            break;
        }
        let Ok(request) = replica.peers().request(parts.method.clone(), &addr, &path) else {
            tracing::debug!(target, addr, "forward path blocked");
            continue;
        };
        let mut request = request
            .header(HOPS_HEADER, (hops + 1).to_string())
            .header(DEADLINE_HEADER, deadline_ms.to_string())
            .timeout(std::time::Duration::from_millis(deadline_ms - now_ms))
            .body(body.clone());
        if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(target, addr, error = %e, "forward failed; trying another member");
                continue;
            }
        };
        let status = response.status();
        // A member that could not place the request either: try the next one.
        if status == StatusCode::SERVICE_UNAVAILABLE && Some(target) != leader_id {
            continue;
        }
        let mut out = Response::builder().status(status.as_u16());
        for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
            if let Some(value) = response.headers().get(&name) {
                out = out.header(name, value);
            }
        }
        let bytes = response.bytes().await.ok()?;
        tracing::debug!(target, addr, hops = hops + 1, %status, "forwarded");
        return out.body(Body::from(bytes)).ok();
    }
    None
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

/// A lease owner: a node name or an imported `legacy:...` range.
fn checked_owner(owner: &str) -> Result<(), ApiError> {
    validate_owner(owner).map_err(|e| RequestError::from(e).into())
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
    checked_owner(&node)?;
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
    checked_owner(&node)?;
    state.replica.release(&node).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn reserve_lease(State(state): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let body: ReserveBody = parse_body(&body, "reserve")?;
    checked_owner(&body.owner)?;
    let pool = state.replica.pool();
    let block = pool.index_of(body.subnet).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "outside_pool",
            format!(
                "subnet {} is not a node block of the pool {pool}",
                body.subnet
            ),
        )
    })?;
    let (lease, created) = state.replica.reserve(&body.owner, block).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(LeaseJson::from(&lease))).into_response())
}

async fn claim_lease(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Json<LeaseJson>, ApiError> {
    checked_name(&node)?;
    let body: ClaimBody = parse_body(&body, "claim")?;
    checked_owner(&body.from)?;
    let lease = state.replica.claim(&node, &body.from).await?;
    Ok(Json(LeaseJson::from(&lease)))
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
        membership_changing: membership.get_joint_config().len() > 1,
        members,
        etcd_mirror: etcd_mirror_now(&state),
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
        .render(&state.replica, etcd_mirror_now(&state).as_ref())
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

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("invalid {what} body: {e}"),
        )
    })
}

async fn join(State(state): State<ApiState>, body: Bytes) -> Result<Json<JoinResponse>, ApiError> {
    let request: JoinRequest = parse_body(&body, "join")?;
    Ok(Json(state.replica.admit(&request).await?))
}
