//! `evio-node run`'s settings: the flags (`RunArgs`), layered over the `--config` file and the
//! defaults, validated into `Settings`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use evio_cni::dataplane::Limits;
use evio_raft::{Pool, RaftTuning};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::etcd::EtcdSettings;

/// Flags; the same keys (kebab-case) may come from `--config FILE` (JSON). Flags (and their
/// environment variables) win over the file, the file over the defaults (`settings`).
#[derive(clap::Args, Serialize, Deserialize, Default)]
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
    /// File holding the cluster secret (required; mode 0600, at least 32 bytes). With TLS it
    /// only buys a joining node its certificate.
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// Speak plain HTTP to the other members, the token on every request (debugging only:
    /// anyone reading the network gets the cluster). Default: mutual TLS.
    #[arg(long)]
    #[serde(default)]
    insecure_plaintext: bool,
    /// Joining: the cluster CA's hash (sha256:...; `evio-node cluster ca-hash` on a member
    /// prints it); the token is only sent to a member whose certificate chains to that CA.
    #[arg(long)]
    ca_hash: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    tls_files: crate::tls::TlsFileArgs,
    /// Lifetime of the certificates the cluster CA issues (renewed when a third is left).
    /// Default: 30d.
    #[arg(long)]
    cert_lifetime: Option<String>,
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
    /// Require the cluster token for lease and node reads too.
    #[arg(long)]
    #[serde(default)]
    auth_reads: bool,
    /// Keep this node's CNI conflist (10-evio.conflist) in this dir current with its lease.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Mirror leases to these etcd endpoints (comma-separated URLs) while leader.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    #[command(flatten)]
    #[serde(flatten)]
    etcd: crate::etcd::EtcdArgs,
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
pub(super) struct Settings {
    pub(super) node_name: String,
    pub(super) data_dir: PathBuf,
    pub(super) listen: String,
    pub(super) advertise: Option<String>,
    pub(super) join: Vec<String>,
    pub(super) bootstrap: bool,
    pub(super) voters: usize,
    pub(super) pool: Pool,
    pub(super) token: String,
    pub(super) tls: crate::tls::TlsMode,
    pub(super) voter_grace: Duration,
    pub(super) tuning: RaftTuning,
    pub(super) auth_reads: bool,
    pub(super) cni_socket: PathBuf,
    pub(super) cni_limits: Limits,
    /// The conflist to keep current, with its node-independent settings.
    pub(super) cni_conf: Option<(PathBuf, evio_cni::NetConf)>,
    pub(super) etcd: Option<EtcdSettings>,
    pub(super) kubernetes: bool,
    pub(super) join_from_kubernetes: bool,
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) node_gc_grace: Duration,
    pub(super) kube_namespace: String,
}

impl RunArgs {
    /// Flags over the `--config` file, for every key alike: a key the flags leave unset
    /// (None, or false for a switch) comes from the file. New flags need no merge code.
    fn layered(self) -> anyhow::Result<RunArgs> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading --config {}", path.display()))?;
        let invalid = || {
            format!(
                "--config {} is not a valid evio-node config",
                path.display()
            )
        };
        let mut merged: Map<String, Value> = serde_json::from_str(&text).with_context(invalid)?;
        let Value::Object(flags) = serde_json::to_value(&self).context("reading the flags")? else {
            bail!("the flags are not a map");
        };
        merged.extend(flags.into_iter().filter(|(_, v)| is_set(v)));
        let mut args: RunArgs =
            serde_path_to_error::deserialize(Value::Object(merged)).with_context(invalid)?;
        args.config = self.config;
        Ok(args)
    }

    pub(super) fn settings(self) -> anyhow::Result<Settings> {
        let args = self.layered()?;
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
        let token = crate::host::read_token(&token_file)?;
        let tls = crate::tls::mode(
            args.insecure_plaintext,
            args.ca_hash.as_deref(),
            &args.tls_files,
            args.cert_lifetime.as_deref(),
        )?;
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
        let node_name = crate::host::node_name(args.node_name)?;
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
            Some(endpoints) => Some(args.etcd.settings(endpoints).context("--etcd-endpoints")?),
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
            tls,
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

/// Whether a flag was given: unset options serialize as null, unset switches as false.
fn is_set(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

impl Settings {
    /// The address peers dial: `--advertise`, else the bound listen address when concrete.
    pub(super) fn advertise_addr(&self, bound: SocketAddr) -> anyhow::Result<String> {
        let settings = self;
        match &settings.advertise {
            Some(addr) => Ok(addr.clone()),
            None if bound.ip().is_unspecified() => bail!(
                "--listen {} is a wildcard address: pass --advertise HOST:PORT (the address peers dial)",
                settings.listen
            ),
            None => Ok(bound.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
