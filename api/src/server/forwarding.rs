//! Forwarding to the leader: a lease call or join that reached a follower or learner is
//! sent on to the leader, or through another member when the leader is unreachable.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Authenticated;
use super::errors::{ApiError, NotLeaderHint};
use super::{ApiState, API_MAX_BODY};
use crate::types::ErrorCode;

/// A member sends at most this many hops to reach the leader.
pub(super) const MAX_HOPS: u32 = 3;
const HOPS_HEADER: &str = "x-evio-hops";
/// Unix milliseconds after which a forwarded request is pointless.
const DEADLINE_HEADER: &str = "x-evio-deadline-ms";

/// Runs the handler; when it failed only because this member is not the leader, sends the
/// same request to the leader, or through another member when the leader is unreachable.
/// When no member could place it (an election under way: the leader was lost, or its
/// heartbeats came late on a busy host), waits for the election and tries again within the
/// request timeout, as an etcd client's request does; a member cut off from every leader
/// answers 503 when the request timeout has passed.
pub(super) async fn forwarding(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, API_MAX_BODY).await else {
        return ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body larger than {API_MAX_BODY} bytes"),
        )
        .into_response();
    };
    // A member that forwarded this request waits out the election itself.
    let from_member = parts.extensions.get::<Authenticated>().is_some()
        && parts.headers.contains_key(HOPS_HEADER);
    let deadline = std::time::Instant::now() + state.replica.request_timeout();
    loop {
        let response = next
            .clone()
            .run(Request::from_parts(
                parts.clone(),
                Body::from(bytes.clone()),
            ))
            .await;
        let Some(NotLeaderHint(leader)) = response.extensions().get::<NotLeaderHint>().cloned()
        else {
            return response;
        };
        let leader_id = leader.as_ref().map(|(id, _)| *id);
        if let Some(forwarded) = forward(&state, &parts, bytes.clone(), leader).await {
            return forwarded;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if from_member || left.is_zero() {
            return response;
        }
        // Each try also forwards again: a path to the leader may have come back meanwhile.
        match state.replica.wait_for_new_leader(leader_id, left).await {
            Some(new_leader) => tracing::debug!(new_leader, "a leader was elected: trying again"),
            None => tracing::debug!("no new leader yet: trying again"),
        }
    }
}

/// Tries the leader, then every other member; `None` when no path worked (the caller then
/// answers with its own 503).
pub(super) async fn forward(
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
