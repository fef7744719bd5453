//! The axum router: lease API, cluster status, health, metrics; it mounts the Raft RPC routes
//! of `evio_raft::network::server`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use evio_raft::network;
use evio_raft::{validate_node_name, validate_owner, Refusal, Replica, RequestError};
use evio_raft::{AdmitError, JoinRequest, JoinResponse};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

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
    /// Linearizable reads in flight for clients without the token: each costs a heartbeat
    /// round to every voter, so their number is capped (issue 14 item 3).
    anonymous_barriers: Arc<tokio::sync::Semaphore>,
}

/// Set on a request that carried the right cluster token.
#[derive(Debug, Clone, Copy)]
struct Authenticated;

/// Linearizable reads without the token that may wait on the leader at once; more get 429.
const ANONYMOUS_BARRIERS: usize = 4;

/// Body limits: lease and join bodies are small JSON documents; Raft RPC carries log entries
/// and snapshot chunks, sized by the Raft crate (a 1 MiB binary chunk or an append batch).
pub const API_MAX_BODY: usize = 64 * 1024;
pub const RAFT_MAX_BODY: usize = network::RPC_BODY_LIMIT;
/// Request timeouts: lease calls wait for the leader (and forwarding) at most this long;
/// Raft RPC (a snapshot chunk install included) and plain reads have their own.
const API_TIMEOUT: Duration = Duration::from_secs(20);
const RAFT_TIMEOUT: Duration = Duration::from_secs(60);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

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
            AdmitError::RecentlyHeard { .. } => {
                ApiError::unavailable("member_recently_heard", e.to_string())
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
                    Refusal::NotLegacyOwner { .. } => (StatusCode::CONFLICT, "not_legacy_owner"),
                    Refusal::RevisionMismatch { .. } => (StatusCode::CONFLICT, "revision_mismatch"),
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
        anonymous_barriers: Arc::new(tokio::sync::Semaphore::new(ANONYMOUS_BARRIERS)),
    };
    // Lease calls and joins reach the leader from any member.
    let leader_bound = Router::new()
        .route("/v1/leases", get(list_leases))
        .route(
            "/v1/leases/{node}",
            get(get_lease).put(put_lease).delete(delete_lease),
        )
        .route("/v1/reservations", post(reserve_lease))
        .route("/v1/leases/{node}/claim", post(claim_lease))
        .route("/v1/cluster/join", post(join))
        .route_layer(middleware::from_fn_with_state(state.clone(), forwarding))
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            API_TIMEOUT,
        ))
        .route_layer(RequestBodyLimitLayer::new(API_MAX_BODY));
    let raft_rpc = network::router(state.replica.clone())
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            RAFT_TIMEOUT,
        ))
        .route_layer(DefaultBodyLimit::max(RAFT_MAX_BODY))
        .route_layer(RequestBodyLimitLayer::new(RAFT_MAX_BODY));
    let reads = Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            READ_TIMEOUT,
        ));
    Router::new()
        .merge(leader_bound)
        .merge(raft_rpc)
        .merge(reads)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(refuse_read_bodies))
        .layer(middleware::map_response(json_errors))
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
async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let is_read = request.method() == axum::http::Method::GET;
    let needs_token = if path.starts_with(network::PATH_PREFIX) || path == "/v1/cluster/join" {
        true
    } else if path.starts_with("/v1/leases") || path.starts_with("/v1/reservations") {
        !is_read || state.options.auth_reads
    } else {
        false
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.replica.peers().token();
    let authenticated =
        !expected.is_empty() && token_matches(given.as_bytes(), expected.as_bytes());
    if authenticated {
        request.extensions_mut().insert(Authenticated);
        return next.run(request).await;
    }
    if !needs_token {
        return next.run(request).await;
    }
    tracing::warn!(
        method = %request.method(),
        path = request.uri().path(),
        token_present = !given.is_empty(),
        "refused unauthenticated request"
    );
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong cluster token (Authorization: Bearer <token>)",
    )
    .into_response()
}

/// Runs the handler; when it failed only because this member is not the leader, sends the
/// same request to the leader, or through another member when the leader is unreachable.
async fn forwarding(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, API_MAX_BODY).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body larger than {API_MAX_BODY} bytes"),
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
    // Hop count and deadline are a member's word: honoured only with the cluster token, and
    // a deadline never reaches further than this member's own request timeout.
    let from_peer = parts.extensions.get::<Authenticated>().is_some();
    let header_u64 = |name: &str| {
        parts
            .headers
            .get(name)
            .filter(|_| from_peer)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let hops = header_u64(HOPS_HEADER).unwrap_or(0);
    if hops >= u64::from(MAX_HOPS) {
        return None;
    }
    let unix_ms = evio_raft::replica::unix_millis;
    let latest_ms = unix_ms() + state.replica.request_timeout().as_millis() as u64;
    let deadline_ms = header_u64(DEADLINE_HEADER).map_or(latest_ms, |d| d.min(latest_ms));

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
    // Only the API's own methods become label values: anything else is `other`, and an
    // unknown path is `unmatched`, so no client can grow the metrics (issue 14 item 2).
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.observe(
        method,
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

async fn consistent(
    state: &ApiState,
    consistency: Consistency,
    authenticated: bool,
) -> Result<(), ApiError> {
    if consistency == Consistency::Local {
        return Ok(());
    }
    let _permit = if authenticated {
        None
    } else {
        Some(
            state
                .anonymous_barriers
                .try_acquire()
                .map_err(|_| ApiError {
                    retry_after_secs: Some(1),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many linearizable reads without the cluster token: retry, \
                 send the token, or read with ?consistency=local",
                    )
                })?,
        )
    };
    state.replica.linearizable_barrier().await?;
    Ok(())
}

async fn list_leases(
    State(state): State<ApiState>,
    authenticated: Option<Extension<Authenticated>>,
    query: RawQuery,
) -> Result<Json<Vec<LeaseJson>>, ApiError> {
    consistent(&state, read_params(query)?, authenticated.is_some()).await?;
    let applied = state.replica.local().read();
    Ok(Json(
        applied.table.leases().iter().map(LeaseJson::from).collect(),
    ))
}

async fn get_lease(
    State(state): State<ApiState>,
    authenticated: Option<Extension<Authenticated>>,
    Path(node): Path<String>,
    query: RawQuery,
) -> Result<Json<LeaseJson>, ApiError> {
    checked_owner(&node)?;
    consistent(&state, read_params(query)?, authenticated.is_some()).await?;
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

/// `DELETE /v1/leases/{node}[?revision=N]`: with a revision, only if the lease is still at it.
async fn delete_lease(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    checked_owner(&node)?;
    let mut revision = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.parse::<u64>()) {
            ("revision", Ok(r)) => revision = Some(r),
            (key, _) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "invalid query parameter {key:?}={value:?}: expected revision=<log index>"
                    ),
                ))
            }
        }
    }
    state.replica.release_if(&node, revision).await?;
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

/// GET, HEAD and DELETE carry no body here: one announced anyway is refused before any
/// handler runs, so nobody can park a large upload on a read route.
async fn refuse_read_bodies(request: Request, next: Next) -> Response {
    use axum::http::Method;
    let bodyless = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::DELETE
    );
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if bodyless && has_body {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_not_allowed",
            format!("{} requests take no body", request.method()),
        )
        .into_response();
    }
    next.run(request).await
}

/// Errors produced below the handlers (tower-http's body limit and timeout, axum's
/// rejections) answer with the same `{error, code}` body as every other error.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
            ("timeout", "the request did not complete in time")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("invalid_body", "unsupported content type"),
        s if s.is_client_error() => ("bad_request", "the request could not be read"),
        _ => ("internal", "internal error"),
    };
    let mut error = ApiError::new(status, code, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        error.retry_after_secs = Some(1);
    }
    error.into_response()
}
