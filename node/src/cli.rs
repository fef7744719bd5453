//! What the CLI commands share (`leases`, `cluster`, `status`, `import-etcd`, `config-gen`):
//! how a client reaches a member, and how leases and the cluster are printed. No command
//! imports another; they all import this.

use clap::{Args, ValueEnum};
use evio_api::{Client, ClusterJson, Consistency, LeaseJson};

/// How a client reaches a member: its API root, the token, and TLS from the data dir or
/// from files.
#[derive(Args)]
pub struct MemberArgs {
    /// The member's API root. Default: https://127.0.0.1:7700 when this node's certificate
    /// is found (the data dir, or --cert-file), else http://127.0.0.1:7700.
    #[arg(long, env = "EVIO_API")]
    pub api: Option<String>,
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
    pub fn client(&self) -> anyhow::Result<Client> {
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
    pub fn client(&self) -> anyhow::Result<Client> {
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

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One line a lease; a dual-stack lease's IPv6 block on a second line under its IPv4 one.
pub fn print_leases(leases: &[LeaseJson]) {
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

pub fn print_cluster(c: &ClusterJson) {
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
