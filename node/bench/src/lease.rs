//! Lease acquire latency and throughput, 1 and 16 concurrent clients: a 3-voter evio cluster
//! against the original Evio algorithm on a 3-member etcd cluster, batches alternating.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use evio_api::{Client, ClientError, Consistency};
use evio_raft::Pool;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::cluster::{EtcdCluster, EvioCluster};
use crate::original_evio::OriginalEvio;
use crate::stats::{met, ratio, Summary};
use crate::Bins;

/// Runs `ops` calls of `op(i)` from `clients` concurrent workers; each call's latency and the
/// batch's wall time.
pub async fn run_batch<F, Fut>(
    clients: usize,
    ops: usize,
    op: F,
) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..clients {
        let (op, next) = (op.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(ops);
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("benchmark worker")??);
    }
    Ok((all, started.elapsed()))
}

/// Acquires leases for `names` through `client`, `clients` at a time.
pub async fn evio_acquire_all(
    client: &Client,
    clients: usize,
    names: Vec<String>,
) -> Result<(Vec<Duration>, Duration)> {
    let names = Arc::new(names);
    let client = client.clone();
    run_batch(clients, names.len(), move |i| {
        let (client, names) = (client.clone(), names.clone());
        async move { acquire_through_elections(&client, &names[i]).await }
    })
    .await
}

/// Acquires `name`, waiting out elections (see [`through_elections`]).
pub async fn acquire_through_elections(client: &Client, name: &str) -> Result<()> {
    through_elections(|| client.acquire(name, None))
        .await
        .with_context(|| format!("acquire {name}"))
        .map(|_| ())
}

/// Releases `name`, waiting out elections (see [`through_elections`]).
pub async fn release_through_elections(client: &Client, name: &str) -> Result<()> {
    through_elections(|| client.release(name))
        .await
        .with_context(|| format!("release {name}"))
}

/// Runs `call` again while no leader is known (503) or the member does not answer: on a loaded
/// 2-core machine a heartbeat can be late enough to start an election, and a client of a real
/// cluster waits that out too. The wait counts in the caller's measured latency.
async fn through_elections<T, F, Fut>(call: F) -> Result<T, ClientError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    const TRIES: u32 = 50;
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if tries < TRIES && e.status().is_none_or(|s| s == 503) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            done => return done,
        }
    }
}

/// Acquires every name, `clients` at a time, waiting out elections (a loaded machine has some
/// during a fill of 65,536): for filling a table, never a measured figure.
pub async fn fill(client: &Client, clients: usize, names: Vec<String>) -> Result<()> {
    evio_acquire_all(client, clients, names).await.map(|_| ())
}

struct Side {
    latencies: Vec<Duration>,
    wall: Duration,
    /// CPU time of every member while this side ran (evio only).
    cpu: Duration,
}

impl Side {
    fn new() -> Self {
        Side {
            latencies: Vec::new(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }

    /// CPU milliseconds the members spent per operation, all members together.
    fn cpu_per_op_ms(&self) -> f64 {
        ratio(self.cpu.as_secs_f64() * 1000.0, self.latencies.len() as f64)
    }

    fn add(&mut self, (latencies, wall): (Vec<Duration>, Duration)) {
        self.latencies.extend(latencies);
        self.wall += wall;
    }

    fn throughput(&self) -> f64 {
        ratio(self.latencies.len() as f64, self.wall.as_secs_f64())
    }

    fn json(&self) -> Value {
        json!({"latency": Summary::of(&self.latencies), "throughputPerSec": self.throughput()})
    }
}

/// CPU time of all of the cluster's member processes so far.
fn cluster_cpu(cluster: &EvioCluster) -> Result<Duration> {
    cluster.members.iter().map(|m| m.process.cpu_time()).sum()
}

pub async fn run(bins: &Bins, quick: bool) -> Result<Value> {
    // 4096 blocks: room for every acquire of a phase; the original's cost depends on how many
    // ranges are taken, not on the pool size.
    let (cidr, node_bits) = ("10.0.0.0/8", 12);
    let pool = Pool::parse(cidr, node_bits)?;
    let evio = EvioCluster::start(bins, 3, cidr, node_bits).await?;
    let etcd = EtcdCluster::start(&bins.etcd, 3).await?;
    // Both sides are driven through their leader: no forwarding hop on either.
    let evio_client = evio.client(evio.leader_index().await?)?;
    let etcd_client = etcd.client(&[etcd.leader_index().await?]).await?;
    let original = OriginalEvio::new(etcd_client, &pool);

    let mut phases = Vec::new();
    let mut goals_met = true;
    for (clients, ops) in [
        (1, if quick { 4 } else { 100 }),
        (16, if quick { 16 } else { 160 }),
    ] {
        let rounds = if quick { 1 } else { 4 };
        let per_round = ops / rounds;
        let (mut evio_side, mut original_side) = (Side::new(), Side::new());
        for round in 0..rounds {
            // Alternate who goes first so neither always runs on a warmer (or busier) machine.
            for evio_turn in [round % 2 == 0, round % 2 != 0] {
                if evio_turn {
                    let names = (0..per_round)
                        .map(|i| format!("c{clients}-r{round}-{i}"))
                        .collect();
                    let cpu = cluster_cpu(&evio)?;
                    evio_side.add(evio_acquire_all(&evio_client, clients, names).await?);
                    evio_side.cpu += cluster_cpu(&evio)?.saturating_sub(cpu);
                } else {
                    let original = original.clone();
                    original_side.add(
                        run_batch(clients, per_round, move |_| {
                            let mut original = original.clone();
                            async move { original.acquire().await.map(|_| ()) }
                        })
                        .await?,
                    );
                }
            }
        }
        let throughput_ratio = ratio(evio_side.throughput(), original_side.throughput());
        let evio_p50 = Summary::of(&evio_side.latencies).p50_ms;
        let original_p50 = Summary::of(&original_side.latencies).p50_ms;
        let p50_ok = evio_p50 <= 5.0;
        let throughput_ok = throughput_ratio >= 10.0;
        goals_met &= p50_ok && throughput_ok;
        println!(
            "lease acquire, {clients:>2} client(s), {ops} ops: evio p50 {evio_p50:.2} ms p99 {:.2} ms {:.0}/s | original p50 {original_p50:.2} ms p99 {:.2} ms {:.1}/s | throughput x{throughput_ratio:.1} (goal >= 10: {}), evio p50 goal <= 5 ms: {}",
            Summary::of(&evio_side.latencies).p99_ms,
            evio_side.throughput(),
            Summary::of(&original_side.latencies).p99_ms,
            original_side.throughput(),
            met(throughput_ok),
            met(p50_ok),
        );
        println!(
            "lease acquire, {clients:>2} client(s): evio members' CPU {:.2} ms per acquire (3 members together){}",
            evio_side.cpu_per_op_ms(),
            if clients == 1 {
                format!(" | issue 13: p50 <= 2 ms at 3 voters: {}", met(evio_p50 <= 2.0))
            } else {
                String::new()
            }
        );
        phases.push(json!({
            "clients": clients,
            "ops": ops,
            "evio": evio_side.json(),
            "evioCpuMsPerAcquire": evio_side.cpu_per_op_ms(),
            "original": original_side.json(),
            "throughputRatio": throughput_ratio,
            "p50Ratio": ratio(original_p50, evio_p50),
            "goalP50Met": p50_ok,
            "goalThroughputMet": throughput_ok,
        }));
        // The next phase starts from empty stores on both sides.
        let held = evio_client.list_leases(Consistency::Linearizable).await?;
        let names: Arc<Vec<String>> = Arc::new(held.into_iter().map(|l| l.node).collect());
        let client = evio_client.clone();
        run_batch(16, names.len(), move |i| {
            let (client, names) = (client.clone(), names.clone());
            async move { release_through_elections(&client, &names[i]).await }
        })
        .await?;
        original.clone().clear().await?;
    }
    Ok(json!({
        "figure": "lease",
        "cluster": "3 voters on 127.0.0.1, durable (evio: sled flush; etcd: default fsync)",
        "pool": format!("{cidr} nodeBits {node_bits}"),
        "phases": phases,
        "goalsMet": goals_met,
    }))
}
