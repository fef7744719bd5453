//! evio-ipam as another plugin's IPAM, exec'd the way a runtime runs a plugin: the reference
//! `bridge` plugin (Debian's containernetworking-plugins) delegates to the real `evio-ipam`
//! binary found in `CNI_PATH`, which forwards to a real `evio-node dev`. The daemon is
//! SIGKILLed right after an ADD's reply: once restarted, the address is still held (the same
//! container gets it again, another one never does). Bad input is refused with code 7 and
//! reserves nothing; DEL and GC release. Linux bridge, pod network 10.87.0.0/16. Needs root;
//! under CI=true a missing prerequisite fails the test.

use evio_test_support::cni as cni_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cni_support::{exec_plugin_cmd, plugin, DevNode, LinuxBridge, Netns};
use evio_cni::dataplane::evio_ipam::store::read_reservations;
use evio_test_support::{is_root, prerequisites, target_bin};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const CIDR: &str = "10.87.0.0/16";

/// `CNI_PATH` for the test: the reference `bridge` plugin and `evio-ipam`, nothing else.
fn plugin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    for (name, target) in [
        ("bridge", plugin("bridge")),
        ("evio-ipam", target_bin("evio-ipam")),
    ] {
        std::os::unix::fs::symlink(&target, bin.join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    bin
}

/// Runs `binary` (in `bin`) as a runtime does.
fn exec(
    bin: &Path,
    binary: &str,
    command: &str,
    container: &str,
    netns: &str,
    config: &Value,
) -> (i32, Value) {
    exec_plugin_cmd(
        Command::new(bin.join(binary)),
        &bin.to_string_lossy(),
        command,
        container,
        netns,
        "eth0",
        config,
    )
}

/// What evio-ipam holds for the network: its files, named by address.
fn held(data: &Path, network: &str) -> Vec<String> {
    read_reservations(&data.join("ipam").join(network))
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(ip, _)| ip.to_string())
        .collect()
}

fn address(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {result}"))
        .to_string()
}

#[test]
fn reference_bridge_delegates_to_evio_ipam_and_addresses_survive_sigkill() {
    if !prerequisites(
        "evio-ipam exec",
        &[("root", is_root()), ("bridge", plugin("bridge").is_file())],
    ) {
        return;
    }
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin = plugin_dir(dir.path());
    let data = dir.path().join("data");
    let node_name = format!("ipam-exec-{pid}");
    let mut node = DevNode::start(dir.path(), &node_name, Some(CIDR));
    let network = format!("evio-ipam-{pid}");
    let bridge = format!("eip{pid}");
    let _bridge = LinuxBridge(bridge.clone());
    let (ns_a, ns_b) = (
        Netns::add(format!("evio-ipam-a-{pid}")),
        Netns::add(format!("evio-ipam-b-{pid}")),
    );
    // Switching from host-local is changing the type (and naming the daemon's socket).
    let evio = node.plugin_config(0, &network);
    let mut ipam = evio["ipam"].clone();
    ipam["type"] = json!("evio-ipam");
    ipam["socket"] = json!(node.socket);
    let config = json!({"cniVersion": "1.0.0", "name": network, "type": "bridge",
        "bridge": bridge, "isGateway": true, "ipam": ipam});
    let subnet: ipnetwork::Ipv4Network = evio["nodeSubnet"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("conflist without nodeSubnet: {evio}"));
    let (a, b) = (format!("ipam-a-{pid}"), format!("ipam-b-{pid}"));

    let (code, added) = exec(&bin, "bridge", "ADD", &a, &ns_a.path(), &config);
    assert_eq!(code, 0, "{added}");
    let address_a = address(&added);
    let ip_a: ipnetwork::Ipv4Network = address_a.parse().unwrap_or_else(|e| panic!("{e}"));
    assert!(subnet.contains(ip_a.ip()), "{address_a} not in {subnet}");
    // SIGKILL right after the reply, then the same daemon (same data dir) again.
    node.daemon.signal(Signal::SIGKILL);
    drop(node);
    let node = DevNode::start(dir.path(), &node_name, Some(CIDR));
    assert_eq!(held(&data, &network).len(), 1);

    let (code, again) = exec(&bin, "evio-ipam", "ADD", &a, &ns_a.path(), &config);
    assert_eq!((code, address(&again)), (0, address_a.clone()), "{again}");
    let (code, added_b) = exec(&bin, "bridge", "ADD", &b, &ns_b.path(), &config);
    assert_eq!(code, 0, "{added_b}");
    assert_ne!(
        address(&added_b),
        address_a,
        "an address was handed out twice"
    );
    assert_eq!(held(&data, &network).len(), 2);
    let (code, out) = exec(&bin, "evio-ipam", "CHECK", &a, &ns_a.path(), &config);
    assert_eq!(code, 0, "{out}");

    // Bad input: refused with code 7, nothing reserved.
    let mut outside = config.clone();
    outside["ipam"]["ranges"] = json!([[{"subnet": "10.86.0.0/16"}]]);
    let mut garbage = config.clone();
    garbage["ipam"]["ranges"] = json!([[{"subnet": "10.87.0.0/16", "rangeStart": "bogus"}]]);
    for (bad, text) in [
        (&outside, "outside this node's block"),
        (&garbage, "ipam.ranges[0][0].rangeStart"),
    ] {
        let (code, out) = exec(&bin, "evio-ipam", "ADD", "ipam-bad", &ns_a.path(), bad);
        assert_eq!((code, out["code"].as_u64()), (1, Some(7)), "{out}");
        assert!(out.to_string().contains(text), "{out}");
    }
    assert_eq!(held(&data, &network).len(), 2);

    // DEL through the bridge plugin releases a's address; CHECK then fails.
    let (code, out) = exec(&bin, "bridge", "DEL", &a, &ns_a.path(), &config);
    assert_eq!(code, 0, "{out}");
    assert_eq!(held(&data, &network), vec![ip_b(&added_b)]);
    let (code, out) = exec(&bin, "evio-ipam", "CHECK", &a, &ns_a.path(), &config);
    assert_eq!((code, out["code"].as_u64()), (1, Some(110)), "{out}");

    // GC (1.1.0) with nothing valid releases b's.
    let mut gc = config.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let (code, out) = exec(&bin, "evio-ipam", "GC", "", "", &gc);
    assert_eq!(code, 0, "{out}");
    assert!(held(&data, &network).is_empty());
    let (code, out) = exec(&bin, "bridge", "DEL", &b, &ns_b.path(), &config);
    assert_eq!(code, 0, "{out}");
    node.daemon.assert_no_panics();
}

fn ip_b(result: &Value) -> String {
    address(result)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}
