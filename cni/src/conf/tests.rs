//! The conflist generator: keys, addresses and versions of what it writes.

use super::*;
use evio_lease_model::{LeaseCommand, LeaseTable, Pool};

fn lease_at_block_3() -> Lease {
    lease_at_block_3_of("10.244.0.16/16")
}

fn lease_at_block_3_of(pod_cidr: &str) -> Lease {
    let pool = Pool::parse(pod_cidr, 8).unwrap_or_else(|e| panic!("{e}"));
    let mut table = LeaseTable::new(pool);
    for (i, node) in ["a", "b", "c", "d"].iter().enumerate() {
        table.apply(
            &LeaseCommand::Acquire {
                node: node.to_string(),
                host_ip: None,
                request_id: "r".into(),
                at: 0,
            },
            i as u64 + 1,
        );
    }
    table.get("d").unwrap_or_else(|| panic!("lease d"))
}

/// Every key of `want` (an object) has its value in `value`.
fn assert_has(value: &Value, want: Value) {
    for (key, want) in want.as_object().into_iter().flatten() {
        assert_eq!(&value[key.as_str()], want, "{key} in {value}");
    }
}

#[test]
fn conflist_matches_original_layout() {
    let value = conflist(&NetConf::default(), &lease_at_block_3());
    let plugin = &value["plugins"][0];
    assert_has(
        plugin,
        json!({"type": "evio-cni", "bridgeIPv4": "10.244.3.1/16", "bridgeType": "OVS",
               "isGateway": true, "ovsDatapath": "system", "socket": "/run/evio/cni.sock"}),
    );
    assert_eq!(
        plugin["ipam"]["ranges"][0],
        json!([{"subnet": "10.244.0.0/16", "rangeStart": "10.244.3.2",
                "rangeEnd": "10.244.3.254", "gateway": "10.244.3.1"}])
    );
    assert_eq!(value["name"], "k8s-pod-network");
    // Older libcni (containerd 1.6/1.7) reads cniVersion and refuses 1.1.0 results;
    // newer ones pick 1.1.0 from cniVersions.
    assert_eq!(value["cniVersion"], "1.0.0");
    assert_eq!(
        value["cniVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let older = NetConf {
        cni_version: "1.0.0".into(),
        ..NetConf::default()
    };
    let value = conflist(&older, &lease_at_block_3());
    assert_eq!(value["cniVersion"], "1.0.0");
    assert_eq!(
        value["cniVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );
    let oldest = NetConf {
        cni_version: "0.4.0".into(),
        ..NetConf::default()
    };
    let value = conflist(&oldest, &lease_at_block_3());
    assert_eq!(value["cniVersion"], "0.4.0");
    assert_eq!(value["cniVersions"], json!(["0.3.0", "0.3.1", "0.4.0"]));
    assert_eq!(value["plugins"][1]["type"], "portmap");
}

#[test]
fn conflist_gives_a_range_and_a_default_route_per_family() {
    let conf = NetConf {
        is_ipv6_masq: true,
        ..NetConf::default()
    };
    let dual = conflist(
        &conf,
        &lease_at_block_3_of("10.244.0.0/16,fd00:10:244::/56"),
    );
    let plugin = &dual["plugins"][0];
    assert_has(
        plugin,
        json!({"bridgeIPv4": "10.244.3.1/16", "bridgeIPv6": "fd00:10:244:3::1/56",
               "podCIDR": "10.244.0.0/16", "nodeSubnet": "10.244.3.0/24",
               "podCIDRv6": "fd00:10:244::/56", "nodeSubnetV6": "fd00:10:244:3::/64",
               "isIPv6Masq": true}),
    );
    assert_eq!(
        plugin["ipam"]["ranges"][1],
        json!([{"subnet": "fd00:10:244::/56", "rangeStart": "fd00:10:244:3::2",
                "rangeEnd": "fd00:10:244:3:ffff:ffff:ffff:fffe",
                "gateway": "fd00:10:244:3::1"}])
    );
    assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "10.244.0.0/16");
    assert_eq!(
        plugin["ipam"]["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    );
    let parsed = PluginConf::parse(&json!(plugin
        .as_object()
        .map(|o| {
            let mut o = o.clone();
            o.insert("name".into(), json!("n"));
            o
        })
        .unwrap_or_default()));
    assert!(parsed.is_ok(), "{parsed:?}");

    let v6 = conflist(
        &NetConf::default(),
        &lease_at_block_3_of("fd00:10:244::/56"),
    );
    let plugin = &v6["plugins"][0];
    assert!(plugin.get("bridgeIPv4").is_none(), "{plugin}");
    assert!(plugin.get("podCIDR").is_none(), "{plugin}");
    assert!(
        plugin.get("isIPv6Masq").is_none(),
        "off by default: {plugin}"
    );
    assert_eq!(plugin["bridgeIPv6"], "fd00:10:244:3::1/56");
    assert_eq!(plugin["ipam"]["ranges"].as_array().map(Vec::len), Some(1));
    assert_eq!(plugin["ipam"]["routes"], json!([{"dst": "::/0"}]));
}

#[test]
fn original_net_conf_parses_string_node_bits() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("net-conf.json");
    std::fs::write(
        &path,
        br#"{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"evioPlugin",
           "bridge":"evioB1B111B","bridgeType":"LXBR","isGateway":true,"isDefaultGateway":true,
           "isIPMasq":false,"nodeBits":"8","podCIDR":"10.244.0.16/16",
           "dataStore":"0.0.0.0:42000","auth":false}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conf = OriginalNetConf::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conf.node_bits.as_string(), "8");
    assert_eq!(conf.pod_cidr, "10.244.0.16/16");
    let net = conf.net_conf();
    assert_eq!(net.bridge_type, BridgeType::Linux);
    assert!(!net.is_ip_masq);
    std::fs::write(&path, br#"{"podCIDR":"10.0.0.0/8","nodeBits":12}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let conf = OriginalNetConf::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conf.node_bits.as_string(), "12");
    std::fs::write(&path, b"{").unwrap_or_else(|e| panic!("{e}"));
    let err = OriginalNetConf::load(&path).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("net-conf.json"), "{err}");
}

#[test]
fn bad_values_name_key_and_value() {
    let base = serde_json::json!({"podCIDR": "10.244.0.16/16", "nodeBits": "8"});
    let cases = [
        ("nodeBits", serde_json::json!("eight")),
        ("nodeBits", serde_json::json!(true)),
        ("podCIDR", serde_json::json!("10.244.0.0/33")),
        ("podCIDR", serde_json::json!("10.244.0.0/30")),
        ("bridgeType", serde_json::json!("VXLAN")),
        ("bridge", serde_json::json!("a-very-long-bridge-name")),
        ("mtu", serde_json::json!(10)),
        ("isIPMasq", serde_json::json!("yes")),
        ("ovsDatapath", serde_json::json!("dpdk")),
        ("socket", serde_json::json!("relative.sock")),
        ("ovsdbSocket", serde_json::json!("run/db.sock")),
        ("replyTimeout", serde_json::json!(5)),
        ("replyTimeout", serde_json::json!("120")),
    ];
    for (key, value) in cases {
        let mut conf = base.clone();
        conf[key] = value.clone();
        let err = OriginalNetConf::from_value("net-conf.json", &conf)
            .map(|_| ())
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{key:?}")) && msg.contains(&value.to_string()),
            "{key}: {msg}"
        );
    }
    let err = OriginalNetConf::from_value("f", &serde_json::json!({"nodeBits": 8}))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("\"podCIDR\""), "{err}");
    assert!(OriginalNetConf::from_value("f", &base).is_ok());
}

/// Optional net-conf.json keys reach the conflist's plugin only when set.
#[test]
fn optional_keys_reach_the_conflist_only_when_set() {
    let lease = lease_at_block_3();
    let plain = conflist(&NetConf::default(), &lease);
    for (key, value) in [
        ("ovsdbSocket", json!("/run/ovs-host-1/db.sock")),
        ("replyTimeout", json!(30)),
    ] {
        assert!(plain["plugins"][0].get(key).is_none(), "{plain}");
        let mut net_conf = json!({"podCIDR": "10.244.0.0/16", "nodeBits": 8});
        net_conf[key] = value.clone();
        let original = OriginalNetConf::from_value("net-conf.json", &net_conf)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let set = conflist(&original.net_conf(), &lease);
        assert_eq!(set["plugins"][0][key], value, "{set}");
    }
}

#[test]
fn ipam_type_picks_the_conflists_ipam() {
    let lease = lease_at_block_3();
    let plain = conflist(&NetConf::default(), &lease);
    assert_eq!(plain["plugins"][0]["ipam"]["type"], "host-local");
    let from = |v: Value| OriginalNetConf::from_value("net-conf.json", &v);
    let original = from(
        serde_json::json!({"podCIDR": "10.244.0.0/16", "nodeBits": 8,
        "ipamType": "evio-ipam"}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let value = conflist(&original.net_conf(), &lease);
    assert_eq!(value["plugins"][0]["ipam"]["type"], "evio-ipam");
    assert!(value["plugins"][0]["ipam"].get("dataDir").is_none());
    let err = from(
        serde_json::json!({"podCIDR": "10.244.0.0/16", "nodeBits": 8,
        "ipamType": "dhcp"}),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.to_string().contains("ipamType"), "{err}");
}

#[test]
fn write_is_idempotent() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let lease = lease_at_block_3();
    let conf = NetConf::default();
    assert!(write_conflist(dir.path(), &conf, &lease).unwrap_or_else(|e| panic!("{e}")));
    assert!(!write_conflist(dir.path(), &conf, &lease).unwrap_or_else(|e| panic!("{e}")));
    let path = dir.path().join(CONFLIST_FILE);
    let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o644));
    let parsed: Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed["plugins"][0]["bridgeIPv4"], "10.244.3.1/16");
}
