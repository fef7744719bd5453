//! `evio-bench <figure> --quick` keeps working: each subcommand runs its real processes (evio
//! members, etcd members) at tiny sizes, exits 0 and writes JSON with the expected fields and
//! sane values. No timing goal is asserted here: the figures are for docs/benchmarks.md.
//!
//! The evio-node and evio-cni binaries are the ones beside evio-bench in the target directory:
//! `cargo test --workspace` builds them; alone, run `cargo build -p evio-node -p evio-cni` first.

use std::path::Path;
use std::process::Command;

use evio_test_support::{evio_node_bin, have, output_fails, output_ok, prerequisites, target_bin};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_evio-bench");

fn etcd_available() -> bool {
    have("etcd", "etcd-server")
}

/// Runs `evio-bench <figure> --quick --json FILE` and returns the JSON.
fn quick(figure: &str) -> Value {
    quick_with(&[], figure, &[])
}

/// [`quick`] where etcd is installed: the figures that compare with etcd.
fn quick_against_etcd(figure: &str) -> Option<Value> {
    etcd_available().then(|| quick(figure))
}

/// Runs `evio-bench [global] <figure> --quick [args] --json FILE`, which must succeed: the
/// JSON, checked to be `figure`'s.
fn quick_with(global: &[&str], figure: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let json = dir.path().join(format!("{figure}.json"));
    let mut bench = Command::new(BENCH);
    bench.args(["--evio-node", evio_node_bin()]).args(global);
    bench.args([figure, "--quick"]).args(args).arg("--json");
    output_ok(bench.arg(&json));
    let v = read_json(&json);
    assert_eq!(v["figure"], figure, "{v}");
    v
}

/// Runs `evio-bench args`, which must fail: its stderr.
fn failing(args: &[&str]) -> String {
    output_fails(Command::new(BENCH).args(args))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `v[key]`, which must be an array.
fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {v}"))
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// A latency summary with `count` samples, positive and ordered.
fn assert_latency(v: &Value, count: u64, what: &str) {
    assert_eq!(v["count"].as_u64(), Some(count), "{what}: {v}");
    let (p50, p99, max) = (
        num(&v["p50Ms"], what),
        num(&v["p99Ms"], what),
        num(&v["maxMs"], what),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{what}: {v}");
}

#[test]
fn lease_quick() {
    let Some(v) = quick_against_etcd("lease") else {
        return;
    };
    let phases = array(&v, "phases");
    let clients: Vec<u64> = phases
        .iter()
        .filter_map(|p| p["clients"].as_u64())
        .collect();
    assert_eq!(clients, [1, 16]);
    for p in phases {
        let ops = p["ops"].as_u64().unwrap_or_else(|| panic!("{p}"));
        for side in ["evio", "original"] {
            assert_latency(&p[side]["latency"], ops, side);
            assert!(num(&p[side]["throughputPerSec"], side) > 0.0, "{p}");
        }
        assert!(num(&p["throughputRatio"], "ratio") > 0.0, "{p}");
        assert!(p["goalThroughputMet"].is_boolean(), "{p}");
    }
}

#[test]
fn failover_quick() {
    let Some(v) = quick_against_etcd("failover") else {
        return;
    };
    let trials = v["trials"].as_u64().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(trials, 2);
    assert_latency(&v["evio"], trials, "evio");
    assert_latency(&v["etcd"], trials, "etcd");
    assert!(v["goalP99Met"].is_boolean(), "{v}");
}

#[test]
fn memory_quick() {
    let Some(v) = quick_against_etcd("memory") else {
        return;
    };
    let stages = array(&v, "stages");
    let leases: Vec<u64> = stages.iter().filter_map(|s| s["leases"].as_u64()).collect();
    assert_eq!(leases, [16, 64]);
    for s in stages {
        for side in ["evioRssMiB", "etcdRssMiB"] {
            let rss = array(s, side);
            assert_eq!(rss.len(), 3, "{s}");
            // A live member of either kind is more than 1 MiB and less than 1 GiB resident.
            assert!(
                rss.iter().all(|r| (1.0..1024.0).contains(&num(r, side))),
                "{s}"
            );
        }
    }
}

#[test]
fn members_quick() {
    let v = quick("members");
    assert_eq!(v["members"].as_u64(), Some(4), "{v}");
    assert_latency(&v["acquire"], 5, "acquire");
    assert!(num(&v["allLeasedSeconds"], "allLeasedSeconds") > 0.0, "{v}");
    assert!(num(&v["failoverMs"], "failoverMs") > 0.0, "{v}");
    // A live member is more than 1 MiB and less than 1 GiB resident.
    for what in ["leaderRssMiB", "followerRssMaxMiB"] {
        assert!((1.0..1024.0).contains(&num(&v[what], what)), "{v}");
    }
}

#[test]
fn scale_quick() {
    // Also passes Raft tuning through to every `evio-node run`.
    let v = quick_with(&["--evio-run-arg=--heartbeat-ms=50"], "scale", &[]);
    let samples = v["samples"].as_u64().unwrap_or_else(|| panic!("{v}"));
    assert_latency(&v["small"]["latency"], samples, "small");
    assert_latency(&v["large"]["latency"], samples, "large");
    assert_eq!(v["large"]["leases"].as_u64(), Some(64), "{v}");
    assert!(v["goalMet"].is_boolean(), "{v}");
}

#[test]
fn join_quick() {
    let v = quick("join");
    assert_eq!(v["leases"].as_u64(), Some(1_500), "{v}");
    assert_eq!(v["caughtUp"], true, "{v}");
    assert!(num(&v["catchUpSeconds"], "catchUpSeconds") > 0.0, "{v}");
    let binary = num(&v["snapshotBytes"], "snapshotBytes");
    assert!(
        binary > 0.0 && binary < num(&v["legacyJsonSnapshotBytes"], "legacy"),
        "{v}"
    );
    let rss = array(&v, "rssMiB");
    assert_eq!(rss.len(), 4, "{v}");
}

#[test]
fn a_bad_evio_run_arg_fails_with_the_members_error() {
    let bad = "--evio-run-arg=--heartbeat-ms=0";
    let stderr = failing(&["--evio-node", evio_node_bin(), bad, "scale", "--quick"]);
    assert!(stderr.contains("--heartbeat-ms 0"), "{stderr}");
}

#[test]
fn missing_evio_node_is_named() {
    let stderr = failing(&["--evio-node", "/nonexistent/evio-node", "scale", "--quick"]);
    assert!(stderr.contains("/nonexistent/evio-node"), "{stderr}");
}

/// The pod benchmarks need root and the reference plugins; under CI they must run.
fn pod_bench_prerequisites() -> Option<std::path::PathBuf> {
    prerequisites(
        "the pod benchmarks",
        &[
            ("root", evio_test_support::is_root()),
            (
                "/usr/lib/cni/bridge",
                Path::new("/usr/lib/cni/bridge").is_file(),
            ),
        ],
    )
    .then(|| target_bin("evio-cni"))
}

/// `pods` and `fill` (Linux bridge: OVS is covered by the CNI tests) through the real
/// `evio-cni` and Debian's `bridge` plugin: every pod ADDed and DELeted, nothing left behind.
#[test]
fn pods_and_fill_quick() {
    let Some(evio_cni) = pod_bench_prerequisites() else {
        return;
    };
    let cni = evio_cni.to_string_lossy().into_owned();
    for figure in ["pods", "fill"] {
        let v = quick_with(&[], figure, &["--kind", "lxbr", "--evio-cni", &cni]);
        let rows = array(&v, "plugins");
        let labels: Vec<&str> = rows.iter().filter_map(|r| r["plugin"].as_str()).collect();
        assert_eq!(labels, ["evio LXBR", "bridge"], "{v}");
        for row in rows {
            assert_eq!(row["leftovers"].as_u64(), Some(0), "{row}");
            if figure == "pods" {
                assert_latency(&row["add"], 3, "pods add");
                assert_latency(&row["del"], 3, "pods del");
            } else {
                assert_eq!(row["failures"].as_u64(), Some(0), "{row}");
                assert!(num(&row["addAllMs"], "addAllMs") > 0.0, "{row}");
            }
        }
    }
}
