//! Members: N real `evio-node run` processes on this machine as a DaemonSet runs them — one per
//! node name, all started at once, each joining through the first member and acquiring its own
//! lease (`--cni-conf-dir`, as in deploy/) — then: time until all N hold leases, leader CPU and
//! RSS, idle CPU per follower, acquire p50/p99 through the leader, and one leader failover.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use evio_api::Consistency;
use serde_json::{json, Value};

use crate::cluster::{wait_for, EvioCluster};
use crate::lease::{evio_acquire_all, release_through_elections};
use crate::stats::{met, Summary};
use crate::Bins;

/// nodeBits 8 on a /16 (256 blocks): the seed's own cluster size for N = 256.
const CIDR: &str = "10.244.0.0/16";
const NODE_BITS: u8 = 8;
/// Members started per batch, and the pause between batches: a DaemonSet rollout starts
/// pods as fast as the kubelets come up, but 256 processes forked in one go would only
/// measure the fork storm.
const START_BATCH: usize = 16;
const START_PAUSE: Duration = Duration::from_millis(200);
/// How long the idle CPU window is.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// Quiet time before the idle window (elections, promotions and conflist writes settle).
const SETTLE: Duration = Duration::from_secs(10);

fn percent_of_core(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(bins: &Bins, quick: bool, members: Option<usize>) -> Result<Value> {
    let n = members.unwrap_or(if quick { 4 } else { 256 });
    if !(2..=256).contains(&n) {
        bail!("--members {n}: expected 2 to 256 (the pool has 256 blocks)");
    }
    let samples = if quick { 5 } else { 100 };
    let load_before = load_average();
    let mut cluster = EvioCluster::start(bins, 1, CIDR, NODE_BITS).await?;
    let seed = vec![cluster.members[0].addr.clone()];
    let cni_dir = ["--cni-conf-dir".to_string(), "{data}.cni".to_string()];
    // The seed runs without a conflist dir, so it takes its lease like the rest: through
    // the same path, measured with them.
    cluster.client(0)?.acquire("bench-0", None).await?;
    let started = Instant::now();
    for i in 1..n {
        cluster.spawn_member_with(&seed, &cni_dir)?;
        if i % START_BATCH == 0 {
            tokio::time::sleep(START_PAUSE).await;
        }
    }
    let names: BTreeSet<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
    let client0 = cluster.client(0)?;
    let limit = Duration::from_secs(if quick { 60 } else { 900 });
    let last = std::sync::Mutex::new(0usize);
    let all_leased = wait_for("every member to hold its lease", limit, || {
        let (client, names, last) = (&client0, &names, &last);
        async move {
            let leases = client.list_leases(Consistency::Local).await.ok()?;
            let held = leases.iter().filter(|l| names.contains(&l.node)).count();
            if let Ok(mut last) = last.lock() {
                *last = held;
            }
            (held == names.len()).then_some(())
        }
    })
    .await;
    if let Err(e) = all_leased {
        let held = last.lock().map(|l| *l).unwrap_or(0);
        let exited = cluster
            .members
            .iter_mut()
            .filter_map(|m| {
                m.process
                    .exit_status()
                    .ok()
                    .flatten()
                    .map(|_| m.name.clone())
            })
            .collect::<Vec<_>>();
        bail!("{e}: {held} of {n} hold a lease; exited: {exited:?}");
    }
    let to_all = started.elapsed();
    println!(
        "members {n}: all hold leases {:.1} s after the DaemonSet start",
        to_all.as_secs_f64()
    );

    tokio::time::sleep(if quick {
        Duration::from_secs(1)
    } else {
        SETTLE
    })
    .await;
    let leader = cluster.leader_index().await?;
    let window = if quick {
        Duration::from_secs(2)
    } else {
        IDLE_WINDOW
    };
    let before: Vec<Duration> = cluster
        .members
        .iter()
        .map(|m| m.process.cpu_time())
        .collect::<Result<_>>()?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let wall = t.elapsed();
    let after: Vec<Duration> = cluster
        .members
        .iter()
        .map(|m| m.process.cpu_time())
        .collect::<Result<_>>()?;
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| percent_of_core(a.saturating_sub(*b), wall))
        .collect();
    let leader_cpu = cpu[leader];
    let mut followers: Vec<f64> = cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| *c)
        .collect();
    followers.sort_by(f64::total_cmp);
    let follower_p50 = followers[followers.len() / 2];
    let follower_max = followers.last().copied().unwrap_or(0.0);
    let follower_mean = followers.iter().sum::<f64>() / followers.len() as f64;
    let rss: Vec<f64> = cluster
        .members
        .iter()
        .map(|m| m.process.rss_kib().map(mib))
        .collect::<Result<_>>()?;
    let leader_rss = rss[leader];
    let follower_rss_max = rss
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, r)| *r)
        .fold(0.0, f64::max);
    let idle_ok = follower_p50 <= 0.1;
    println!(
        "members {n}: idle {:.0} s: leader CPU {leader_cpu:.2} % of a core, RSS {leader_rss:.1} MiB | follower CPU p50 {follower_p50:.3} % mean {follower_mean:.3} % max {follower_max:.3} %, RSS max {follower_rss_max:.1} MiB | follower goal <= 0.1 %: {}",
        wall.as_secs_f64(),
        met(idle_ok)
    );

    // Each sample acquires a lease for a name that is not a member and gives it back. The
    // pool is full at 256 members, so one learner (not a voter: the failover below needs
    // two) is stopped and its lease released first.
    let leader_client = cluster.client(leader)?;
    let roles = leader_client.cluster().await?;
    let learner = roles
        .members
        .iter()
        .filter(|m| m.role == "learner")
        .filter_map(|m| cluster.members.iter().position(|c| c.name == m.name))
        .next_back();
    if let Some(learner) = learner {
        cluster.members[learner].process.kill()?;
        leader_client
            .release(&cluster.members[learner].name.clone())
            .await?;
    }
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("probe-{i}");
        let (lat, _) = evio_acquire_all(&leader_client, 1, vec![name.clone()]).await?;
        latencies.extend(lat);
        release_through_elections(&leader_client, &name).await?;
    }
    let acquire = Summary::of(&latencies);
    let write_ok = acquire.p50_ms <= 50.0;
    println!(
        "members {n}: {samples} acquires through the leader: p50 {:.2} ms p99 {:.2} ms | goal p50 <= 50 ms: {}",
        acquire.p50_ms,
        acquire.p99_ms,
        met(write_ok)
    );

    let failover = failover(&mut cluster, leader).await?;
    println!(
        "members {n}: SIGKILL the leader -> first write through a learner: {:.0} ms",
        failover.as_secs_f64() * 1000.0
    );
    let load_after = load_average();
    println!("members {n}: load average before {load_before}, after {load_after}");
    Ok(json!({
        "figure": "members",
        "members": n,
        "pool": format!("{CIDR} nodeBits {NODE_BITS}"),
        "allLeasedSeconds": to_all.as_secs_f64(),
        "idleSeconds": wall.as_secs_f64(),
        "leaderCpuPercent": leader_cpu,
        "leaderRssMiB": leader_rss,
        "followerCpuPercent": {"p50": follower_p50, "mean": follower_mean, "max": follower_max},
        "followerRssMaxMiB": follower_rss_max,
        "acquire": acquire,
        "failoverMs": failover.as_secs_f64() * 1000.0,
        "loadAverage": {"before": load_before, "after": load_after},
        "goals": {"followerIdleCpu": idle_ok, "acquireP50": write_ok},
    }))
}

/// SIGKILLs the leader and times the first lease write that succeeds through the last member
/// (a learner at any N above 3).
async fn failover(cluster: &mut EvioCluster, leader: usize) -> Result<Duration> {
    let via = (0..cluster.members.len())
        .rev()
        .find(|i| *i != leader && cluster.members[*i].process.running())
        .ok_or_else(|| anyhow!("no member besides the leader"))?;
    let client = cluster.client(via)?;
    let name = cluster.members[leader].name.clone();
    cluster.members[leader].process.kill()?;
    let killed = Instant::now();
    // Attempts may take a while: a new leader of many members first finds every learner's
    // log position, and on a loaded machine a write at 64 members already takes ~150 ms.
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            client.acquire("failover-probe", None),
        )
        .await;
        let why = match attempt {
            Ok(Ok(_)) => return Ok(killed.elapsed()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2 s".to_string(),
        };
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no write within 60 s after killing the leader ({name}): {why}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
