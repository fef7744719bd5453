//! How the dataplane follows its config and limits, in real netns with real host-local and
//! OVS: `ovsDatapath: auto`, a bridge that cannot come up, `isGateway: false`, and a hung
//! IPAM plugin against the request deadline. Needs root (fails loudly under CI=true without
//! its prerequisites).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use evio_cni::dataplane::{attachment, masquerade};
use evio_cni::spec::{code, Command};
use serde_json::json;

fn ovs_bridge_exists(name: &str) -> bool {
    std::process::Command::new("ovs-vsctl")
        .args(["br-exists", name])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_linux_bridge(name: &str) -> bool {
    String::from_utf8_lossy(&ip(&["-d", "link", "show", name]).stdout).contains("bridge ")
}

/// `auto` with no OVS at the configured socket: the pod goes on a Linux bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_ovs_uses_a_linux_bridge() {
    let Some(mut fx) = Fixture::ready("OVS", 59) else {
        return;
    };
    let pods = new_pods();
    let ns = fx.netns("a");
    let mut config = fx.config("3.254");
    config["ovsDatapath"] = json!("auto");
    config["ovsdbSocket"] = json!(fx.ipam_dir.path().join("no-ovsdb.sock"));
    let add = fx.request(Command::Add, "a", &ns, config.clone());
    pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(
        is_linux_bridge(&fx.bridge),
        "{} is not a Linux bridge",
        fx.bridge
    );
    assert!(
        ping_from(&ns, &fx.net("3.1")),
        "the pod cannot reach the gateway"
    );
    // DEL decides the same way (no OVSDB to ask), and GC too.
    fx.del(&pods, "a", &ns, config).await;
    assert!(fx.reservations().is_empty(), "{:?}", fx.reservations());
    // The fixture removes an OVS bridge: this one is a Linux bridge.
    let _ = ip(&["link", "del", &fx.bridge]);
}

/// `auto` with OVS running: an OVS bridge (netdev here: no kernel module on these hosts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_with_ovs_uses_an_ovs_bridge() {
    if !prerequisites() || !ovs_running() {
        return;
    }
    let mut fx = Fixture::new("OVS");
    fx.octet = 58;
    let pods = new_pods();
    let ns = fx.netns("a");
    let mut config = fx.config("3.254");
    config["ovsDatapath"] = json!("auto");
    let add = fx.request(Command::Add, "a", &ns, config.clone());
    pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(ovs_bridge_exists(&fx.bridge));
    evio_test_support::cni::assert_auto_datapath(&fx.bridge);
    fx.del(&pods, "a", &ns, config).await;
}

/// The kernel datapath on a host without its module: the bridge never gets an interface; the
/// ADD fails and removes the OVS bridge it created, with nothing else left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ovs_bridge_that_cannot_come_up_is_removed() {
    if !prerequisites() || !ovs_running() {
        return;
    }
    if std::path::Path::new("/sys/module/openvswitch").exists() {
        eprintln!("the openvswitch module is loaded: a system bridge comes up here");
        return;
    }
    let mut fx = Fixture::new("OVS");
    fx.octet = 57;
    let pods = new_pods();
    let ns = fx.netns("a");
    let mut config = fx.config("3.254");
    config["ovsDatapath"] = json!("system");
    let add = fx.request(Command::Add, "a", &ns, config);
    let err = pods.add(&add).await.map(|_| ()).unwrap_err();
    assert!(err.msg.contains(&fx.bridge), "{err:?}");
    assert!(
        !ovs_bridge_exists(&fx.bridge),
        "the OVS bridge was left behind"
    );
    assert!(!link_exists(&attachment::host_veth_name(
        &add.container_id,
        "eth0"
    )));
    assert!(fx.reservations().is_empty(), "{:?}", fx.reservations());
}

/// `isGateway: false` (and no default route): the bridge carries no address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_gateway_false_leaves_the_bridge_without_an_address() {
    let Some(mut fx) = Fixture::ready("LXBR", 56) else {
        return;
    };
    let pods = new_pods();
    let ns = fx.netns("a");
    let mut config = fx.config("3.254");
    config["isGateway"] = json!(false);
    config["isDefaultGateway"] = json!(false);
    config["hairpinMode"] = json!(true);
    let add = fx.request(Command::Add, "a", &ns, config.clone());
    let result = pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(result["routes"], json!([]), "{result}");
    let shown =
        String::from_utf8_lossy(&ip(&["-4", "addr", "show", &fx.bridge]).stdout).to_string();
    assert!(!shown.contains("inet "), "{shown}");
    // hairpinMode: the pod's port reflects its own traffic.
    let host = attachment::host_veth_name(&add.container_id, "eth0");
    let port = String::from_utf8_lossy(&ip(&["-d", "link", "show", &host]).stdout).to_string();
    assert!(port.contains("hairpin on"), "{port}");
    fx.del(&pods, "a", &ns, config).await;
}

/// A dir holding `evio-hung-ipam`, an IPAM plugin that answers VERSION and then sleeps for
/// ever, and the sleep's command line (unique to this process, to find it afterwards).
fn hung_ipam_plugin(tag: &str) -> (tempfile::TempDir, String) {
    let bin = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let script = bin.path().join("evio-hung-ipam");
    let sleep = format!("sleep {tag}.{}", std::process::id());
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] && exec echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}}'\nexec {sleep}\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    (bin, sleep)
}

/// The daemon's deadline fits below the shim's wait the config names (`replyTimeout`): with
/// a daemon deadline far longer than that wait, a hung IPAM plugin still fails the ADD with
/// code 11 before the shim would give up, so the runtime hears why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_fits_below_the_shims_reply_timeout() {
    let Some(mut fx) = Fixture::ready("LXBR", 53) else {
        return;
    };
    let pods = new_pods_within(Duration::from_secs(600));
    let (bin, _sleep) = hung_ipam_plugin("1235");
    let ns = fx.netns("reply");
    let mut config = fx.config("3.254");
    config["ipam"]["type"] = json!("evio-hung-ipam");
    config["replyTimeout"] = json!(15);
    let mut add = fx.request(Command::Add, "reply", &ns, config);
    add.path = format!("{}:{}", bin.path().display(), add.path);
    // The shim would give up at 15 s; the daemon must answer before that.
    let answered = tokio::time::timeout(Duration::from_secs(15), pods.add(&add))
        .await
        .unwrap_or_else(|_| panic!("the ADD outlived the shim's 15 s replyTimeout"));
    let err = answered.map(|_| ()).unwrap_err();
    assert_eq!(err.code, code::TRY_AGAIN_LATER, "{err:?}");
    assert!(!link_exists(&attachment::host_veth_name(
        &add.container_id,
        "eth0"
    )));
}

/// Removes the stand-in host-overlay link however the test ends.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// Without `mtu` the pod follows the link carrying the node's host IP (the host overlay); an
/// `mtu` that link cannot carry is refused with code 7 naming the key, nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_mtu_follows_the_host_overlay_link() {
    let Some(mut fx) = Fixture::ready("LXBR", 52) else {
        return;
    };
    // A veth standing in for the Evio tunnel (no dummy module here), with a host IP of a
    // test-only range.
    let overlay = LinkGuard(format!("evmtu{}", std::process::id() % 100_000));
    let peer = format!("{}p", overlay.0);
    let host_ip = format!("198.18.{}.{}", fx.octet, std::process::id() % 250 + 1);
    for args in [
        vec![
            "link", "add", &overlay.0, "type", "veth", "peer", "name", &peer,
        ],
        vec!["link", "set", &overlay.0, "mtu", "1380", "up"],
        vec!["addr", "add", &format!("{host_ip}/32"), "dev", &overlay.0],
    ] {
        let out = ip(&args);
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let pods = new_pods();
    let (ns_a, ns_b) = (fx.netns("a"), fx.netns("b"));
    let mut follows = fx.config("3.254");
    follows.as_object_mut().map(|c| c.remove("mtu"));
    follows["hostIP"] = json!(host_ip);
    let add = fx.request(Command::Add, "a", &ns_a, follows.clone());
    pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    let inside = netns_output(&ns_a, &["link", "show", "eth0"]);
    assert!(inside.contains("mtu 1380"), "{inside}");

    let mut too_big = follows;
    too_big["mtu"] = json!(1500);
    let refused = fx.request(Command::Add, "b", &ns_b, too_big);
    let err = pods.add(&refused).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code, code::INVALID_NETWORK_CONFIG, "{err:?}");
    assert!(
        err.msg.contains("mtu") && err.msg.contains("1380"),
        "{err:?}"
    );
    assert!(!link_exists(&attachment::host_veth_name(
        &refused.container_id,
        "eth0"
    )));
    assert_eq!(fx.reservations().len(), 1, "{:?}", fx.reservations());
    fx.del(&pods, "a", &ns_a, fx.config("3.254")).await;
}

/// An IPAM plugin that hangs: the ADD fails with code 11 once the daemon's deadline passes
/// (the plugin killed), leaves nothing behind, and another pod's ADD meanwhile succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_ipam_plugin_fails_the_add_at_the_deadline() {
    let Some(mut fx) = Fixture::ready("LXBR", 55) else {
        return;
    };
    let pods = new_pods_within(Duration::from_secs(3));
    let (bin, sleep) = hung_ipam_plugin("1234");
    let (ns_hung, ns_ok) = (fx.netns("hung"), fx.netns("ok"));
    let mut hung_config = fx.config("3.254");
    hung_config["ipam"]["type"] = json!("evio-hung-ipam");
    let mut hung = fx.request(Command::Add, "hung", &ns_hung, hung_config);
    hung.path = format!("{}:{}", bin.path().display(), hung.path);
    let ok = fx.request(Command::Add, "ok", &ns_ok, fx.config("3.254"));

    let (hung_outcome, ok_outcome) = tokio::join!(pods.add(&hung), async {
        // Starts while the hung ADD waits for its plugin.
        tokio::time::sleep(Duration::from_millis(500)).await;
        pods.add(&ok).await
    });
    let err = hung_outcome.map(|_| ()).unwrap_err();
    assert_eq!(err.code, code::TRY_AGAIN_LATER, "{err:?}");
    assert!(err.msg.contains("evio-hung-ipam"), "{err:?}");
    let result = ok_outcome.unwrap_or_else(|e| panic!("the other pod's ADD: {e:?}"));
    assert_eq!(result["ips"][0]["address"], fx.net("3.2/16"), "{result}");
    // The hung ADD left nothing: no veth, no pod interface; its plugin was killed.
    assert!(!link_exists(&attachment::host_veth_name(
        &hung.container_id,
        "eth0"
    )));
    let inside = netns_output(&ns_hung, &["link"]);
    assert!(!inside.contains("eth0"), "{inside}");
    let killed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::process::Command::new("pgrep")
            .args(["-f", &sleep])
            .status()
            .is_ok_and(|s| !s.success())
    });
    assert!(killed, "the hung IPAM plugin is still running");
    fx.del(&pods, "ok", &ns_ok, fx.config("3.254")).await;
}

/// Masquerade follows the lease: a rule removed from outside is back after the next ADD, and
/// an ADD under another node subnet of the same pod CIDR (the node's lease changed) removes
/// the old subnet's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masquerade_follows_the_lease() {
    let Some(mut fx) = Fixture::ready("LXBR", 54) else {
        return;
    };
    let pods = new_pods();
    let (ns_a, ns_b, ns_c) = (fx.netns("a"), fx.netns("b"), fx.netns("c"));
    let add_a = fx.request(Command::Add, "a", &ns_a, fx.config("3.254"));
    pods.add(&add_a).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(masquerade_rules(&fx), 1);

    // Flushed from outside: the next ADD puts it back.
    masquerade::remove(fx.node_subnet()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(masquerade_rules(&fx), 0);
    let add_b = fx.request(Command::Add, "b", &ns_b, fx.config("3.254"));
    pods.add(&add_b).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(masquerade_rules(&fx), 1);

    // The node now holds 10.54.4.0/24: its rule replaces the old block's.
    let new_subnet: ipnetwork::Ipv4Network =
        fx.net("4.0/24").parse().unwrap_or_else(|e| panic!("{e}"));
    let _new_rule = RemoveMasquerade(new_subnet);
    let mut moved = fx.config("3.254");
    moved["nodeSubnet"] = json!(new_subnet.to_string());
    let add_c = fx.request(Command::Add, "c", &ns_c, moved);
    pods.add(&add_c).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        masquerade_rules(&fx),
        0,
        "the old block's rule is still there"
    );
    let chain = String::from_utf8_lossy(
        &std::process::Command::new("nft")
            .args(["list", "chain", "ip", masquerade::TABLE, "postrouting"])
            .output()
            .unwrap_or_else(|e| panic!("nft: {e}"))
            .stdout,
    )
    .to_string();
    assert!(
        chain.contains(&format!("evio-masq {new_subnet}")),
        "{chain}"
    );
    for (name, ns) in [("a", &ns_a), ("b", &ns_b), ("c", &ns_c)] {
        fx.del(&pods, name, ns, fx.config("3.254")).await;
    }
}

/// Removes a masquerade rule the fixture does not know of, on any exit.
struct RemoveMasquerade(ipnetwork::Ipv4Network);

impl Drop for RemoveMasquerade {
    fn drop(&mut self) {
        let _ = masquerade::remove(self.0);
    }
}
