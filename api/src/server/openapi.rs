//! The OpenAPI 3.1 document, generated from the handlers' own annotations and types
//! (utoipa), served at `GET /openapi.json` and kept in `docs/openapi.json`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::types::{
    AcquireBody, CertificateRequest, CertificateResponse, ClaimBody, ClusterJson, CniJson,
    Consistency, ErrorBody, ErrorCode, EtcdMirrorJson, KubernetesJson, LeaseJson, MemberJson,
    NodeJson, NodePodsJson, PodJson, ReserveBody,
};

/// The Raft RPC routes live in `evio_raft::network::server`; they are described here so the
/// document covers every route. Bodies are openraft's own JSON.
#[allow(dead_code)] // documentation only: the routes are served by evio-raft
mod raft_rpc {
    use crate::types::ErrorBody;

    /// The three routes answer alike: openraft's result, or the same errors (the RPC body
    /// limit and the sender checks apply to each).
    macro_rules! raft_route {
        ($name:ident, $path:tt, $request:tt) => {
            #[utoipa::path(post, path = $path, tag = "raft",
                request_body(content = Object, description = $request),
                responses((status = 200, description = "openraft's result", body = Object),
                    (status = 400, description = "`invalid_body`", body = ErrorBody),
                    (status = 401, description = "`unauthorized`", body = ErrorBody),
                    (status = 403, description = "`cluster_mismatch`, or `wrong_sender` (over TLS: the RPC speaks for another node than the client certificate names)", body = ErrorBody),
                    (status = 413, description = "`payload_too_large` (over evio-raft's RPC body limit)", body = ErrorBody),
                    (status = 421, description = "`wrong_node`", body = ErrorBody)),
                security(("token" = [])))]
            fn $name() {}
        };
    }

    raft_route!(append, "/raft/append", "openraft AppendEntriesRequest");
    raft_route!(vote, "/raft/vote", "openraft VoteRequest");
    raft_route!(
        snapshot,
        "/raft/snapshot",
        "openraft InstallSnapshotRequest (one chunk)"
    );
}

#[utoipa::path(get, path = "/openapi.json", tag = "cluster",
    responses((status = 200, description = "this document", body = Object)))]
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the cluster token (--cluster-token-file); with TLS between members only for /v1/cluster/certificate, every other route takes a client certificate of the cluster CA"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "evio", description = "evio's HTTP API: subnet leases, cluster status, Raft RPC. Every error is `{error, code}`; the code fixes the status."),
    paths(
        super::leases::list, super::leases::get, super::leases::put, super::leases::delete,
        super::leases::reserve, super::leases::claim,
        super::cluster::status, super::cluster::join, super::cluster::certificate,
        super::cluster::remove_member,
        super::cluster::healthz,
        super::cluster::readyz, super::cluster::metrics, document, super::page::status_page,
        super::node::node, super::node::pods,
        raft_rpc::append, raft_rpc::vote, raft_rpc::snapshot,
    ),
    components(schemas(
        LeaseJson, AcquireBody, ReserveBody, ClaimBody, ClusterJson, MemberJson,
        EtcdMirrorJson, ErrorBody, ErrorCode, Consistency, NodeJson, CniJson, KubernetesJson,
        NodePodsJson, PodJson, CertificateRequest, CertificateResponse,
    )),
    modifiers(&BearerToken),
)]
struct ApiDoc;

/// The document as pretty JSON (what `docs/openapi.json` holds).
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
