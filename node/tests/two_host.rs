//! Two hosts on one machine, one flat pod network: each "host" is a network namespace with
//! its own `evio-node run` (the two form one Raft cluster over a host-overlay veth pair,
//! 10.93.0.1 and 10.93.0.2), its own lease of 10.92.0.0/16 (a /24 block each, so its own
//! bridge gateway) and its own conflist written by the daemon. A pod on each host is added by
//! the real `evio-cni` binary exec'd in that host's namespace with the daemon's conflist; a
//! second veth pair ("tunnel") joins the two bridges, standing in for the Evio tunnel. Each
//! pod pings its gateway and the other host's pod over the pod CIDR's mask (no routing, one
//! L2), then DEL leaves no veth, port or reservation behind. The dual-stack runs add
//! `fd00:92::/48` to the pool: each host's lease holds a /56 of it at the same block index,
//! each pod gets an address of each family and pings over both.
//!
//! Both bridge types are isolated per host:
//! - LXBR: a Linux bridge lives in the namespace of the daemon that creates it.
//! - OVS: the userspace `netdev` datapath (these machines have no openvswitch kernel module)
//!   opens its ports and creates the bridge's internal (tap) interface in the namespace
//!   ovs-vswitchd runs in, so each host gets its own ovsdb-server and ovs-vswitchd (own
//!   database, sockets and run dir, started in the host's namespace) and the conflist names
//!   that host's database through the net-conf key `ovsdbSocket`. The shared
//!   /run/openvswitch instance is not used.
//!
//! Nothing is created in the root network namespace; the two hosts share one filesystem, so
//! each gets its own host-local data dir (as separate machines would have). Needs root,
//! host-local, ping, nft and (OVS) Open vSwitch; under CI=true a missing one fails the test.
//!
//! One file (over 700 lines) on purpose: one scenario, run for each bridge kind, over the
//! two-host fixture (two namespaces, two members, the veth link between them) it sets up.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evio_api::ClusterJson;
use evio_cni::dataplane::attachment::host_veth_name;
use evio_test_support::cni::{cni_in, in_netns, wait_until_gone, Netns};
use evio_test_support::run;
use evio_test_support::{evio_node, evio_node_bin, Proc};
use serde_json::{json, Value};

const POD_CIDR: &str = "10.92.0.0/16";
/// The IPv6 podCIDR of the dual-stack runs.
const POD_CIDR_V6: &str = "fd00:92::/48";
/// Host-overlay addresses (the Evio overlay in production), one per host.
const OVERLAY: [&str; 2] = ["10.93.0.1", "10.93.0.2"];
const API_PORT: u16 = 7700;
const TOKEN: &str = "two-host-test-token-of-32-bytes-at-least";
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// Generous: two busy cores, debug builds.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Lxbr,
    Ovs,
}

impl Mode {
    fn bridge_type(self) -> &'static str {
        match self {
            Mode::Lxbr => "LXBR",
            Mode::Ovs => "OVS",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Mode::Lxbr => "lx",
            Mode::Ovs => "ov",
        }
    }
}

fn prerequisites(mode: Mode) -> bool {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            !evio_test_support::ci(),
            "the two-host test needs root under CI"
        );
        eprintln!("SKIPPED: the two-host test needs root");
        return false;
    }
    let mut ok = evio_test_support::have("/usr/lib/cni/host-local", "containernetworking-plugins");
    ok &= evio_test_support::have("ping", "iputils-ping");
    ok &= evio_test_support::have("nft", "nftables");
    if mode == Mode::Ovs {
        for program in ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"] {
            ok &= evio_test_support::have(program, "openvswitch-switch");
        }
        ok &= evio_test_support::have(OVS_SCHEMA, "openvswitch-common");
    }
    ok
}

/// Everything a test could want to see when packets do not flow.
fn diagnostics(hosts: &[Host]) -> String {
    let mut text = String::new();
    for host in hosts {
        for args in [["-br", "link"], ["-br", "addr"], ["neigh", "show"]] {
            let out = Command::new("ip")
                .args(["-n", &host.netns.0])
                .args(args)
                .output();
            if let Ok(out) = out {
                text += &format!(
                    "--- {} ip {args:?}\n{}",
                    host.name,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        if let Some(ovs) = &host.ovs {
            text += &format!(
                "--- {} ovs-vsctl show\n{}",
                host.name,
                ovs.try_vsctl(&["show"])
            );
            text += &format!(
                "--- {} ovs-vswitchd log\n{}",
                host.name,
                std::fs::read_to_string(ovs.dir.join("ovs-vswitchd.log")).unwrap_or_default()
            );
        }
    }
    text
}

/// One host's own ovsdb-server and ovs-vswitchd, started in the host's network namespace
/// with everything under `dir`; killed on drop.
struct Ovs {
    dir: PathBuf,
    socket: PathBuf,
    /// ovs-vswitchd after ovsdb-server: drop kills them in reverse.
    children: Vec<Child>,
}

impl Ovs {
    fn start(netns: &Netns, dir: &Path) -> Ovs {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        let db = dir.join("conf.db");
        run("ovsdb-tool", &["create", &db.to_string_lossy(), OVS_SCHEMA]);
        let mut ovs = Ovs {
            dir: dir.to_path_buf(),
            socket: dir.join("db.sock"),
            children: Vec::new(),
        };
        let remote = format!("punix:{}", ovs.socket.display());
        let unixctl = format!("--unixctl={}", dir.join("ovsdb-server.ctl").display());
        let server = ovs.daemon(
            netns,
            "ovsdb-server",
            &[&db.to_string_lossy(), "--remote", &remote, &unixctl],
        );
        ovs.children.push(server);
        // The database answers once the socket is up; `init` creates the root row.
        let deadline = Instant::now() + PATIENCE;
        while ovs
            .vsctl_status(&["--timeout=2", "--no-wait", "init"])
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "ovsdb-server in {} did not answer: {}",
                netns.0,
                std::fs::read_to_string(dir.join("ovsdb-server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let db_arg = format!("unix:{}", ovs.socket.display());
        let unixctl = format!("--unixctl={}", dir.join("ovs-vswitchd.ctl").display());
        let vswitchd = ovs.daemon(netns, "ovs-vswitchd", &[&db_arg, &unixctl]);
        ovs.children.push(vswitchd);
        // Without --no-wait, ovs-vsctl bumps next_cfg and returns once ovs-vswitchd has
        // applied it: the switch is up and reading this database.
        if let Err(e) = ovs.vsctl_status(&["--timeout=60", "init"]) {
            panic!(
                "ovs-vswitchd in {} not ready: {e}\n{}",
                netns.0,
                std::fs::read_to_string(dir.join("ovs-vswitchd.log")).unwrap_or_default()
            );
        }
        ovs
    }

    /// `program args` in the foreground (no --detach: the test owns and kills it), its run
    /// dir, pid file and log in `dir`.
    fn daemon(&self, netns: &Netns, program: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("{program}.log")))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let pidfile = format!(
            "--pidfile={}",
            self.dir.join(format!("{program}.pid")).display()
        );
        let mut cmd = Command::new(program);
        in_netns(&mut cmd, netns.path());
        cmd.args(args)
            .arg(pidfile)
            .env("OVS_RUNDIR", &self.dir)
            .env("OVS_DBDIR", &self.dir)
            .env("OVS_LOGDIR", &self.dir)
            .env("OVS_SYSCONFDIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    fn vsctl_status(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.socket.display()))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn vsctl(&self, args: &[&str]) -> String {
        self.vsctl_status(args)
            .unwrap_or_else(|e| panic!("ovs-vsctl {args:?}: {e}"))
    }

    fn try_vsctl(&self, args: &[&str]) -> String {
        self.vsctl_status(args).unwrap_or_else(|e| e)
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        while let Some(mut child) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A host: its namespace, (OVS) its switch, its evio-node. Fields drop in order: the daemon
/// and the switch die before their namespace goes.
struct Host {
    daemon: Option<Proc>,
    ovs: Option<Ovs>,
    netns: Netns,
    name: String,
    overlay_ip: &'static str,
    dir: PathBuf,
}

impl Host {
    fn new(tag: &str, index: usize, root: &Path) -> Host {
        let netns = Netns::add(format!("evio2h-{tag}-h{}", index + 1));
        run("ip", &["-n", &netns.0, "link", "set", "lo", "up"]);
        let dir = root.join(format!("host-{}", index + 1));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        Host {
            daemon: None,
            ovs: None,
            netns,
            name: format!("host-{}", index + 1),
            overlay_ip: OVERLAY[index],
            dir,
        }
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.netns.0];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn daemon(&self) -> &Proc {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no daemon", self.name))
    }

    fn conflist_path(&self) -> PathBuf {
        self.dir.join("net.d").join(evio_cni::conf::CONFLIST_FILE)
    }

    /// `evio-node run` in this host's namespace; bootstraps unless `join` is given (a member's
    /// address and the cluster CA it trusts).
    #[allow(clippy::too_many_arguments)]
    fn start_daemon(
        &mut self,
        mode: Mode,
        dual: bool,
        network: &str,
        bridge: &str,
        token: &Path,
        join: Option<(&str, &Path)>,
    ) {
        let pod_cidr = if dual {
            format!("{POD_CIDR},{POD_CIDR_V6}")
        } else {
            POD_CIDR.to_string()
        };
        let mut net_conf = json!({
            "podCIDR": pod_cidr,
            "nodeBits": "8",
            "name": network,
            "bridge": bridge,
            "bridgeType": mode.bridge_type(),
            "ovsDatapath": "netdev",
            "isIPMasq": true,
        });
        if let Some(ovs) = &self.ovs {
            net_conf["ovsdbSocket"] = json!(ovs.socket);
        }
        let net_conf_path = self.dir.join("net-conf.json");
        std::fs::write(&net_conf_path, net_conf.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let data = self.data_dir().to_string_lossy().into_owned();
        let listen = format!("{}:{API_PORT}", self.overlay_ip);
        let net_conf_arg = net_conf_path.to_string_lossy().into_owned();
        let conf_dir = self.dir.join("net.d").to_string_lossy().into_owned();
        let socket = self.dir.join("cni.sock").to_string_lossy().into_owned();
        let token = token.to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "--node-name",
            &self.name,
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--net-conf",
            &net_conf_arg,
            "--cni-conf-dir",
            &conf_dir,
            "--cni-socket",
            &socket,
            "--cluster-token-file",
            &token,
        ];
        let ca_file;
        match join {
            Some((member, ca)) => {
                ca_file = ca.to_string_lossy().into_owned();
                args.extend_from_slice(&["--join", member, "--ca-file", &ca_file]);
            }
            None => args.push("--bootstrap"),
        }
        let mut cmd = evio_node(&args);
        in_netns(&mut cmd, self.netns.path());
        let proc = Proc::spawn(cmd).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        self.daemon = Some(proc);
    }

    /// The conflist the daemon writes once it is a member holding a lease.
    fn wait_conflist(&self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // Written by temp file + rename: whatever is there parses.
            if let Ok(bytes) = std::fs::read(self.conflist_path()) {
                return serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", self.conflist_path().display()));
            }
            assert!(
                Instant::now() < deadline,
                "{} wrote no conflist:\n{}",
                self.name,
                self.daemon().logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `evio-node cluster status` from inside this host, through its own API (over TLS with
    /// the member's certificate from its data dir, as the CLI on a node does).
    fn cluster_status(&self) -> Option<ClusterJson> {
        let api = format!("https://{}:{API_PORT}", self.overlay_ip);
        let data = self.data_dir();
        let mut cmd = Command::new(evio_node_bin());
        in_netns(&mut cmd, self.netns.path());
        let out = cmd
            .args([
                "cluster",
                "status",
                "--api",
                &api,
                "-o",
                "json",
                "--data-dir",
            ])
            .arg(&data)
            .env_remove("EVIO_API")
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The plugin config kubelet would send: the conflist's evio plugin with the list's
    /// name and version, and this host's own host-local data dir.
    fn plugin_config(&self, conflist: &Value) -> Value {
        let mut config = conflist["plugins"][0].clone();
        config["cniVersion"] = conflist["cniVersion"].clone();
        config["name"] = conflist["name"].clone();
        config["ipam"]["dataDir"] = json!(self.ipam_dir());
        config
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// Plugs this host's end of the stand-in tunnel into its bridge.
    fn attach_tunnel(&self, bridge: &str) {
        self.ip(&["link", "set", "tunnel", "up"]);
        match &self.ovs {
            Some(ovs) => {
                // Waits until ovs-vswitchd has opened the port.
                ovs.vsctl(&["--timeout=60", "add-port", bridge, "tunnel"]);
            }
            None => {
                self.ip(&["link", "set", "tunnel", "master", bridge]);
            }
        }
    }
}

/// The pod's address as the conflist's range `family` (0: IPv4, 1: IPv6 on dual stack) gives
/// it: the block's first address, and the gateway.
fn first_pod_address(config: &Value, family: usize) -> (String, String) {
    let range = &config["ipam"]["ranges"][family][0];
    let start = range["rangeStart"]
        .as_str()
        .unwrap_or_else(|| panic!("no rangeStart in {config}"));
    let gateway = range["gateway"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway in {config}"));
    (start.to_string(), gateway.to_string())
}

/// Pings `target` from inside `pod` until it answers (a new OVS port or a fresh ARP entry
/// may take a moment); panics with the hosts' state if it never does.
fn ping(pod: &Netns, target: &str, hosts: &[Host]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cmd = Command::new("ping");
        in_netns(&mut cmd, pod.path());
        let out = cmd
            .args(["-c", "1", "-W", "1", target])
            .output()
            .unwrap_or_else(|e| panic!("ping: {e}"));
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} cannot ping {target}: {}\n{}",
            pod.0,
            String::from_utf8_lossy(&out.stdout),
            diagnostics(hosts)
        );
    }
}

/// Names of the links in `host`'s namespace.
fn link_names(host: &Host) -> Vec<String> {
    host.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

fn two_hosts(mode: Mode, dual: bool) {
    if !prerequisites(mode) {
        return;
    }
    let tag = format!(
        "{}{}{}",
        std::process::id(),
        mode.short(),
        if dual { "d" } else { "" }
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let network = format!("evio-2h-{tag}");
    let bridge = format!("br2h{tag}");
    assert!(bridge.len() <= 15, "{bridge}");
    let token = dir.path().join("token");
    evio_raft::data_dir::write_atomic(&token, format!("{TOKEN}\n").as_bytes(), 0o600)
        .unwrap_or_else(|e| panic!("{e}"));

    // Locals drop in reverse: the hosts (daemons, switches, namespaces), then the pods'
    // namespaces, then `dir`.
    let mut pods: Vec<Netns> = Vec::new();
    let mut hosts = [
        Host::new(&tag, 0, dir.path()),
        Host::new(&tag, 1, dir.path()),
    ];
    let (h1, h2) = (&hosts[0].netns.0, &hosts[1].netns.0);

    // Two veth pairs between the hosts: "overlay" carries the host overlay (Raft, joins) and
    // "tunnel" stands in for the Evio tunnel between the bridges, plugged in once they exist.
    for pair in ["overlay", "tunnel"] {
        let args = [
            "-n", h1, "link", "add", pair, "type", "veth", "peer", "name", pair,
        ];
        run("ip", &[&args[..], &["netns", h2]].concat());
    }
    for host in &hosts {
        host.ip(&[
            "addr",
            "add",
            &format!("{}/24", host.overlay_ip),
            "dev",
            "overlay",
        ]);
        host.ip(&["link", "set", "overlay", "up"]);
    }

    if mode == Mode::Ovs {
        for host in &mut hosts {
            host.ovs = Some(Ovs::start(&host.netns, &host.dir.join("ovs")));
        }
    }

    let first = format!("{}:{API_PORT}", OVERLAY[0]);
    hosts[0].start_daemon(mode, dual, &network, &bridge, &token, None);
    let ca = hosts[0]
        .data_dir()
        .join(evio_raft::tls::TLS_DIR)
        .join(evio_raft::tls::CA_CERT_FILE);
    hosts[1].start_daemon(mode, dual, &network, &bridge, &token, Some((&first, &ca)));
    let conflists: Vec<Value> = hosts.iter().map(Host::wait_conflist).collect();

    // One cluster: both members seen by host 2, one leader.
    let deadline = Instant::now() + PATIENCE;
    let cluster = loop {
        let status = hosts[1].cluster_status();
        if let Some(c) = &status {
            let mut names: Vec<&str> = c.members.iter().map(|m| m.name.as_str()).collect();
            names.sort_unstable();
            if names == ["host-1", "host-2"] && c.leader_id.is_some() {
                break status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "host-2 never saw a two-member cluster: {status:#?}\n{}",
            hosts[1].daemon().logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let cluster = cluster.unwrap_or_else(|| panic!("no cluster status"));
    assert_eq!(
        cluster.pod_cidr.to_string(),
        POD_CIDR,
        "IPv4 is the primary"
    );
    let cidrs: Vec<String> = cluster.pod_cidrs.iter().map(ToString::to_string).collect();
    let mut want_cidrs = vec![POD_CIDR];
    if dual {
        want_cidrs.push(POD_CIDR_V6);
    }
    assert_eq!(cidrs, want_cidrs);

    // Each host's own block and gateway, from its own daemon's conflist.
    let configs: Vec<Value> = hosts
        .iter()
        .zip(&conflists)
        .map(|(host, conflist)| host.plugin_config(conflist))
        .collect();
    let addresses: Vec<(String, String)> =
        configs.iter().map(|c| first_pod_address(c, 0)).collect();
    assert_ne!(addresses[0].1, addresses[1].1, "both hosts got one block");
    // Dual stack: each host's IPv6 block has the index of its IPv4 one (block i of each).
    let addresses_v6: Vec<(String, String)> = if dual {
        configs.iter().map(|c| first_pod_address(c, 1)).collect()
    } else {
        Vec::new()
    };
    for ((v4, _), (v6, _)) in addresses.iter().zip(&addresses_v6) {
        let index = v4.split('.').nth(2).unwrap_or_default();
        let index: u16 = index.parse().unwrap_or_else(|e| panic!("{v4}: {e}"));
        let want = std::net::Ipv6Addr::new(0xfd00, 0x92, 0, index << 8, 0, 0, 0, 2);
        assert_eq!(v6.parse().ok(), Some(want), "{v4} / {v6}");
    }
    for (i, ((config, (_, gateway)), host)) in
        configs.iter().zip(&addresses).zip(&hosts).enumerate()
    {
        if let Some((_, gateway_v6)) = addresses_v6.get(i) {
            assert_eq!(config["bridgeIPv6"], format!("{gateway_v6}/48"), "{config}");
        }
        assert_eq!(config["bridgeIPv4"], format!("{gateway}/16"), "{config}");
        assert_eq!(config["bridgeType"], mode.bridge_type(), "{config}");
        assert_eq!(config["podCIDR"], POD_CIDR, "{config}");
        if dual {
            assert_eq!(config["podCIDRv6"], POD_CIDR_V6, "{config}");
            let routes = &config["ipam"]["routes"];
            assert_eq!(
                routes,
                &json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]),
                "{config}"
            );
        } else {
            assert!(config.get("bridgeIPv6").is_none(), "{config}");
        }
        assert_eq!(config["type"], "evio-cni", "{config}");
        let socket = host.dir.join("cni.sock");
        assert_eq!(config["socket"], json!(socket), "{config}");
        match &host.ovs {
            Some(ovs) => assert_eq!(config["ovsdbSocket"], json!(ovs.socket), "{config}"),
            None => assert!(config.get("ovsdbSocket").is_none(), "{config}"),
        }
    }

    // A pod on each host, through the real evio-cni exec'd in that host.
    let mut attachments = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let pod = Netns::add(format!("evio2h-{tag}-p{}", i + 1));
        let container = format!("pod{}-{tag}", i + 1);
        let netns = pod.path();
        pods.push(pod);
        let (code, result) = cni_in(
            Some(&host.netns.path()),
            "ADD",
            &container,
            &netns,
            &configs[i],
        );
        assert_eq!(
            code,
            0,
            "{}: ADD {result}\n{}",
            host.name,
            host.daemon().logs()
        );
        // The IPv4 address (and on dual stack the IPv6 one) with its gateway, each reserved
        // in this host's own host-local data dir (where DEL must release it).
        let mut expected = vec![(&addresses[i], 16)];
        expected.extend(addresses_v6.get(i).map(|v6| (v6, 48)));
        for (k, ((address, gateway), prefix)) in expected.into_iter().enumerate() {
            let got = &result["ips"][k];
            assert_eq!(got["address"], format!("{address}/{prefix}"), "{result}");
            assert_eq!(got["gateway"], gateway.as_str(), "{result}");
            let reservation = host.ipam_dir().join(&network).join(address);
            assert!(reservation.is_file(), "{} missing", reservation.display());
        }
        attachments.push((container, netns));
    }
    for host in &hosts {
        host.attach_tunnel(&bridge);
    }

    for (i, pod) in pods.iter().enumerate() {
        let (_, own_gateway) = &addresses[i];
        let (other_address, _) = &addresses[1 - i];
        ping(pod, own_gateway, &hosts);
        ping(pod, other_address, &hosts);
        if dual {
            ping(pod, &addresses_v6[i].1, &hosts);
            ping(pod, &addresses_v6[1 - i].0, &hosts);
        }
    }
    // Each bridge lives in its host's namespace only, never in the root one.
    let root = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(
        !root.status.success(),
        "{bridge} leaked into the root namespace"
    );

    for (i, host) in hosts.iter().enumerate() {
        let (container, netns) = &attachments[i];
        let (code, out) = cni_in(
            Some(&host.netns.path()),
            "DEL",
            container,
            netns,
            &configs[i],
        );
        assert_eq!(
            code,
            0,
            "{}: DEL {out}\n{}",
            host.name,
            host.daemon().logs()
        );
        let veth = host_veth_name(container, "eth0");
        wait_until_gone(&veth, || {
            link_names(host)
                .iter()
                .any(|l| l == &veth || l.starts_with("evio"))
        });
        let links = link_names(host);
        assert!(
            !links.iter().any(|l| l == &veth || l.starts_with("evio")),
            "{}: left behind: {links:?}",
            host.name
        );
        assert!(
            links.contains(&bridge),
            "{}: bridge gone: {links:?}",
            host.name
        );
        let pod_links = run("ip", &["-n", &pods[i].0, "-o", "link", "show"]);
        assert!(!pod_links.contains("eth0"), "{}: {pod_links}", pods[i].0);
        if let Some(ovs) = &host.ovs {
            let ports = ovs.vsctl(&["list-ports", &bridge]);
            assert_eq!(ports.trim(), "tunnel", "{}: ports left: {ports}", host.name);
        }
        // host-local keeps one file per reserved address (plus its lock and cursor).
        let reservations: Vec<String> = std::fs::read_dir(host.ipam_dir().join(&network))
            .unwrap_or_else(|e| panic!("{}: {e}", host.ipam_dir().display()))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<IpAddr>().is_ok())
            .collect();
        assert!(reservations.is_empty(), "{}: {reservations:?}", host.name);
    }

    for host in &hosts {
        host.daemon().assert_no_panics();
    }
}

#[test]
fn pods_on_two_hosts_ping_over_linux_bridges() {
    two_hosts(Mode::Lxbr, false);
}

#[test]
fn pods_on_two_hosts_ping_over_ovs_bridges() {
    two_hosts(Mode::Ovs, false);
}

#[test]
fn dual_stack_pods_on_two_hosts_ping_over_linux_bridges() {
    two_hosts(Mode::Lxbr, true);
}

#[test]
fn dual_stack_pods_on_two_hosts_ping_over_ovs_bridges() {
    two_hosts(Mode::Ovs, true);
}
