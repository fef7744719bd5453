//! kubelet's path end to end: the real `evio-cni` binary exec'd with CNI_* and a config, the
//! real `evio-node dev` daemon behind its unix socket, an OVS bridge (real ovsdb-server and
//! ovs-vswitchd), a veth into a real netns and the real host-local plugin. Needs root (fails loudly under CI=true without it).

mod common;

use std::process::Command;

#[path = "common/cni.rs"]
mod cni_support;

use cni_support::{exec_cni, prerequisites, Netns, OvsBridge};
use common::{evio_node, Proc};
use serde_json::{json, Value};

fn cni(command: &str, container: &str, netns: &str, config: &Value) -> (i32, Value) {
    exec_cni(
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ],
        config.to_string().as_bytes(),
    )
}

/// Removes the masquerade rule the daemon installed for its node subnet.
struct MasqueradeRule(ipnetwork::Ipv4Network);

impl Drop for MasqueradeRule {
    fn drop(&mut self) {
        let _ = evio_cni::dataplane::masquerade::remove(self.0);
    }
}

#[test]
fn evio_cni_add_and_del_through_the_daemon() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let socket = dir.path().join("cni.sock");
    let data_arg = data.to_string_lossy().to_string();
    let socket_arg = socket.to_string_lossy().to_string();
    let daemon = Proc::spawn(evio_node(&[
        "dev",
        "--data-dir",
        &data_arg,
        "--listen",
        "127.0.0.1:0",
        "--node-name",
        "cni-host",
        "--cni-socket",
        &socket_arg,
    ]))
    .unwrap_or_else(|e| panic!("{e}"));

    // The conflist dev generated for its lease (OVS bridge by default), on the userspace
    // datapath: these machines have no openvswitch kernel module.
    let conflist: Value = serde_json::from_slice(
        &std::fs::read(data.join("net.d/10-evio.conflist")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tag = std::process::id();
    let bridge = format!("eve{tag}");
    let _bridge = OvsBridge(bridge.clone());
    let mut config = conflist["plugins"][0].clone();
    config["cniVersion"] = conflist["cniVersion"].clone();
    config["name"] = json!(format!("evio-e2e-{tag}"));
    config["bridge"] = json!(bridge);
    config["ovsDatapath"] = json!("netdev");
    // dev names its own socket in the conflist it writes
    assert_eq!(config["socket"], socket_arg.as_str());
    config["ipam"]["dataDir"] = json!(dir.path().join("ipam"));

    let ns = Netns::add(format!("evio-e2e-{tag}"));
    let netns = ns.path();
    let container = format!("e2e-{tag}");

    let subnet: ipnetwork::Ipv4Network = config["nodeSubnet"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("conflist without nodeSubnet: {config}"));
    let _masquerade = MasqueradeRule(subnet);
    let (code, result) = cni("ADD", &container, &netns, &config);
    assert_eq!(code, 0, "{result}\n{}", daemon.logs());
    // dev leased block 0 of 10.244.0.0/16: the first pod gets .2 with the /16 mask.
    assert_eq!(result["ips"][0]["address"], "10.244.0.2/16", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.244.0.1");
    let addr = Command::new("ip")
        .args(["-n", &ns.0, "-4", "addr", "show", "eth0"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(String::from_utf8_lossy(&addr.stdout).contains("10.244.0.2/16"));

    let (code, out) = cni("DEL", &container, &netns, &config);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cni("DEL", &container, &netns, &config);
    assert_eq!(code, 0, "repeated DEL: {out}");
    let links = Command::new("ip")
        .args(["-n", &ns.0, "link"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));

    // CHECK after DEL reports the missing interface (and needs cniVersion >= 0.4.0).
    let mut check = config.clone();
    check["prevResult"] = result;
    let (code, out) = cni("CHECK", &container, &netns, &check);
    assert_eq!((code, out["code"].as_u64()), (1, Some(110)), "{out}");
    daemon.assert_no_panics();
}
