//! The cluster routes: status, joins, health, readiness and metrics.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use evio_raft::tls::TlsPeer;
use evio_raft::{JoinRequest, JoinResponse};

use super::errors::{parse_body, ApiError};
use super::ApiState;
use crate::types::ErrorBody;
use crate::types::{
    CertificateRequest, CertificateResponse, ClusterJson, ErrorCode, EtcdMirrorJson, MemberJson,
};

/// A member is reachable when Raft traffic with it flowed this recently (the leader sends
/// heartbeats every `--heartbeat-ms`, 100 ms by default).
const REACHABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

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

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "leader, term, members with role, replication lag and reachability as this member sees them", body = ClusterJson)))]
pub(super) async fn status(State(state): State<ApiState>) -> Json<ClusterJson> {
    let replica = &state.replica;
    let metrics = replica.metrics();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    // Only the leader tracks how far each member's log is matched.
    let last_log = metrics.last_log_index.unwrap_or(0);
    let lag = |id: &u64| {
        let matched = metrics.replication.as_ref()?.get(id)?;
        Some(last_log.saturating_sub(matched.map_or(0, |l| l.index)))
    };
    let me = replica.node_id();
    let contacts = replica.peers().contacts();
    // Traffic is expected with the leader, from a leader to everyone, and between voters
    // while they elect one.
    let expected = |id: &u64| {
        metrics.current_leader == Some(me)
            || metrics.current_leader == Some(*id)
            || (metrics.current_leader.is_none() && voters.contains(id) && voters.contains(&me))
    };
    let ms_ago = |t: std::time::Instant| t.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
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
            let contact = contacts.get(*id);
            let reachable = if *id == me {
                Some(true)
            } else {
                contact.reachable(REACHABLE_WITHIN, expected(id))
            };
            let last_error = contact.failure().map(|(_, why)| why.to_string());
            MemberJson {
                id: *id,
                name: node.name.clone(),
                addr: node.addr.clone(),
                role: role.to_string(),
                replication_lag: lag(id),
                reachable,
                heard_ms_ago: contact.heard.map(ms_ago),
                reached_ms_ago: contact.reached.map(ms_ago),
                last_error,
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
        pod_cidrs: replica.pool().pod_cidrs(),
        node_bits: replica.pool().node_bits(),
        membership_changing: membership.get_joint_config().len() > 1,
        members,
        etcd_mirror: etcd_mirror_now(&state),
    })
}

#[utoipa::path(get, path = "/healthz", tag = "cluster",
    responses((status = 200, description = "Raft runs", body = Object), (status = 503, description = "`raft_stopped`", body = ErrorBody)))]
pub(super) async fn healthz(State(state): State<ApiState>) -> Response {
    match &state.replica.metrics().running_state {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response(),
        Err(fatal) => {
            ApiError::new(ErrorCode::RaftStopped, format!("raft stopped: {fatal}")).into_response()
        }
    }
}

#[utoipa::path(get, path = "/readyz", tag = "cluster",
    responses((status = 200, description = "in a cluster and caught up", body = Object), (status = 503, description = "`not_ready`", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))))]
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    if state.replica.is_ready() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response()
    } else {
        ApiError::new(
            ErrorCode::NotReady,
            "the local replica has not yet applied the committed log or joined a cluster",
        )
        .into_response()
    }
}

#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render(&state.replica, etcd_mirror_now(&state).as_ref())
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/cluster/join", tag = "cluster",
    request_body(content = Object, description = "evio_raft::JoinRequest: the joining node's id, name, address and pool"),
    responses((status = 200, description = "admitted (evio_raft::JoinResponse)", body = Object),
        (status = 400, description = "`invalid_body`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 409, description = "`pool_mismatch` or `duplicate_node_name`", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))),
    security(("token" = [])))]
pub(super) async fn join(
    State(state): State<ApiState>,
    peer: Option<Extension<TlsPeer>>,
    body: Bytes,
) -> Result<Json<JoinResponse>, ApiError> {
    let request: JoinRequest = parse_body(&body, "join")?;
    // Over TLS a node joins as the node its certificate names; a member forwarding the
    // join to the leader speaks with its own certificate.
    if let Some(Extension(TlsPeer(Some(peer)))) = peer {
        let metrics = state.replica.metrics();
        let is_member = metrics
            .membership_config
            .membership()
            .get_node(&peer.node_id)
            .is_some();
        if peer.node_id != request.node_id && !is_member {
            // A member just admitted may not know yet of the member forwarding to it: only
            // the leader's membership is the cluster's word, so elsewhere the forwarder is
            // told to try another member (503) instead of being refused.
            if metrics.current_leader != Some(state.replica.node_id()) {
                return Err(ApiError::new(
                    ErrorCode::NotLeader,
                    format!(
                        "node {} is not a member this member knows of, and it is not the leader: send the join to the leader",
                        peer.node_id
                    ),
                ));
            }
            tracing::warn!(
                certified = peer.node_id,
                claimed = request.node_id,
                "refused a join for another node than the certificate names"
            );
            return Err(ApiError::new(
                ErrorCode::WrongSender,
                format!(
                    "the join is for node {}, but the client certificate names node {}",
                    request.node_id, peer.node_id
                ),
            ));
        }
    }
    Ok(Json(state.replica.admit(&request).await?))
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "the member's node id (`GET /v1/cluster` lists them)")),
    responses((status = 200, description = "removed (or removed before); its certificate is revoked on every member (evio_raft::RemoveResponse)", body = Object),
        (status = 400, description = "`bad_request`: the node is the leader", body = ErrorBody), (status = 401, description = "`unauthorized` or `certificate_required`", body = ErrorBody), (status = 404, description = "`not_found`: no such member", body = ErrorBody), (status = 503, description = "`no_quorum`, `not_leader` or `timeout`: retry later", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))),
    security(("token" = [])))]
pub(super) async fn remove_member(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Result<Json<evio_raft::RemoveResponse>, ApiError> {
    Ok(Json(state.replica.remove_member(id).await?))
}

#[utoipa::path(post, path = "/v1/cluster/certificate", tag = "cluster",
    request_body = CertificateRequest,
    responses((status = 200, description = "the node's certificate, the CA certificate and key", body = CertificateResponse),
        (status = 400, description = "`invalid_body` or `invalid_node_name`", body = ErrorBody), (status = 401, description = "`unauthorized`: missing or wrong cluster token", body = ErrorBody), (status = 403, description = "`certificate_refused`: another member's node id, or no CA key on this member", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody)),
    security(("token" = [])))]
pub(super) async fn certificate(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Json<CertificateResponse>, ApiError> {
    let request: CertificateRequest = parse_body(&body, "certificate")?;
    evio_raft::validate_node_name(&request.name)
        .map_err(|e| ApiError::new(ErrorCode::InvalidNodeName, e.to_string()))?;
    let refused = |message: String| {
        tracing::warn!(node_id = request.node_id, name = %request.name, "refused a certificate request: {message}");
        ApiError::new(ErrorCode::CertificateRefused, message)
    };
    let Some(tls) = state.replica.peers().tls() else {
        return Err(refused(
            "this cluster's members speak plaintext: there is no CA".into(),
        ));
    };
    // A token holder must not get a certificate naming a live member under another name
    // (it would then speak for it); a node that lost its data dir gets a new id anyway.
    if state
        .replica
        .local()
        .read()
        .table
        .revoked()
        .contains(&request.node_id)
    {
        return Err(refused(format!(
            "node id {} was removed from the cluster and is revoked: a node rejoins with a \
             wiped data dir (a new node id)",
            request.node_id
        )));
    }
    let metrics = state.replica.metrics();
    if let Some(member) = metrics
        .membership_config
        .membership()
        .get_node(&request.node_id)
    {
        if member.name != request.name {
            return Err(refused(format!(
                "node id {} belongs to member {}",
                request.node_id, member.name
            )));
        }
    }
    let certificate = tls
        .sign_request(&request.csr, request.node_id, &request.name)
        .map_err(|e| match e {
            evio_raft::tls::TlsError::Rcgen(_) => ApiError::new(
                ErrorCode::InvalidBody,
                format!("invalid certificate request: {e}"),
            ),
            e => refused(e.to_string()),
        })?;
    let authority = tls.authority().map_err(|e| refused(e.to_string()))?;
    tracing::info!(node_id = request.node_id, name = %request.name, "issued a member certificate");
    Ok(Json(CertificateResponse {
        certificate,
        ca: authority.cert_pem().to_string(),
        ca_key: authority.key_pem(),
    }))
}
