//! evio-cni inside a CNI chain, run the way a runtime runs a conflist: each plugin exec'd in
//! list order for ADD with the previous plugin's result as `prevResult`, in reverse order for
//! DEL. The plugins are the real ones: the `evio-cni` shim against a real `evio-node dev`,
//! host-local, and Debian's `portmap` (containernetworking-plugins 1.1.1, whose only firewall
//! backend is iptables; here `iptables` is iptables-nft, so its rules land in nftables).
//! Linux-bridge mode, pod network 10.90.0.0/16. Needs root; under CI=true a missing
//! prerequisite fails the test.
//!
//! One file (over 500 lines) on purpose: both chain orders share the chain fixture (node, portmap
//! guards, leftover checks) that only they use.

use evio_test_support::cni as cni_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cni_support::{
    assert_veth_retired_then_gone, cni, exec_plugin, interface_names, ip, plugin, DevNode,
    LinuxBridge, MasqueradeRule, Netns,
};
use evio_cni::dataplane::attachment::host_veth_name;
use evio_test_support::{is_root, prerequisites};
use serde_json::{json, Value};

/// Debian 12's portmap supports configs up to 1.0.0: the chain runs at 1.0.0, as a list
/// with it does (`cniVersion` "1.0.0" in net-conf.json).
const CHAIN_VERSION: &str = "1.0.0";

/// The two tests share portmap's top-level iptables chains; one at a time touches them.
static PORTMAP: Mutex<()> = Mutex::new(());

/// The port the pod's server listens on, inside its own netns.
const CONTAINER_PORT: u16 = 8080;

fn chain_prerequisites() -> bool {
    let iptables = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .is_ok_and(|o| o.status.success());
    prerequisites(
        "CNI chain",
        &[
            ("root", is_root()),
            ("host-local", plugin("host-local").is_file()),
            ("portmap", plugin("portmap").is_file()),
            ("iptables-nat", iptables),
        ],
    )
}

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .unwrap_or_else(|e| panic!("iptables: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iptables_nat(args: &str) {
    // -S prints rules shell-quoted (comments carry spaces): let a shell split them again.
    let _ = Command::new("sh")
        .args(["-c", &format!("iptables -w -t nat {args}")])
        .output();
}

/// portmap creates CNI-HOSTPORT-{DNAT,SETMARK,MASQ} and jumps to them from PREROUTING,
/// OUTPUT and POSTROUTING on its first ADD and never removes them. If they were not there
/// before the test and no port mapping uses them afterwards, they are removed on drop. (The
/// nat tables iptables-nft created for them stay: empty, and shared with anything else on the
/// host that uses iptables' nat table.)
struct PortmapLeftovers {
    chains_before: bool,
}

impl PortmapLeftovers {
    fn note() -> PortmapLeftovers {
        PortmapLeftovers {
            chains_before: nat_rules().contains("-N CNI-HOSTPORT-DNAT"),
        }
    }
}

impl Drop for PortmapLeftovers {
    fn drop(&mut self) {
        let rules = nat_rules();
        let in_use = rules
            .lines()
            .any(|l| l.starts_with("-A CNI-HOSTPORT-DNAT") || l.starts_with("-N CNI-DN-"));
        if self.chains_before || in_use {
            return;
        }
        for jump in rules.lines().filter(|l| {
            l.contains("-j CNI-HOSTPORT-")
                && ["-A PREROUTING ", "-A OUTPUT ", "-A POSTROUTING "]
                    .iter()
                    .any(|c| l.starts_with(c))
        }) {
            iptables_nat(&jump.replacen("-A ", "-D ", 1));
        }
        for chain in [
            "CNI-HOSTPORT-DNAT",
            "CNI-HOSTPORT-SETMARK",
            "CNI-HOSTPORT-MASQ",
        ] {
            iptables_nat(&format!("-F {chain}"));
            iptables_nat(&format!("-X {chain}"));
        }
    }
}

/// Runs portmap DEL on drop, so a failing test leaves no per-pod rules (DEL is idempotent).
struct PortmapAttachment {
    config: Value,
    container: String,
    netns: String,
}

impl Drop for PortmapAttachment {
    fn drop(&mut self) {
        exec_plugin(
            &plugin("portmap"),
            "DEL",
            &self.container,
            &self.netns,
            &self.config,
        );
    }
}

/// A port nothing on the host listens on right now.
fn free_host_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP server in the pod's netns (a thread moved there with setns): answers the first
/// connection's first line with "pong <line>" and returns the peer it saw.
fn serve_once_in_netns(netns: &str, port: u16) -> std::thread::JoinHandle<SocketAddr> {
    let netns = netns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap_or_else(|e| panic!("{netns}: {e}"));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {netns}: {e}"));
        let listener =
            TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind in pod: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection reached the pod");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept in pod: {e}"),
            }
        };
        stream
            .set_nonblocking(false)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(format!("pong {}", line.trim()).as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        peer
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("pod server not listening: {e}"));
    server
}

/// `config` with `prevResult`: what a runtime passes a plugin after the first.
fn with_prev(config: &Value, result: Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = result;
    config
}

/// Sends "ping" to `addr` and returns the answer.
fn ask(addr: SocketAddr) -> String {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut reply = String::new();
    let asked = stream.set_read_timeout(Some(timeout)).and_then(|()| {
        stream.write_all(b"ping\n")?;
        stream.read_to_string(&mut reply)
    });
    asked.unwrap_or_else(|e| panic!("ping {addr}: {e}"));
    reply
}

/// The address (without prefix) of `ips[index]`.
fn address(result: &Value, index: usize) -> String {
    result["ips"][index]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no ips[{index}] in {result}"))
        .to_string()
}

/// host-local's reservations (files named by address) of network `name` under `ipam_dir`.
fn reservations(ipam_dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_dir(ipam_dir.join(name))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

fn node_subnet(config: &Value) -> ipnetwork::Ipv4Network {
    config["nodeSubnet"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("conflist without nodeSubnet: {config}"))
}

/// What both chain tests set up: their turn at portmap's shared chains, an `evio-node dev`
/// on `cidr`, and evio's plugin config on a Linux bridge and host-local dir of its own; the
/// guards drop in field order (rule, bridge, daemon, files, portmap chains, turn).
struct Chain {
    node: DevNode,
    name: String,
    evio: Value,
    ipam_dir: std::path::PathBuf,
    _masquerade: MasqueradeRule,
    _bridge: LinuxBridge,
    _dir: tempfile::TempDir,
    _leftovers: PortmapLeftovers,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Chain {
    /// The conflist's portmap entry, at `version`.
    fn portmap(&self, version: &str) -> Value {
        let mut portmap = self.node.plugin_config(1, &self.name);
        portmap["cniVersion"] = json!(version);
        portmap
    }

    /// host-local's reservations of the chain's network.
    fn reservations(&self) -> Vec<String> {
        reservations(&self.ipam_dir, &self.name)
    }

    /// The chain's node, where the prerequisites hold (see [`chain_prerequisites`]).
    fn start(tag: &str, cidr: &str) -> Option<Chain> {
        if !chain_prerequisites() {
            return None;
        }
        let turn = PORTMAP.lock().unwrap_or_else(|p| p.into_inner());
        let leftovers = PortmapLeftovers::note();
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let node = DevNode::start(dir.path(), &format!("chain-{tag}"), Some(cidr));
        let name = format!("evio-chain-{tag}{pid}");
        let bridge = format!("ec{tag}{pid}");
        let ipam_dir = dir.path().join("ipam");
        let mut evio = node.plugin_config(0, &name);
        evio["cniVersion"] = json!(CHAIN_VERSION);
        evio["bridge"] = json!(bridge);
        evio["bridgeType"] = json!("LXBR");
        evio["ipam"]["dataDir"] = json!(ipam_dir);
        Some(Chain {
            _masquerade: MasqueradeRule(node_subnet(&evio)),
            _bridge: LinuxBridge(bridge),
            node,
            name,
            evio,
            ipam_dir,
            _dir: dir,
            _leftovers: leftovers,
            _turn: turn,
        })
    }
}

#[test]
fn portmap_after_evio_forwards_a_host_port_into_the_pod() {
    let Some(chain) = Chain::start("p", "10.90.0.0/18") else {
        return;
    };
    let (node, evio) = (&chain.node, chain.evio.clone());
    let pid = std::process::id();
    let mut portmap = chain.portmap(CHAIN_VERSION);
    assert_eq!(portmap["type"], "portmap", "{}", node.conflist);
    let host_port = free_host_port();
    // What a runtime puts there for a pod with hostPort (capability portMappings).
    portmap["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": host_port, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]});

    let ns = Netns::add(format!("evio-chain-p{pid}"));
    let netns = ns.path();
    let container = format!("chain-p-{pid}");
    let _portmap_rules = PortmapAttachment {
        config: portmap.clone(),
        container: container.clone(),
        netns: netns.clone(),
    };

    // ADD in list order: evio, then portmap with evio's result.
    let (code, evio_result) = cni("ADD", &container, &netns, &evio);
    assert_eq!(code, 0, "{evio_result}\n{}", node.daemon.logs());
    let pod_ip = address(&evio_result, 0);
    assert!(pod_ip.starts_with("10.90.0."), "{evio_result}");
    portmap["prevResult"] = evio_result.clone();
    let (code, final_result) = exec_plugin(&plugin("portmap"), "ADD", &container, &netns, &portmap);
    assert_eq!(code, 0, "portmap ADD: {final_result}");
    // portmap passes evio's result on
    assert_eq!(final_result["ips"], evio_result["ips"], "{final_result}");
    assert_eq!(final_result["interfaces"], evio_result["interfaces"]);
    let rules = nat_rules();
    assert!(
        rules.contains(&container)
            && rules.contains(&format!("--to-destination {pod_ip}:{CONTAINER_PORT}")),
        "no DNAT to the pod for {container}:\n{rules}"
    );

    // The host port reaches the server in the pod (through the gateway address, a local one).
    let server = serve_once_in_netns(&netns, CONTAINER_PORT);
    let gateway: std::net::IpAddr = evio_result["ips"][0]["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no gateway in {evio_result}"));
    let reply = ask(SocketAddr::new(gateway, host_port));
    assert_eq!(reply, "pong ping");
    let peer = server
        .join()
        .unwrap_or_else(|_| panic!("pod server failed"));
    assert_eq!(
        peer.ip(),
        gateway,
        "the pod sees the host's gateway address"
    );

    // DEL in reverse order, each with the chain's result.
    let portmap_del = with_prev(&portmap, final_result.clone());
    let (code, out) = exec_plugin(&plugin("portmap"), "DEL", &container, &netns, &portmap_del);
    assert_eq!(code, 0, "portmap DEL: {out}");
    let (code, out) = cni("DEL", &container, &netns, &with_prev(&evio, final_result));
    assert_eq!(code, 0, "evio DEL: {out}");

    let rules = nat_rules();
    assert!(
        !rules.contains(&container) && !rules.contains(&pod_ip),
        "portmap rules left for {container}:\n{rules}"
    );
    assert_veth_retired_then_gone(&host_veth_name(&container, "eth0"));
    assert!(!ip(&["-n", &ns.0, "link"]).contains("eth0"));
    assert_eq!(chain.reservations(), Vec::<String>::new());
    node.daemon.assert_no_panics();
}

/// A result another plugin (run before evio) returned in `version`: interface net1 in the
/// pod with an IPv4 address, a route and a name server.
fn earlier_plugin_result(version: &str, netns: &str) -> Value {
    let mut ip = json!({"address": "10.90.200.5/24", "gateway": "10.90.200.1", "interface": 0});
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "net1", "mac": "02:00:0a:5a:c8:05", "sandbox": netns}],
        "ips": [ip],
        "routes": [{"dst": "10.90.201.0/24", "gw": "10.90.200.1"}],
        "dns": {"nameservers": ["10.90.200.53"]},
    })
}

#[test]
fn evio_after_another_plugin_answers_the_merged_result() {
    let Some(chain) = Chain::start("m", "10.90.64.0/18") else {
        return;
    };
    let (node, base) = (&chain.node, chain.evio.clone());
    let bridge = chain.evio["bridge"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pid = std::process::id();

    // The earlier plugin's interface really exists in the pod; evio must leave it alone.
    let ns = Netns::add(format!("evio-chain-m{pid}"));
    let netns = ns.path();
    // (a veth pair inside the pod: this kernel has no dummy links)
    ip(&[
        "-n", &ns.0, "link", "add", "net1", "type", "veth", "peer", "name", "net1peer",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "10.90.200.5/24", "dev", "net1"]);
    ip(&["-n", &ns.0, "link", "set", "net1", "up"]);

    // (config version, the earlier plugin's result version): older, newer and equal.
    let cases = [
        ("0.3.1", "1.1.0"),
        ("0.4.0", "0.3.0"),
        ("1.0.0", "0.4.0"),
        ("1.1.0", "1.0.0"),
        ("1.0.0", "1.0.0"),
    ];
    for (i, (version, prev_version)) in cases.into_iter().enumerate() {
        let case = format!("config {version}, prevResult {prev_version}");
        let container = format!("chain-m{pid}-{i}");
        let host = host_veth_name(&container, "eth0");
        let mut evio = base.clone();
        evio["cniVersion"] = json!(version);
        evio["prevResult"] = earlier_plugin_result(prev_version, &netns);
        let (code, merged) = cni("ADD", &container, &netns, &evio);
        assert_eq!(code, 0, "{case}: {merged}\n{}", node.daemon.logs());

        assert_eq!(merged["cniVersion"], version, "{case}: {merged}");
        assert_eq!(
            interface_names(&merged),
            ["net1", bridge.as_str(), host.as_str(), "eth0"],
            "{case}"
        );
        assert_eq!(merged["interfaces"][3]["sandbox"], netns.as_str(), "{case}");
        assert_eq!(merged["ips"].as_array().map(Vec::len), Some(2), "{case}");
        assert_eq!(merged["ips"][0]["address"], "10.90.200.5/24", "{case}");
        assert_eq!(merged["ips"][0]["interface"], 0, "{case}");
        let pod_ip = address(&merged, 1);
        assert!(pod_ip.starts_with("10.90.64."), "{case}: {merged}");
        assert_eq!(merged["ips"][1]["interface"], 3, "{case}: {merged}");
        let expect_ip_version = version.starts_with("0.").then_some("4");
        for ip in merged["ips"].as_array().into_iter().flatten() {
            assert_eq!(
                ip["version"].as_str(),
                expect_ip_version,
                "{case}: {merged}"
            );
        }
        let routes = merged["routes"].as_array().cloned().unwrap_or_default();
        assert_eq!(routes[0]["dst"], "10.90.201.0/24", "{case}: {merged}");
        assert!(
            routes.iter().any(|r| r["dst"] == "0.0.0.0/0"),
            "{case}: {merged}"
        );
        assert_eq!(
            merged["dns"]["nameservers"],
            json!(["10.90.200.53"]),
            "{case}"
        );
        let pod_addrs = ip(&["-n", &ns.0, "-4", "addr"]);
        assert!(
            pod_addrs.contains("10.90.200.5/24") && pod_addrs.contains(&format!("{pod_ip}/18")),
            "{case}: {pod_addrs}"
        );

        // CHECK (0.4.0 on) with the chain's result finds evio's address among the others.
        if version != "0.3.1" {
            let mut check = base.clone();
            check["cniVersion"] = json!(version);
            check["prevResult"] = merged.clone();
            let (code, out) = cni("CHECK", &container, &netns, &check);
            assert_eq!(code, 0, "{case}: CHECK {out}");
        }

        // portmap (at most 1.0.0 in Debian's build) after evio picks evio's address: the ip
        // whose interface index names CNI_IFNAME in the sandbox.
        if version != "1.1.0" {
            let mut portmap = chain.portmap(version);
            portmap["runtimeConfig"] = json!({"portMappings": [
                {"hostPort": free_host_port(), "containerPort": CONTAINER_PORT, "protocol": "tcp"}]});
            let _rules = PortmapAttachment {
                config: portmap.clone(),
                container: container.clone(),
                netns: netns.clone(),
            };
            portmap["prevResult"] = merged.clone();
            let (code, out) = exec_plugin(&plugin("portmap"), "ADD", &container, &netns, &portmap);
            assert_eq!(code, 0, "{case}: portmap ADD {out}");
            let rules = nat_rules();
            assert!(
                rules.contains(&format!("--to-destination {pod_ip}:{CONTAINER_PORT}")),
                "{case}: portmap did not map to evio's address {pod_ip}:\n{rules}"
            );
            let (code, out) = exec_plugin(&plugin("portmap"), "DEL", &container, &netns, &portmap);
            assert_eq!(code, 0, "{case}: portmap DEL {out}");
        }

        let (code, out) = cni("DEL", &container, &netns, &with_prev(&evio, merged));
        assert_eq!(code, 0, "{case}: DEL {out}");
        assert_veth_retired_then_gone(&host);
        let pod_links = ip(&["-n", &ns.0, "link"]);
        assert!(
            !pod_links.contains("eth0") && pod_links.contains("net1"),
            "{case}: {pod_links}"
        );
        assert_eq!(chain.reservations(), Vec::<String>::new(), "{case}");
    }

    // A prevResult whose ip names an interface it does not list: refused before anything is
    // created.
    let container = format!("chain-m{pid}-bad");
    let mut evio = base.clone();
    let mut bad = earlier_plugin_result("1.0.0", &netns);
    bad["ips"][0]["interface"] = json!(7);
    evio["prevResult"] = bad;
    let (code, out) = cni("ADD", &container, &netns, &evio);
    assert_eq!((code, out["code"].as_u64()), (1, Some(7)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .is_some_and(|m| m.contains("prevResult.ips[0].interface")),
        "{out}"
    );
    assert_veth_retired_then_gone(&host_veth_name(&container, "eth0"));
    assert!(!ip(&["-n", &ns.0, "link"]).contains("eth0"));
    assert_eq!(chain.reservations(), Vec::<String>::new());
    node.daemon.assert_no_panics();
}
