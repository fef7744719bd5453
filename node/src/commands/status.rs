//! `evio-node status`: what the status page at `GET /` shows, in a terminal — members with
//! role and replication lag, leader, term, pool usage and the held blocks.

use clap::Args;
use evio_api::{ClusterJson, Consistency, LeaseJson};
use serde::Serialize;

use super::client::{print_cluster, print_json, print_leases, ApiArgs, Output};

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
    let status = Status {
        pool: usage(&cluster, &leases),
        cluster,
        consistency,
        local_because,
        leases,
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
    println!();
    print_leases(&status.leases);
    Ok(())
}
