//! A node switching from host-local to evio-ipam with pods running: the real host-local
//! plugin reserves addresses for two pods, then the conflist's `ipam.type` becomes
//! `evio-ipam` (same ranges, host-local's `dataDir` kept); evio-ipam's first use imports
//! those reservations, so a new pod never gets a running pod's address, and the old pods'
//! DELs release theirs. Linux bridge, real netns. Needs root and host-local.

mod common;

use common::*;
use evio_cni::dataplane::evio_ipam::store::read_reservations;
use evio_cni::dataplane::PodNetwork;
use evio_cni::spec::Command;
use serde_json::json;

fn held(dir: &std::path::Path, network: &str) -> Vec<String> {
    read_reservations(&dir.join(network))
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(ip, _)| ip.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_host_local_imports_its_reservations() {
    let Some(mut fx) = Fixture::ready("LXBR", 81) else {
        return;
    };
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pods = PodNetwork::new()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_ipam_dir(state.path().to_path_buf());
    pods.allocator()
        .set_node_blocks(vec![fx.node_subnet().into()]);
    let (ns_a, ns_b, ns_c) = (fx.netns("a"), fx.netns("b"), fx.netns("c"));

    // host-local, exec'd.
    let host_local = fx.config("3.254");
    for (name, ns) in [("a", &ns_a), ("b", &ns_b)] {
        let add = fx.request(Command::Add, name, ns, host_local.clone());
        pods.add(&add).await.unwrap_or_else(|e| panic!("{e:?}"));
    }
    assert_eq!(fx.reservations().len(), 2);

    // The switch: only the type changes.
    let mut switched = host_local.clone();
    switched["ipam"]["type"] = json!("evio-ipam");
    let add_c = fx.request(Command::Add, "c", &ns_c, switched.clone());
    let result = pods.add(&add_c).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(result["ips"][0]["address"], fx.net("3.4/16"), "{result}");
    let network = fx.name();
    assert_eq!(
        held(state.path(), &network),
        [fx.net("3.2"), fx.net("3.3"), fx.net("3.4")]
    );

    // A pod of the host-local era is deleted under the new config: its address goes.
    let del_a = fx.request(Command::Del, "a", &ns_a, switched.clone());
    pods.del(&del_a).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(held(state.path(), &network), [fx.net("3.3"), fx.net("3.4")]);
    // Imported once: host-local's later state is not read again.
    std::fs::write(
        fx.ipam_dir.path().join(&network).join(fx.net("3.9")),
        "late\r\neth0",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut gc = fx.request(Command::Gc, "gc", "", switched.clone());
    gc.config["cniVersion"] = json!("1.1.0");
    gc.config["cni.dev/valid-attachments"] = json!([
        {"containerID": fx.request(Command::Add, "b", "", json!({})).container_id, "ifname": "eth0"},
        {"containerID": add_c.container_id, "ifname": "eth0"},
    ]);
    pods.gc(&gc).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(held(state.path(), &network), [fx.net("3.3"), fx.net("3.4")]);
    for (name, ns) in [("b", &ns_b), ("c", &ns_c)] {
        fx.del(&pods, name, ns, switched.clone()).await;
    }
    assert!(held(state.path(), &network).is_empty());
    pods.settled().await;
    let veth = evio_cni::dataplane::attachment::host_veth_name(&add_c.container_id, "eth0");
    assert!(!link_exists(&veth), "{veth} left behind");
}
