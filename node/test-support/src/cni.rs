//! CNI plugins exec'd the way a container runtime does (`CNI_*` environment, config on
//! stdin), inside a node's namespace if need be, a real `evio-node dev` daemon behind the
//! shim's socket, and guards that remove what a test created (netns, links, masquerade rule,
//! OVS bridge) even when it panics.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::{dev_command, is_root, prerequisites, run, target_bin, Proc};

/// Where Debian's containernetworking-plugins installs host-local, portmap, ...
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

pub fn evio_cni_binary() -> PathBuf {
    target_bin("evio-cni")
}

pub fn plugin(name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(name)
}

/// Root, host-local and a running ovsdb-server: what most evio-cni tests need.
pub fn evio_cni_prerequisites(test: &str) -> bool {
    prerequisites(
        test,
        &[
            ("root", is_root()),
            ("host-local", plugin("host-local").is_file()),
            ("ovsdb", Path::new("/run/openvswitch/db.sock").exists()),
        ],
    )
}

/// Runs `cmd` inside the network namespace at `netns` (joined in the child before exec, so
/// the child's pid is the program's own and killing it needs no wrapper).
pub fn in_netns(cmd: &mut Command, netns: impl AsRef<Path>) -> &mut Command {
    let netns = netns.as_ref();
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

/// Runs one CNI plugin binary as a runtime does: `CNI_*` in a clean environment
/// (`CNI_IFNAME=eth0`), the config on stdin. Returns the exit code and stdout as JSON (null
/// when empty).
pub fn exec_plugin(
    binary: &Path,
    command: &str,
    container: &str,
    netns: &str,
    config: &Value,
) -> (i32, Value) {
    let cmd = Command::new(binary);
    exec_plugin_cmd(cmd, PLUGIN_DIR, command, container, netns, "eth0", config)
}

/// `cmd` (a plugin binary) run as a runtime does, with `cni_path` as `CNI_PATH`.
pub fn exec_plugin_cmd(
    mut cmd: Command,
    cni_path: &str,
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    config: &Value,
) -> (i32, Value) {
    let binary = PathBuf::from(cmd.get_program());
    let mut child = cmd
        .env_clear()
        // plugins that exec iptables find it on the runtime's PATH
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        if out.stdout.is_empty() {
            Value::Null
        } else {
            json!({
                "unparsed stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
            })
        }
    });
    (out.status.code().unwrap_or(-1), value)
}

/// The real `evio-cni` shim with `CNI_IFNAME=eth0`.
pub fn cni(command: &str, container: &str, netns: &str, config: &Value) -> (i32, Value) {
    cni_in(None, command, container, netns, config)
}

/// Like `cni`, with `evio-cni` exec'd inside the network namespace `host` (a node's).
pub fn cni_in(
    host: Option<&str>,
    command: &str,
    container: &str,
    netns: &str,
    config: &Value,
) -> (i32, Value) {
    let mut cmd = Command::new(evio_cni_binary());
    if let Some(host) = host {
        in_netns(&mut cmd, host);
    }
    exec_plugin_cmd(cmd, PLUGIN_DIR, command, container, netns, "eth0", config)
}

/// Execs `evio-cni` with exactly `env` and `stdin` (for malformed requests); returns its
/// exit code and stdout as JSON (Null when empty; anything else but JSON fails the test).
pub fn exec_cni<'a>(
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    stdin: &[u8],
) -> (i32, Value) {
    let mut cmd = Command::new(evio_cni_binary());
    cmd.env_clear().envs(env).stdin(Stdio::piped());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut input) = child.stdin.take() {
        // The shim may answer before reading all of stdin.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            panic!("evio-cni's stdout is not JSON ({e}): {stdout}\nstderr: {stderr}")
        })
    };
    (out.status.code().unwrap_or(-1), value)
}

/// The `name`s of a CNI result's `interfaces`, in order.
pub fn interface_names(result: &Value) -> Vec<&str> {
    let interfaces = result["interfaces"].as_array().into_iter().flatten();
    interfaces.filter_map(|i| i["name"].as_str()).collect()
}

/// `ip ARGS`, asserting success.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Whether a link of that name exists in the host netns.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Waits (up to 10 s) until `present` is false: evio's DEL answers once the pod is cut off
/// and leaves the veth pair's deletion to the daemon's reaper, which batches them (at most
/// `reaper::MAX_DELAY` after the DEL).
pub fn wait_until_gone(what: &str, mut present: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while present() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} still there 10 s after DEL"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Right after an evio DEL: the host veth is gone or retired (down, alias marked for the
/// reaper).
pub fn assert_veth_retired(name: &str) {
    let shown = Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !shown.is_empty() {
        let flags = shown.split(['<', '>']).nth(1).unwrap_or_default();
        assert!(
            !flags.split(',').any(|f| f == "UP")
                && shown.contains(&format!("alias {}", evio_cni::dataplane::reaper::RETIRED)),
            "{name} is neither gone nor retired after DEL: {shown}"
        );
    }
}

/// `assert_veth_retired`, then waits until the reaper deleted it.
pub fn assert_veth_retired_then_gone(name: &str) {
    assert_veth_retired(name);
    wait_until_gone(name, || link_exists(name));
}

/// The OVS bridge `bridge` runs on the datapath `ovsDatapath: auto` picks on this host: the
/// kernel's when the openvswitch module is loaded, else userspace `netdev`.
pub fn assert_auto_datapath(bridge: &str) {
    let datapath = run("ovs-vsctl", &["get", "Bridge", bridge, "datapath_type"]);
    let wanted = if Path::new("/sys/module/openvswitch").exists() {
        "system"
    } else {
        "netdev"
    };
    assert!(
        datapath.contains(wanted),
        "{bridge}: datapath {datapath:?}, auto should pick {wanted}"
    );
}

/// A named network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: impl Into<String>) -> Netns {
        let name = name.into();
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    /// `/run/netns/NAME`, what `CNI_NETNS` and setns take.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Removes the masquerade rule the daemon installed for its node subnet.
pub struct MasqueradeRule(pub ipnetwork::Ipv4Network);

impl Drop for MasqueradeRule {
    fn drop(&mut self) {
        let _ = evio_cni::dataplane::masquerade::remove(self.0);
    }
}

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

/// A Linux bridge, deleted on drop (LXBR mode creates it on the first ADD).
pub struct LinuxBridge(pub String);

impl Drop for LinuxBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.0])
            .output();
    }
}

/// A running `evio-node dev` with its data dir, CNI socket and the conflist it wrote.
pub struct DevNode {
    pub daemon: Proc,
    pub conflist: Value,
    pub socket: String,
}

impl DevNode {
    /// `evio-node dev` under `dir`; `pod_cidr` None keeps dev's default.
    pub fn start(dir: &Path, node_name: &str, pod_cidr: Option<&str>) -> DevNode {
        let data = dir.join("data");
        let socket = dir.join("cni.sock").to_string_lossy().to_string();
        let mut extra = vec!["--cni-socket", &socket];
        if let Some(cidr) = pod_cidr {
            extra.extend(["--pod-cidr", cidr]);
        }
        let daemon =
            Proc::spawn(dev_command(&data, node_name, &extra)).unwrap_or_else(|e| panic!("{e}"));
        let conflist: Value = serde_json::from_slice(
            &std::fs::read(data.join("net.d/10-evio.conflist")).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        DevNode {
            daemon,
            conflist,
            socket,
        }
    }

    /// Plugin `index` of the conflist as a runtime hands it over: with the list's
    /// `cniVersion` and `name` (here `name`, unique per test).
    pub fn plugin_config(&self, index: usize, name: &str) -> Value {
        let mut config = self.conflist["plugins"][index].clone();
        assert!(config.is_object(), "no plugin {index}: {}", self.conflist);
        config["cniVersion"] = self.conflist["cniVersion"].clone();
        config["name"] = json!(name);
        config
    }
}
