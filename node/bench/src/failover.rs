//! Failover: SIGKILL the leader, time until a write succeeds through a survivor. Each trial
//! does evio and etcd (order alternating), then restarts the killed member on its data dir.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use evio_node::etcd_gateway::Op;

use crate::cluster::{EtcdCluster, EvioCluster};
use crate::stats::{met, Summary};
use crate::Bins;

/// Gives up on a trial after this long without a successful write.
const TRIAL_LIMIT: Duration = Duration::from_secs(30);
const RETRY_EVERY: Duration = Duration::from_millis(10);
/// Each write attempt gives up after this long (on both sides alike), so a request stuck on
/// the dead leader does not hide the moment a new one could have answered.
const ATTEMPT_LIMIT: Duration = Duration::from_millis(100);
/// Quiet time after a restarted member has caught up, before the next trial kills a leader:
/// each trial then starts from a settled 3-member cluster (a kill right after a restart is a
/// different, slower case: the restarted member may not yet be able to vote a leader in).
const SETTLE: Duration = Duration::from_secs(1);

async fn evio_trial(cluster: &mut EvioCluster, trial: usize) -> Result<Duration> {
    let leader = cluster.leader_index().await?;
    let survivor = cluster.client((leader + 1) % cluster.members.len())?;
    cluster.members[leader].process.kill()?;
    let killed = Instant::now();
    let name = format!("failover-{trial}");
    loop {
        let e = match tokio::time::timeout(ATTEMPT_LIMIT, survivor.acquire(&name, None)).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {ATTEMPT_LIMIT:?}"),
        };
        if killed.elapsed() > TRIAL_LIMIT {
            bail!("evio: no write within {TRIAL_LIMIT:?} after killing the leader: {e}");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    let outage = killed.elapsed();
    cluster.restart(leader).await?;
    cluster.wait_caught_up().await?;
    tokio::time::sleep(SETTLE).await;
    Ok(outage)
}

async fn etcd_trial(cluster: &mut EtcdCluster, trial: usize) -> Result<Duration> {
    let leader = cluster.leader_index().await?;
    let survivors: Vec<usize> = (0..cluster.members.len())
        .filter(|i| *i != leader)
        .collect();
    let client = cluster
        .client_with_timeout(&survivors, ATTEMPT_LIMIT)
        .await?;
    cluster.members[leader].process.kill()?;
    let killed = Instant::now();
    let key = format!("/bench/failover-{trial}");
    let put = [Op::Put(key.clone(), "ok".into())];
    while let Err(e) = client.txn(&[], &put, &[]).await {
        if killed.elapsed() > TRIAL_LIMIT {
            bail!("etcd: no write within {TRIAL_LIMIT:?} after killing the leader: {e}");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    let outage = killed.elapsed();
    cluster.restart(leader).await?;
    tokio::time::sleep(SETTLE).await;
    Ok(outage)
}

pub async fn run(bins: &Bins, quick: bool) -> Result<Value> {
    let trials = if quick { 2 } else { 20 };
    let mut evio = EvioCluster::start(bins, 3, "10.244.0.0/16", 8).await?;
    let mut etcd = EtcdCluster::start(&bins.etcd, 3).await?;
    let (mut evio_outages, mut etcd_outages) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        for evio_turn in [trial % 2 == 0, trial % 2 != 0] {
            if evio_turn {
                evio_outages.push(evio_trial(&mut evio, trial).await?);
            } else {
                etcd_outages.push(etcd_trial(&mut etcd, trial).await?);
            }
        }
        eprintln!(
            "failover trial {trial}: evio {:?}, etcd {:?}",
            evio_outages.last(),
            etcd_outages.last()
        );
    }
    let (e, a) = (Summary::of(&evio_outages), Summary::of(&etcd_outages));
    let goal = e.p99_ms <= 1000.0;
    println!(
        "failover, {trials} trials: evio p50 {:.0} ms p99 {:.0} ms | etcd p50 {:.0} ms p99 {:.0} ms | evio p99 goal <= 1000 ms: {}",
        e.p50_ms,
        e.p99_ms,
        a.p50_ms,
        a.p99_ms,
        met(goal)
    );
    Ok(json!({
        "figure": "failover",
        "trials": trials,
        "evio": e,
        "etcd": a,
        "evioTuning": "election timeout 400-800 ms, heartbeat 100 ms (defaults)",
        "etcdTuning": "election timeout 1000 ms, heartbeat 100 ms (defaults)",
        "goalP99Met": goal,
    }))
}
