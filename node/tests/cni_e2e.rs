//! kubelet's path end to end: the real `evio-cni` binary exec'd with CNI_* and a config, the
//! real `evio-node dev` daemon behind its unix socket, an OVS bridge (real ovsdb-server and
//! ovs-vswitchd), a veth into a real netns and the real host-local plugin. Needs root (fails loudly under CI=true without it).

use evio_test_support::cni as cni_support;

use std::path::Path;
use std::process::Command;

use cni_support::{cni, DevNode, MasqueradeRule, Netns, OvsBridge};
use evio_test_support::{is_root, prerequisites};
use serde_json::json;

#[test]
fn evio_cni_add_and_del_through_the_daemon() {
    let checks = [
        ("root", is_root()),
        ("host-local", Path::new("/usr/lib/cni/host-local").is_file()),
        ("ovsdb", Path::new("/run/openvswitch/db.sock").exists()),
    ];
    if !prerequisites("CNI e2e", &checks) {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node = DevNode::start(dir.path(), "cni-host", None);
    let daemon = &node.daemon;

    let tag = std::process::id();
    let bridge = format!("eve{tag}");
    let _bridge = OvsBridge(bridge.clone());
    // The conflist dev generated for its lease, as it is: an OVS bridge on whatever datapath
    // this host runs (these machines have no openvswitch kernel module: netdev).
    let mut config = node.plugin_config(0, &format!("evio-e2e-{tag}"));
    config["bridge"] = json!(bridge);
    assert_eq!(config["ovsDatapath"], "auto", "{config}");
    // dev names its own socket in the conflist it writes
    assert_eq!(config["socket"], node.socket.as_str());
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
    // The daemon logged its choice, and the bridge is OVS with that datapath.
    assert!(
        daemon.logs().contains("ovsDatapath auto"),
        "{}",
        daemon.logs()
    );
    cni_support::assert_auto_datapath(&bridge);

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
