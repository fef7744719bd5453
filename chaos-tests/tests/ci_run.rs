//! CI's chaos run: three short seeds of `evio-chaos` with every fault kind against 5 real
//! `evio-node run` members in network namespaces. Needs root, iproute2, iptables and the
//! host-local plugin (fails loudly under CI=true without them), and the evio-node and evio-cni
//! binaries of this target dir (`cargo build -p evio-node -p evio-cni`).

use std::path::Path;
use std::process::Command;

use evio_test_support::target_bin;

const CHAOS: &str = env!("CARGO_BIN_EXE_evio-chaos");

fn prerequisites() -> bool {
    evio_test_support::prerequisites(
        "the chaos run",
        &[
            ("root", evio_test_support::is_root()),
            ("ip", evio_test_support::on_path("ip")),
            ("iptables", evio_test_support::on_path("iptables")),
            ("host-local", Path::new("/usr/lib/cni/host-local").is_file()),
        ],
    )
}

#[test]
fn three_short_seeds_hold_every_invariant() {
    if !prerequisites() {
        return;
    }
    let (node, cni) = (target_bin("evio-node"), target_bin("evio-cni"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for seed in [11u64, 12, 13] {
        let report = dir.path().join(format!("seed-{seed}.json"));
        let out = Command::new(CHAOS)
            .args([
                "--nodes",
                "5",
                "--seed",
                &seed.to_string(),
                "--duration",
                "25s",
            ])
            .args(["--faults", "all", "--report"])
            .arg(&report)
            .arg("--evio-node")
            .arg(&node)
            .arg("--evio-cni")
            .arg(&cni)
            .env("EVIO_LOG", "warn")
            .output()
            .unwrap_or_else(|e| panic!("running {CHAOS}: {e}"));
        let summary = String::from_utf8_lossy(&out.stdout);
        println!("{summary}");
        assert!(
            out.status.success(),
            "seed {seed}: evio-chaos exited {:?}\n{summary}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The report exists and says what the summary says, with real work in it.
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&report).unwrap_or_else(|e| panic!("{}: {e}", report.display())),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["passed"], true, "{json}");
        assert_eq!(json["seed"], seed);
        assert!(json["ops"]["ok"].as_u64().unwrap_or(0) > 50, "{json}");
        assert!(
            json["fault_windows"].as_array().map_or(0, Vec::len) >= 3,
            "{json}"
        );
        assert_eq!(json["invariants"].as_array().map_or(0, Vec::len), 7);
    }
}
