//! The real `evio-cni` binary for node tests: exec'd as kubelet does (clean environment,
//! `CNI_*` variables, the config on stdin), plus guards for what CNI tests create.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub fn evio_cni_binary() -> PathBuf {
    // Built by `cargo test --workspace` next to evio-node.
    let path = Path::new(crate::common::BIN).with_file_name("evio-cni");
    assert!(
        path.is_file(),
        "{} missing: build the workspace (cargo build -p evio-cni)",
        path.display()
    );
    path
}

/// Root, host-local and a running ovsdb-server; without them the test is skipped outside CI
/// and fails loudly under CI=true.
pub fn prerequisites() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let host_local = Path::new("/usr/lib/cni/host-local").is_file();
    let ovs = Path::new("/run/openvswitch/db.sock").exists();
    if root && host_local && ovs {
        return true;
    }
    let why = format!(
        "root={root} host-local={host_local} ovsdb={ovs} (run scripts/install-deps.sh and scripts/ovs-start.sh as root)"
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CNI e2e prerequisites missing under CI: {why}"
    );
    eprintln!("skipping CNI e2e test outside CI: {why}");
    false
}

/// Execs `evio-cni` with exactly `env` and `stdin`; returns its exit code and stdout as JSON
/// (Null when empty or not JSON).
pub fn exec_cni<'a>(
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    stdin: &[u8],
) -> (i32, Value) {
    let mut child = Command::new(evio_cni_binary())
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut input) = child.stdin.take() {
        // The shim may answer before reading all of stdin.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), value)
}

/// A named network namespace (`ip netns`), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: String) -> Netns {
        let ns = Netns(name);
        let ok = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {}", ns.0);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// An OVS bridge, deleted on drop.
pub struct OvsBridge(pub String);

impl Drop for OvsBridge {
    fn drop(&mut self) {
        let _ = Command::new("ovs-vsctl")
            .args(["--if-exists", "del-br", &self.0])
            .output();
    }
}

/// A host link, deleted on drop (absent is fine).
pub struct HostLink(pub String);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}
