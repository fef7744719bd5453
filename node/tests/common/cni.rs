//! kubelet's side of CNI for tests: the real `evio-cni` binary exec'd with `CNI_*` and a
//! config, named network namespaces removed on drop, and commands run inside a namespace.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The `evio-cni` binary next to `evio-node` (cargo builds both for the workspace).
pub fn evio_cni_binary() -> PathBuf {
    let path = Path::new(super::BIN).with_file_name("evio-cni");
    assert!(
        path.is_file(),
        "{} missing: build the workspace (cargo build -p evio-cni)",
        path.display()
    );
    path
}

/// Runs `cmd` inside the network namespace at `netns` (joined in the child before exec, so
/// the child's pid is the program's own and killing it needs no wrapper).
pub fn in_netns<'a>(cmd: &'a mut Command, netns: &Path) -> &'a mut Command {
    let file = File::open(netns).unwrap_or_else(|e| panic!("{}: {e}", netns.display()));
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe setns(2) call on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        })
    }
}

/// `evio-cni` for `command` with ifname eth0, host-local from /usr/lib/cni, run in the root
/// network namespace. Returns its exit code and its parsed stdout.
pub fn cni(command: &str, container: &str, netns: &str, config: &Value) -> (i32, Value) {
    cni_in(None, command, container, netns, config)
}

/// Like `cni`, with `evio-cni` exec'd inside the network namespace `host` (a node's).
pub fn cni_in(
    host: Option<&Path>,
    command: &str,
    container: &str,
    netns: &str,
    config: &Value,
) -> (i32, Value) {
    let mut cmd = Command::new(evio_cni_binary());
    if let Some(host) = host {
        in_netns(&mut cmd, host);
    }
    let mut child = cmd
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), value)
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: &str) -> Netns {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name.to_string())
    }

    /// `/run/netns/NAME`, what `CNI_NETNS` and setns take.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
