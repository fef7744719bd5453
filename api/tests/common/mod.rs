//! A real member for tests: replica on a temp dir + the API router on 127.0.0.1:<random>.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use evio_api::{ApiOptions, Classify, Client, ServeLimits};
use evio_raft::{Pool, RaftTuning, Replica, ReplicaConfig};

pub const TOKEN: &str = "test-cluster-token";

pub struct Member {
    pub base: String,
    pub replica: Arc<Replica>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Member {
    /// Opens a member (not yet in any cluster) and serves its API.
    pub async fn start(name: &str, pool: Pool, tuning: RaftTuning) -> Member {
        Self::start_with(name, pool, tuning, ApiOptions::default()).await
    }

    pub async fn start_with(
        name: &str,
        pool: Pool,
        tuning: RaftTuning,
        options: ApiOptions,
    ) -> Member {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self::start_in(dir, name, pool, tuning, options, Serving::plain(None)).await
    }

    /// Serves with the given listener limits and connection classes.
    pub async fn start_limited(
        name: &str,
        pool: Pool,
        limits: ServeLimits,
        classify: Classify,
    ) -> Member {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let serving = Serving {
            limits,
            classify,
            tls: None,
        };
        let (tuning, options) = Default::default();
        Self::start_in(dir, name, pool, tuning, options, serving).await
    }

    /// A member speaking mutual TLS with the managed PKI in `<dir>/data/tls` (empty until
    /// the caller creates a CA or stores a certificate).
    pub async fn start_tls(name: &str, pool: Pool) -> Member {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let tls = evio_raft::tls::TlsContext::new(evio_raft::tls::Source::Managed {
            dir: dir.path().join("data").join(evio_raft::tls::TLS_DIR),
            lifetime: evio_raft::tls::DEFAULT_CERT_LIFETIME,
        })
        .unwrap_or_else(|e| panic!("tls: {e}"));
        let (tuning, options) = Default::default();
        Self::start_in(dir, name, pool, tuning, options, Serving::plain(Some(tls))).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        name: &str,
        pool: Pool,
        tuning: RaftTuning,
        options: ApiOptions,
        serving: Serving,
    ) -> Member {
        let Serving {
            limits,
            classify,
            tls,
        } = serving;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let mut config =
            ReplicaConfig::new(dir.path().join("data"), pool, name.into(), addr.to_string());
        config.request_timeout = Duration::from_millis(1500);
        config.tuning = tuning;
        config.token = TOKEN.into();
        config.tls = tls.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let replica = Replica::open(config)
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = evio_api::router(replica.clone(), options);
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            let _ = evio_api::serve(listener, app, limits, classify, tls, stopped).await;
        });
        Member {
            base: format!("{scheme}://{addr}"),
            replica,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// A member that bootstrapped a cluster of its own and leads it.
    pub async fn single(name: &str, pool: Pool) -> Member {
        Self::start(name, pool, RaftTuning::default())
            .await
            .lead()
            .await
    }

    /// Bootstraps this member alone and waits until it leads.
    pub async fn lead(self) -> Member {
        self.replica
            .bootstrap_single()
            .await
            .unwrap_or_else(|e| panic!("bootstrap: {e}"));
        self.replica
            .wait_for_leader(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("no leader: {e}"));
        self
    }

    /// A client carrying the cluster token.
    pub fn client(&self) -> Client {
        Client::new(&self.base)
            .unwrap_or_else(|e| panic!("client: {e}"))
            .with_token(Some(TOKEN.into()))
    }

    /// Stops serving and stops Raft.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.replica.shutdown().await;
    }
}

/// How a test member's listener serves: its limits, connection classes and TLS.
struct Serving {
    limits: ServeLimits,
    classify: Classify,
    tls: Option<Arc<evio_raft::tls::TlsContext>>,
}

impl Serving {
    /// The default limits, loopback exempt from the per-peer ones.
    fn plain(tls: Option<Arc<evio_raft::tls::TlsContext>>) -> Serving {
        Serving {
            limits: ServeLimits::default(),
            classify: evio_api::listener::loopback_exempt(),
            tls,
        }
    }
}

/// Acquires a lease for `node` (no host IP): (the lease, whether it is new).
pub async fn acquired(api: &Client, node: &str) -> (evio_api::LeaseJson, bool) {
    api.acquire(node, None)
        .await
        .unwrap_or_else(|e| panic!("acquire {node}: {e}"))
}

/// `node`'s lease as a linearizable read sees it.
pub async fn lease_of(api: &Client, node: &str) -> Option<evio_api::LeaseJson> {
    api.get_lease(node, evio_api::Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("get {node}: {e}"))
}

/// Every lease `api` lists (node -> subnet).
pub async fn subnets(
    api: &Client,
    consistency: evio_api::Consistency,
) -> std::collections::BTreeMap<String, String> {
    let leases = api.list_leases(consistency).await;
    let leases = leases.unwrap_or_else(|e| panic!("list: {e}"));
    leases
        .into_iter()
        .map(|l| (l.node, l.subnet.to_string()))
        .collect()
}

pub fn pool(cidr: &str, bits: u8) -> Pool {
    Pool::parse(cidr, bits).unwrap_or_else(|e| panic!("pool: {e}"))
}

/// The `code` of an error body (panics on anything else).
pub fn error_code(body: &str) -> String {
    serde_json::from_str::<evio_api::ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
        .code
        .to_string()
}
