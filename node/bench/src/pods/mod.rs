//! Pod ADD/DEL through the real plugin binaries, evio against Debian's reference `bridge`
//! plugin, in one run: `pods` (N sequential ADDs then DELs, the three plugins interleaved per
//! pod) and `fill` (a node's 253 pods, 8 ADDs at a time, then DEL all). Both use the same
//! host-local IPAM and masquerade. evio runs as `evio-node dev` with its CNI socket; each
//! plugin gets its own /16 and bridge so they never share state. With `--ipam evio-ipam` (or
//! `both`) evio's networks name `evio-ipam` instead, served by the daemon in-process; their
//! ranges then lie in the block the dev daemon leases (its pool is 10.208.0.0/12 in two /13
//! blocks, so every plugin's /16 is inside the node's block). Needs root (and OVS running
//! for the OVS figure: scripts/ovs-start.sh).
//! `--breakdown` adds where evio's time goes, step by step (`breakdown`); what both figures
//! share, so they compare, is in `setup`.

mod breakdown;
mod setup;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::stats::{met, ratio, Summary};
use crate::Bins;
use setup::{exec, leftovers, retired_drained, setup};

/// `pods`: sequential ADD then DEL of `count` pods per plugin, plugins interleaved per pod.
pub async fn pods(
    bins: &Bins,
    evio_cni: &Path,
    kind: &str,
    ipam: &str,
    count: usize,
    breakdown: bool,
) -> Result<Value> {
    let setup = setup(bins, evio_cni, kind, ipam, count, breakdown).await?;
    let netns = &setup.netns;
    let plugins = &setup.plugins;
    let mut add = vec![Vec::with_capacity(count); plugins.len()];
    let mut del = vec![Vec::with_capacity(count); plugins.len()];
    let order = |pod: usize| -> Vec<usize> {
        // Rotate who goes first, so no plugin always runs on a warm or cold cache.
        (0..plugins.len())
            .map(|k| (k + pod) % plugins.len())
            .collect()
    };
    // Per pod, its namespace under each plugin.
    let by_pod: Vec<Vec<&str>> = (0..count)
        .map(|pod| netns.iter().map(|n| n[pod].as_str()).collect())
        .collect();
    for (command, samples) in [("ADD", &mut add), ("DEL", &mut del)] {
        for (pod, spaces) in by_pod.iter().enumerate() {
            for p in order(pod) {
                let container = breakdown::container(p, pod);
                samples[p].push(exec(&plugins[p], command, &container, spaces[p])?);
            }
        }
    }
    let drain = retired_drained().await?;
    let reference = plugins.len() - 1;
    let ref_add = Summary::of(&add[reference]);
    let ref_del = Summary::of(&del[reference]);
    println!("pod ADD/DEL, {count} sequential pods per plugin, masquerade on");
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADD x", "DEL x"
    );
    let mut rows = Vec::new();
    for (p, plugin) in plugins.iter().enumerate() {
        let (a, d) = (Summary::of(&add[p]), Summary::of(&del[p]));
        let (add_x, del_x) = (
            ratio(ref_add.p50_ms, a.p50_ms),
            ratio(ref_del.p50_ms, d.p50_ms),
        );
        println!(
            "{:<18} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.1}x {:>8.1}x",
            plugin.label, a.p50_ms, a.p99_ms, d.p50_ms, d.p99_ms, add_x, del_x
        );
        let left = leftovers(plugin)?;
        if p != reference {
            // Issue 17's goals: evio-ipam on a Linux bridge <= 2 ms, >= 10x / 20x; OVS
            // netdev <= 8 ms; host-local >= 5x / 15x.
            let ovs = plugin.config["bridgeType"] == "OVS";
            let (add_ms, add_goal, del_goal) = match (plugin.evio_ipam, ovs) {
                (_, true) => (8.0, 5.0, 15.0),
                (true, false) => (2.0, 10.0, 20.0),
                (false, false) => (7.0, 5.0, 15.0),
            };
            println!(
                "  goals: ADD p50 <= {add_ms} ms: {}; ADD >= {add_goal}x bridge: {}; DEL >= {del_goal}x bridge: {}; leftovers {left}",
                met(a.p50_ms <= add_ms),
                met(add_x >= add_goal),
                met(del_x >= del_goal)
            );
        }
        rows.push(json!({"plugin": plugin.label, "add": a, "del": d,
                         "addSpeedup": add_x, "delSpeedup": del_x, "leftovers": left}));
    }
    println!(
        "evio's DEL answers once the pod is cut off; the kernel finished deleting its veths {:.0} ms after the last DEL",
        drain.as_secs_f64() * 1000.0
    );
    let steps = match breakdown {
        true => breakdown::report(&setup, &[("ADD", &add), ("DEL", &del)])?,
        false => Value::Null,
    };
    Ok(
        json!({"figure": "pods", "pods": count, "plugins": rows, "retiredDrainMs": drain.as_secs_f64() * 1000.0, "breakdown": steps}),
    )
}

/// `fill`: `count` pods per plugin (a node block holds 253), `parallel` ADDs at a time, then
/// DEL all the same way; wall time, failures and leftovers.
pub async fn fill(
    bins: &Bins,
    evio_cni: &Path,
    kind: &str,
    ipam: &str,
    count: usize,
    parallel: usize,
) -> Result<Value> {
    let setup = setup(bins, evio_cni, kind, ipam, count, false).await?;
    let netns = &setup.netns;
    println!("node fill: {count} pods per plugin, {parallel} concurrent, then DEL all");
    println!(
        "{:<18} {:>10} {:>10} {:>12} {:>9} {:>10}",
        "plugin", "ADD all", "DEL all", "veths gone", "failures", "leftovers"
    );
    let mut rows = Vec::new();
    for (p, plugin) in setup.plugins.iter().enumerate() {
        let run = |command: &'static str| -> (Duration, usize) {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let failures = std::sync::atomic::AtomicUsize::new(0);
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..parallel {
                    scope.spawn(|| loop {
                        let pod = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if pod >= count {
                            return;
                        }
                        if let Err(e) =
                            exec(plugin, command, &format!("fill-{p}-{pod}"), &netns[p][pod])
                        {
                            eprintln!("{e:#}");
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                }
            });
            (started.elapsed(), failures.into_inner())
        };
        let (add_all, add_failed) = run("ADD");
        let (del_all, del_failed) = run("DEL");
        let drain = retired_drained().await?;
        let left = leftovers(plugin)?;
        let failures = add_failed + del_failed;
        println!(
            "{:<18} {:>8.0}ms {:>8.0}ms {:>10.0}ms {:>9} {:>10}",
            &plugin.label,
            add_all.as_secs_f64() * 1000.0,
            del_all.as_secs_f64() * 1000.0,
            drain.as_secs_f64() * 1000.0,
            failures,
            left
        );
        if plugin.label != "bridge" {
            println!(
                "  goal: ADD all <= 2 s, 0 failures, 0 leftovers: {}",
                met(add_all <= Duration::from_secs(2) && failures == 0 && left == 0)
            );
        }
        rows.push(json!({"plugin": plugin.label, "addAllMs": add_all.as_secs_f64() * 1000.0,
                         "delAllMs": del_all.as_secs_f64() * 1000.0, "retiredDrainMs": drain.as_secs_f64() * 1000.0,
                         "failures": failures, "leftovers": left}));
    }
    Ok(json!({"figure": "fill", "pods": count, "parallel": parallel, "plugins": rows}))
}
