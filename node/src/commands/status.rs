//! `evio-node status`: what the status page at `GET /` shows, in a terminal — members with
//! role, reachability and replication lag, leader, term, pool usage and the held blocks, and
//! this node's attached pods, etcd mirror and Kubernetes integration.

use clap::Args;
use evio_api::{ClientError, ClusterJson, Consistency, ErrorCode, LeaseJson, NodeJson, PodJson};
use serde::Serialize;

use crate::cli::{print_cluster, print_json, print_leases, ApiArgs, Output};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// Block counts of the pool: every one of its 2^nodeBits blocks is exactly one of these.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolUsage {
    blocks: u64,
    held: u64,
    /// Held for imported `legacy:` ranges.
    reserved: u64,
    free: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    cluster: ClusterJson,
    /// `linearizable`, or `local` when the cluster could not confirm the leases.
    consistency: Consistency,
    /// Why the leases come from this member's replica (the linearizable read's error).
    #[serde(skip_serializing_if = "Option::is_none")]
    local_because: Option<String>,
    pool: PoolUsage,
    leases: Vec<LeaseJson>,
    /// This member's node; absent from a server older than `GET /v1/node`.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeJson>,
    /// The pods attached through this node's CNI socket.
    pods: Vec<PodJson>,
}

/// A route an older server does not have reads as absent.
fn unless_missing<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn usage(cluster: &ClusterJson, leases: &[LeaseJson]) -> PoolUsage {
    let blocks = 1u64 << cluster.node_bits.min(32);
    let reserved = leases
        .iter()
        .filter(|l| l.node.starts_with("legacy:"))
        .count() as u64;
    let held = leases.len() as u64 - reserved;
    PoolUsage {
        blocks,
        held,
        reserved,
        free: blocks.saturating_sub(held + reserved),
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let cluster = client.cluster().await?;
    // Like the page: a member cut off from the leader still answers from its replica.
    let (leases, consistency, local_because) =
        match client.list_leases(Consistency::Linearizable).await {
            Ok(leases) => (leases, Consistency::Linearizable, None),
            Err(e) if e.code() == Some(evio_api::ErrorCode::Unauthorized) => return Err(e.into()),
            Err(e) => (
                client.list_leases(Consistency::Local).await?,
                Consistency::Local,
                Some(e.to_string()),
            ),
        };
    let node = unless_missing(client.node().await)?;
    let pods = unless_missing(client.node_pods().await)?.map_or_else(Vec::new, |p| p.pods);
    let status = Status {
        pool: usage(&cluster, &leases),
        cluster,
        consistency,
        local_because,
        leases,
        node,
        pods,
    };
    if args.api.output == Output::Json {
        return print_json(&status);
    }
    print_cluster(&status.cluster);
    let p = &status.pool;
    println!(
        "blocks:       {} held, {} reserved (legacy:), {} free of {}",
        p.held, p.reserved, p.free, p.blocks
    );
    if let Some(why) = &status.local_because {
        println!(
            "WARNING: the leader did not confirm the leases ({why}); shown from this member's \
             local replica, possibly stale"
        );
    }
    if let Some(node) = &status.node {
        print_node(node, &status.pods);
    }
    println!();
    print_leases(&status.leases);
    Ok(())
}

fn print_node(node: &NodeJson, pods: &[PodJson]) {
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_string());
    match &node.lease {
        Some(lease) => println!("node lease:   {} (local replica)", lease.subnet),
        None => println!("node lease:   none"),
    }
    match &node.etcd_mirror {
        None => println!("etcd mirror:  off"),
        Some(m) => {
            let role = if m.active {
                "active (leader)"
            } else {
                "standby"
            };
            let health = if m.healthy { "healthy" } else { "UNHEALTHY" };
            println!(
                "etcd mirror:  {role}, {health}, revision {} (lag {}), {} keys, last sync {}",
                m.mirrored_revision,
                m.lag_revisions,
                m.keys,
                or_dash(&m.last_sync_at)
            );
            if let Some(e) = &m.last_error {
                println!(
                    "              last error ({} in all) at {}: {e}",
                    m.errors,
                    or_dash(&m.last_error_at)
                );
            }
        }
    }
    let k = &node.kubernetes;
    if k.enabled {
        let annotated = match (k.annotated, &k.annotated_subnet) {
            (true, Some(subnet)) => format!("annotated with {subnet}"),
            (true, None) => "annotated (no lease)".to_string(),
            (false, _) => "NOT annotated yet".to_string(),
        };
        let gc = if k.node_gc_active {
            "watching Nodes (leader)"
        } else {
            "standby"
        };
        println!(
            "kubernetes:   Node {}, {annotated} at {}, node GC {gc}",
            or_dash(&k.node_name),
            or_dash(&k.annotated_at)
        );
        if let Some(e) = &k.last_error {
            println!(
                "              last error ({} in all) at {}: {e}",
                k.errors,
                or_dash(&k.last_error_at)
            );
        }
    } else {
        println!("kubernetes:   off");
    }
    match &node.cni.socket {
        None => println!("cni:          no CNI socket"),
        Some(socket) => println!(
            "cni:          {socket}, {} pod interface(s) attached",
            pods.len()
        ),
    }
    if !pods.is_empty() {
        println!();
        println!(
            "{:<66} {:<10} {:<20} {:<16} NETWORK",
            "CONTAINER", "INTERFACE", "ADDRESS", "HOST"
        );
        for p in pods {
            let address = if p.addresses.is_empty() {
                "-".to_string()
            } else {
                p.addresses.join(",")
            };
            println!(
                "{:<66} {:<10} {address:<20} {:<16} {}",
                p.container_id, p.interface, p.host_interface, p.network
            );
        }
    }
}
