//! A new member joining a full cluster (issue 14): three voters on 10.0.0.0/8 nodeBits 16 are
//! filled with leases until their logs are compacted, then a fourth `evio-node run` joins and
//! must catch up by snapshot. Prints the catch-up time, the snapshot's size (this version's
//! format and the earlier JSON one, computed from the same table) and every member's RSS.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use evio_raft::store::snapshot;
use evio_raft::{LeaseCommand, LeaseTable, Pool};
use serde_json::{json, Value};

use crate::cluster::EvioCluster;
use crate::Bins;

const CIDR: &str = "10.0.0.0/8";
const NODE_BITS: u8 = 16;
const FILL_CLIENTS: usize = 64;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Snapshot sizes of a table holding `names`: (binary, earlier JSON, earlier JSON on the wire
/// as the JSON array of numbers it was sent as).
fn snapshot_sizes(pool: Pool, names: &[String]) -> Result<(usize, usize, usize)> {
    let mut table = LeaseTable::new(pool);
    for (i, node) in names.iter().enumerate() {
        let command = LeaseCommand::Acquire {
            node: node.clone(),
            host_ip: None,
            request_id: String::new(),
            at: evio_raft::replica::unix_millis(),
        };
        table.apply(&command, 2 + i as u64);
    }
    let binary = snapshot::encode(&table);
    let mut records: Vec<_> = table.records().cloned().collect();
    records.sort_by_key(|r| r.block);
    let legacy = serde_json::to_vec(&json!({"pool": pool, "leases": records}))?;
    let wire = serde_json::to_vec(&legacy)?;
    Ok((binary.len(), legacy.len(), wire.len()))
}

/// The leader's `evio_raft_purged_index`: above 0 once its log was compacted.
async fn purged_index(http: &reqwest::Client, base: &str) -> Option<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("evio_raft_purged_index "))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn run(bins: &Bins, quick: bool, leases: Option<usize>) -> Result<Value> {
    let leases = leases.unwrap_or(if quick { 1_500 } else { 65_536 });
    let pool = Pool::parse(CIDR, NODE_BITS)?;
    let mut cluster = EvioCluster::start(bins, 3, CIDR, NODE_BITS).await?;
    let leader = cluster.leader_index().await?;
    let client = cluster.client(leader)?;
    let names: Vec<String> = (0..leases).map(|i| format!("fill-{i}")).collect();
    let filled = Instant::now();
    crate::lease::fill(&client, FILL_CLIENTS, names.clone()).await?;
    println!(
        "join: filled {leases} leases in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let leader_base = cluster.base(leader);
    let leader_http = cluster.http(leader)?;
    crate::cluster::wait_for(
        "the leader's log to be compacted",
        Duration::from_secs(60),
        || async {
            purged_index(&leader_http, &leader_base)
                .await
                .filter(|p| *p > 0)
        },
    )
    .await?;
    let target = client
        .cluster()
        .await?
        .last_applied
        .context("the leader has applied nothing")?;
    let (binary, legacy, legacy_wire) = snapshot_sizes(pool, &names)?;

    let limit = Duration::from_secs(if quick { 90 } else { 300 });
    let started = Instant::now();
    let joiner = cluster.spawn_member()?;
    let joiner_client = cluster.client(joiner)?;
    let mut outcome = Err("did not catch up".to_string());
    while started.elapsed() < limit {
        if let Some(status) = cluster.members[joiner].process.exit_status()? {
            let tail = cluster.members[joiner].process.log_tail();
            let reason = tail
                .lines()
                .rev()
                .find(|l| l.contains("error") || l.contains("ERROR"))
                .unwrap_or("")
                .to_string();
            outcome = Err(format!(
                "exited ({status}) after {:.1} s: {reason}",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        if let Ok(c) = joiner_client.cluster().await {
            if c.members.len() == 4 && c.last_applied.is_some_and(|a| a >= target) {
                outcome = Ok(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle = Duration::from_secs(if quick { 1 } else { 5 });
    tokio::time::sleep(idle).await;
    let rss: Vec<f64> = cluster
        .members
        .iter()
        .map(|m| {
            m.process
                .rss_kib()
                .map(|k| k as f64 / 1024.0)
                .unwrap_or(0.0)
        })
        .collect();
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    match &outcome {
        Ok(took) => println!(
            "join: a 4th member caught up with {leases} leases in {:.2} s | snapshot {:.2} MiB (earlier JSON {:.2} MiB, {:.2} MiB on the wire) | RSS {rss:.1?} MiB",
            took.as_secs_f64(),
            mib(binary as u64),
            mib(legacy as u64),
            mib(legacy_wire as u64),
        ),
        Err(why) => println!(
            "join: a 4th member did NOT catch up with {leases} leases within {limit:?}: {why} | RSS {rss:.1?} MiB"
        ),
    }
    Ok(json!({
        "figure": "join",
        "pool": format!("{CIDR} nodeBits {NODE_BITS}"),
        "leases": leases,
        "caughtUp": outcome.is_ok(),
        "catchUpSeconds": outcome.as_ref().ok().map(Duration::as_secs_f64),
        "failure": outcome.as_ref().err(),
        "snapshotBytes": binary,
        "legacyJsonSnapshotBytes": legacy,
        "legacyWireBytes": legacy_wire,
        "rssMiB": rss,
        "maxRssMiB": rss_max,
    }))
}
