//! Who may do what: the cluster token for changes and Raft RPC (and reads with
//! `--auth-reads`), and the budget of linearizable reads without it.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use evio_raft::network;
use evio_raft::tls::TlsPeer;

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

/// Where the token is the credential with TLS: a joining node has no certificate yet.
pub(super) const CERTIFICATE_PATH: &str = "/v1/cluster/certificate";
const JOIN_PATH: &str = "/v1/cluster/join";
const MEMBERS_PATH: &str = "/v1/cluster/members/";

/// Who may do what. Plaintext: Raft RPC, joins and lease changes need the cluster token;
/// lease reads only with `auth_reads`. TLS: a client certificate of the cluster replaces
/// the token everywhere but where a node gets its certificate (the token only bootstraps);
/// Raft RPC takes no token at all. Health, readiness, metrics and cluster status stay open
/// for probes; node reads (pods and integration errors) are lease-like reads.
pub(super) async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let is_read = request.method() == axum::http::Method::GET;
    let is_rpc = path.starts_with(network::PATH_PREFIX);
    let needs_credentials = if is_rpc
        || path == JOIN_PATH
        || path == CERTIFICATE_PATH
        || path.starts_with(MEMBERS_PATH)
    {
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
    let token_ok = !expected.is_empty() && token_matches(given.as_bytes(), expected.as_bytes());
    let tls = state.replica.peers().tls().is_some();
    let certificate = request
        .extensions()
        .get::<TlsPeer>()
        .and_then(|peer| peer.0.clone());
    // With TLS the certificate route is the token's alone (a member's certificate does not
    // mint others), and every other route the certificate's.
    let authenticated = match (tls, path == CERTIFICATE_PATH) {
        (true, true) => token_ok,
        (true, false) => certificate.is_some(),
        (false, _) => token_ok,
    };
    if authenticated {
        request.extensions_mut().insert(Authenticated);
        return next.run(request).await;
    }
    if !needs_credentials {
        return next.run(request).await;
    }
    tracing::warn!(
        method = %request.method(),
        path = request.uri().path(),
        token_present = !given.is_empty(),
        tls,
        "refused unauthenticated request"
    );
    if tls && path != CERTIFICATE_PATH {
        return ApiError::new(
            ErrorCode::CertificateRequired,
            "this route needs a client certificate issued by the cluster CA (on a member: \
             evio-node finds it in the data dir; elsewhere pass --ca-file, --cert-file and \
             --key-file)",
        )
        .into_response();
    }
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
