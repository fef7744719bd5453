//! The CLI client: `evio-node leases ...` and `evio-node cluster status` over the HTTP API.

use std::net::Ipv4Addr;

use clap::Subcommand;
use evio_api::LeaseJson;

use crate::cli::{print_cluster, print_json, print_leases, ApiArgs, Output, ReadConsistency};

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
