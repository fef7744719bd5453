//! The axum router: lease API, cluster status, health, metrics; it mounts the Raft RPC routes
//! of `evio_raft::network::server`.

//!
//! By concern: [`errors`] (the `{error, code}` responses), [`auth`] (token, read budget),
//! [`forwarding`] (to the leader), [`leases`], [`cluster`] (status, join, health, metrics), [`node`] (this member's node: pods, integrations),
//! [`guards`] (bounded metrics labels, no bodies on reads), [`page`] (the status page at
//! `/`). Raft RPC lives in `evio_raft::network::server`; connection limits in
//! [`crate::listener`].

mod auth;
mod cluster;
pub mod errors;
mod forwarding;
mod guards;
mod leases;
mod node;
pub mod openapi;
mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use evio_raft::network;
use evio_raft::Replica;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::ApiMetrics;
use crate::types::EtcdMirrorJson;
pub use cluster::etcd_mirror_now;
pub use errors::ApiError;
pub use node::{NodeProvider, PodsError, PodsFuture};

#[derive(Clone)]
pub struct ApiState {
    pub replica: Arc<Replica>,
    pub metrics: Arc<ApiMetrics>,
    pub options: ApiOptions,
    /// Linearizable reads in flight for clients without the token: each costs a heartbeat
    /// round to every voter, so their number is capped (issue 14 item 3).
    pub(crate) anonymous_barriers: Arc<tokio::sync::Semaphore>,
}

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
#[derive(Clone, Default)]
pub struct ApiOptions {
    /// Also require the token for lease and node reads.
    pub auth_reads: bool,
    /// Set when this member runs an etcd mirror.
    pub etcd_mirror: Option<EtcdMirrorStatus>,
    /// The daemon's view of its node (CNI attachments, Kubernetes); absent in bare tests.
    pub node: Option<Arc<dyn NodeProvider>>,
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("auth_reads", &self.auth_reads)
            .field("etcd_mirror", &self.etcd_mirror)
            .field("node", &self.node.is_some())
            .finish()
    }
}

pub fn router(replica: Arc<Replica>, options: ApiOptions) -> Router {
    let state = ApiState {
        replica,
        metrics: Arc::new(ApiMetrics::new()),
        options,
        anonymous_barriers: Arc::new(tokio::sync::Semaphore::new(auth::ANONYMOUS_BARRIERS)),
    };
    // Lease calls and joins reach the leader from any member.
    let leader_bound = Router::new()
        .route("/v1/leases", get(leases::list))
        .route(
            "/v1/leases/{node}",
            get(leases::get).put(leases::put).delete(leases::delete),
        )
        .route("/v1/reservations", post(leases::reserve))
        .route("/v1/leases/{node}/claim", post(leases::claim))
        .route("/v1/cluster/join", post(cluster::join))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            forwarding::forwarding,
        ))
        // Any member with the CA key signs: no leader needed, so joins work with a minority down.
        .route(auth::CERTIFICATE_PATH, post(cluster::certificate))
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
        .route("/", get(page::status_page))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/node", get(node::node))
        .route("/v1/node/pods", get(node::pods))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/metrics", get(cluster::metrics))
        .route("/openapi.json", get(openapi::document))
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            READ_TIMEOUT,
        ));
    Router::new()
        .merge(leader_bound)
        .merge(raft_rpc)
        .merge(reads)
        // After routing, so a body on an unknown method or route gets 405/404 first.
        .route_layer(middleware::from_fn(guards::refuse_read_bodies))
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::map_response(errors::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), guards::track))
        .with_state(state)
}
