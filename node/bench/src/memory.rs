//! Memory (RSS of idle members holding 256 and 65,536 leases, evio vs etcd holding the same
//! keys) and scale (acquire latency with 255 vs 65,535 leases already held). The pool is
//! 10.0.0.0/8 with nodeBits 16: 65,536 blocks.

use std::time::Duration;

use anyhow::Result;
use evio_api::Client;
use serde_json::{json, Value};

use crate::cluster::{EtcdCluster, EvioCluster};
use crate::lease::{evio_acquire_all, release_through_elections};
use crate::original_evio::{put_all, range_keys};
use crate::stats::{met, ratio, Summary};
use crate::Bins;

const CIDR: &str = "10.0.0.0/8";
const NODE_BITS: u8 = 16;
/// Concurrent acquires while filling the pool (only the fill, never a measured figure).
const FILL_CLIENTS: usize = 64;

fn sizes(quick: bool) -> (usize, usize) {
    if quick {
        (16, 64)
    } else {
        (256, 65_536)
    }
}

/// Leases `fill-{from}` .. `fill-{to - 1}`.
async fn fill(client: &Client, from: usize, to: usize) -> Result<()> {
    let names = (from..to).map(|i| format!("fill-{i}")).collect();
    crate::lease::fill(client, FILL_CLIENTS, names).await
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn memory(bins: &Bins, quick: bool) -> Result<Value> {
    let (small, large) = sizes(quick);
    let pool = evio_raft::Pool::parse(CIDR, NODE_BITS)?;
    let keys = range_keys(&pool);
    let evio = EvioCluster::start(bins, 3, CIDR, NODE_BITS).await?;
    let etcd = EtcdCluster::start(&bins.etcd, 3).await?;
    let evio_client = evio.client(evio.leader_index().await?)?;
    let etcd_client = etcd.client(&[etcd.leader_index().await?]).await?;
    let idle = Duration::from_secs(if quick { 1 } else { 10 });
    let mut stages = Vec::new();
    let mut goals_met = true;
    let mut held = 0;
    for (leases, goal_mib) in [(small, 25.0), (large, 64.0)] {
        fill(&evio_client, held, leases).await?;
        put_all(&etcd_client, &keys[held..leases]).await?;
        held = leases;
        tokio::time::sleep(idle).await;
        let evio_rss: Vec<f64> = evio
            .members
            .iter()
            .map(|m| m.process.rss_kib().map(mib))
            .collect::<Result<_>>()?;
        let etcd_rss: Vec<f64> = etcd
            .members
            .iter()
            .map(|m| m.process.rss_kib().map(mib))
            .collect::<Result<_>>()?;
        let evio_max = evio_rss.iter().copied().fold(0.0, f64::max);
        let etcd_max = etcd_rss.iter().copied().fold(0.0, f64::max);
        let ok = evio_max <= goal_mib;
        goals_met &= ok;
        println!(
            "memory, {leases} leases, idle: evio max RSS {evio_max:.1} MiB {evio_rss:.1?} | etcd max RSS {etcd_max:.1} MiB {etcd_rss:.1?} | etcd/evio x{:.1} | goal <= {goal_mib} MiB: {}",
            ratio(etcd_max, evio_max),
            met(ok)
        );
        stages.push(json!({
            "leases": leases,
            "evioRssMiB": evio_rss,
            "etcdRssMiB": etcd_rss,
            "evioMaxRssMiB": evio_max,
            "etcdMaxRssMiB": etcd_max,
            "goalMiB": goal_mib,
            "goalMet": ok,
        }));
    }
    Ok(json!({
        "figure": "memory",
        "pool": format!("{CIDR} nodeBits {NODE_BITS}"),
        "members": 3,
        "idleSeconds": idle.as_secs(),
        "stages": stages,
        "goalsMet": goals_met,
    }))
}

pub async fn scale(bins: &Bins, quick: bool) -> Result<Value> {
    let (small, large) = sizes(quick);
    let samples = if quick { 5 } else { 200 };
    // Two clusters side by side, so the two fills can be sampled alternately.
    let few = EvioCluster::start(bins, 3, CIDR, NODE_BITS).await?;
    let many = EvioCluster::start(bins, 3, CIDR, NODE_BITS).await?;
    let few_client = few.client(few.leader_index().await?)?;
    let many_client = many.client(many.leader_index().await?)?;
    fill(&few_client, 0, small - 1).await?;
    fill(&many_client, 0, large - 1).await?;
    // Each sample takes the `small`-th (`large`-th) lease and gives it back.
    let (mut few_lat, mut many_lat) = (Vec::new(), Vec::new());
    for i in 0..samples {
        for (client, latencies) in [(&few_client, &mut few_lat), (&many_client, &mut many_lat)] {
            let name = format!("probe-{i}");
            let (lat, _) = evio_acquire_all(client, 1, vec![name.clone()]).await?;
            latencies.extend(lat);
            release_through_elections(client, &name).await?;
        }
    }
    let (f, m) = (Summary::of(&few_lat), Summary::of(&many_lat));
    let change = ratio(m.p50_ms, f.p50_ms) - 1.0;
    let ok = change.abs() <= 0.20;
    println!(
        "scale, {samples} acquires: at {small} leases p50 {:.2} ms p99 {:.2} ms | at {large} leases p50 {:.2} ms p99 {:.2} ms | p50 change {:+.0} % (goal within +-20 %: {})",
        f.p50_ms,
        f.p99_ms,
        m.p50_ms,
        m.p99_ms,
        change * 100.0,
        met(ok)
    );
    Ok(json!({
        "figure": "scale",
        "pool": format!("{CIDR} nodeBits {NODE_BITS}"),
        "samples": samples,
        "small": {"leases": small, "latency": f},
        "large": {"leases": large, "latency": m},
        "p50Change": change,
        "goalMet": ok,
    }))
}
