//! The bad-input corpus of issue 4: a table of malformed CNI invocations, each run through the
//! real `evio-cni` binary (clean environment, `CNI_*` variables, config on stdin) against one
//! real `evio-node dev` daemon, with the real host-local plugin, a real pod netns and real
//! OVS (userspace datapath) and Linux bridges. Each case states the exit status, the CNI error
//! code and a text its msg/details must contain; after each case nothing may be left behind:
//! no new or changed links on the host (among the names the corpus can create) or in the pod
//! namespaces, no new OVS bridge or port, no host-local reservation file.
//! Needs root, host-local and ovsdb (fails loudly under CI=true without them).
//!
//! One file (over 1,300 lines) on purpose: the corpus is one table of cases plus the fixture that
//! proves each left nothing behind.

use evio_test_support::cni as cni_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cni_support::{evio_cni_prerequisites, exec_cni, ip, HostLink, Netns, OvsBridge};
use evio_cni::dataplane::attachment::host_veth_name;
use evio_cni::dataplane::error::CODE_INTERFACE_EXISTS;
use evio_cni::dataplane::reaper::RETIRED;
use evio_cni::spec::SUPPORTED_VERSIONS;
use evio_test_support::run;
use evio_test_support::{spawn_dev, Proc};
use serde_json::{json, Value};

const CNI_PATH: &str = "/usr/lib/cni";
/// This test's addresses: 10.91.1.0/24 behind the OVS bridge, 10.91.2.0/24 behind the Linux one.
const NET: &str = "10.91";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ovs,
    Lxbr,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ovs => "OVS",
            Kind::Lxbr => "LXBR",
        }
    }

    fn octet(self) -> u8 {
        match self {
            Kind::Ovs => 1,
            Kind::Lxbr => 2,
        }
    }
}

const KINDS: [Kind; 2] = [Kind::Ovs, Kind::Lxbr];

/// One `evio-cni` execution: its environment and its stdin (the config, or raw bytes).
#[derive(Clone, Debug)]
struct Invocation {
    env: BTreeMap<String, String>,
    config: Value,
    raw: Option<Vec<u8>>,
}

impl Invocation {
    fn stdin(&self) -> Vec<u8> {
        self.raw
            .clone()
            .unwrap_or_else(|| self.config.to_string().into_bytes())
    }

    fn run(&self) -> (i32, Value) {
        exec_cni(
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &self.stdin(),
        )
    }

    fn var(&self, name: &str) -> &str {
        self.env.get(name).map_or("", String::as_str)
    }

    fn set_var(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_string(), value.to_string());
    }

    fn command(&self, command: &str) -> Invocation {
        let mut other = self.clone();
        other.set_var("CNI_COMMAND", command);
        other
    }

    /// Runs it and insists on success (for setup and undo steps).
    fn must_succeed(&self, what: &str) -> Value {
        let (exit, out) = self.run();
        assert_eq!(exit, 0, "{what} failed: {out}\n{self:?}");
        out
    }
}

struct Fixture {
    tag: String,
    dir: tempfile::TempDir,
    socket: String,
    ipam_dir: PathBuf,
    network: String,
    pod: Netns,
    other: Netns,
    ovs_bridge: String,
    lxbr_bridge: String,
    /// A host veth that is no bridge of either kind, named as a bridge by some cases.
    foreign: String,
    daemon: Proc,
    _guards: (OvsBridge, HostLink, HostLink),
}

impl Fixture {
    fn start() -> Fixture {
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.path().join("cni.sock").to_string_lossy().into_owned();
        let (daemon, _token) = spawn_dev(dir.path(), "bad-input");
        let ovs_bridge = format!("evbo{pid}");
        let lxbr_bridge = format!("evbl{pid}");
        let foreign = format!("evbf{pid}");
        let fixture = Fixture {
            tag: format!("bad{pid}"),
            ipam_dir: dir.path().join("ipam"),
            socket,
            network: format!("evio-bad-{pid}"),
            pod: Netns::add(format!("evio-bad-{pid}")),
            other: Netns::add(format!("evio-bad2-{pid}")),
            _guards: (
                OvsBridge(ovs_bridge.clone()),
                HostLink(lxbr_bridge.clone()),
                HostLink(foreign.clone()),
            ),
            ovs_bridge,
            lxbr_bridge,
            foreign,
            daemon,
            dir,
        };
        // ADD brings lo up in a pod netns (and DEL leaves it so): up from the start, so
        // snapshots compare what the corpus may leave behind.
        for ns in [&fixture.pod, &fixture.other] {
            ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        }
        // Both bridges exist (with their gateway) before the corpus runs: a bridge is the
        // node's, not a pod's, and stays after the first ADD as with the reference plugin.
        for kind in KINDS {
            let add = fixture.invocation(kind, "warmup");
            add.must_succeed("warm-up ADD");
            add.command("DEL").must_succeed("warm-up DEL");
        }
        // The warm-up pods' veths are deleted by the daemon's reaper after DEL answered.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while run("ip", &["-o", "link", "show"])
            .contains(&format!("{RETIRED}evio:{}", fixture.network))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "warm-up veths not deleted within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        fixture
    }

    fn bridge(&self, kind: Kind) -> &str {
        match kind {
            Kind::Ovs => &self.ovs_bridge,
            Kind::Lxbr => &self.lxbr_bridge,
        }
    }

    fn container(&self, case: &str) -> String {
        format!("{}-{case}", self.tag)
    }

    fn config(&self, kind: Kind) -> Value {
        let net = |rest: &str| format!("{NET}.{}.{rest}", kind.octet());
        json!({
            "cniVersion": "1.0.0", "name": self.network, "type": "evio-cni",
            "bridge": self.bridge(kind), "bridgeType": kind.label(), "ovsDatapath": "netdev",
            "bridgeIPv4": net("1/24"), "isGateway": true, "isDefaultGateway": true,
            "isIPMasq": false, "mtu": 1400, "socket": self.socket,
            "ipam": {
                "type": "host-local", "dataDir": self.ipam_dir,
                "ranges": [[{"subnet": net("0/24"), "rangeStart": net("2"),
                             "rangeEnd": net("250"), "gateway": net("1")}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        })
    }

    /// ADD of container `<tag>-<case>` as eth0 in the pod netns with the good config.
    fn invocation(&self, kind: Kind, case: &str) -> Invocation {
        let env = [
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", self.container(case)),
            ("CNI_NETNS", self.pod.path()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_PATH.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Invocation {
            env,
            config: self.config(kind),
            raw: None,
        }
    }

    /// The snapshot once it matches `wanted`, or the last one after 5 s: DEL answers before
    /// the kernel has deleted the retired veth pair (the daemon's reaper does that next).
    fn settled_snapshot(&self, names: &BTreeSet<String>, wanted: &Snapshot) -> Snapshot {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let now = self.snapshot(names);
            if &now == wanted || std::time::Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// What this corpus could have left behind, as comparable text.
    fn snapshot(&self, names: &BTreeSet<String>) -> Snapshot {
        let mut host = Vec::new();
        for link in ip_json(&["-d", "addr", "show"]) {
            let name = link["ifname"].as_str().unwrap_or_default();
            let alias = link["ifalias"].as_str().unwrap_or_default();
            let master = link["master"].as_str().unwrap_or_default();
            let addrs = addresses(&link);
            let ours = names.contains(name)
                || alias.contains(&self.tag)
                || master == self.lxbr_bridge
                || addrs.contains(&format!("{NET}."));
            if ours {
                host.push(format!("{name} master={master} alias={alias} {addrs}"));
            }
        }
        let mut pods = Vec::new();
        for ns in [&self.pod, &self.other] {
            for link in ip_json(&["-n", &ns.0, "-d", "addr", "show"]) {
                pods.push(format!(
                    "{}:{} {} {}",
                    ns.0,
                    link["ifname"].as_str().unwrap_or_default(),
                    link["linkinfo"]["info_kind"].as_str().unwrap_or_default(),
                    addresses(&link)
                ));
            }
        }
        let mut ovs: Vec<String> = run("ovs-vsctl", &["list-br"])
            .lines()
            .filter(|b| names.contains(*b))
            .map(|b| format!("bridge {b}"))
            .collect();
        let ports: Value = serde_json::from_str(&run(
            "ovs-vsctl",
            &[
                "--format=json",
                "--columns=name,external_ids",
                "list",
                "Port",
            ],
        ))
        .unwrap_or(Value::Null);
        for row in ports["data"].as_array().into_iter().flatten() {
            let name = row[0].as_str().unwrap_or_default();
            let ids = row[1].to_string();
            if names.contains(name) || ids.contains(&self.tag) {
                ovs.push(format!("port {name} {ids}"));
            }
        }
        let mut reservations = Vec::new();
        collect_reservations(&self.ipam_dir, &mut reservations);
        // evio-ipam's (the dev daemon's data dir)
        collect_reservations(&self.dir.path().join("data/ipam"), &mut reservations);
        host.sort();
        pods.sort();
        ovs.sort();
        reservations.sort();
        Snapshot {
            host,
            pods,
            ovs,
            reservations,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    host: Vec<String>,
    pods: Vec<String>,
    ovs: Vec<String>,
    reservations: Vec<String>,
}

impl Snapshot {
    fn diff(&self, after: &Snapshot) -> String {
        let mut out = String::new();
        let parts = [
            ("host links", &self.host, &after.host),
            ("pod netns links", &self.pods, &after.pods),
            ("OVS", &self.ovs, &after.ovs),
            (
                "host-local reservations",
                &self.reservations,
                &after.reservations,
            ),
        ];
        for (what, before, after) in parts {
            for gone in before.iter().filter(|l| !after.contains(l)) {
                out.push_str(&format!("\n    {what}: - {gone}"));
            }
            for new in after.iter().filter(|l| !before.contains(l)) {
                out.push_str(&format!("\n    {what}: + {new}"));
            }
        }
        out
    }
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    serde_json::from_str::<Value>(&run("ip", &all))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn addresses(link: &Value) -> String {
    link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// host-local's address files (not its lock or last-reserved markers), anywhere under `dir`.
fn collect_reservations(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            collect_reservations(&path, out);
        } else if name != "lock" && !name.starts_with("last_reserved_ip") {
            out.push(path.display().to_string());
        }
    }
}

/// What a case must produce.
struct Want {
    exit: i32,
    code: Option<u64>,
    /// Must appear in msg or details.
    text: String,
}

fn fails(code: u64, text: &str) -> Want {
    Want {
        exit: 1,
        code: Some(code),
        text: text.to_string(),
    }
}

fn succeeds() -> Want {
    Want {
        exit: 0,
        code: None,
        text: String::new(),
    }
}

type Hook = Box<dyn Fn(&Fixture, &Invocation) + Send + Sync>;
type Verify = Box<dyn Fn(&Fixture, &Invocation, &Value) -> Result<(), String> + Send + Sync>;

struct Case {
    name: String,
    /// None: refused by the shim before any bridge is involved (run with the OVS config).
    kind: Option<Kind>,
    invocation: Invocation,
    want: Want,
    /// Before the "before" snapshot: things the case needs (a pod, a foreign link).
    setup: Option<Hook>,
    /// Extra checks of what the case must not have touched.
    verify: Option<Verify>,
    /// Before the "after" snapshot: undoes what a successful case made (DEL).
    undo: Option<Hook>,
    /// After the "after" snapshot: removes the setup.
    teardown: Option<Hook>,
    /// The case itself must remove what setup made (DEL of a pod whose netns is gone): its
    /// result is compared with the state before setup.
    cleans_up_setup: bool,
}

impl Case {
    fn setup(&mut self, hook: impl Fn(&Fixture, &Invocation) + Send + Sync + 'static) -> &mut Self {
        self.setup = Some(Box::new(hook));
        self
    }

    fn verify(
        &mut self,
        check: impl Fn(&Fixture, &Invocation, &Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.verify = Some(Box::new(check));
        self
    }

    fn undo(&mut self, hook: impl Fn(&Fixture, &Invocation) + Send + Sync + 'static) -> &mut Self {
        self.undo = Some(Box::new(hook));
        self
    }

    fn teardown(
        &mut self,
        hook: impl Fn(&Fixture, &Invocation) + Send + Sync + 'static,
    ) -> &mut Self {
        self.teardown = Some(Box::new(hook));
        self
    }

    /// Every name a link, port or bridge of this case could get.
    fn names(&self) -> Vec<String> {
        let inv = &self.invocation;
        let (container, ifname) = (inv.var("CNI_CONTAINERID"), inv.var("CNI_IFNAME"));
        let mut names = vec![host_veth_name(container, ifname), ifname.to_string()];
        for (c, i) in setup_pods(container) {
            names.push(host_veth_name(&c, i));
        }
        if let Some(bridge) = inv.config["bridge"].as_str() {
            names.push(bridge.to_string());
        }
        names
    }
}

/// The (container, ifname) of the pods setup hooks may add for a case's container.
fn setup_pods(container: &str) -> [(String, &'static str); 2] {
    [
        (format!("{container}-first"), "net9"),
        (container.to_string(), "eth0"),
    ]
}

struct Corpus<'a> {
    fx: &'a Fixture,
    cases: Vec<Case>,
}

impl<'a> Corpus<'a> {
    /// Adds a case: the good config of `kind` (OVS when None), edited by `edit`.
    fn case(
        &mut self,
        name: impl Into<String>,
        kind: Option<Kind>,
        want: Want,
        edit: impl FnOnce(&Fixture, &mut Invocation),
    ) -> &mut Case {
        let id = format!("c{}", self.cases.len());
        let mut invocation = self.fx.invocation(kind.unwrap_or(Kind::Ovs), &id);
        edit(self.fx, &mut invocation);
        self.cases.push(Case {
            name: name.into(),
            kind,
            invocation,
            want,
            setup: None,
            verify: None,
            undo: None,
            teardown: None,
            cleans_up_setup: false,
        });
        let last = self.cases.len() - 1;
        &mut self.cases[last]
    }
}

fn del_after_success(case: &mut Case) -> &mut Case {
    case.undo(|_, inv| {
        inv.command("DEL")
            .must_succeed("DEL after a successful case");
    })
}

/// A pod added by setup: `<container>-first` as net9 in the pod netns, with the case's config.
fn first_pod(inv: &Invocation) -> Invocation {
    let mut first = inv.command("ADD");
    let container = format!("{}-first", inv.var("CNI_CONTAINERID"));
    first.set_var("CNI_CONTAINERID", &container);
    first.set_var("CNI_IFNAME", "net9");
    first
}

/// The same container as eth0 in the other netns, with the good config.
fn pod_in_other_netns(fx: &Fixture, inv: &Invocation) -> Invocation {
    let mut pod = inv.command("ADD");
    pod.set_var("CNI_NETNS", &fx.other.path());
    pod.raw = None;
    pod
}

fn build_corpus(fx: &Fixture) -> Vec<Case> {
    let mut c = Corpus {
        fx,
        cases: Vec::new(),
    };
    let config_key = |key: &'static str, value: Value| {
        move |_: &Fixture, inv: &mut Invocation| {
            inv.config[key] = value;
        }
    };

    // --- the environment, refused by the shim (spec code 4) ---
    c.case("CNI_COMMAND unknown", None, fails(4, "FROB"), |_, i| {
        i.set_var("CNI_COMMAND", "FROB")
    });
    c.case(
        "CNI_COMMAND lower case",
        None,
        fails(4, "\"add\""),
        |_, i| i.set_var("CNI_COMMAND", "add"),
    );
    c.case(
        "CNI_COMMAND unset",
        None,
        fails(4, "CNI_COMMAND"),
        |_, i| {
            i.env.remove("CNI_COMMAND");
        },
    );
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        c.case(
            format!("ADD without {var}"),
            None,
            fails(4, var),
            move |_, i| {
                i.env.remove(var);
            },
        );
    }
    c.case(
        "ADD with empty CNI_CONTAINERID",
        None,
        fails(4, "CNI_CONTAINERID"),
        |_, i| i.set_var("CNI_CONTAINERID", ""),
    );
    for (command, var) in [("DEL", "CNI_IFNAME"), ("CHECK", "CNI_NETNS")] {
        c.case(
            format!("{command} without {var}"),
            None,
            fails(4, var),
            |_, i| {
                i.set_var("CNI_COMMAND", command);
                i.env.remove(var);
            },
        );
    }
    for (label, ifname) in [
        ("too long", "eth0123456789abc"),
        ("with '/'", "eth/0"),
        ("with ':'", "eth:0"),
        ("'..'", ".."),
        ("with a space", "eth 0"),
    ] {
        c.case(
            format!("CNI_IFNAME {label}"),
            None,
            fails(4, "CNI_IFNAME"),
            move |_, i| i.set_var("CNI_IFNAME", ifname),
        );
    }
    for (label, id) in [
        ("with ';' and a space", "bad id;x"),
        ("starting with '-'", "-leading"),
        ("with '/'", "a/../b"),
    ] {
        c.case(
            format!("CNI_CONTAINERID {label}"),
            None,
            fails(4, "CNI_CONTAINERID"),
            move |_, i| i.set_var("CNI_CONTAINERID", id),
        );
    }
    c.case(
        "CNI_CONTAINERID of 300 characters",
        None,
        fails(4, "CNI_CONTAINERID"),
        |fx, i| i.set_var("CNI_CONTAINERID", &format!("{}{}", fx.tag, "a".repeat(300))),
    );

    // --- stdin that is no config (6) ---
    let raw = |bytes: &'static str| {
        move |_: &Fixture, inv: &mut Invocation| inv.raw = Some(bytes.as_bytes().to_vec())
    };
    c.case(
        "stdin not JSON",
        None,
        fails(6, "not valid JSON"),
        raw("{nope"),
    );
    c.case("stdin empty", None, fails(6, "not valid JSON"), raw(""));
    c.case("stdin truncated", None, fails(6, "EOF"), |fx, i| {
        let whole = fx.config(Kind::Ovs).to_string();
        i.raw = Some(whole.as_bytes()[..whole.len() / 2].to_vec());
    });
    c.case(
        "stdin a JSON array",
        None,
        fails(6, "not a JSON object"),
        raw("[1,2]"),
    );
    c.case(
        "stdin a JSON string",
        None,
        fails(6, "not a JSON object"),
        raw("\"cniVersion\""),
    );

    // --- versions (1) ---
    for (label, version) in [
        ("0.2.0", json!("0.2.0")),
        ("2.0.0", json!("2.0.0")),
        ("empty", json!("")),
        ("a number", json!(1.0)),
    ] {
        c.case(
            format!("cniVersion {label}"),
            None,
            fails(1, "cniVersion"),
            config_key("cniVersion", version),
        );
    }
    c.case("cniVersion missing", None, fails(1, "(missing)"), |_, i| {
        i.config.as_object_mut().map(|o| o.remove("cniVersion"));
    });
    // commands newer than the config's version (the fixture's is 1.0.0)
    for (command, version, needs) in [
        ("CHECK", "0.3.1", "0.4.0"),
        ("GC", "1.0.0", "1.1.0"),
        ("STATUS", "0.4.0", "1.1.0"),
    ] {
        let name = format!("{command} with cniVersion {version}");
        c.case(name, None, fails(1, needs), |_, i| {
            i.set_var("CNI_COMMAND", command);
            i.config["cniVersion"] = json!(version);
        });
    }

    // --- the daemon's socket ---
    c.case(
        "socket unreachable",
        None,
        fails(11, "no-daemon.sock"),
        |fx, i| i.config["socket"] = json!(fx.dir.path().join("no-daemon.sock")),
    );
    c.case(
        "socket a regular file",
        None,
        fails(11, "not-a-socket"),
        |fx, i| {
            let path = fx.dir.path().join("not-a-socket");
            std::fs::write(&path, b"").unwrap_or_else(|e| panic!("{e}"));
            i.config["socket"] = json!(path);
        },
    );
    c.case(
        "socket relative",
        None,
        fails(7, "socket"),
        config_key("socket", json!("cni.sock")),
    );
    c.case(
        "socket a number",
        None,
        fails(7, "socket"),
        config_key("socket", json!(7)),
    );

    // --- bad config values (7, naming the key), for both bridge types ---
    for kind in KINDS {
        let k = Some(kind);
        // each names its key
        let bad: Vec<(&str, &str, Value)> = vec![
            ("bridge too long", "bridge", json!("evio0123456789ab")),
            ("bridge empty", "bridge", json!("")),
            ("bridge with '/'", "bridge", json!("evio/br")),
            ("bridge a number", "bridge", json!(42)),
            ("bridgeIPv4 garbage", "bridgeIPv4", json!("10.91.999.1/24")),
            ("bridgeIPv4 a number", "bridgeIPv4", json!(10)),
            (
                "bridgeIPv6 garbage",
                "bridgeIPv6",
                json!("fd00:91::1::1/64"),
            ),
            (
                "bridgeIPv6 an IPv4 address",
                "bridgeIPv6",
                json!("10.91.1.1/24"),
            ),
            (
                "bridgeIPv6 prefix 129",
                "bridgeIPv6",
                json!("fd00:91::1/129"),
            ),
            ("bridgeIPv6 a number", "bridgeIPv6", json!(6)),
            ("podCIDRv6 garbage", "podCIDRv6", json!("fd00:91")),
            (
                "podCIDRv6 an IPv4 network",
                "podCIDRv6",
                json!("10.91.0.0/16"),
            ),
            (
                "nodeSubnetV6 an IPv4 network",
                "nodeSubnetV6",
                json!("10.91.1.0/24"),
            ),
            ("isIPv6Masq a string", "isIPv6Masq", json!("yes")),
            ("mtu 10", "mtu", json!(10)),
            ("mtu 70000", "mtu", json!(70000)),
            ("mtu a string", "mtu", json!("1500")),
            ("mtu negative", "mtu", json!(-1)),
            ("replyTimeout too short", "replyTimeout", json!(5)),
            ("replyTimeout a string", "replyTimeout", json!("120")),
            ("bridgeType VXLAN", "bridgeType", json!("VXLAN")),
            ("ovsDatapath kernel", "ovsDatapath", json!("kernel")),
            ("isIPMasq a string", "isIPMasq", json!("yes")),
            ("isGateway a string", "isGateway", json!("no")),
            ("hairpinMode a number", "hairpinMode", json!(1)),
            ("ovsDatapath dpdk", "ovsDatapath", json!("dpdk")),
            (
                "isDefaultGateway a string",
                "isDefaultGateway",
                json!("true"),
            ),
            ("nodeSubnet garbage", "nodeSubnet", json!("10.91.1")),
            ("name with spaces", "name", json!("my net")),
            ("name a number", "name", json!(5)),
            ("ipam a string", "ipam", json!("host-local")),
        ];
        for (label, key, value) in bad {
            c.case(label, k, fails(7, key), config_key(key, value));
        }
        let bad_ipam_type = [
            ("ipam without type", json!({"subnet": "10.91.1.0/24"})),
            ("ipam type with '/'", json!({"type": "../host-local"})),
            ("ipam type a number", json!({"type": 5})),
        ];
        for (label, ipam) in bad_ipam_type {
            c.case(label, k, fails(7, "ipam.type"), config_key("ipam", ipam));
        }
        for key in ["bridge", "bridgeIPv4", "name", "ipam"] {
            c.case(format!("{key} missing"), k, fails(7, key), move |_, i| {
                i.config.as_object_mut().map(|o| o.remove(key));
            });
        }
        c.case(
            "isIPMasq without nodeSubnet",
            k,
            fails(7, "nodeSubnet"),
            config_key("isIPMasq", json!(true)),
        );
        c.case(
            "bridge names another type's bridge",
            k,
            fails(7, "not a"),
            move |fx, i| {
                let other = if kind == Kind::Ovs {
                    Kind::Lxbr
                } else {
                    Kind::Ovs
                };
                i.config["bridge"] = json!(fx.bridge(other));
            },
        );
        let case = c.case("bridge names a host veth", k, fails(7, "not a"), |fx, i| {
            i.config["bridge"] = json!(fx.foreign)
        });
        case.setup(|fx, _| {
            ip(&[
                "link",
                "add",
                &fx.foreign,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{}p", fx.foreign),
            ]);
        })
        .teardown(|fx, _| {
            ip(&["link", "del", &fx.foreign]);
        });
    }

    // --- what a runtime may send: every version, netns, interfaces, IPAM ---
    for kind in KINDS {
        let k = Some(kind);
        for version in SUPPORTED_VERSIONS {
            let case = c.case(
                format!("ADD+DEL with cniVersion {version}"),
                k,
                succeeds(),
                move |_, i| i.config["cniVersion"] = json!(version),
            );
            del_after_success(case.verify(move |_, _, out| {
                let address = out["ips"][0]["address"].as_str().unwrap_or_default();
                let net = format!("{NET}.{}.", kind.octet());
                if out["cniVersion"] != version || !address.starts_with(&net) {
                    return Err(format!("result {out}"));
                }
                Ok(())
            }));
        }
        c.case("ADD netns missing", k, fails(4, "CNI_NETNS"), |fx, i| {
            i.set_var("CNI_NETNS", &format!("/run/netns/{}-gone", fx.pod.0))
        });
        c.case(
            "ADD netns a regular file",
            k,
            fails(4, "not a network namespace"),
            |fx, i| {
                let path = fx.dir.path().join("not-a-netns");
                std::fs::write(&path, b"").unwrap_or_else(|e| panic!("{e}"));
                i.set_var("CNI_NETNS", &path.display().to_string());
            },
        );
        c.case(
            "ADD netns a directory",
            k,
            fails(4, "not a network namespace"),
            |_, i| i.set_var("CNI_NETNS", "/"),
        );
        c.case("DEL netns missing", k, succeeds(), |fx, i| {
            i.set_var("CNI_COMMAND", "DEL");
            i.set_var("CNI_NETNS", &format!("/run/netns/{}-gone", fx.pod.0));
        });
        c.case("DEL without CNI_NETNS", k, succeeds(), |_, i| {
            i.set_var("CNI_COMMAND", "DEL");
            i.env.remove("CNI_NETNS");
        });
        c.case("DEL with an invalid bridge", k, succeeds(), |_, i| {
            i.set_var("CNI_COMMAND", "DEL");
            i.config["bridge"] = json!("evio0123456789ab");
        });
        let case = c.case("DEL after the netns is gone", k, succeeds(), |_, i| {
            i.set_var("CNI_COMMAND", "DEL");
        });
        case.cleans_up_setup = true;
        case.setup(|fx, inv| {
            let scratch = Netns::add(format!("{}-s", fx.other.0));
            let mut add = inv.command("ADD");
            add.set_var("CNI_NETNS", &scratch.path());
            add.must_succeed("ADD before the netns goes");
            // dropped: the netns is deleted with the pod end of the veth
        });
        let case = c.case(
            "ADD eth0 already in the netns",
            k,
            fails(100, "already exists"),
            |_, _| {},
        );
        case.setup(|fx, _| {
            ip(&[
                "-n", &fx.pod.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
            ]);
        })
        .verify(|fx, _, _| {
            let eth0 = ip_json(&["-n", &fx.pod.0, "-d", "addr", "show", "eth0"]);
            match eth0.first() {
                Some(link)
                    if link["linkinfo"]["info_kind"] == "veth" && addresses(link).is_empty() =>
                {
                    Ok(())
                }
                other => Err(format!("the existing eth0 changed: {other:?}")),
            }
        })
        .teardown(|fx, _| {
            ip(&["-n", &fx.pod.0, "link", "del", "eth0"]);
        });
        let case = c.case(
            "ADD same container+ifname again, other netns",
            k,
            fails(u64::from(CODE_INTERFACE_EXISTS), "already has"),
            |_, _| {},
        );
        case.setup(|fx, inv| {
            pod_in_other_netns(fx, inv).must_succeed("first ADD");
        })
        .teardown(|fx, inv| {
            pod_in_other_netns(fx, inv)
                .command("DEL")
                .must_succeed("DEL of the first pod");
        });
        let case = c.case(
            "GC without cni.dev/valid-attachments",
            k,
            fails(7, "valid-attachments"),
            |_, i| {
                i.set_var("CNI_COMMAND", "GC");
                i.config["cniVersion"] = json!("1.1.0");
            },
        );
        case.setup(|fx, inv| {
            let mut pod = pod_in_other_netns(fx, inv);
            pod.config["cniVersion"] = json!("1.0.0");
            pod.must_succeed("ADD of the pod GC must keep");
        })
        .teardown(|fx, inv| {
            let mut pod = pod_in_other_netns(fx, inv).command("DEL");
            pod.config["cniVersion"] = json!("1.0.0");
            pod.must_succeed("DEL of the kept pod");
        });
        c.case(
            "CHECK without prevResult",
            k,
            fails(7, "prevResult"),
            |_, i| {
                i.set_var("CNI_COMMAND", "CHECK");
            },
        );
        c.case(
            "STATUS with the IPAM plugin missing",
            k,
            fails(50, "not found in CNI_PATH"),
            |_, i| {
                i.set_var("CNI_COMMAND", "STATUS");
                i.config["cniVersion"] = json!("1.1.0");
                i.config["ipam"]["type"] = json!("evio-no-such-ipam");
            },
        );
        c.case(
            "ADD IPAM plugin not in CNI_PATH",
            k,
            fails(7, "evio-no-such-ipam"),
            |_, i| i.config["ipam"]["type"] = json!("evio-no-such-ipam"),
        );
        c.case(
            "ADD CNI_PATH without host-local",
            k,
            fails(7, "not found in CNI_PATH"),
            |fx, i| i.set_var("CNI_PATH", &fx.dir.path().display().to_string()),
        );
        let net = move |rest: &str| format!("{NET}.{}.{rest}", kind.octet());
        let case = c.case(
            "ADD host-local range exhausted",
            k,
            fails(999, "no IP addresses available"),
            move |_, i| {
                i.config["ipam"]["ranges"] = json!([[{"subnet": net("0/24"),
                    "rangeStart": net("240"), "rangeEnd": net("240"), "gateway": net("1")}]]);
            },
        );
        case.setup(|_, inv| {
            first_pod(inv).must_succeed("ADD of the pod holding the last address");
        })
        .verify(move |fx, _, _| {
            let file = fx.ipam_dir.join(&fx.network).join(net("240"));
            let holder = std::fs::read_to_string(&file).unwrap_or_default();
            if holder.contains("-first") {
                Ok(())
            } else {
                Err(format!("{} now holds {holder:?}", file.display()))
            }
        })
        .teardown(|_, inv| {
            first_pod(inv)
                .command("DEL")
                .must_succeed("DEL of the first pod");
        });
        c.case(
            "ADD ipam subnet invalid",
            k,
            fails(999, "invalid CIDR address"),
            |_, i| i.config["ipam"]["ranges"] = json!([[{"subnet": "10.91.300.0/24"}]]),
        );
        c.case(
            "ADD ipam rangeStart outside the subnet",
            k,
            fails(999, "not in network"),
            move |_, i| {
                i.config["ipam"]["ranges"] =
                    json!([[{"subnet": net("0/24"), "rangeStart": "10.91.77.5"}]])
            },
        );
        c.case(
            "ADD evio-ipam range outside the node's block",
            k,
            fails(7, "outside this node's block"),
            |_, i| i.config["ipam"]["type"] = json!("evio-ipam"),
        );
        c.case(
            "ADD evio-ipam ranges not a list",
            k,
            fails(7, "ipam.ranges"),
            |_, i| {
                i.config["ipam"]["type"] = json!("evio-ipam");
                i.config["ipam"]["ranges"] = json!("10.91.0.0/16");
            },
        );
        c.case(
            "ADD evio-ipam subnet invalid",
            k,
            fails(7, "ipam.ranges[0][0].subnet"),
            |_, i| {
                i.config["ipam"]["type"] = json!("evio-ipam");
                i.config["ipam"]["ranges"] = json!([[{"subnet": "10.91.300.0/24"}]]);
            },
        );
        c.case(
            "ADD evio-ipam rangeEnd before rangeStart",
            k,
            fails(7, "before rangeStart"),
            move |_, i| {
                i.config["ipam"]["type"] = json!("evio-ipam");
                i.config["ipam"]["ranges"] = json!([[{"subnet": net("0/24"),
                    "rangeStart": net("9"), "rangeEnd": net("3")}]]);
            },
        );
        // IPv6: an address of a family the config has no bridge address for is refused after
        // IPAM ran, and rolled back (the IPv4 reservation of a dual-stack answer too).
        c.case(
            "ADD ipam gives IPv6 only, no bridgeIPv6",
            k,
            fails(7, "bridgeIPv6"),
            |_, i| i.config["ipam"]["ranges"] = json!([[{"subnet": "fd00:91::/120"}]]),
        );
        c.case(
            "ADD ipam gives both families, no bridgeIPv6",
            k,
            fails(7, "bridgeIPv6"),
            move |_, i| {
                i.config["ipam"]["ranges"] = json!([
                    [{"subnet": net("0/24"), "rangeStart": net("2"), "rangeEnd": net("250")}],
                    [{"subnet": "fd00:91::/120"}],
                ])
            },
        );
        c.case(
            "isIPv6Masq without podCIDRv6 and nodeSubnetV6",
            k,
            fails(7, "isIPv6Masq"),
            |_, i| {
                i.config["bridgeIPv6"] = json!("fd00:91::1/64");
                i.config["isIPv6Masq"] = json!(true);
            },
        );
        c.case(
            "bridgeIPv6 outside podCIDRv6",
            k,
            fails(7, "outside the pod CIDR"),
            |_, i| {
                i.config["bridgeIPv6"] = json!("fd00:92::1/64");
                i.config["podCIDRv6"] = json!("fd00:91::/48");
            },
        );
        c.case(
            "bridgeIPv4 and bridgeIPv6 missing",
            k,
            fails(7, "bridgeIPv6"),
            |_, i| {
                i.config.as_object_mut().map(|o| o.remove("bridgeIPv4"));
            },
        );
        let case = c.case(
            "ADD ovsdbSocket unreachable",
            k,
            if kind == Kind::Ovs {
                fails(102, "no-ovsdb.sock")
            } else {
                succeeds()
            },
            |fx, i| i.config["ovsdbSocket"] = json!(fx.dir.path().join("no-ovsdb.sock")),
        );
        if kind == Kind::Lxbr {
            del_after_success(case);
        }
    }
    c.cases
}

/// Each case is its own test (libtest-mimic: filter by name, one failure named per case),
/// run one at a time: every case compares host-wide snapshots.
fn main() -> std::process::ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    if !evio_cni_prerequisites("CNI bad-input corpus") {
        return std::process::ExitCode::SUCCESS;
    }
    let fx = std::sync::Arc::new(Fixture::start());
    let cases = build_corpus(&fx);
    let mut names: BTreeSet<String> = [&fx.ovs_bridge, &fx.lxbr_bridge, &fx.foreign]
        .into_iter()
        .cloned()
        .collect();
    names.insert(format!("{}p", fx.foreign));
    for case in &cases {
        names.extend(case.names());
    }
    // A buggy plugin may make OVS bridges under the names the cases give: removed on any exit.
    let stray_ovs_bridges: Vec<OvsBridge> = cases
        .iter()
        .filter_map(|case| case.invocation.config["bridge"].as_str())
        .filter(|b| !b.is_empty() && *b != fx.ovs_bridge)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|b| OvsBridge(b.to_string()))
        .collect();
    let names = std::sync::Arc::new(names);
    let trials = cases
        .into_iter()
        .enumerate()
        .map(|(n, case)| {
            let (fx, names) = (fx.clone(), names.clone());
            let label = format!(
                "{:03} {} [{}]",
                n + 1,
                case.name,
                case.kind.map_or("-", Kind::label)
            );
            libtest_mimic::Trial::test(label, move || {
                run_case(&fx, &names, &case).map_err(|problems| {
                    // Best effort, so one leftover does not spill into the next cases.
                    let _ = case.invocation.command("DEL").run();
                    problems.into()
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    fx.daemon.assert_no_panics();
    if conclusion.has_failed() {
        println!("daemon log:\n{}", fx.daemon.logs());
    }
    drop(stray_ovs_bridges);
    conclusion.exit_code()
}

/// Runs one case: its exit status, code and text, and nothing left behind.
fn run_case(fx: &Fixture, names: &BTreeSet<String>, case: &Case) -> Result<(), String> {
    let inv = &case.invocation;
    let start = fx.snapshot(names);
    if let Some(setup) = &case.setup {
        setup(fx, inv);
    }
    let before = fx.snapshot(names);
    let (exit, out) = inv.run();
    let mut problems = Vec::new();
    let got_code = out["code"].as_u64();
    if exit != case.want.exit || got_code != case.want.code {
        problems.push(format!(
            "want exit {} code {:?}, got exit {exit} code {got_code:?}: {out}",
            case.want.exit, case.want.code
        ));
    }
    if exit != 0 {
        let text = format!(
            "{} {}",
            out["msg"].as_str().unwrap_or_default(),
            out["details"].as_str().unwrap_or_default()
        );
        if !text.contains(&case.want.text) {
            problems.push(format!("{:?} not in {text}", case.want.text));
        }
        // The spec's error object: cniVersion, code and msg are required.
        let version_ok = out["cniVersion"].as_str().is_some_and(|v| !v.is_empty());
        if !version_ok || out["msg"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("not a complete CNI error: {out}"));
        }
    }
    if let Some(verify) = &case.verify {
        if let Err(e) = verify(fx, inv, &out) {
            problems.push(e);
        }
    }
    if let Some(undo) = &case.undo {
        undo(fx, inv);
    }
    let reference = if case.cleans_up_setup {
        &start
    } else {
        &before
    };
    let after = fx.settled_snapshot(names, reference);
    if &after != reference {
        problems.push(format!("left behind:{}", reference.diff(&after)));
    }
    if let Some(teardown) = &case.teardown {
        teardown(fx, inv);
    }
    let end = fx.settled_snapshot(names, &start);
    if end != start {
        problems.push(format!("setup/teardown not neutral:{}", start.diff(&end)));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
