//! evio's HTTP API: the JSON types ([`types`]), the axum server ([`server`]) with its
//! Prometheus metrics ([`metrics`]), and a typed client ([`client`]).

pub mod client;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod types;

pub use client::{Client, ClientError};
pub use listener::{serve, Admission, Classify, ServeLimits};
pub use server::{router, ApiOptions, EtcdMirrorStatus, NodeProvider, PodsError, PodsFuture};
pub use types::{
    AcquireBody, ClaimBody, ClusterJson, CniJson, Consistency, ErrorBody, ErrorCode,
    EtcdMirrorJson, KubernetesJson, LeaseJson, MemberJson, NodeJson, NodePodsJson, PodJson,
    ReserveBody,
};
