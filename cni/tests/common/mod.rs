//! Shared by the dataplane tests: a fixture with unique names (netns, bridge, network,
//! host-local data dir) removed on drop, and small host probes (the generic ones come from
//! evio-test-support).

#![allow(dead_code, unused_imports)] // each test file uses its own part

use std::path::Path;
use std::process::Command as Process;

use evio_cni::dataplane::{masquerade, PodNetwork};
use evio_cni::spec::{Command, Request};
use serde_json::{json, Value};

pub use evio_test_support::cni::link_exists;

pub const HOST_LOCAL_DIRS: &str = "/usr/lib/cni:/opt/cni/bin";

/// Whether the test can run here; under CI it must.
/// The daemon's pod network with its default limits.
pub fn new_pods() -> PodNetwork {
    PodNetwork::new().unwrap_or_else(|e| panic!("{e}"))
}

/// The daemon's pod network whose requests must finish within `deadline`.
pub fn new_pods_within(deadline: std::time::Duration) -> PodNetwork {
    let limits = evio_cni::dataplane::Limits {
        deadline,
        ..Default::default()
    };
    PodNetwork::with_limits(limits).unwrap_or_else(|e| panic!("{e}"))
}

pub fn prerequisites() -> bool {
    let host_local = HOST_LOCAL_DIRS
        .split(':')
        .any(|d| Path::new(d).join("host-local").is_file());
    evio_test_support::prerequisites(
        "dataplane",
        &[
            ("root", evio_test_support::is_root()),
            ("host-local", host_local),
            ("ping", evio_test_support::on_path("ping")),
        ],
    )
}

/// `ip -n <netns> ARGS`'s stdout (`netns` a path under /run/netns or a name).
pub fn netns_output(netns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", netns.trim_start_matches("/run/netns/")];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&ip(&all).stdout).to_string()
}

pub fn ip(args: &[&str]) -> std::process::Output {
    Process::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
}

/// Test resources with unique names, removed on drop.
pub struct Fixture {
    /// "LXBR" or "OVS" (userspace netdev datapath: no kernel module here).
    pub kind: &'static str,
    /// Second octet of this fixture's pod network, so fixtures in parallel never share one.
    pub octet: u8,
    /// The configs' `cniVersion`.
    pub version: &'static str,
    pub tag: String,
    pub namespaces: Vec<String>,
    pub bridge: String,
    /// host-local's `dataDir`, or evio-ipam's state dir (the same layout).
    pub ipam_dir: tempfile::TempDir,
    /// `ipam.type`: "host-local" (default) or "evio-ipam".
    pub ipam: &'static str,
}

impl Fixture {
    pub fn new(kind: &'static str) -> Fixture {
        let tag = evio_test_support::unique_tag();
        Fixture {
            kind,
            octet: if kind == "OVS" { 98 } else { 99 },
            version: "1.0.0",
            bridge: format!("evt{tag}"),
            tag,
            namespaces: Vec::new(),
            ipam_dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
            ipam: "host-local",
        }
    }

    /// A fixture of `kind` on pod network octet `octet`, where the prerequisites hold (else
    /// None: the test is skipped, or fails under CI=true).
    pub fn ready(kind: &'static str, octet: u8) -> Option<Fixture> {
        prerequisites().then(|| {
            let mut fixture = Fixture::new(kind);
            fixture.octet = octet;
            fixture
        })
    }

    /// The fixture's network name.
    pub fn name(&self) -> String {
        format!("evio-test-{}", self.tag)
    }

    /// A pod network serving evio-ipam from the fixture's dir, the node holding its subnet.
    pub fn pod_network(&self) -> PodNetwork {
        let pods = PodNetwork::new()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_ipam_dir(self.ipam_dir.path().to_path_buf());
        pods.allocator()
            .set_node_blocks(vec![self.node_subnet().into()]);
        pods
    }

    /// `10.<octet>.<rest>`.
    pub fn net(&self, rest: &str) -> String {
        format!("10.{}.{rest}", self.octet)
    }

    pub fn node_subnet(&self) -> ipnetwork::Ipv4Network {
        self.net("3.0/24").parse().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `fd00:0:<octet>:<rest>`: this fixture's IPv6 pod network is `fd00:0:<octet>::/48`, its
    /// node block `fd00:0:<octet>:3::/64`.
    pub fn net6(&self, rest: &str) -> String {
        format!("fd00:0:{}:{rest}", self.octet)
    }

    pub fn node_subnet_v6(&self) -> ipnetwork::Ipv6Network {
        self.net6("3::/64")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// An IPv6-only (`v4` false) or dual-stack network config: one host-local range and one
    /// default route per family, IPv6 masquerade on (as `isIPv6Masq` asks).
    pub fn config_families(&self, v4: bool, range_end: &str, range_end_v6: &str) -> Value {
        let mut config = self.config(range_end);
        let v6_range = json!([{"subnet": self.net6(":/48"), "rangeStart": self.net6("3::2"),
                               "rangeEnd": self.net6(range_end_v6), "gateway": self.net6("3::1")}]);
        config["bridgeIPv6"] = json!(self.net6("3::1/48"));
        config["podCIDRv6"] = json!(self.net6(":/48"));
        config["nodeSubnetV6"] = json!(self.node_subnet_v6().to_string());
        config["isIPv6Masq"] = json!(true);
        if v4 {
            config["ipam"]["ranges"] = json!([config["ipam"]["ranges"][0].clone(), v6_range]);
            config["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
        } else {
            let object = config.as_object_mut().unwrap_or_else(|| panic!("object"));
            for key in ["bridgeIPv4", "nodeSubnet", "podCIDR"] {
                object.remove(key);
            }
            config["ipam"]["ranges"] = json!([v6_range]);
            config["ipam"]["routes"] = json!([{"dst": "::/0"}]);
        }
        config
    }

    pub fn netns(&mut self, name: &str) -> String {
        let ns = format!("evio-{}-{name}", self.tag);
        let out = ip(&["netns", "add", &ns]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.namespaces.push(ns.clone());
        format!("/run/netns/{ns}")
    }

    pub fn config(&self, range_end: &str) -> Value {
        json!({
            "cniVersion": self.version, "name": self.name(), "type": "evio-cni",
            "bridge": self.bridge, "bridgeType": self.kind, "ovsDatapath": "netdev",
            "bridgeIPv4": self.net("3.1/16"),
            "isGateway": true, "isDefaultGateway": true, "mtu": 1400,
            "isIPMasq": true, "nodeSubnet": self.net("3.0/24"), "podCIDR": self.net("0.0/16"),
            "ipam": self.ipam_config(range_end),
        })
    }

    /// The `ipam` object: host-local's, or the same ranges for evio-ipam (no dataDir).
    pub fn ipam_config(&self, range_end: &str) -> Value {
        let mut ipam = json!({
            "type": self.ipam,
            "ranges": [[{"subnet": self.net("0.0/16"), "rangeStart": self.net("3.2"),
                         "rangeEnd": self.net(range_end), "gateway": self.net("3.1")}]],
        });
        if self.ipam == "host-local" {
            ipam["dataDir"] = json!(self.ipam_dir.path());
        }
        ipam
    }

    /// DEL of `pod` (netns `netns`) with `config`, which must succeed.
    pub async fn del(&self, pods: &PodNetwork, pod: &str, netns: &str, config: Value) {
        let del = self.request(Command::Del, pod, netns, config);
        let done = pods.del(&del).await;
        done.unwrap_or_else(|e| panic!("DEL {pod}: {e:?}"));
    }

    pub fn request(
        &self,
        command: Command,
        container: &str,
        netns: &str,
        config: Value,
    ) -> Request {
        Request {
            command,
            container_id: format!("{}-{container}", self.tag),
            netns: netns.to_string(),
            ifname: "eth0".into(),
            args: String::new(),
            path: HOST_LOCAL_DIRS.into(),
            plugin: Default::default(),
            config,
        }
    }

    /// Files host-local (or evio-ipam) keeps for reserved addresses.
    pub fn reservations(&self) -> Vec<String> {
        let dir = self.ipam_dir.path().join(self.name());
        std::fs::read_dir(dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10.") || n.starts_with("fd00:"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        if self.kind == "OVS" {
            let _ = Process::new("ovs-vsctl")
                .args(["--if-exists", "del-br", &self.bridge])
                .output();
        } else {
            let _ = ip(&["link", "del", &self.bridge]);
        }
        let _ = masquerade::remove(self.node_subnet());
        let _ = masquerade::remove(self.node_subnet_v6());
    }
}

/// evio's masquerade rules for the fixture's node block: IPv4 (`ip evio`) or IPv6 (`ip6 evio`).
pub fn masquerade_rules_of(fx: &Fixture, ipv6: bool) -> usize {
    let (family, subnet, cidr) = if ipv6 {
        ("ip6", fx.node_subnet_v6().to_string(), fx.net6(":/48"))
    } else {
        ("ip", fx.node_subnet().to_string(), fx.net("0.0/16"))
    };
    let wanted = format!("{family} saddr {subnet} {family} daddr != {cidr} masquerade");
    let out = Process::new("nft")
        .args(["list", "chain", family, masquerade::TABLE, "postrouting"])
        .output()
        .unwrap_or_else(|e| panic!("nft: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&wanted))
        .count()
}

/// evio's IPv4 masquerade rules for the fixture's node block.
pub fn masquerade_rules(fx: &Fixture) -> usize {
    masquerade_rules_of(fx, false)
}

/// Right after DEL a host veth is gone or retired: down, marked for the reaper.
pub fn assert_cut_off(name: &str) {
    evio_test_support::cni::assert_veth_retired(name);
}

pub fn ping_from(netns_path: &str, target: &str) -> bool {
    let ns = netns_path.trim_start_matches("/run/netns/");
    Process::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "5", "-i", "0.2", "-W", "1", target,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether ovsdb-server is up; under CI it must be.
pub fn ovs_running() -> bool {
    evio_test_support::prerequisites(
        "OVS dataplane",
        &[("ovsdb", Path::new("/run/openvswitch/db.sock").exists())],
    )
}
