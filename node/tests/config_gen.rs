//! `evio-node config-gen` as a real process: with the original example net-conf.json it
//! writes a conflist for the node's block that the real host-local plugin accepts; it works
//! from the local replica with every member SIGKILLed; it fails cleanly (and leaves an
//! existing conflist alone) with no lease and no member; bad net-conf values are named.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use evio_test_support::cluster::{free_addr, Cluster};
use evio_test_support::have;
use evio_test_support::{evio_node, evio_node_bin};
use nix::sys::signal::Signal;

/// The original Evio ConfigMap, verbatim (nodeBits a string, podCIDR with host bits).
const ORIGINAL_NET_CONF: &str = r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"evioPlugin",
 "bridge":"evioB1B111B","bridgeType":"OVS","isGateway":true,"isDefaultGateway":true,
 "isIPMasq":true,"nodeBits":"8","podCIDR":"10.244.0.16/16",
 "dataStore":"0.0.0.0:42000","auth":false}"#;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn config_gen(
    cluster: &Cluster,
    node: &str,
    data: &Path,
    join: &[String],
    extra: &[&str],
) -> Output {
    let net_conf = cluster.path("net-conf.json");
    if !net_conf.exists() {
        std::fs::write(&net_conf, ORIGINAL_NET_CONF).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut args = vec![
        "config-gen".to_string(),
        "--net-conf".into(),
        net_conf.to_string_lossy().into(),
        "--cni-conf-dir".into(),
        cluster.path("net.d").to_string_lossy().into(),
        "--data-dir".into(),
        data.to_string_lossy().into(),
        "--node-name".into(),
        node.into(),
        "--cluster-token-file".into(),
        cluster.token_arg(),
        "--deadline".into(),
        "3s".into(),
    ];
    if !join.is_empty() {
        args.push("--join".into());
        args.push(join.join(","));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    evio_node(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", evio_node_bin()))
}

/// Two members nobody answers for: the closed discard port (connection refused) and a
/// listener that accepts connections but never replies (kept open by the returned handle).
fn unreachable_members() -> (std::net::TcpListener, Vec<String>) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = silent
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    (silent, vec!["127.0.0.1:9".to_string(), addr])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// config-gen failed for want of a lease for `node` and of a reachable member.
fn assert_no_lease(out: &Output, node: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{err}");
    let want = format!("no lease for {node} and no cluster member reachable");
    assert!(err.contains(&want), "{err}");
}

fn read_conflist(cluster: &Cluster) -> serde_json::Value {
    let bytes =
        std::fs::read(cluster.path("net.d/10-evio.conflist")).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the real host-local ADD with the plugin's ipam config; returns the address it gave.
fn host_local_add(
    plugin: &serde_json::Value,
    conflist: &serde_json::Value,
    data_dir: &Path,
) -> String {
    let mut ipam = plugin["ipam"].clone();
    ipam["dataDir"] = serde_json::json!(data_dir.to_string_lossy());
    let conf = serde_json::json!({
        "cniVersion": conflist["cniVersion"],
        "name": conflist["name"],
        "type": plugin["type"],
        "ipam": ipam,
    });
    let mut child = Command::new(HOST_LOCAL)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "config-gen-test")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{HOST_LOCAL}: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
        stdin
            .write_all(conf.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "host-local answered no JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "host-local ADD failed: {result}");
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflist_from_the_cluster_then_from_the_local_replica_with_all_peers_killed() {
    let cluster = Cluster::new();
    let mut nodes = cluster.three(&[]).await;
    // Blocks 0 and 1 go to others, so c's block is not the first one by accident.
    evio_test_support::cluster::acquire(&nodes[0], "other-0").await;
    evio_test_support::cluster::acquire(&nodes[0], "other-1").await;
    let join: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();

    // c's daemon holds its replica open: config-gen asks it, finds no lease, asks the cluster.
    let out = config_gen(&cluster, "c", &cluster.path("c"), &join, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("source=\"cluster\"")
            || stderr(&out).contains("\"source\":\"cluster\""),
        "{}",
        stderr(&out)
    );
    let conflist = read_conflist(&cluster);
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "evio-cni");
    assert_eq!(plugin["bridge"], "evioB1B111B");
    assert_eq!(plugin["bridgeIPv4"], "10.244.2.1/16");
    assert_eq!(plugin["nodeSubnet"], "10.244.2.0/24");
    let range = &plugin["ipam"]["ranges"][0][0];
    assert_eq!(range["subnet"], "10.244.0.0/16");
    assert_eq!(range["rangeStart"], "10.244.2.2");
    assert_eq!(range["rangeEnd"], "10.244.2.254");
    assert_eq!(range["gateway"], "10.244.2.1");
    let mode = std::fs::metadata(cluster.path("net.d/10-evio.conflist"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o644));
    if have(HOST_LOCAL, "containernetworking-plugins") {
        let ipam_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let address = host_local_add(plugin, &conflist, ipam_dir.path());
        assert_eq!(address, "10.244.2.2/16");
    }
    // Running again with the daemon up: the lease now comes from the local replica (via the
    // daemon's API) and the file is left as it is.
    evio_test_support::cluster::local_has(&nodes[2], "c").await;
    let out = config_gen(&cluster, "c", &cluster.path("c"), &join, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already current"), "{}", stderr(&out));

    // Every peer SIGKILLed: c's daemon, cut off, still answers from its local view.
    nodes[0].proc.signal(Signal::SIGKILL);
    nodes[1].proc.signal(Signal::SIGKILL);
    // From here on the members named are unreachable for sure (the dead members' ports may
    // be taken by another test's processes meanwhile): a refusing port and a silent one.
    let (_silent, unreachable) = unreachable_members();
    let join = unreachable;
    std::fs::remove_file(cluster.path("net.d/10-evio.conflist")).unwrap_or_else(|e| panic!("{e}"));
    let out = config_gen(&cluster, "c", &cluster.path("c"), &join, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_conflist(&cluster)["plugins"][0]["nodeSubnet"],
        "10.244.2.0/24"
    );
    // c's daemon stopped too (the node rebooting): the lease is read from c's disk.
    nodes[2].proc.signal(Signal::SIGTERM);
    // A stale file for another subnet (a changed podCIDR / an old cluster) is replaced.
    let stale = serde_json::to_vec(&serde_json::json!({
        "plugins": [{"nodeSubnet": "10.99.0.0/24"}]
    }))
    .unwrap_or_default();
    std::fs::write(cluster.path("net.d/10-evio.conflist"), stale).unwrap_or_else(|e| panic!("{e}"));
    let out = config_gen(&cluster, "c", &cluster.path("c"), &join, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("local replica"), "{log}");
    assert!(
        log.contains("10.99.0.0/24") && log.contains("replacing"),
        "{log}"
    );
    assert_eq!(
        read_conflist(&cluster)["plugins"][0]["nodeSubnet"],
        "10.244.2.0/24"
    );

    // A changed bridge setting rewrites the file, still offline.
    std::fs::write(
        cluster.path("net-conf.json"),
        ORIGINAL_NET_CONF.replace("evioB1B111B", "evioB2"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = config_gen(&cluster, "c", &cluster.path("c"), &join, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_conflist(&cluster)["plugins"][0]["bridge"], "evioB2");

    // Same data dir, a node that holds no lease, nobody reachable: clean failure in time,
    // the conflist untouched.
    let before = std::fs::read(cluster.path("net.d/10-evio.conflist")).unwrap_or_default();
    let started = Instant::now();
    let out = config_gen(&cluster, "d", &cluster.path("c"), &join, &[]);
    assert_no_lease(&out, "d");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "config-gen overran its deadline"
    );
    assert_eq!(
        std::fs::read(cluster.path("net.d/10-evio.conflist")).unwrap_or_default(),
        before
    );
}

#[test]
fn no_replica_and_no_member_fails_cleanly_leaving_the_conflist() {
    let cluster = Cluster::new();
    let net_d = cluster.path("net.d");
    std::fs::create_dir_all(&net_d).unwrap_or_else(|e| panic!("{e}"));
    let existing = net_d.join("10-evio.conflist");
    std::fs::write(&existing, b"{\"previous\": true}\n").unwrap_or_else(|e| panic!("{e}"));
    let nobody = free_addr();
    let out = config_gen(
        &cluster,
        "lonely",
        &cluster.path("empty-data"),
        &[nobody],
        &[],
    );
    assert_no_lease(&out, "lonely");
    assert_eq!(
        std::fs::read(&existing).unwrap_or_default(),
        b"{\"previous\": true}\n"
    );
    // config-gen created nothing in the data dir it only reads
    assert!(!cluster.path("empty-data").exists());
}

/// config-gen off a member (no certificate in its empty data dir) against a TLS cluster:
/// refused with what is missing and the flags to pass, nothing written; with a certificate
/// of the cluster (`--ca-file --cert-file --key-file`) it gets the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_member_config_gen_needs_a_certificate_of_the_cluster() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &free_addr(), &[], &[]);
    let join = [a.addr.clone()];
    let empty = cluster.path("fresh-data");
    let out = config_gen(&cluster, "fresh", &empty, &join, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for needle in ["speaks TLS", "no certificate", "--cert-file", "--key-file"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!cluster.path("net.d").exists(), "written without a lease");
    assert!(
        !empty.exists(),
        "config-gen created the data dir it only reads"
    );

    let tls = cluster.path("a").join(evio_raft::tls::TLS_DIR);
    let file = |f: &str| tls.join(f).to_string_lossy().to_string();
    let (ca, cert, key) = (
        file(evio_raft::tls::CA_CERT_FILE),
        file(evio_raft::tls::NODE_CERT_FILE),
        file(evio_raft::tls::NODE_KEY_FILE),
    );
    let flags = ["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];
    let out = config_gen(&cluster, "fresh", &empty, &join, &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    let lease = evio_test_support::cluster::local_has(&a, "fresh").await;
    assert_eq!(
        read_conflist(&cluster)["plugins"][0]["nodeSubnet"],
        lease.subnet.to_string()
    );
}

#[test]
fn bad_net_conf_names_key_and_value_and_writes_nothing() {
    let cluster = Cluster::new();
    let cases = [
        (
            r#""nodeBits":"8""#,
            r#""nodeBits":"eight""#,
            "\"nodeBits\"",
            "\"eight\"",
        ),
        (
            r#""podCIDR":"10.244.0.16/16""#,
            r#""podCIDR":"10.244.0.0/33""#,
            "\"podCIDR\"",
            "10.244.0.0/33",
        ),
        (
            r#""bridgeType":"OVS""#,
            r#""bridgeType":"VXLAN""#,
            "\"bridgeType\"",
            "\"VXLAN\"",
        ),
        (
            r#""isIPMasq":true"#,
            r#""isIPMasq":"yes""#,
            "\"isIPMasq\"",
            "\"yes\"",
        ),
    ];
    let with_bad_net_conf = || {
        let nobody = ["127.0.0.1:9".to_string()];
        config_gen(&cluster, "n", &cluster.path("data"), &nobody, &[])
    };
    for (from, to, key, value) in cases {
        let text = ORIGINAL_NET_CONF.replace(from, to);
        assert_ne!(text, ORIGINAL_NET_CONF, "{from}");
        std::fs::write(cluster.path("net-conf.json"), text).unwrap_or_else(|e| panic!("{e}"));
        let out = with_bad_net_conf();
        assert!(!out.status.success(), "{to}");
        let err = stderr(&out);
        assert!(err.contains(key) && err.contains(value), "{to}: {err}");
        assert!(!cluster.path("net.d").exists(), "{to}: a file was written");
    }
    std::fs::write(cluster.path("net-conf.json"), "{\"podCIDR\": ")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = with_bad_net_conf();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("net-conf.json"), "{}", stderr(&out));
    assert!(!cluster.path("net.d").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_writes_and_keeps_its_conflist() {
    let cluster = Cluster::new();
    let net_conf = cluster.path("net-conf.json");
    std::fs::write(
        &net_conf,
        ORIGINAL_NET_CONF.replace("\"bridgeType\":\"OVS\"", "\"bridgeType\":\"LXBR\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let net_conf = net_conf.to_string_lossy().to_string();
    let net_d = cluster.path("net.d").to_string_lossy().to_string();
    let node = cluster.start(
        "solo",
        &free_addr(),
        &[],
        &["--net-conf", &net_conf, "--cni-conf-dir", &net_d],
    );
    let path = cluster.path("net.d/10-evio.conflist");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no conflist:\n{}",
            node.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conflist = read_conflist(&cluster);
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["bridgeType"], "LXBR");
    assert_eq!(plugin["nodeSubnet"], "10.244.0.0/24");
    // the socket is the daemon's own (absolute), since net-conf.json names none
    let socket = plugin["socket"].as_str().unwrap_or_default();
    assert!(
        socket.starts_with('/') && socket.ends_with("solo.cni.sock"),
        "{socket}"
    );
    // Released by an operator while running: the daemon gets its node a lease again and the
    // file names that lease.
    let client = node.client();
    client
        .release("solo")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lease = client
            .get_lease("solo", evio_api::Consistency::Local)
            .await
            .ok()
            .flatten();
        let written = read_conflist(&cluster)["plugins"][0]["nodeSubnet"].clone();
        if let Some(lease) = lease {
            if written == lease.subnet.to_string() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "conflist not current: {written}\n{}",
            node.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DaemonSet's sequence (deploy/daemonset.yaml: init container `config-gen` with its
/// flags — no `--join`, `--no-lease-ok` — then `evio-node run --net-conf --cni-conf-dir`) on
/// a node that is a member of its cluster but holds no lease, while no other member is
/// reachable (a whole-cluster restart): the init step exits 0 writing nothing, so the daemon
/// starts; once the cluster is reachable the daemon gets the lease and writes the conflist,
/// with nobody acting. Without `--no-lease-ok` the init step fails (the node would wait for
/// members that themselves wait in their init step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_sequence_never_blocks_a_node_whose_cluster_is_unreachable_at_first() {
    let cluster = Cluster::new();
    let (addr_a, addr_x) = (free_addr(), free_addr());
    // x joins a's cluster without ever taking a lease, then the whole cluster goes down.
    let mut a = cluster.start("a", &addr_a, &[], &[]);
    let mut x = cluster.start("x", &addr_x, &[&addr_a], &[]);
    a.proc.signal(Signal::SIGKILL);
    x.proc.signal(Signal::SIGKILL);
    drop((a, x));
    let net_conf = cluster.path("net-conf.json");
    std::fs::write(
        &net_conf,
        ORIGINAL_NET_CONF.replace("\"bridgeType\":\"OVS\"", "\"bridgeType\":\"LXBR\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conflist = cluster.path("net.d/10-evio.conflist");

    // The init container, as the DaemonSet runs it (no --join: nobody to ask).
    let strict = config_gen(&cluster, "x", &cluster.path("x"), &[], &[]);
    assert!(!strict.status.success(), "{}", stderr(&strict));
    let init = config_gen(&cluster, "x", &cluster.path("x"), &[], &["--no-lease-ok"]);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(
        stderr(&init).contains("left to evio-node run"),
        "{}",
        stderr(&init)
    );
    assert!(!conflist.exists());

    // The daemon starts (its replica says it is a member) while the cluster is unreachable.
    let (net_conf, net_d) = (
        net_conf.to_string_lossy().to_string(),
        cluster.path("net.d").to_string_lossy().to_string(),
    );
    let x = cluster.start(
        "x",
        &addr_x,
        &[&addr_a],
        &["--net-conf", &net_conf, "--cni-conf-dir", &net_d],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!conflist.exists(), "a conflist without a lease");

    // The cluster comes back: the conflist follows, with nobody acting.
    let a = cluster.start("a", &addr_a, &[&addr_x], &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !conflist.exists() {
        assert!(
            Instant::now() < deadline,
            "no conflist once the cluster is back:\n{}\n---\n{}",
            x.proc.logs(),
            a.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = x
        .client()
        .get_lease("x", evio_api::Consistency::Local)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no lease for x"));
    assert_eq!(
        read_conflist(&cluster)["plugins"][0]["nodeSubnet"],
        lease.subnet.to_string()
    );
    x.proc.assert_no_panics();
}
