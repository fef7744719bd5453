//! The packet path (Linux bridge and OVS) in real network namespaces with the real host-local
//! plugin: two pods get addresses from the node block (IPv4, IPv6 or both) and reach each other
//! and the gateway; a failed
//! ADD leaves no veth and no address behind; DEL is idempotent and works without the netns.
//! Needs root (CI runs as root; under CI=true a missing prerequisite fails the test).
//!
//! One file (over 600 lines) on purpose: one scenario matrix (each scenario for each bridge kind
//! and CNI version) over one shared fixture.

mod common;

use std::process::Command as Process;

use common::*;
use evio_cni::dataplane::{attachment, error as codes};
use evio_cni::spec::Command;
use serde_json::json;

/// The pod lifecycle for every bridge kind × every supported CNI version, each on its own
/// network (`10.<60 + n>.0.0/16`), as the reference bridge plugin's suite runs every scenario
/// per version.
macro_rules! scenario_matrix {
    ($($name:ident: $kind:literal, $ipam:literal, $version:literal, $octet:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if prerequisites() && ($kind == "LXBR" || ovs_running()) {
                scenario($kind, $ipam, $version, $octet).await;
            }
        }
    )*};
}

scenario_matrix! {
    lxbr_0_3_0: "LXBR", "host-local", "0.3.0", 60;
    lxbr_0_3_1: "LXBR", "host-local", "0.3.1", 61;
    lxbr_0_4_0: "LXBR", "host-local", "0.4.0", 62;
    lxbr_1_0_0: "LXBR", "host-local", "1.0.0", 63;
    lxbr_1_1_0: "LXBR", "host-local", "1.1.0", 64;
    ovs_0_3_0: "OVS", "host-local", "0.3.0", 65;
    ovs_0_3_1: "OVS", "host-local", "0.3.1", 66;
    ovs_0_4_0: "OVS", "host-local", "0.4.0", 67;
    ovs_1_0_0: "OVS", "host-local", "1.0.0", 68;
    ovs_1_1_0: "OVS", "host-local", "1.1.0", 69;
    lxbr_evio_ipam_0_3_0: "LXBR", "evio-ipam", "0.3.0", 70;
    lxbr_evio_ipam_0_3_1: "LXBR", "evio-ipam", "0.3.1", 71;
    lxbr_evio_ipam_0_4_0: "LXBR", "evio-ipam", "0.4.0", 72;
    lxbr_evio_ipam_1_0_0: "LXBR", "evio-ipam", "1.0.0", 73;
    lxbr_evio_ipam_1_1_0: "LXBR", "evio-ipam", "1.1.0", 74;
    ovs_evio_ipam_0_3_0: "OVS", "evio-ipam", "0.3.0", 75;
    ovs_evio_ipam_0_3_1: "OVS", "evio-ipam", "0.3.1", 76;
    ovs_evio_ipam_0_4_0: "OVS", "evio-ipam", "0.4.0", 77;
    ovs_evio_ipam_1_0_0: "OVS", "evio-ipam", "1.0.0", 78;
    ovs_evio_ipam_1_1_0: "OVS", "evio-ipam", "1.1.0", 79;
}

/// IPv6-only and dual-stack pod networks on either bridge kind (`fd00:0:<n>::/48`, and
/// `10.<n>.0.0/16` for dual stack).
macro_rules! family_matrix {
    ($($name:ident: $kind:literal, $dual:literal, $octet:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if prerequisites() && ($kind == "LXBR" || ovs_running()) {
                family_scenario($kind, $dual, $octet).await;
            }
        }
    )*};
}

family_matrix! {
    lxbr_ipv6_only: "LXBR", false, 70;
    lxbr_dual_stack: "LXBR", true, 71;
    ovs_ipv6_only: "OVS", false, 72;
    ovs_dual_stack: "OVS", true, 73;
}

fn addresses_of(result: &serde_json::Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|ip| ip["address"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Two pods on an IPv6-only or dual-stack network: an address per family, a default route per
/// family, usable at once (no DAD wait), reaching each other and the gateway over IPv6 (and
/// IPv4); CHECK covers both families; the IPv6 masquerade rule follows `isIPv6Masq`; DEL frees
/// both addresses.
async fn family_scenario(kind: &'static str, dual: bool, octet: u8) {
    let mut fx = Fixture::new(kind);
    fx.octet = octet;
    fx.version = "1.1.0";
    let pods = new_pods();
    let (ns_a, ns_b) = (fx.netns("a"), fx.netns("b"));
    let config = fx.config_families(dual, "3.254", "3::fe");

    let add_a = fx.request(Command::Add, "a", &ns_a, config.clone());
    let result_a = pods.add(&add_a).await.unwrap_or_else(|e| panic!("{e:?}"));
    let add_b = fx.request(Command::Add, "b", &ns_b, config.clone());
    let result_b = pods.add(&add_b).await.unwrap_or_else(|e| panic!("{e:?}"));
    let (mut want_a, mut want_b, mut routes) = (vec![], vec![], vec![]);
    if dual {
        want_a.push(fx.net("3.2/16"));
        want_b.push(fx.net("3.3/16"));
        routes.push(json!({"dst": "0.0.0.0/0", "gw": fx.net("3.1")}));
    }
    want_a.push(fx.net6("3::2/48"));
    want_b.push(fx.net6("3::3/48"));
    routes.push(json!({"dst": "::/0", "gw": fx.net6("3::1")}));
    assert_eq!(addresses_of(&result_a), want_a, "{result_a}");
    assert_eq!(addresses_of(&result_b), want_b, "{result_b}");
    assert_eq!(result_a["routes"], json!(routes), "{result_a}");
    let v6 = usize::from(dual);
    assert_eq!(
        result_a["ips"][v6]["gateway"],
        fx.net6("3::1"),
        "{result_a}"
    );

    // The bridge carries both gateways; the pod's addresses are usable now (nodad: never
    // tentative) and it has a default route per family.
    let bridge_addr =
        String::from_utf8_lossy(&ip(&["addr", "show", &fx.bridge]).stdout).to_string();
    // (the kernel's own link-local address does go through DAD)
    let usable = |shown: &str, addr: &str| {
        shown
            .lines()
            .any(|l| l.contains(&format!("inet6 {addr} ")) && !l.contains("tentative"))
    };
    assert!(usable(&bridge_addr, &fx.net6("3::1/48")), "{bridge_addr}");
    assert_eq!(
        bridge_addr.contains(&fx.net("3.1/16")),
        dual,
        "{bridge_addr}"
    );
    let pod_addr = netns_output(&ns_a, &["-6", "addr", "show", "dev", "eth0"]);
    assert!(usable(&pod_addr, &fx.net6("3::2/48")), "{pod_addr}");
    let pod_routes = netns_output(&ns_a, &["-6", "route", "show", "default"]);
    assert!(
        pod_routes.contains(&format!("via {}", fx.net6("3::1"))),
        "{pod_routes}"
    );
    let v4_routes = netns_output(&ns_a, &["-4", "route", "show", "default"]);
    assert_eq!(v4_routes.contains(&fx.net("3.1")), dual, "{v4_routes}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
            .unwrap_or_default()
            .trim(),
        "1"
    );

    assert!(
        ping_from(&ns_a, &fx.net6("3::1")),
        "pod a cannot reach the IPv6 gateway"
    );
    assert!(
        ping_from(&ns_a, &fx.net6("3::3")),
        "pod a cannot reach pod b over IPv6"
    );
    assert!(
        ping_from(&ns_b, &fx.net6("3::2")),
        "pod b cannot reach pod a over IPv6"
    );
    if dual {
        assert!(
            ping_from(&ns_a, &fx.net("3.3")),
            "pod a cannot reach pod b over IPv4"
        );
        assert_eq!(masquerade_rules(&fx), 1);
    }
    assert_eq!(
        masquerade_rules_of(&fx, true),
        1,
        "isIPv6Masq: one ip6 rule"
    );

    // CHECK: both families as ADD left them; a wrong IPv6 address or gateway fails it.
    let mut check_a = fx.request(Command::Check, "a", &ns_a, config.clone());
    check_a.config["prevResult"] = result_a.clone();
    pods.check(&check_a)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut wrong = check_a.clone();
    wrong.config["prevResult"]["ips"][v6]["address"] = json!(fx.net6("3::77/48"));
    let err = pods.check(&wrong).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code, codes::CODE_CHECK_FAILED, "{err:?}");
    let mut wrong_gw = check_a.clone();
    wrong_gw.config["prevResult"]["routes"][v6]["gw"] = json!(fx.net6("3::99"));
    let err = pods.check(&wrong_gw).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code, codes::CODE_CHECK_FAILED, "{err:?}");

    // GC with only pod b valid frees pod a's address of every family; DEL frees b's.
    assert_eq!(
        fx.reservations().len(),
        2 * (1 + v6),
        "{:?}",
        fx.reservations()
    );
    let mut gc = fx.request(Command::Gc, "gc", "", config.clone());
    gc.config["cni.dev/valid-attachments"] =
        json!([{"containerID": add_b.container_id, "ifname": "eth0"}]);
    pods.gc(&gc).await.unwrap_or_else(|e| panic!("{e:?}"));
    let mut kept = fx.reservations();
    kept.sort();
    let mut want_kept: Vec<String> = want_b
        .iter()
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .collect();
    want_kept.sort();
    assert_eq!(kept, want_kept);
    for (pod, ns) in [("a", &ns_a), ("b", &ns_b)] {
        fx.del(&pods, pod, ns, config.clone()).await;
    }
    assert!(fx.reservations().is_empty(), "{:?}", fx.reservations());
    pods.settled().await;
}

#[test]
fn the_matrix_covers_every_supported_version() {
    // A version added to the spec module must get its scenario row above.
    assert_eq!(
        evio_cni::spec::SUPPORTED_VERSIONS,
        ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    );
}

/// The same pod lifecycle on either bridge type with either IPAM (host-local exec'd, evio-ipam
/// in-process), in one config version.
async fn scenario(kind: &'static str, ipam: &'static str, version: &'static str, octet: u8) {
    let mut fx = Fixture::new(kind);
    fx.version = version;
    fx.octet = octet;
    fx.ipam = ipam;
    let pods = fx.pod_network();
    let (ns_a, ns_b) = (fx.netns("a"), fx.netns("b"));

    let add_a = fx.request(Command::Add, "a", &ns_a, fx.config("3.254"));
    let result_a = pods.add(&add_a).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(result_a["cniVersion"], version, "{result_a}");
    assert_eq!(
        result_a["ips"][0]["address"],
        fx.net("3.2/16"),
        "{result_a}"
    );
    assert_eq!(result_a["ips"][0]["gateway"], fx.net("3.1"));
    assert_eq!(
        result_a["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": fx.net("3.1")})
    );
    assert_eq!(result_a["interfaces"][2]["sandbox"], ns_a.as_str());
    let add_b = fx.request(Command::Add, "b", &ns_b, fx.config("3.254"));
    let result_b = pods.add(&add_b).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        result_b["ips"][0]["address"],
        fx.net("3.3/16"),
        "{result_b}"
    );

    // One masquerade rule for the node subnet, however many pods.
    assert_eq!(masquerade_rules(&fx), 1);

    // The bridge carries the gateway with the pod CIDR's mask; pods reach it and each other.
    let bridge_addr =
        String::from_utf8_lossy(&ip(&["-4", "addr", "show", &fx.bridge]).stdout).to_string();
    assert!(bridge_addr.contains(&fx.net("3.1/16")), "{bridge_addr}");
    assert!(
        ping_from(&ns_a, &fx.net("3.1")),
        "pod a cannot reach the gateway"
    );
    assert!(ping_from(&ns_a, &fx.net("3.3")), "pod a cannot reach pod b");
    let inside = netns_output(&ns_a, &["link", "show", "eth0"]);
    assert!(inside.contains("mtu 1400"), "{inside}");

    // CHECK (0.4.0 on) passes against the ADD result and fails when the pod is not as ADD
    // left it.
    if version != "0.3.0" && version != "0.3.1" {
        let mut check_a = fx.request(Command::Check, "a", &ns_a, fx.config("3.254"));
        check_a.config["prevResult"] = result_a.clone();
        pods.check(&check_a)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut wrong = check_a.clone();
        wrong.config["prevResult"]["ips"][0]["address"] = json!(fx.net("3.77/16"));
        let err = pods.check(&wrong).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code, codes::CODE_CHECK_FAILED, "{err:?}");
    }

    // STATUS: ready with host-local installed, "not available" without it (evio-ipam:
    // without a block to allocate from).
    let status = fx.request(Command::Status, "s", "", fx.config("3.254"));
    pods.status(&status)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut no_ipam = status.clone();
    no_ipam.path = "/nonexistent".into();
    if ipam == "evio-ipam" {
        pods.allocator().set_node_blocks(Vec::new());
    }
    assert_eq!(
        pods.status(&no_ipam).await.map(|_| ()).unwrap_err().code,
        codes::CODE_PLUGIN_NOT_AVAILABLE
    );
    pods.allocator()
        .set_node_blocks(vec![fx.node_subnet().into()]);

    // ADD of an ifname that exists fails, and leaves pod a intact.
    let again = pods.add(&add_a).await.map(|_| ()).unwrap_err();
    assert_eq!(again.code, codes::CODE_INTERFACE_EXISTS, "{again:?}");
    assert!(ping_from(&ns_a, &fx.net("3.3")));

    // Failures after the veth exists roll everything back: an exhausted range...
    let ns_c = fx.netns("c");
    let tight = fx.config("3.3");
    let add_c = fx.request(Command::Add, "c", &ns_c, tight);
    let err = pods.add(&add_c).await.map(|_| ()).unwrap_err();
    assert!(
        !link_exists(&attachment::host_veth_name(&add_c.container_id, "eth0")),
        "veth left behind: {err:?}"
    );
    assert_eq!(fx.reservations().len(), 2, "{:?}", fx.reservations());
    // ...and an IPAM plugin that is not there.
    let mut missing = fx.config("3.254");
    missing["ipam"]["type"] = json!("no-such-ipam");
    let add_d = fx.request(Command::Add, "d", &ns_c, missing);
    let err = pods.add(&add_d).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code, 7, "{err:?}");
    assert!(!link_exists(&attachment::host_veth_name(
        &add_d.container_id,
        "eth0"
    )));
    let ns_c_links = netns_output(&ns_c, &["link"]);
    assert!(
        !ns_c_links.contains("eth0") && !ns_c_links.contains("evtmp"),
        "{ns_c_links}"
    );

    // GC with only pod b valid removes pod a's veth and address reservation.
    let mut gc = fx.request(Command::Gc, "gc", "", fx.config("3.254"));
    gc.config["cni.dev/valid-attachments"] =
        json!([{"containerID": add_b.container_id, "ifname": "eth0"}]);
    pods.gc(&gc).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!link_exists(&attachment::host_veth_name(
        &add_a.container_id,
        "eth0"
    )));
    assert!(link_exists(&attachment::host_veth_name(
        &add_b.container_id,
        "eth0"
    )));
    assert_eq!(fx.reservations(), vec![fx.net("3.3").to_string()]);
    if kind == "OVS" {
        let ports = Process::new("ovs-vsctl")
            .args(["list-ports", &fx.bridge])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let ports = String::from_utf8_lossy(&ports.stdout).to_string();
        assert!(
            !ports.contains(&attachment::host_veth_name(&add_a.container_id, "eth0")),
            "{ports}"
        );
        assert!(
            ports.contains(&attachment::host_veth_name(&add_b.container_id, "eth0")),
            "{ports}"
        );
    }

    // DEL: idempotent, and fine once the netns is gone.
    let del_a = fx.request(Command::Del, "a", &ns_a, fx.config("3.254"));
    pods.del(&del_a).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_cut_off(&attachment::host_veth_name(&del_a.container_id, "eth0"));
    pods.del(&del_a).await.unwrap_or_else(|e| panic!("{e:?}"));
    pods.settled().await;
    assert!(!link_exists(&attachment::host_veth_name(
        &del_a.container_id,
        "eth0"
    )));
    let b_ns_name = fx.namespaces[1].clone();
    assert!(ip(&["netns", "del", &b_ns_name]).status.success());
    fx.namespaces.retain(|n| n != &b_ns_name);
    let del_b = fx.request(Command::Del, "b", &ns_b, fx.config("3.254"));
    pods.del(&del_b).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(fx.reservations().is_empty(), "{:?}", fx.reservations());
    pods.settled().await;
    assert!(!link_exists(&attachment::host_veth_name(
        &del_b.container_id,
        "eth0"
    )));
}

/// kubelet runs many requests at once and speaks every supported version: 50 concurrent ADDs
/// (versions 0.3.0 to 1.1.0) get distinct addresses and results in their version's format;
/// 50 concurrent DELs leave no veth, no bridge port and no reservation. Linux bridge here, OVS
/// below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_across_versions() {
    if !prerequisites() {
        return;
    }
    concurrent_adds_and_dels("LXBR", 97).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_across_versions_ovs() {
    if !prerequisites() {
        return;
    }
    if ovs_running() {
        concurrent_adds_and_dels("OVS", 94).await;
    } else {
        eprintln!("skipping OVS test outside CI: /run/openvswitch/db.sock missing");
    }
}

/// Ports on the fixture's bridge, Linux or OVS.
fn bridge_ports(fx: &Fixture) -> usize {
    let out = if fx.kind == "OVS" {
        Process::new("ovs-vsctl")
            .args(["list-ports", &fx.bridge])
            .output()
            .unwrap_or_else(|e| panic!("ovs-vsctl: {e}"))
    } else {
        ip(&["-o", "link", "show", "master", &fx.bridge])
    };
    String::from_utf8_lossy(&out.stdout).lines().count()
}

const CONCURRENT_PODS: usize = 50;

async fn concurrent_adds_and_dels(kind: &'static str, octet: u8) {
    concurrent_adds_and_dels_with(kind, "host-local", octet).await
}

/// The same with evio-ipam in-process: 50 ADDs at once never share an address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_with_evio_ipam() {
    if !prerequisites() {
        return;
    }
    concurrent_adds_and_dels_with("LXBR", "evio-ipam", 80).await;
}

async fn concurrent_adds_and_dels_with(kind: &'static str, ipam: &'static str, octet: u8) {
    let mut fx = Fixture::new(kind);
    fx.octet = octet; // its own network, apart from the other tests
    fx.ipam = ipam;
    let pods = std::sync::Arc::new(fx.pod_network());
    let versions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
    let mut requests = Vec::new();
    for i in 0..CONCURRENT_PODS {
        let netns = fx.netns(&format!("p{i}"));
        let mut config = fx.config("3.254");
        config["cniVersion"] = json!(versions[i % versions.len()]);
        requests.push(fx.request(Command::Add, &format!("p{i}"), &netns, config));
    }
    let adds = requests.iter().cloned().map(|request| {
        let pods = pods.clone();
        tokio::spawn(async move { (request.version(), pods.add(&request).await) })
    });
    let mut addresses = std::collections::BTreeSet::new();
    for add in adds.collect::<Vec<_>>() {
        let (version, result) = add.await.unwrap_or_else(|e| panic!("{e}"));
        let result = result.unwrap_or_else(|e| panic!("{version}: {e:?}"));
        assert_eq!(result["cniVersion"], version.as_str());
        // 0.3.x and 0.4.0 results name the IP version; 1.x ones do not.
        assert_eq!(
            result["ips"][0]["version"].is_string(),
            version.starts_with("0."),
            "{result}"
        );
        addresses.insert(
            result["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(addresses.len(), CONCURRENT_PODS, "{addresses:?}");
    assert_eq!(fx.reservations().len(), CONCURRENT_PODS);
    assert_eq!(bridge_ports(&fx), CONCURRENT_PODS);

    let dels = requests.into_iter().map(|mut request| {
        request.command = Command::Del;
        let pods = pods.clone();
        tokio::spawn(async move { pods.del(&request).await.map(|_| request.container_id) })
    });
    let mut deleted = Vec::new();
    for del in dels.collect::<Vec<_>>() {
        let container = del
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_cut_off(&attachment::host_veth_name(&container, "eth0"));
        deleted.push(container);
    }
    assert!(fx.reservations().is_empty(), "{:?}", fx.reservations());
    pods.settled().await;
    assert_eq!(bridge_ports(&fx), 0);
    for container in deleted {
        assert!(!link_exists(&attachment::host_veth_name(
            &container, "eth0"
        )));
    }
}

/// ADD announces the pod address with a gratuitous ARP: a bridge that accepts unsolicited
/// ARP learns the pod's neighbour entry before the pod sends any traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_sends_gratuitous_arp() {
    announcement_reaches_the_bridge(96, false).await;
}

/// The IPv6 counterpart: an unsolicited neighbour advertisement, learnt by a bridge that
/// accepts untracked advertisements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_sends_unsolicited_neighbour_advertisement() {
    announcement_reaches_the_bridge(74, true).await;
}

async fn announcement_reaches_the_bridge(octet: u8, ipv6: bool) {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new("LXBR");
    fx.octet = octet;
    let created = ip(&["link", "add", &fx.bridge, "type", "bridge"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let (sysctl, config, pod_ip, prefix, family) = if ipv6 {
        (
            "ipv6/conf/{}/accept_untracked_na",
            fx.config_families(false, "3.254", "3::fe"),
            fx.net6("3::2"),
            48,
            "-6",
        )
    } else {
        (
            "ipv4/conf/{}/arp_accept",
            fx.config("3.254"),
            fx.net("3.2"),
            16,
            "-4",
        )
    };
    let sysctl = format!("/proc/sys/net/{}", sysctl.replace("{}", &fx.bridge));
    std::fs::write(&sysctl, b"1").unwrap_or_else(|e| panic!("{sysctl}: {e}"));
    let pods = new_pods();
    let netns = fx.netns("g");
    let add = fx.request(Command::Add, "g", &netns, config);
    let result = pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(result["ips"][0]["address"], format!("{pod_ip}/{prefix}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let neigh =
            String::from_utf8_lossy(&ip(&[family, "neigh", "show", "dev", &fx.bridge]).stdout)
                .to_string();
        if neigh.lines().any(|l| l.starts_with(&format!("{pod_ip} "))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no neighbour entry for {pod_ip}: {neigh}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut del = add.clone();
    del.command = Command::Del;
    pods.del(&del).await.unwrap_or_else(|e| panic!("{e:?}"));
}

/// DEL answers before the kernel has deleted the veth pair: the veth is retired at once, an
/// ADD of the same attachment right after DEL works, the queue deletes it, and a veth retired
/// before a daemon restart is deleted by the next daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_veths_never_block_an_add_and_are_deleted() {
    let Some(mut fx) = Fixture::ready("LXBR", 95) else {
        return;
    };
    let pods = new_pods();
    let ns = fx.netns("a");
    let add = fx.request(Command::Add, "a", &ns, fx.config("3.254"));
    let host = attachment::host_veth_name(&add.container_id, "eth0");
    pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    let mut del = add.clone();
    del.command = Command::Del;
    for _ in 0..5 {
        pods.del(&del).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_cut_off(&host);
        let pod_links = ip(&["-n", ns.trim_start_matches("/run/netns/"), "-o", "link"]);
        let pod_links = String::from_utf8_lossy(&pod_links.stdout).to_string();
        assert!(
            !pod_links.contains(" eth0@"),
            "eth0 still taken after DEL: {pod_links}"
        );
        // The runtime retries the same sandbox at once: the retired veth must not be in the way.
        let again = pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(again["ips"][0]["address"].is_string(), "{again}");
        assert!(ping_from(&ns, &fx.net("3.1")));
    }
    pods.del(&del).await.unwrap_or_else(|e| panic!("{e:?}"));
    pods.settled().await;
    assert!(!link_exists(&host));
    assert!(fx.reservations().is_empty(), "{:?}", fx.reservations());

    // A veth retired by a daemon that stopped before deleting it: the next one deletes it.
    let orphan = format!("evr{}", fx.tag);
    let retired_alias = format!("{}evio:x:orphan/eth0", evio_cni::dataplane::reaper::RETIRED);
    let created = ip(&[
        "link",
        "add",
        &orphan,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{orphan}p"),
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(ip(&["link", "set", &orphan, "alias", &retired_alias])
        .status
        .success());
    let next = new_pods();
    next.settled().await;
    let left = link_exists(&orphan);
    let _ = ip(&["link", "del", &orphan]);
    assert!(
        !left,
        "the retired veth {orphan} survived a new daemon's start"
    );
}
