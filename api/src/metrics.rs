//! Prometheus metrics: request counts and latencies (recorded by middleware) and lease/Raft
//! gauges (refreshed from the replica at scrape time, so they are never stale).

use std::sync::{Arc, Mutex};

use evio_raft::Replica;

use crate::types::EtcdMirrorJson;
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaderLabels {
    pub leader_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub family: String,
    pub pod_cidr: String,
}

/// Leases released because their Kubernetes Node was deleted (`evio-node run --kubernetes`).
/// Process-wide: the node GC increments it, every registry exports it.
static NODE_GC_RELEASES: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Counter::default);

/// The counter of leases released for deleted Nodes.
pub fn node_gc_releases() -> Counter {
    NODE_GC_RELEASES.clone()
}

pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    leases: Gauge,
    leases_free: Gauge,
    term: Gauge,
    leader: Family<LeaderLabels, Gauge>,
    pool: Family<PoolLabels, Gauge>,
    is_leader: Gauge,
    last_applied: Gauge,
    last_log_index: Gauge,
    purged: Gauge,
    mirror_active: Gauge,
    mirror_healthy: Gauge,
    mirror_lag: Gauge,
    mirror_keys: Gauge,
    mirror_errors: Gauge,
    // Serialises scrapes: gauges are refreshed then encoded as one step.
    scrape: Mutex<()>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("evio");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0002, 2.0, 16))
        });
        let leases = Gauge::default();
        let leases_free = Gauge::default();
        let term = Gauge::default();
        let leader = Family::<LeaderLabels, Gauge>::default();
        let pool = Family::<PoolLabels, Gauge>::default();
        let is_leader = Gauge::default();
        let last_applied = Gauge::default();
        let last_log_index = Gauge::default();
        let purged = Gauge::default();
        let mirror_active = Gauge::default();
        let mirror_healthy = Gauge::default();
        let mirror_lag = Gauge::default();
        let mirror_keys = Gauge::default();
        let mirror_errors = Gauge::default();
        registry.register(
            "etcd_mirror_active",
            "1 while this member (the leader) mirrors leases to etcd",
            mirror_active.clone(),
        );
        registry.register(
            "etcd_mirror_healthy",
            "1 when the last etcd mirror call succeeded (0 when not configured)",
            mirror_healthy.clone(),
        );
        registry.register(
            "etcd_mirror_lag_revisions",
            "Applied Raft revisions not yet mirrored to etcd",
            mirror_lag.clone(),
        );
        registry.register(
            "etcd_mirror_keys",
            "Keys evio holds in etcd",
            mirror_keys.clone(),
        );
        registry.register(
            "etcd_mirror_errors",
            "Failed etcd mirror attempts since start",
            mirror_errors.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register("leases", "Leases held in the local replica", leases.clone());
        registry.register(
            "leases_free",
            "Free node blocks in the local replica",
            leases_free.clone(),
        );
        registry.register(
            "pool_cidr",
            "1 for each podCIDR of the pool, by family (two on a dual-stack pool)",
            pool.clone(),
        );
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register(
            "raft_leader",
            "Known Raft leader (1 for the leader's id)",
            leader.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 when this member is the leader",
            is_leader.clone(),
        );
        registry.register(
            "raft_last_applied_index",
            "Last log index applied to the local replica",
            last_applied.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index in the local log",
            last_log_index.clone(),
        );
        registry.register(
            "raft_purged_index",
            "Last log index purged from the local log (covered by a snapshot)",
            purged.clone(),
        );
        registry.register(
            "node_gc_releases",
            "Leases released because their Kubernetes Node was deleted for longer than the grace",
            node_gc_releases(),
        );
        Self {
            registry,
            requests,
            latency,
            leases,
            leases_free,
            term,
            leader,
            pool,
            is_leader,
            last_applied,
            last_log_index,
            purged,
            mirror_active,
            mirror_healthy,
            mirror_lag,
            mirror_keys,
            mirror_errors,
            scrape: Mutex::new(()),
        }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Refreshes the gauges from `replica` (and the etcd mirror, when there is one) and
    /// renders the Prometheus text format.
    pub fn render(
        &self,
        replica: &Arc<Replica>,
        etcd_mirror: Option<&EtcdMirrorJson>,
    ) -> Result<String, std::fmt::Error> {
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let mirror = etcd_mirror.cloned().unwrap_or_default();
        self.mirror_active.set(i64::from(mirror.active));
        self.mirror_healthy.set(i64::from(mirror.healthy));
        self.mirror_lag.set(gauge_value(mirror.lag_revisions));
        self.mirror_keys.set(gauge_value(mirror.keys));
        self.mirror_errors.set(gauge_value(mirror.errors));
        let metrics = replica.metrics();
        {
            let applied = replica.local().read();
            self.leases.set(gauge_value(applied.table.len() as u64));
            self.leases_free
                .set(gauge_value(applied.table.free_blocks()));
            self.pool.clear();
            let pool = applied.table.pool();
            for cidr in pool.pod_cidrs() {
                self.pool
                    .get_or_create(&PoolLabels {
                        family: evio_raft::pool::Family::of(&cidr).to_string(),
                        pod_cidr: cidr.to_string(),
                    })
                    .set(1);
            }
        }
        self.term.set(gauge_value(metrics.current_term));
        self.leader.clear();
        if let Some(leader) = metrics.current_leader {
            self.leader
                .get_or_create(&LeaderLabels {
                    leader_id: leader.to_string(),
                })
                .set(1);
        }
        self.is_leader
            .set(i64::from(metrics.state == ServerState::Leader));
        self.last_applied
            .set(gauge_value(metrics.last_applied.map_or(0, |id| id.index)));
        self.last_log_index
            .set(gauge_value(metrics.last_log_index.unwrap_or(0)));
        self.purged
            .set(gauge_value(metrics.purged.map_or(0, |id| id.index)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
