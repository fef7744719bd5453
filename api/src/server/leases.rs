//! The lease routes: list, get, acquire, release, reserve (`legacy:` ranges) and claim.

use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use evio_raft::{validate_node_name, validate_owner, RequestError};

use super::auth::{consistent, Authenticated};
use super::errors::{parse_body, ApiError};
use super::ApiState;
use crate::types::ErrorBody;
use crate::types::{AcquireBody, ClaimBody, Consistency, ErrorCode, LeaseJson, ReserveBody};

/// Parses the query string by hand so a bad value gets our JSON error, not axum's text.
pub(super) fn read_params(RawQuery(query): RawQuery) -> Result<Consistency, ApiError> {
    let query = query.unwrap_or_default();
    let mut consistency = Consistency::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("consistency", "local") => consistency = Consistency::Local,
            ("consistency", "linearizable") => consistency = Consistency::Linearizable,
            ("consistency", other) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!(
                        "invalid consistency {other:?}: expected \"local\" or \"linearizable\""
                    ),
                ))
            }
            (other, _) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("unknown query parameter {other:?}"),
                ))
            }
        }
    }
    Ok(consistency)
}

pub(super) fn checked_name(node: &str) -> Result<(), ApiError> {
    validate_node_name(node).map_err(|e| RequestError::from(e).into())
}

/// A lease owner: a node name or an imported `legacy:...` range.
pub(super) fn checked_owner(owner: &str) -> Result<(), ApiError> {
    validate_owner(owner).map_err(|e| RequestError::from(e).into())
}

#[utoipa::path(get, path = "/v1/leases", tag = "leases", params(("consistency" = Option<Consistency>, Query, description = "`linearizable` (default) or `local` (this member's replica)")),
    responses((status = 200, description = "every lease", body = [LeaseJson]),
        (status = 400, description = "`invalid_query`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 429, description = "`rate_limited`: too many linearizable reads without the token", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying"))), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))))]
pub(super) async fn list(
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

#[utoipa::path(get, path = "/v1/leases/{node}", tag = "leases", params(("node" = String, Path, description = "Kubernetes node name (DNS-1123), or a `legacy:` owner where noted"), ("consistency" = Option<Consistency>, Query, description = "`linearizable` (default) or `local` (this member's replica)")),
    responses((status = 200, description = "the node's lease", body = LeaseJson),
        (status = 400, description = "`invalid_node_name` or `invalid_query`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 404, description = "`not_found`: the node holds no lease", body = ErrorBody), (status = 429, description = "`rate_limited`: too many linearizable reads without the token", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying"))), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))))]
pub(super) async fn get(
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
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("node {node:?} holds no lease")))
}

#[utoipa::path(put, path = "/v1/leases/{node}", tag = "leases", params(("node" = String, Path, description = "Kubernetes node name (DNS-1123), or a `legacy:` owner where noted")),
    request_body(content = Option<AcquireBody>, description = "optional; empty means no host IP"),
    responses((status = 200, description = "the lease the node already held", body = LeaseJson),
        (status = 201, description = "a new lease", body = LeaseJson),
        (status = 400, description = "`invalid_node_name` or `invalid_body`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 409, description = "`pool_exhausted`", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))),
    security(("token" = [])))]
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    checked_name(&node)?;
    // Nothing, `null` or an object: the body is optional.
    let body: AcquireBody = if body.iter().all(u8::is_ascii_whitespace) {
        AcquireBody::default()
    } else {
        serde_json::from_slice::<Option<AcquireBody>>(&body)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidBody,
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

#[utoipa::path(delete, path = "/v1/leases/{node}", tag = "leases", params(("node" = String, Path, description = "Kubernetes node name (DNS-1123), or a `legacy:` owner where noted"),
        ("revision" = Option<u64>, Query, description = "release only if the lease is still at this revision (its `revision` field)")),
    responses((status = 204, description = "released (also when there was none)"),
        (status = 400, description = "`invalid_node_name` or `invalid_query`", body = ErrorBody),
        (status = 409, description = "`revision_mismatch`: the lease changed since that revision", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))),
    security(("token" = [])))]
pub(super) async fn delete(
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
                    ErrorCode::InvalidQuery,
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

#[utoipa::path(post, path = "/v1/reservations", tag = "leases", request_body = ReserveBody,
    responses((status = 200, description = "already reserved for that owner", body = LeaseJson),
        (status = 201, description = "reserved", body = LeaseJson),
        (status = 400, description = "`invalid_body`, `invalid_node_name` or `outside_pool`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 409, description = "`block_taken` or `holds_other_lease`", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))),
    security(("token" = [])))]
pub(super) async fn reserve(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ReserveBody = parse_body(&body, "reserve")?;
    checked_owner(&body.owner)?;
    let pool = state.replica.pool();
    let block = pool.index_of(body.subnet).ok_or_else(|| {
        ApiError::new(
            ErrorCode::OutsidePool,
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

#[utoipa::path(post, path = "/v1/leases/{node}/claim", tag = "leases", params(("node" = String, Path, description = "Kubernetes node name (DNS-1123), or a `legacy:` owner where noted")), request_body = ClaimBody,
    responses((status = 200, description = "the node's lease: the reserved block", body = LeaseJson),
        (status = 400, description = "`invalid_body` or `invalid_node_name`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 404, description = "`not_found`: no such reserved owner", body = ErrorBody), (status = 409, description = "`holds_other_lease`", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))),
    security(("token" = [])))]
pub(super) async fn claim(
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
