//! `evio-node config-gen`: the init container. Reads the original `net-conf.json`, finds this
//! node's lease and writes the CNI conflist for it.
//!
//! Where the lease comes from, in order:
//! 1. the local replica in the data dir, read straight from its sled database — no network,
//!    so a node cut off from every peer still gets its config;
//! 2. when the database is locked because this node's `evio-node run` is up, that daemon's
//!    API (address recorded in `<data-dir>/api-address`), read with `consistency=local` —
//!    still the local replica, still no other member needed;
//! 3. the cluster, through any reachable `--join` member (forwarded to the leader), which
//!    creates the lease when the node has none.
//!
//! Nothing is written unless a lease was found; a conflist that already says the same is
//! left as is, one that says otherwise is replaced atomically and the change logged.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use evio_api::{ClientError, Consistency, LeaseJson};
use evio_cni::{OriginalNetConf, CONFLIST_FILE};
use evio_raft::data_dir::DataDir;
use evio_raft::{Lease, LeaseRecord, Pool};

use crate::daemon::backoff::Backoff;
use crate::host::API_ADDRESS_FILE;

#[derive(clap::Args)]
pub struct ConfigGenArgs {
    /// The original Evio net-conf.json (the ConfigMap).
    #[arg(long)]
    net_conf: PathBuf,
    /// Where to write 10-evio.conflist.
    #[arg(long)]
    cni_conf_dir: PathBuf,
    /// This node's evio data dir (its local lease replica).
    #[arg(long, default_value = "/var/lib/evio")]
    data_dir: PathBuf,
    /// This node's name. Default: $NODE_NAME, then the hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Cluster members to ask when the local replica has no lease (host:port, comma-separated).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// The cluster secret (needed to create a lease through the cluster).
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// How long to keep trying the cluster (e.g. 30s, 2m).
    #[arg(long, default_value = "30s")]
    deadline: String,
    /// This node's host-overlay address, recorded with a new lease.
    #[arg(long)]
    host_ip: Option<Ipv4Addr>,
    /// When this node holds no lease and none can be had by the deadline, exit 0 writing
    /// nothing: for an init container whose `evio-node run --cni-conf-dir` writes the conflist
    /// once it holds a lease (otherwise nodes could wait on each other for ever).
    #[arg(long)]
    no_lease_ok: bool,
    /// TLS: by default this node's certificate in --data-dir (config-gen on a member).
    #[command(flatten)]
    tls: crate::tls::TlsFileArgs,
}

/// What the local replica says about this node.
enum Local {
    Lease(Lease),
    /// The replica exists but holds no lease for this node (or there is no replica).
    None,
}

pub async fn run(args: ConfigGenArgs) -> anyhow::Result<()> {
    let original = OriginalNetConf::load(&args.net_conf)?;
    let pool = original.pool()?;
    let conf = original.net_conf();
    let deadline = humantime::parse_duration(&args.deadline).with_context(|| {
        format!(
            "--deadline {:?}: expected a duration like 30s",
            args.deadline
        )
    })?;
    let node = crate::host::node_name(args.node_name)?;
    let token = match &args.cluster_token_file {
        Some(path) => Some(crate::host::read_token(path)?),
        None => None,
    };
    let started = Instant::now();

    let member = Member {
        data_dir: &args.data_dir,
        tls: &args.tls,
        token: token.as_deref(),
    };
    let (lease, source) = match local_lease(&member, pool, &node).await? {
        Local::Lease(lease) => (lease, "local replica"),
        Local::None if args.no_lease_ok && args.join.is_empty() => {
            tracing::info!(node = %node, "no local lease and no --join member to ask: the conflist is left to evio-node run");
            return Ok(());
        }
        Local::None => {
            let remaining = deadline.saturating_sub(started.elapsed());
            match cluster_lease(&member, &args.join, &node, args.host_ip, pool, remaining).await {
                Ok(lease) => (lease, "cluster"),
                Err(e) if args.no_lease_ok => {
                    tracing::warn!(node = %node, error = %format!("{e:#}"), "no lease yet: the conflist is left to evio-node run");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    };
    let path = args.cni_conf_dir.join(CONFLIST_FILE);
    if let Some(previous) = conflist_subnet(&path) {
        let subnet = lease.block.subnet.to_string();
        if previous != subnet {
            tracing::warn!(
                conflist = %path.display(),
                was = %previous,
                now = %subnet,
                "the existing conflist names another subnet than this node's lease: replacing it"
            );
        }
    }
    let written = evio_cni::write_conflist(&args.cni_conf_dir, &conf, &lease)?;
    tracing::info!(
        node = %node,
        subnet = %lease.block.subnet,
        source,
        conflist = %path.display(),
        rewritten = written,
        "conflist {}",
        if written { "written" } else { "already current" }
    );
    Ok(())
}

/// The subnet an existing conflist was written for, if it is one of ours.
fn conflist_subnet(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value["plugins"][0]["nodeSubnet"]
        .as_str()
        .map(str::to_string)
}

/// How config-gen speaks to members: TLS with this node's certificate in the data dir (or
/// the `--cert-file` given), else plaintext with the token.
struct Member<'a> {
    data_dir: &'a Path,
    tls: &'a crate::tls::TlsFileArgs,
    token: Option<&'a str>,
}

impl Member<'_> {
    fn client(&self, addr: &str) -> anyhow::Result<evio_api::Client> {
        self.tls
            .client_at(self.data_dir, addr, self.token.map(str::to_string))
    }
}

/// Reads this node's lease from the data dir: from sled directly, or — when the running
/// daemon holds sled's lock — from that daemon's local view.
async fn local_lease(member: &Member<'_>, pool: Pool, node: &str) -> anyhow::Result<Local> {
    let data_dir = member.data_dir;
    if !data_dir.join("identity.json").exists() {
        tracing::info!(data_dir = %data_dir.display(), "no local replica yet");
        return Ok(Local::None);
    }
    // Refuses a data dir made for another pool, naming both.
    let dir = DataDir::open(data_dir, pool)?;
    match evio_raft::store::committed_table(&dir.db_path(), pool).await {
        Ok(table) => Ok(table.get(node).map_or(Local::None, Local::Lease)),
        Err(e) if e.is_locked() => {
            tracing::info!("the local replica is open in the running evio-node: asking its API");
            let addr_file = data_dir.join(API_ADDRESS_FILE);
            let addr = match std::fs::read_to_string(&addr_file) {
                Ok(addr) => addr.trim().to_string(),
                Err(e) => {
                    tracing::warn!(
                        file = %addr_file.display(),
                        error = %e,
                        "the local replica is locked by a running evio-node whose API address is unknown; trying the cluster"
                    );
                    return Ok(Local::None);
                }
            };
            let client = member.client(&addr)?;
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                client.get_lease(node, Consistency::Local),
            )
            .await;
            match answer {
                Ok(Ok(Some(json))) => Ok(Local::Lease(lease_from_json(&json, pool)?)),
                Ok(Ok(None)) => Ok(Local::None),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the local evio-node did not answer; trying the cluster");
                    Ok(Local::None)
                }
                Err(_) => {
                    tracing::warn!(
                        addr,
                        "the local evio-node did not answer within 5 s; trying the cluster"
                    );
                    Ok(Local::None)
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Acquires (or fetches) the lease through any reachable member, until `deadline`.
async fn cluster_lease(
    via: &Member<'_>,
    members: &[String],
    node: &str,
    host_ip: Option<Ipv4Addr>,
    pool: Pool,
    deadline: Duration,
) -> anyhow::Result<Lease> {
    let until = Instant::now() + deadline;
    let mut last_error = String::from("no --join member given");
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        for member in members {
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let client = via.client(member)?;
            match tokio::time::timeout(remaining, client.acquire(node, host_ip)).await {
                Ok(Ok((json, created))) => {
                    tracing::info!(member, created, subnet = %json.subnet, "lease from the cluster");
                    return lease_from_json(&json, pool);
                }
                // Plaintext to a TLS member, or TLS without a certificate: say what is missing.
                Ok(Err(e)) if via.tls.missing(via.data_dir, &e).is_some() => {
                    let missing = via.tls.missing(via.data_dir, &e).unwrap_or_default();
                    bail!("{member} refused the lease for {node}: {missing}");
                }
                // Refusals retrying cannot fix: bad token, bad name, pool exhausted.
                Ok(Err(
                    e @ ClientError::Api {
                        status: 400 | 401 | 409,
                        ..
                    },
                )) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("{member} refused the lease for {node}")));
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("{member}: no answer before the deadline"),
            }
        }
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        tokio::time::sleep(backoff.next_delay().min(remaining)).await;
    }
    bail!("no lease for {node} and no cluster member reachable within {deadline:?} (last error: {last_error}); the existing conflist, if any, is left untouched")
}

/// Rebuilds the lease from the API's JSON, refusing one from another pool.
fn lease_from_json(json: &LeaseJson, pool: Pool) -> anyhow::Result<Lease> {
    if json.pod_cidr != pool.pod_cidr() {
        bail!(
            "the cluster serves podCIDR {}, but net-conf.json says {}",
            json.pod_cidr,
            pool.pod_cidr()
        );
    }
    let index = pool
        .index_of(json.subnet)
        .with_context(|| format!("lease subnet {} is not a node block of {pool}", json.subnet))?;
    let block = pool
        .block(index)
        .with_context(|| format!("block {index} outside {pool}"))?;
    Ok(Lease {
        record: LeaseRecord {
            node: json.node.clone(),
            block: index,
            host_ip: json.host_ip,
            revision: json.revision,
            acquired_at: 0,
        },
        block,
        pool,
    })
}
