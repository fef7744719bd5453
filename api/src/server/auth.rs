//! Who may do what: the cluster token for changes and Raft RPC (and reads with
//! `--auth-reads`), and the budget of linearizable reads without it.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use evio_raft::network;

use super::errors::ApiError;
use super::ApiState;
use crate::types::{Consistency, ErrorCode};

/// Set on a request that carried the right cluster token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Authenticated;

/// Linearizable reads without the token that may wait on the leader at once; more get 429.
pub(super) const ANONYMOUS_BARRIERS: usize = 4;

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
pub(super) fn token_matches(given: &[u8], expected: &[u8]) -> bool {
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
/// `auth_reads` (so are node reads: pods and integration errors). Health, readiness, metrics and cluster status stay open for probes.
pub(super) async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let is_read = request.method() == axum::http::Method::GET;
    let needs_token = if path.starts_with(network::PATH_PREFIX) || path == "/v1/cluster/join" {
        true
    } else if path.starts_with("/v1/leases")
        || path.starts_with("/v1/reservations")
        || path == "/v1/node"
        || path.starts_with("/v1/node/")
    {
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
        ErrorCode::Unauthorized,
        "missing or wrong cluster token (Authorization: Bearer <token>)",
    )
    .into_response()
}

pub(super) async fn consistent(
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
        let refused = |_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many linearizable reads without the cluster token: retry, send the \
                 token, or read with ?consistency=local",
            )
        };
        Some(state.anonymous_barriers.try_acquire().map_err(refused)?)
    };
    state.replica.linearizable_barrier().await?;
    Ok(())
}
