//! CI's chaos run: three short seeds of `evio-chaos` with every fault kind against 5 real
//! `evio-node run` members in network namespaces. Needs root, iproute2, iptables and the
//! host-local plugin (fails loudly under CI=true without them), and the evio-node and evio-cni
//! binaries of this target dir (`cargo build -p evio-node -p evio-cni`).

use std::path::{Path, PathBuf};
use std::process::Command;

const CHAOS: &str = env!("CARGO_BIN_EXE_evio-chaos");

fn prerequisites() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tool = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let (ip, iptables) = (tool("ip"), tool("iptables"));
    let host_local = Path::new("/usr/lib/cni/host-local").is_file();
    if root && ip && iptables && host_local {
        return true;
    }
    let why = format!(
        "root={root} ip={ip} iptables={iptables} host-local={host_local} (run scripts/install-deps.sh as root)"
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "chaos prerequisites missing under CI: {why}"
    );
    eprintln!("skipping the chaos run outside CI: {why}");
    false
}

/// evio-node / evio-cni from the same target dir (built by `cargo test --workspace`).
fn sibling(name: &str) -> PathBuf {
    let path = Path::new(CHAOS).with_file_name(name);
    assert!(
        path.is_file(),
        "{} missing: build it first (cargo build -p {name})",
        path.display()
    );
    path
}

#[test]
fn three_short_seeds_hold_every_invariant() {
    if !prerequisites() {
        return;
    }
    let (node, cni) = (sibling("evio-node"), sibling("evio-cni"));
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
