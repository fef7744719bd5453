//! `evio-node run`: the production daemon. One member of the lease cluster: bootstraps it
//! (first node only) or joins it through any listed peer, serves the API and Raft RPC, and
//! — while leader — keeps the voter set healthy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use evio_api::{ApiOptions, Client, ClientError};
use evio_raft::{
    JoinRequest, JoinResponse, MembershipController, Pool, RaftTuning, Replica, ReplicaConfig,
};
use serde::Deserialize;

use crate::cni_service::{CniService, IPAM_DIR};
use crate::commands::config_gen;
use crate::etcd::mirror::EtcdMirror;
use crate::etcd::EtcdSettings;
use crate::kube::KubeStatus;
use crate::node_info::NodeInfo;
use crate::serve::{self, spawn_api, ShutdownSignals};
use evio_cni::dataplane::Limits;

/// Flags; the same keys (kebab-case) may come from `--config FILE` (JSON). Flags win.
#[derive(clap::Args, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunArgs {
    /// JSON file with any of these options (keys as the flags, without `--`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// This node's name (the Kubernetes node name). Default: $NODE_NAME, then the hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Raft log, lease replica and identity. Default: /var/lib/evio.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API + Raft RPC listen address. Default: 0.0.0.0:7700.
    #[arg(long)]
    listen: Option<String>,
    /// Address peers dial (host:port). Default: --listen, which then must be a concrete IP.
    #[arg(long)]
    advertise: Option<String>,
    /// Members to join through (comma-separated host:port); any reachable one will do.
    #[arg(long, value_delimiter = ',')]
    join: Option<Vec<String>>,
    /// Create a new cluster with this node as its only member. First node only.
    #[arg(long)]
    #[serde(default)]
    bootstrap: bool,
    /// Target number of voters (odd); the other members are learners. Default: 3.
    #[arg(long)]
    voters: Option<usize>,
    /// Pod overlay CIDR (or take it from --net-conf).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Node bits (or take them from --net-conf).
    #[arg(long)]
    node_bits: Option<String>,
    /// The original Evio net-conf.json (podCIDR, nodeBits, bridge settings).
    #[arg(long)]
    net_conf: Option<PathBuf>,
    /// File holding the cluster secret (required).
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// Replace a voter unreachable for longer than this (e.g. 60s, 2m). Default: 60s.
    #[arg(long)]
    voter_grace: Option<String>,
    /// Minimum election timeout in ms (the maximum is 1.5 times it). Default: 200.
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// Leader heartbeat interval in ms. Default: 100.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Snapshot every this many log entries. Default: 1000.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Log entries kept after a snapshot, for members slightly behind. Default: 500.
    #[arg(long)]
    snapshot_keep: Option<u64>,
    /// Snapshots travel to other members in chunks of at most this many KiB (1..=1024).
    /// Default: 1024.
    #[arg(long)]
    snapshot_chunk_kib: Option<u64>,
    /// The CNI socket evio-cni forwards to. Default: /run/evio/cni.sock.
    #[arg(long)]
    cni_socket: Option<PathBuf>,
    /// Seconds the daemon gives one CNI request (IPAM and nft still running then are killed),
    /// 1..=110; kept below the shim's wait (120 s, or the conflist's `replyTimeout`).
    /// Default: 60.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=110))]
    cni_deadline: Option<u64>,
    /// Require the cluster token for lease reads too.
    #[arg(long)]
    #[serde(default)]
    auth_reads: bool,
    /// Keep this node's CNI conflist (10-evio.conflist) in this dir current with its lease.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Mirror leases to these etcd endpoints (comma-separated URLs) while leader.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// File with the etcd username (like the original's /etc/credentials/username).
    #[arg(long)]
    etcd_username_file: Option<PathBuf>,
    /// File with the etcd password (like the original's /etc/credentials/password).
    #[arg(long)]
    etcd_password_file: Option<PathBuf>,
    /// CA certificate (PEM) for etcd over TLS.
    #[arg(long)]
    etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd over TLS.
    #[arg(long)]
    etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd over TLS.
    #[arg(long)]
    etcd_key_file: Option<PathBuf>,
    /// Kubernetes integration: annotate this node's Node with its pod subnet and API address,
    /// and (while leader) release the leases of deleted Nodes.
    #[arg(long)]
    #[serde(default)]
    kubernetes: bool,
    /// Find members to join through from the Nodes' `evio.io/api-address` annotations
    /// (added to --join).
    #[arg(long)]
    #[serde(default)]
    join_from_kubernetes: bool,
    /// kubeconfig for the Kubernetes API. Default: in-cluster service account, else
    /// $KUBECONFIG, else ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Release the lease of a Node deleted for longer than this (e.g. 10m). Default: 10m.
    #[arg(long)]
    node_gc_grace: Option<String>,
    /// With --kubernetes: the namespace of the cluster record (ConfigMap evio-cluster) that
    /// decides which single node creates the cluster. Default: $POD_NAMESPACE, then
    /// kube-system.
    #[arg(long, env = "POD_NAMESPACE")]
    kube_namespace: Option<String>,
}

/// Settings after merging flags, config file and defaults, all validated.
struct Settings {
    node_name: String,
    data_dir: PathBuf,
    listen: String,
    advertise: Option<String>,
    join: Vec<String>,
    bootstrap: bool,
    voters: usize,
    pool: Pool,
    token: String,
    voter_grace: Duration,
    tuning: RaftTuning,
    auth_reads: bool,
    cni_socket: PathBuf,
    cni_limits: Limits,
    /// The conflist to keep current, with its node-independent settings.
    cni_conf: Option<(PathBuf, evio_cni::NetConf)>,
    etcd: Option<EtcdSettings>,
    kubernetes: bool,
    join_from_kubernetes: bool,
    kubeconfig: Option<PathBuf>,
    node_gc_grace: Duration,
    kube_namespace: String,
}

impl RunArgs {
    fn merged_with_file(self) -> anyhow::Result<RunArgs> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading --config {}", path.display()))?;
        let file: RunArgs = serde_json::from_str(&text).with_context(|| {
            format!(
                "--config {} is not a valid evio-node config",
                path.display()
            )
        })?;
        Ok(RunArgs {
            config: self.config,
            node_name: self.node_name.or(file.node_name),
            data_dir: self.data_dir.or(file.data_dir),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            join: self.join.or(file.join),
            bootstrap: self.bootstrap || file.bootstrap,
            voters: self.voters.or(file.voters),
            pod_cidr: self.pod_cidr.or(file.pod_cidr),
            node_bits: self.node_bits.or(file.node_bits),
            net_conf: self.net_conf.or(file.net_conf),
            cluster_token_file: self.cluster_token_file.or(file.cluster_token_file),
            voter_grace: self.voter_grace.or(file.voter_grace),
            election_timeout_ms: self.election_timeout_ms.or(file.election_timeout_ms),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            snapshot_every: self.snapshot_every.or(file.snapshot_every),
            snapshot_keep: self.snapshot_keep.or(file.snapshot_keep),
            snapshot_chunk_kib: self.snapshot_chunk_kib.or(file.snapshot_chunk_kib),
            auth_reads: self.auth_reads || file.auth_reads,
            cni_socket: self.cni_socket.or(file.cni_socket),
            cni_deadline: self.cni_deadline.or(file.cni_deadline),
            cni_conf_dir: self.cni_conf_dir.or(file.cni_conf_dir),
            etcd_endpoints: self.etcd_endpoints.or(file.etcd_endpoints),
            etcd_username_file: self.etcd_username_file.or(file.etcd_username_file),
            etcd_password_file: self.etcd_password_file.or(file.etcd_password_file),
            etcd_ca_file: self.etcd_ca_file.or(file.etcd_ca_file),
            etcd_cert_file: self.etcd_cert_file.or(file.etcd_cert_file),
            etcd_key_file: self.etcd_key_file.or(file.etcd_key_file),
            kubernetes: self.kubernetes || file.kubernetes,
            join_from_kubernetes: self.join_from_kubernetes || file.join_from_kubernetes,
            kubeconfig: self.kubeconfig.or(file.kubeconfig),
            node_gc_grace: self.node_gc_grace.or(file.node_gc_grace),
            kube_namespace: self.kube_namespace.or(file.kube_namespace),
        })
    }

    fn settings(self) -> anyhow::Result<Settings> {
        let args = self.merged_with_file()?;
        let net_conf = match &args.net_conf {
            Some(path) => Some(evio_cni::OriginalNetConf::load(path)?),
            None => None,
        };
        let pod_cidr = args
            .pod_cidr
            .or_else(|| net_conf.as_ref().map(|c| c.pod_cidr.clone()))
            .context("--pod-cidr (or --net-conf) is required")?;
        let node_bits = args
            .node_bits
            .or_else(|| net_conf.as_ref().map(|c| c.node_bits.as_string()))
            .context("--node-bits (or --net-conf) is required")?;
        let pool = Pool::parse(&pod_cidr, Pool::parse_node_bits(&node_bits)?)?;

        let voters = args.voters.unwrap_or(3);
        if voters == 0 || voters % 2 == 0 {
            bail!("--voters {voters}: the voter count must be odd (1, 3, 5, ...)");
        }
        let token_file = args
            .cluster_token_file
            .context("--cluster-token-file is required: every member shares one cluster secret")?;
        let token = read_token(&token_file)?;
        let voter_grace = match &args.voter_grace {
            Some(text) => humantime::parse_duration(text).with_context(|| {
                format!("--voter-grace {text:?}: expected a duration like 60s or 2m")
            })?,
            None => Duration::from_secs(60),
        };
        let node_gc_grace = match &args.node_gc_grace {
            Some(text) => humantime::parse_duration(text).with_context(|| {
                format!("--node-gc-grace {text:?}: expected a duration like 10m or 1h")
            })?,
            None => Duration::from_secs(600),
        };
        if node_gc_grace.is_zero() {
            bail!("--node-gc-grace 0: the grace must be above 0 (a deleted Node's lease would go at once)");
        }
        let defaults = RaftTuning::default();
        let election_min = args
            .election_timeout_ms
            .unwrap_or(defaults.election_timeout_min_ms);
        let heartbeat = args.heartbeat_ms.unwrap_or(defaults.heartbeat_ms);
        if heartbeat == 0 || heartbeat >= election_min {
            bail!("--heartbeat-ms {heartbeat} must be above 0 and below --election-timeout-ms {election_min}");
        }
        // Above 1 MiB a chunk would not fit the Raft routes' body limit.
        let max_kib = (evio_raft::network::SNAPSHOT_CHUNK_BYTES / 1024) as u64;
        let snapshot_chunk_bytes = match args.snapshot_chunk_kib {
            Some(kib @ 1..) if kib <= max_kib => kib as usize * 1024,
            Some(kib) => bail!("--snapshot-chunk-kib {kib}: expected 1 to {max_kib}"),
            None => defaults.snapshot_chunk_bytes,
        };
        let node_name = match args.node_name {
            Some(name) => name,
            None => crate::commands::dev::hostname()?,
        };
        evio_raft::validate_node_name(&node_name).context("pass a valid --node-name")?;
        let join = args.join.unwrap_or_default();
        if !args.bootstrap && join.is_empty() && !args.join_from_kubernetes {
            bail!(
                "pass --join ADDR[,ADDR] (or --kubernetes --join-from-kubernetes) to join a cluster, or --bootstrap for the very first node"
            );
        }
        let cni_socket = args
            .cni_socket
            .unwrap_or_else(|| PathBuf::from(evio_cni::spec::DEFAULT_SOCKET));
        let cni_conf = match args.cni_conf_dir {
            Some(dir) => {
                let socket = std::path::absolute(&cni_socket)
                    .with_context(|| format!("resolving {}", cni_socket.display()))?;
                let conf = match &net_conf {
                    Some(original) if original.socket.is_some() => original.net_conf(),
                    Some(original) => evio_cni::NetConf {
                        socket: socket.to_string_lossy().into_owned(),
                        ..original.net_conf()
                    },
                    None => evio_cni::NetConf {
                        socket: socket.to_string_lossy().into_owned(),
                        ..Default::default()
                    },
                };
                Some((dir, conf))
            }
            None => None,
        };
        let etcd = match args.etcd_endpoints {
            Some(endpoints) => {
                let settings = EtcdSettings {
                    endpoints,
                    username_file: args.etcd_username_file,
                    password_file: args.etcd_password_file,
                    ca_file: args.etcd_ca_file,
                    cert_file: args.etcd_cert_file,
                    key_file: args.etcd_key_file,
                };
                settings.validate().context("--etcd-endpoints")?;
                Some(settings)
            }
            None => None,
        };
        Ok(Settings {
            node_name,
            data_dir: args
                .data_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/evio")),
            listen: args.listen.unwrap_or_else(|| "0.0.0.0:7700".into()),
            advertise: args.advertise,
            join,
            bootstrap: args.bootstrap,
            voters,
            pool,
            token,
            voter_grace,
            tuning: RaftTuning {
                heartbeat_ms: heartbeat,
                election_timeout_min_ms: election_min,
                election_timeout_max_ms: RaftTuning::election_max_for(election_min),
                snapshot_every: args.snapshot_every.unwrap_or(defaults.snapshot_every),
                logs_kept_after_snapshot: args
                    .snapshot_keep
                    .unwrap_or(defaults.logs_kept_after_snapshot),
                snapshot_chunk_bytes,
            },
            auth_reads: args.auth_reads,
            cni_socket,
            cni_limits: match args.cni_deadline {
                Some(secs) if (1..=110).contains(&secs) => Limits {
                    deadline: Duration::from_secs(secs),
                    ..Limits::default()
                },
                Some(secs) => {
                    bail!("cni-deadline {secs} is out of range: expected 1..=110 seconds")
                }
                None => Limits::default(),
            },
            cni_conf,
            etcd,
            kubernetes: args.kubernetes,
            join_from_kubernetes: args.join_from_kubernetes,
            kubeconfig: args.kubeconfig,
            node_gc_grace,
            kube_namespace: args.kube_namespace.unwrap_or_else(|| "kube-system".into()),
        })
    }
}

/// Reads a token file; whitespace around the secret is ignored, an empty secret refused.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the cluster token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("the cluster token file {} is empty", path.display());
    }
    Ok(token)
}

fn advertise_addr(settings: &Settings, bound: SocketAddr) -> anyhow::Result<String> {
    match &settings.advertise {
        Some(addr) => Ok(addr.clone()),
        None if bound.ip().is_unspecified() => bail!(
            "--listen {} is a wildcard address: pass --advertise HOST:PORT (the address peers dial)",
            settings.listen
        ),
        None => Ok(bound.to_string()),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install().context("installing signal handlers")?;
    let settings = args.settings()?;
    let (listener, bound) = serve::bind(&settings.listen).await?;
    let advertise = advertise_addr(&settings, bound)?;
    // Before anything is written: a bad kubeconfig leaves no data dir behind.
    let kube_client = if settings.kubernetes || settings.join_from_kubernetes {
        Some(crate::kube::client(settings.kubeconfig.as_deref()).await?)
    } else {
        None
    };

    let mut config = ReplicaConfig::new(
        settings.data_dir.clone(),
        settings.pool,
        settings.node_name.clone(),
        advertise.clone(),
    );
    config.tuning = settings.tuning.clone();
    config.token = settings.token.clone();
    let replica = Replica::open(config).await?;
    let initialized = replica.raft().is_initialized().await?;
    if settings.bootstrap && (initialized || replica.cluster_id().is_some()) {
        replica.shutdown().await;
        bail!(
            "--bootstrap refused: data dir {} already belongs to cluster {}; restart without --bootstrap",
            settings.data_dir.display(),
            replica.cluster_id().unwrap_or_else(|| "(unnamed)".into())
        );
    }

    // config-gen finds this daemon's API here when the daemon holds the replica's lock.
    evio_raft::data_dir::write_atomic(
        &settings.data_dir.join(config_gen::API_ADDRESS_FILE),
        advertise.as_bytes(),
        0o644,
    )
    .context("recording the API address in the data dir")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mirror = settings
        .etcd
        .clone()
        .map(|etcd| EtcdMirror::new(etcd, replica.clone()));
    let cni = match CniService::bind(
        &settings.cni_socket,
        settings.cni_limits,
        settings.data_dir.join(IPAM_DIR),
    ) {
        Ok(service) => service,
        Err(e) => {
            replica.shutdown().await;
            return Err(e.into());
        }
    };
    let kube_status = settings
        .kubernetes
        .then(|| KubeStatus::enabled(&settings.node_name));
    let node_info = NodeInfo {
        cni_socket: cni.path().to_path_buf(),
        pods: cni.pods(),
        kubernetes: kube_status.clone(),
    };
    let mut server_stop = stop_rx.clone();
    let mut server = spawn_api(
        listener,
        replica.clone(),
        ApiOptions {
            auth_reads: settings.auth_reads,
            etcd_mirror: mirror.as_ref().map(EtcdMirror::status),
            node: Some(Arc::new(node_info)),
        },
        async move {
            let _ = server_stop.wait_for(|stop| *stop).await;
        },
    );
    tokio::spawn(crate::cni_service::follow_lease(
        replica.clone(),
        cni.pods(),
        stop_rx.clone(),
    ));
    let cni = tokio::spawn(cni.run());
    let controller =
        MembershipController::new(replica.clone(), settings.voters, settings.voter_grace);
    let controller = tokio::spawn(controller.run(stop_rx.clone()));
    let mirror = mirror.map(|m| tokio::spawn(m.run(stop_rx.clone())));
    let conflist = settings.cni_conf.clone().map(|(dir, conf)| {
        tokio::spawn(config_gen::keep_current(
            replica.clone(),
            format!("http://{advertise}"),
            settings.token.clone(),
            dir,
            conf,
            stop_rx.clone(),
        ))
    });
    let mut kube_tasks = Vec::new();
    if let (Some(status), Some(client)) = (&kube_status, &kube_client) {
        kube_tasks.push(tokio::spawn(crate::kube::annotate::run(
            client.clone(),
            replica.clone(),
            settings.node_name.clone(),
            advertise.clone(),
            status.clone(),
            stop_rx.clone(),
        )));
        kube_tasks.push(tokio::spawn(crate::kube::node_gc::run(
            client.clone(),
            replica.clone(),
            settings.node_gc_grace,
            status.clone(),
            stop_rx.clone(),
        )));
    }

    let start = async {
        if !initialized {
            let record = kube_client.as_ref().filter(|_| settings.kubernetes);
            // With --kubernetes the cluster record decides, so that exactly one node per
            // install ever bootstraps (an explicit --bootstrap only if it agrees).
            let bootstrap = match record {
                Some(client) => {
                    let role = crate::kube::bootstrap::claim(
                        client,
                        &settings.kube_namespace,
                        &settings.node_name,
                        replica.node_id(),
                    )
                    .await;
                    match role {
                        crate::kube::bootstrap::Role::Bootstrap => true,
                        crate::kube::bootstrap::Role::Join { bootstrapper }
                            if settings.bootstrap =>
                        {
                            bail!("--bootstrap refused: {bootstrapper} already created this install's cluster (ConfigMap {}/{}); restart without --bootstrap to join it", settings.kube_namespace, crate::kube::bootstrap::RECORD)
                        }
                        crate::kube::bootstrap::Role::Join { .. } => false,
                    }
                }
                None => settings.bootstrap,
            };
            if bootstrap {
                replica.bootstrap_single().await?;
                tracing::info!(cluster = ?replica.cluster_id(), "bootstrapped a new cluster");
                if let (Some(client), Some(id)) = (record, replica.cluster_id()) {
                    crate::kube::bootstrap::record_cluster_id(
                        client,
                        &settings.kube_namespace,
                        &id,
                    )
                    .await;
                }
            } else {
                join(&replica, &settings, kube_client.as_ref()).await?;
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        result = start => match result {
            Ok(()) => {
                tracing::info!(
                    api = %format!("http://{advertise}"),
                    node = %settings.node_name,
                    node_id = replica.node_id(),
                    cluster = ?replica.cluster_id(),
                    "evio-node running: API at http://{advertise}"
                );
                serve::until_signal(&mut signals, &mut server).await
            }
            Err(e) => Err(e),
        },
        _ = signals.recv() => Ok(()),
    };
    let _ = stop_tx.send(true);
    cni.abort();
    let _ = cni.await;
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
    let _ = controller.await;
    for task in [mirror, conflist].into_iter().flatten() {
        let _ = task.await;
    }
    for task in kube_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    replica.shutdown().await;
    outcome
}

/// Asks the listed peers, in turn and with backoff, to admit this node; returns once it is a
/// member. Refusals that retrying cannot fix (wrong pool, name in use, bad token) end it.
async fn join(
    replica: &Replica,
    settings: &Settings,
    kube_client: Option<&kube::Client>,
) -> anyhow::Result<()> {
    let request = JoinRequest {
        node_id: replica.node_id(),
        name: settings.node_name.clone(),
        addr: replica.node().addr.clone(),
        pod_cidr: settings.pool.pod_cidr_list(),
        node_bits: settings.pool.node_bits(),
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let peers = if settings.join_from_kubernetes {
            crate::kube::peers::join_candidates(&settings.join, kube_client, &settings.node_name)
                .await
        } else {
            settings.join.clone()
        };
        if peers.is_empty() {
            tracing::warn!(retry_in = ?backoff, "join: no member to try yet (no --join given and no other Node carries an evio.io/api-address annotation)");
        }
        for peer in &peers {
            let client =
                Client::new(&format!("http://{peer}"))?.with_token(Some(settings.token.clone()));
            match client.join(&request).await {
                Ok(JoinResponse {
                    cluster_id,
                    leader_id,
                }) => {
                    if let Some(ours) = replica.cluster_id() {
                        if ours != cluster_id {
                            bail!("data dir {} belongs to cluster {ours}, but {peer} is in cluster {cluster_id}; use an empty data dir to join it", settings.data_dir.display());
                        }
                    } else {
                        replica.set_cluster_id(&cluster_id)?;
                    }
                    tracing::info!(peer, cluster = %cluster_id, leader_id, "admitted; waiting for the membership to arrive");
                    wait_for_membership(replica).await?;
                    return Ok(());
                }
                Err(
                    e @ ClientError::Api {
                        status: 401 | 409, ..
                    },
                ) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("joining through {peer} was refused")));
                }
                Err(e) => {
                    tracing::warn!(peer, error = %e, retry_in = ?backoff, "join: cannot join through this peer yet")
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A joining member gives up only when it has made no progress for this long.
const JOIN_STALL: Duration = Duration::from_secs(60);

/// Waits until the membership that admits this node reaches it, for as long as the leader
/// makes progress with it: snapshot bytes arriving (a big table comes in chunks before it is
/// installed at once), the applied or log index moving. A fixed limit failed joins of big
/// tables that were progressing fine.
async fn wait_for_membership(replica: &Replica) -> anyhow::Result<()> {
    let mut metrics = replica.raft().metrics();
    let progress = |m: &evio_raft::types::RaftMetrics| {
        (
            replica.snapshot_bytes_received(),
            m.last_applied.map(|id| id.index),
            m.last_log_index,
        )
    };
    let mut last = progress(&metrics.borrow());
    let mut last_change = tokio::time::Instant::now();
    let mut last_report = last_change;
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.membership_config.membership().get_node(&m.id).is_some() {
                return Ok(());
            }
            let now = progress(&m);
            if now != last {
                last = now;
                last_change = tokio::time::Instant::now();
            } else if last_change.elapsed() > JOIN_STALL {
                bail!(
                    "admitted, but the membership did not reach this node: no progress for {} s (snapshot bytes received {}, applied index {:?})",
                    JOIN_STALL.as_secs(),
                    last.0,
                    last.1
                );
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = tokio::time::Instant::now();
                tracing::info!(
                    snapshot_bytes = last.0,
                    applied = ?last.1,
                    "joining: catching up with the cluster"
                );
            }
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    bail!("admitted, but Raft stopped before the membership reached this node");
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        let mut full = vec!["evio-node"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full) {
            Ok(cli) => cli.run,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("evio.json");
        let body = serde_json::json!({
            "node-name": "from-file", "listen": "127.0.0.1:7999", "join": ["10.10.0.1:7700"],
            "pod-cidr": "10.244.0.0/16", "node-bits": "8", "voters": 5,
            "cluster-token-file": token, "voter-grace": "2m",
            "kubernetes": true, "join-from-kubernetes": true, "kubeconfig": "/etc/evio/kubeconfig",
            "node-gc-grace": "15m",
        });
        std::fs::write(&config, body.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let config_arg = config.to_string_lossy().to_string();
        let s = parse(&["--config", &config_arg, "--node-name", "from-flag"])
            .settings()
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.node_name, "from-flag");
        assert_eq!(s.listen, "127.0.0.1:7999");
        assert_eq!(s.join, vec!["10.10.0.1:7700".to_string()]);
        assert_eq!(s.voters, 5);
        assert_eq!(s.token, "s3cret");
        assert_eq!(s.voter_grace, Duration::from_secs(120));
        assert_eq!(s.pool.block_count(), 256);
        assert!(s.kubernetes && s.join_from_kubernetes);
        assert_eq!(s.kubeconfig, Some(PathBuf::from("/etc/evio/kubeconfig")));
        assert_eq!(s.node_gc_grace, Duration::from_secs(900));
    }

    #[test]
    fn bad_settings_name_the_value() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap_or_else(|e| panic!("{e}"));
        let token_arg = token.to_string_lossy().to_string();
        let base = [
            "--node-name",
            "n",
            "--pod-cidr",
            "10.244.0.0/16",
            "--node-bits",
            "8",
            "--cluster-token-file",
            &token_arg,
            "--bootstrap",
        ];
        let cases: [(&[&str], &str); 9] = [
            (&["--etcd-endpoints", "127.0.0.1:2379"], "127.0.0.1:2379"),
            (
                &[
                    "--etcd-endpoints",
                    "http://127.0.0.1:2379",
                    "--etcd-username-file",
                    "/u",
                ],
                "password file",
            ),
            (&["--voters", "4"], "--voters 4"),
            (&["--node-gc-grace", "soon"], "--node-gc-grace \"soon\""),
            (&["--node-gc-grace", "0s"], "--node-gc-grace 0"),
            (&["--voter-grace", "soon"], "soon"),
            (&["--heartbeat-ms", "900"], "--heartbeat-ms 900"),
            (&["--node-bits", "x"], "\"x\""),
            (
                &["--config", "/nonexistent/evio.json"],
                "/nonexistent/evio.json",
            ),
        ];
        for (extra, needle) in cases {
            let mut args: Vec<&str> = base.to_vec();
            // a later --node-bits would be a duplicate flag: replace the base value instead
            if extra[0] == "--node-bits" {
                args[5] = extra[1];
            } else {
                args.extend_from_slice(extra);
            }
            let err = parse(&args).settings().map(|_| ()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{extra:?}: {msg}");
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap_or_else(|e| panic!("{e}"));
        let err = read_token(&empty).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let no_join = parse(&[
            "--node-name",
            "n",
            "--pod-cidr",
            "10.244.0.0/16",
            "--node-bits",
            "8",
            "--cluster-token-file",
            &token_arg,
        ]);
        let err = no_join.settings().map(|_| ()).unwrap_err();
        assert!(format!("{err:#}").contains("--join"), "{err:#}");
    }
}
