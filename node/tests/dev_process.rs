//! `evio-node dev` as a real process: leases survive SIGKILL + restart, bad starts are refused
//! with the values named, Ctrl-C stops cleanly; IPv6-only and dual-stack devs hand out pod
//! addresses that work (real evio-cni, host-local, netns, Linux bridge and OVS).
//!
//! One file (about 500 lines) on purpose: every scenario of the `dev` command as a process, sharing
//! its start-up and pod helpers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

use evio_api::{Client, Consistency, LeaseJson};
use nix::sys::signal::Signal;

use evio_test_support::{dev_command, evio_node, evio_node_bin, output_fails, Proc};

/// `evio-node dev` on a temp data dir, with the token it generates there.
struct Dev {
    proc: Proc,
    base: String,
    token_file: std::path::PathBuf,
}

/// Runs `evio-node dev` that is expected to refuse to start; returns (success, stderr).
fn dev_refused(data_dir: &str, node_name: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "dev",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--node-name",
        node_name,
    ];
    args.extend_from_slice(extra);
    let out = evio_node(&args).output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Dev {
    fn start(data_dir: &Path, extra: &[&str]) -> Dev {
        let proc = Proc::spawn(dev_command(data_dir, "test-host", extra))
            .unwrap_or_else(|e| panic!("{e}"));
        Dev {
            base: proc.base.clone(),
            proc,
            token_file: data_dir.join("cluster-token"),
        }
    }

    fn client(&self) -> Client {
        let token = std::fs::read_to_string(&self.token_file)
            .unwrap_or_else(|e| panic!("{}: {e}", self.token_file.display()));
        self.proc.client(Some(token.trim()))
    }

    fn logs(&self) -> String {
        self.proc.logs()
    }

    fn signal(&mut self, signal: Signal) -> ExitStatus {
        self.proc.signal(signal)
    }

    fn assert_no_panics(&self) {
        self.proc.assert_no_panics()
    }
}

async fn leases_by_node(client: &Client) -> BTreeMap<String, LeaseJson> {
    client
        .list_leases(Consistency::Local)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| (l.node.clone(), l))
        .collect()
}

/// Acquires `names` with 16 concurrent clients; returns every acknowledged lease.
async fn acquire_all(client: &Client, names: Vec<String>) -> BTreeMap<String, LeaseJson> {
    let names = Arc::new(Mutex::new(names));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let next = names.lock().ok().and_then(|mut n| n.pop());
                let Some(name) = next else { break };
                let (lease, created) = client
                    .acquire(&name, None)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(created, "{name} was not new");
                acked.push(lease);
            }
            acked
        }));
    }
    let mut all = BTreeMap::new();
    for task in tasks {
        for lease in task.await.unwrap_or_else(|e| panic!("{e}")) {
            all.insert(lease.node.clone(), lease);
        }
    }
    all
}

#[tokio::test]
async fn leases_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let mut dev = Dev::start(&data, &[]);
    let client = dev.client();
    let cluster = client.cluster().await.unwrap_or_else(|e| panic!("{e}"));

    // dev leased this host and wrote its conflist
    let own = client
        .get_lease("test-host", Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("dev did not lease its own node"));
    assert_eq!(own.subnet.to_string(), "10.244.0.0/24");
    let conflist = std::fs::read_to_string(data.join("net.d/10-evio.conflist"))
        .unwrap_or_else(|e| panic!("{e}"));
    let conf: serde_json::Value = serde_json::from_str(&conflist).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conf["plugins"][0]["bridgeIPv4"], "10.244.0.1/16");

    let names: Vec<String> = (0..40).map(|i| format!("node-{i}")).collect();
    let mut acked = acquire_all(&client, names).await;
    // a release is acknowledged too: it must stay released
    client
        .release("node-7")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let freed = acked
        .remove("node-7")
        .map(|l| l.subnet)
        .unwrap_or_else(|| panic!("node-7 not acked"));
    acked.insert(own.node.clone(), own.clone());

    let status = dev.signal(Signal::SIGKILL);
    assert!(!status.success());
    dev.assert_no_panics();
    drop(dev);

    let dev = Dev::start(&data, &[]);
    let client = dev.client();
    let after = client.cluster().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        after.node_id, cluster.node_id,
        "node id changed across restart"
    );
    let found = leases_by_node(&client).await;
    assert_eq!(found.len(), acked.len());
    for (node, lease) in &acked {
        let now = found
            .get(node)
            .unwrap_or_else(|| panic!("lease of {node} vanished"));
        assert_eq!(now.subnet, lease.subnet, "{node} changed subnet");
        assert_eq!(now.revision, lease.revision, "{node} changed revision");
    }
    assert!(!found.contains_key("node-7"));
    // blocks 0..=40 were all taken but node-7's: the freed block is the lowest free one
    let (again, _) = client
        .acquire("node-new", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.subnet, freed);
    dev.assert_no_panics();
}

#[tokio::test]
async fn thousand_leases_on_slash8_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let args = ["--pod-cidr", "10.0.0.0/8", "--node-bits", "12"];
    let mut dev = Dev::start(&data, &args);
    let client = dev.client();
    let names: Vec<String> = (0..1000).map(|i| format!("edge-{i:04}")).collect();
    let mut acked = acquire_all(&client, names).await;
    let own = client
        .get_lease("test-host", Consistency::Local)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("own lease missing"));
    acked.insert(own.node.clone(), own);
    // no two leases share a subnet
    let subnets: std::collections::BTreeSet<_> = acked.values().map(|l| l.subnet).collect();
    assert_eq!(subnets.len(), acked.len());

    dev.signal(Signal::SIGKILL);
    drop(dev);

    let dev = Dev::start(&data, &args);
    let found = leases_by_node(&dev.client()).await;
    assert_eq!(found.len(), acked.len());
    for (node, lease) in &acked {
        let now = found
            .get(node)
            .unwrap_or_else(|| panic!("lease of {node} vanished"));
        assert_eq!(
            (now.subnet, now.gateway, now.range_start, now.range_end),
            (
                lease.subnet,
                lease.gateway,
                lease.range_start,
                lease.range_end
            ),
            "{node}"
        );
    }
    dev.assert_no_panics();
}

#[test]
fn restart_with_other_pool_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let mut dev = Dev::start(&data, &[]);
    assert!(
        dev.signal(Signal::SIGINT).success(),
        "Ctrl-C must stop cleanly:\n{}",
        dev.logs()
    );
    drop(dev);

    let data_arg = data.to_string_lossy().to_string();
    let (ok, stderr) = dev_refused(
        &data_arg,
        "test-host",
        &["--pod-cidr", "10.0.0.0/8", "--node-bits", "12"],
    );
    assert!(!ok);
    for needle in ["10.244.0.0/16", "nodeBits 8", "10.0.0.0/8", "nodeBits 12"] {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }
    // Adding a family is a changed pool too: refused, naming both family sets.
    let (ok, stderr) = dev_refused(
        &data_arg,
        "test-host",
        &["--pod-cidr", "10.244.0.0/16,fd00:10:244::/56"],
    );
    assert!(!ok);
    for needle in [
        "10.244.0.0/16 nodeBits 8 (IPv4)",
        "10.244.0.0/16,fd00:10:244::/56 nodeBits 8 (IPv4+IPv6)",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }
}

/// `evio-node dev --pod-cidr fd00:10:244::/56` (IPv6 only, pods on a Linux bridge) and a
/// dual-stack dev (`10.244.0.0/16,fd00:10:244::/56`, pods on OVS): the lease holds a block of
/// each family, the conflist dev writes gives pods addresses of exactly those families through
/// the real evio-cni and host-local, and the pods reach each other and the gateway.
#[test]
fn ipv6_and_dual_stack_devs_hand_out_working_pod_addresses() {
    use evio_test_support::cni::{cni, DevNode, LinuxBridge, MasqueradeRule, Netns, OvsBridge};
    let checks = [
        ("root", evio_test_support::is_root()),
        ("host-local", Path::new("/usr/lib/cni/host-local").is_file()),
        ("ovsdb", Path::new("/run/openvswitch/db.sock").exists()),
    ];
    if !evio_test_support::prerequisites("IPv6 dev", &checks) {
        return;
    }
    let ping = |ns: &Netns, target: &str| {
        Command::new("ip")
            .args([
                "netns", "exec", &ns.0, "ping", "-c", "3", "-i", "0.2", "-W", "1", target,
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    for (pod_cidr, kind, dual) in [
        ("fd00:10:244::/56", "LXBR", false),
        ("10.244.0.0/16,fd00:10:244::/56", "OVS", true),
    ] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let node = DevNode::start(dir.path(), "v6-host", Some(pod_cidr));
        let tag = format!("{}{}", std::process::id() % 100_000, u8::from(dual));
        let bridge = format!("ev6{tag}");
        let _ovs = OvsBridge(bridge.clone());
        let _lxbr = LinuxBridge(bridge.clone());
        let mut config = node.plugin_config(0, &format!("evio-v6-{tag}"));
        config["bridge"] = serde_json::json!(bridge);
        config["bridgeType"] = serde_json::json!(kind);
        config["ipam"]["dataDir"] = serde_json::json!(dir.path().join("ipam"));
        assert_eq!(config["bridgeIPv6"], "fd00:10:244::1/56", "{config}");
        assert_eq!(config["bridgeIPv4"].is_string(), dual, "{config}");
        let ranges = config["ipam"]["ranges"].as_array().map_or(0, Vec::len);
        assert_eq!(ranges, 1 + usize::from(dual), "{config}");
        let _masquerade = MasqueradeRule("10.244.0.0/24".parse().unwrap_or_else(|e| panic!("{e}")));

        // The API shows the lease with a block of each family, IPv4 first.
        let token = std::fs::read_to_string(dir.path().join("data/cluster-token"))
            .unwrap_or_else(|e| panic!("{e}"));
        let client = node.daemon.client(Some(token.trim()));
        let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        let lease = runtime
            .block_on(client.get_lease("v6-host", Consistency::Linearizable))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("dev did not lease its own node"));
        let subnets: Vec<String> = lease.subnets.iter().map(|b| b.subnet.to_string()).collect();
        let mut want = vec![];
        if dual {
            want.push("10.244.0.0/24".to_string());
        }
        want.push("fd00:10:244::/64".to_string());
        assert_eq!(subnets, want);
        assert_eq!(lease.subnet.to_string(), want[0], "the primary block");
        // The CLI lists every family's block.
        let token_file = dir.path().join("data/cluster-token");
        let out = Command::new(evio_node_bin())
            .args(["leases", "list", "--api", &node.daemon.base, "--token-file"])
            .arg(&token_file)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = String::from_utf8_lossy(&out.stdout);
        for subnet in &want {
            assert!(
                listed.contains(subnet.as_str()),
                "{subnet} not in:\n{listed}"
            );
        }

        let namespaces = [
            Netns::add(format!("evio-v6a-{tag}")),
            Netns::add(format!("evio-v6b-{tag}")),
        ];
        let mut results = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            let (code, result) = cni("ADD", &format!("v6-{tag}-{i}"), &ns.path(), &config);
            assert_eq!(code, 0, "{result}\n{}", node.daemon.logs());
            let addresses: Vec<String> = result["ips"]
                .as_array()
                .map(|ips| ips.iter().map(|ip| ip["address"].to_string()).collect())
                .unwrap_or_default();
            let mut want = vec![];
            if dual {
                want.push(format!("\"10.244.0.{}/16\"", i + 2));
            }
            want.push(format!("\"fd00:10:244::{}/56\"", i + 2));
            assert_eq!(addresses, want, "{result}");
            results.push(result);
        }
        assert!(
            ping(&namespaces[0], "fd00:10:244::1"),
            "pod a -> IPv6 gateway"
        );
        assert!(
            ping(&namespaces[0], "fd00:10:244::3"),
            "pod a -> pod b over IPv6"
        );
        if dual {
            assert!(
                ping(&namespaces[1], "10.244.0.2"),
                "pod b -> pod a over IPv4"
            );
        }
        for (i, ns) in namespaces.iter().enumerate() {
            let mut check = config.clone();
            check["prevResult"] = results[i].clone();
            let (code, out) = cni("CHECK", &format!("v6-{tag}-{i}"), &ns.path(), &check);
            assert_eq!(code, 0, "{out}");
            let (code, out) = cni("DEL", &format!("v6-{tag}-{i}"), &ns.path(), &config);
            assert_eq!(code, 0, "{out}");
        }
        node.daemon.assert_no_panics();
    }
}

#[test]
fn bad_flags_and_corrupt_data_dir_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["--pod-cidr", "10.0.0.0/33"], "10.0.0.0/33"),
        (&["--pod-cidr", "fd00::/121"], "fd00::/121"),
        (
            &["--pod-cidr", "10.244.0.0/24", "--node-bits", "7"],
            "nodeBits 7",
        ),
        (&["--node-bits", "31"], "31"),
        (&["--pod-cidr", "fd00::/56,fd01::/56"], "two IPv6 networks"),
        (
            &["--pod-cidr", "10.244.0.0/16,fd00::/56,10.0.0.0/8"],
            "at most two",
        ),
    ];
    for (extra, needle) in cases {
        let (ok, stderr) = dev_refused(&data_arg, "h", extra);
        assert!(!ok, "{extra:?} accepted");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    let (ok, stderr) = dev_refused(&data_arg, "Bad_Host", &[]);
    assert!(!ok);
    assert!(stderr.contains("Bad_Host"), "{stderr}");

    // A data dir whose identity is garbage is never re-initialised.
    let mut dev = Dev::start(&data, &[]);
    dev.signal(Signal::SIGKILL);
    drop(dev);
    std::fs::write(data.join("identity.json"), b"\x00garbage").unwrap_or_else(|e| panic!("{e}"));
    let (ok, stderr) = dev_refused(&data_arg, "test-host", &[]);
    assert!(!ok);
    assert!(stderr.contains("identity.json is unreadable"), "{stderr}");
    assert_eq!(
        std::fs::read(data.join("identity.json")).unwrap_or_default(),
        b"\x00garbage"
    );

    // Without the identity, an existing database is refused too.
    std::fs::remove_file(data.join("identity.json")).unwrap_or_else(|e| panic!("{e}"));
    let (ok, stderr) = dev_refused(&data_arg, "test-host", &[]);
    assert!(!ok);
    assert!(stderr.contains("refusing to re-initialise"), "{stderr}");
}

#[test]
fn cli_client_lists_acquires_and_releases() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dev = Dev::start(&dir.path().join("data"), &[]);
    let run = |args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        let token_file = dev.token_file.to_string_lossy().to_string();
        full.extend_from_slice(&["--api", &dev.base, "--token-file", &token_file]);
        let out = Command::new(evio_node_bin())
            .args(&full)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&[
        "leases",
        "acquire",
        "cli-node",
        "--host-ip",
        "10.10.0.9",
        "-o",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let lease: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(lease[0]["subnet"], "10.244.1.0/24");
    assert_eq!(lease[0]["hostIP"], "10.10.0.9");

    let (ok, stdout, _) = run(&["leases", "list"]);
    assert!(ok);
    assert!(
        stdout.contains("cli-node")
            && stdout.contains("10.244.1.0/24")
            && stdout.contains("test-host"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["cluster", "status", "-o", "json"]);
    assert!(ok);
    let cluster: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(cluster["nodeName"], "test-host");

    // without the token, changes are refused and nothing changes
    let mut release = Command::new(evio_node_bin());
    release.args(["leases", "release", "cli-node", "--api", &dev.base]);
    let stderr = output_fails(release.env_remove("EVIO_TOKEN_FILE"));
    assert!(
        stderr.contains("401") && stderr.contains("unauthorized"),
        "{stderr}"
    );
    let (ok, stdout, _) = run(&["leases", "get", "cli-node", "-o", "json"]);
    assert!(ok && stdout.contains("10.244.1.0/24"), "{stdout}");

    let (ok, _, _) = run(&["leases", "release", "cli-node"]);
    assert!(ok);
    let (ok, _, stderr) = run(&["leases", "get", "cli-node"]);
    assert!(!ok);
    assert!(
        stderr.contains("cli-node") && stderr.contains("no lease"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["leases", "acquire", "Not_Valid"]);
    assert!(!ok);
    assert!(
        stderr.contains("Not_Valid") && stderr.contains("400"),
        "{stderr}"
    );
}
