//! The CLI client: `evio-node leases ...` and `evio-node cluster status` over the HTTP API.

use std::net::Ipv4Addr;

use clap::{Args, Subcommand, ValueEnum};
use evio_api::{Client, ClusterJson, Consistency, LeaseJson};

/// How a client reaches a member: its API root, the token, and TLS from the data dir or
/// from files.
#[derive(Args)]
pub struct MemberArgs {
    /// The member's API root. Default: https://127.0.0.1:7700 when this node's certificate
    /// is found (the data dir, or --cert-file), else http://127.0.0.1:7700.
    #[arg(long, env = "EVIO_API")]
    pub(crate) api: Option<String>,
    /// File with the cluster token (with --insecure-plaintext members, needed to change
    /// leases; `evio-node dev` writes `<data-dir>/cluster-token`).
    #[arg(long, env = "EVIO_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The member's data dir, where its certificate is found when members speak TLS.
    #[arg(long, env = "EVIO_DATA_DIR", default_value = "/var/lib/evio")]
    data_dir: std::path::PathBuf,
    #[command(flatten)]
    tls: crate::tls::TlsFileArgs,
}

impl MemberArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let token = match &self.token_file {
            Some(path) => Some(crate::host::read_token(path)?),
            None => None,
        };
        self.tls.client(&self.data_dir, self.api.as_deref(), token)
    }
}

#[derive(Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub(crate) member: MemberArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

impl ApiArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        self.member.client()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Table,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReadConsistency {
    Local,
    Linearizable,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Local => Consistency::Local,
            ReadConsistency::Linearizable => Consistency::Linearizable,
        }
    }
}

#[derive(Subcommand)]
pub enum LeasesCommand {
    /// All leases.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
        consistency: ReadConsistency,
    },
    /// One node's lease.
    Get {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
        consistency: ReadConsistency,
    },
    /// Acquire (or show) a node's lease.
    Acquire {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
        /// The node's address on the host overlay.
        #[arg(long)]
        host_ip: Option<Ipv4Addr>,
    },
    /// Give a node the range reserved for an imported owner (`legacy:...`).
    Claim {
        node: String,
        /// The reserved owner, e.g. legacy:10.244.3.2-10.244.3.254 (see `leases list`).
        #[arg(long)]
        from: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Return a node's block to the pool.
    Release {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, applied index and members.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a member for good: out of the membership, and its certificate revoked on every
    /// member (Raft RPC, writes and joins with it are refused from then on). The node can
    /// come back only with a wiped data dir (a new node id and certificate).
    Remove {
        /// The member's node name or node id (`cluster status` lists them).
        member: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The cluster CA's hash (sha256:...), what a joining node passes as --ca-hash.
    CaHash {
        /// A member's data dir (its CA is in tls/ca.pem).
        #[arg(long, env = "EVIO_DATA_DIR", default_value = "/var/lib/evio")]
        data_dir: std::path::PathBuf,
        /// The CA certificate (PEM) instead of the data dir's.
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One line a lease; a dual-stack lease's IPv6 block on a second line under its IPv4 one.
pub(crate) fn print_leases(leases: &[LeaseJson]) {
    println!(
        "{:<30} {:<22} {:<22} {:<45} {:<15} {:>8}  ACQUIRED",
        "NODE", "SUBNET", "GATEWAY", "RANGE", "HOST-IP", "REVISION"
    );
    for l in leases {
        for (i, block) in l.blocks().iter().enumerate() {
            let range = format!("{}-{}", block.range_start, block.range_end);
            if i > 0 {
                println!(
                    "{:<30} {:<22} {:<22} {range}",
                    "",
                    block.subnet.to_string(),
                    block.gateway.to_string(),
                );
                continue;
            }
            println!(
                "{:<30} {:<22} {:<22} {:<45} {:<15} {:>8}  {}",
                l.node,
                block.subnet.to_string(),
                block.gateway.to_string(),
                range,
                l.host_ip
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                l.revision,
                l.acquired_at
            );
        }
    }
}

fn show_leases(output: Output, leases: &[LeaseJson]) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&leases),
        Output::Table => {
            print_leases(leases);
            Ok(())
        }
    }
}

pub async fn leases(cmd: LeasesCommand) -> anyhow::Result<()> {
    match cmd {
        LeasesCommand::List { api, consistency } => {
            let leases = api.client()?.list_leases(consistency.into()).await?;
            show_leases(api.output, &leases)
        }
        LeasesCommand::Get {
            node,
            api,
            consistency,
        } => match api.client()?.get_lease(&node, consistency.into()).await? {
            Some(lease) => show_leases(api.output, &[lease]),
            None => anyhow::bail!("node {node:?} holds no lease"),
        },
        LeasesCommand::Acquire { node, api, host_ip } => {
            let (lease, created) = api.client()?.acquire(&node, host_ip).await?;
            if api.output == Output::Table {
                eprintln!("{}", if created { "acquired" } else { "already held" });
            }
            show_leases(api.output, &[lease])
        }
        LeasesCommand::Claim { node, from, api } => {
            let lease = api.client()?.claim(&node, &from).await?;
            if api.output == Output::Table {
                eprintln!("{node} claimed {} from {from}", lease.subnet);
            }
            show_leases(api.output, &[lease])
        }
        LeasesCommand::Release { node, api } => {
            api.client()?.release(&node).await?;
            if api.output == Output::Json {
                print_json(&serde_json::json!({"released": node}))
            } else {
                println!("released {node}");
                Ok(())
            }
        }
    }
}

fn print_removed(
    output: Output,
    removed: &evio_raft::RemoveResponse,
    name: &str,
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(removed),
        Output::Table => {
            let how = if removed.was_member {
                "removed"
            } else {
                "already removed"
            };
            println!(
                "{how} {name} (node id {}); its certificate is revoked on every member",
                removed.node_id
            );
            Ok(())
        }
    }
}

pub(crate) fn print_cluster(c: &ClusterJson) {
    println!("node:         {} (id {})", c.node_name, c.node_id);
    let leader = c.leader_id.map_or_else(
        || "none".to_string(),
        |id| match c.members.iter().find(|m| m.id == id) {
            Some(m) => format!("{} (id {id})", m.name),
            None => id.to_string(),
        },
    );
    println!("leader:       {leader}");
    println!("term:         {}", c.term);
    println!(
        "last applied: {}",
        c.last_applied
            .map_or_else(|| "-".to_string(), |i| i.to_string())
    );
    println!(
        "pool:         podCIDR {} nodeBits {}",
        c.pod_cidr, c.node_bits
    );
    // The lag is known only on the leader, which tracks every member's log; reachability is
    // this member's own view (`-` where the two exchange no Raft traffic).
    println!(
        "{:<22} {:<30} {:<22} {:<8} {:<6} {:<10} LAG",
        "ID", "NAME", "ADDR", "ROLE", "REACH", "LAST RPC"
    );
    for m in &c.members {
        let lag = m
            .replication_lag
            .map_or_else(|| "-".to_string(), |l| l.to_string());
        let reach = match m.reachable {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let last = match m.heard_ms_ago.into_iter().chain(m.reached_ms_ago).min() {
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "-".to_string(),
        };
        println!(
            "{:<22} {:<30} {:<22} {:<8} {reach:<6} {last:<10} {lag}",
            m.id, m.name, m.addr, m.role
        );
    }
    for m in c.members.iter().filter(|m| m.reachable == Some(false)) {
        if let Some(why) = &m.last_error {
            println!("  {} unreachable: {why}", m.name);
        }
    }
}

pub async fn cluster(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { api } => {
            let status = api.client()?.cluster().await?;
            match api.output {
                Output::Json => print_json(&status),
                Output::Table => {
                    print_cluster(&status);
                    Ok(())
                }
            }
        }
        ClusterCommand::Remove { member, api } => {
            let client = api.client()?;
            let status = client.cluster().await?;
            let Some(found) = status
                .members
                .iter()
                .find(|m| m.name == member || m.id.to_string() == member)
            else {
                // Not a member (any more): an id may still be revoked again, idempotently.
                let id: u64 = member.parse().map_err(|_| {
                    anyhow::anyhow!("{member:?} is no member of this cluster (by name or node id)")
                })?;
                let removed = client.remove_member(id).await?;
                return print_removed(api.output, &removed, &member);
            };
            let removed = client.remove_member(found.id).await?;
            print_removed(api.output, &removed, &found.name)
        }
        ClusterCommand::CaHash { data_dir, ca_file } => {
            println!("{}", crate::tls::ca_hash(&data_dir, ca_file.as_deref())?);
            Ok(())
        }
    }
}
