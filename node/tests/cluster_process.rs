//! Real `evio-node run` processes on 127.0.0.1: clusters form from `--join`, learners are
//! promoted when a voter dies, writes survive leader loss and a full-cluster SIGKILL,
//! forwarding works around a blocked path, a wiped node rejoins with its old subnet, and bad
//! peers are refused.
//!
//! One file (about 800 lines) on purpose: the multi-member process scenarios, sharing the cluster
//! and retry helpers at its top.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use evio_api::{ClusterJson, Consistency};
use evio_test_support::cluster::{free_addr, wait_cluster, Cluster, Node, TOKEN};
use evio_test_support::{evio_node, output_fails};
use nix::sys::signal::Signal;

async fn status(node: &Node) -> Option<ClusterJson> {
    node.client().cluster().await.ok()
}

/// The name of the member `c` reports as leader.
fn leader_name(c: &ClusterJson) -> String {
    c.members
        .iter()
        .find(|m| Some(m.id) == c.leader_id)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| panic!("no leader in {c:#?}"))
}

fn roles(c: &ClusterJson) -> BTreeMap<String, String> {
    c.members
        .iter()
        .map(|m| (m.name.clone(), m.role.clone()))
        .collect()
}

fn voter_count(c: &ClusterJson) -> usize {
    c.members
        .iter()
        .filter(|m| m.role == "voter" || m.role == "leader")
        .count()
}

/// Waits until every node's local replica holds exactly `want` (node -> subnet).
async fn converged(nodes: &[&Node], want: &BTreeMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    'retry: loop {
        for n in nodes {
            let got: BTreeMap<String, String> =
                match n.client().list_leases(Consistency::Local).await {
                    Ok(leases) => leases
                        .into_iter()
                        .map(|l| (l.node, l.subnet.to_string()))
                        .collect(),
                    Err(_) => BTreeMap::new(),
                };
            if &got != want {
                assert!(
                    Instant::now() < deadline,
                    "{} did not converge: {got:?} vs {want:?}",
                    n.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'retry;
            }
        }
        return;
    }
}

/// Retries a write on `node` until it succeeds; returns the lease and how long it took.
async fn acquire_retrying(node: &Node, name: &str) -> (evio_api::LeaseJson, Duration) {
    let started = Instant::now();
    let lease = evio_test_support::cluster::acquire(node, name).await;
    (lease, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_promote_replace_failover_and_restart() {
    let cluster = Cluster::with_grace("2s");
    let addrs: Vec<String> = (0..5).map(|_| free_addr()).collect();
    let mut nodes = vec![cluster.start("n0", &addrs[0], &[], &[])];
    for i in 1..5 {
        // Join through every member started so far: any reachable one will do.
        let peers: Vec<&str> = addrs[..i].iter().map(String::as_str).collect();
        nodes.push(cluster.start(&format!("n{i}"), &addrs[i], &peers, &[]));
    }
    let c = wait_cluster(&nodes[0], "5 members, 3 voters", |c| {
        c.members.len() == 5 && voter_count(c) == 3 && !c.membership_changing
    })
    .await;
    assert_eq!(
        roles(&c).values().filter(|r| *r == "learner").count(),
        2,
        "{c:#?}"
    );

    // Leases acquired on any member (forwarded to the leader) are visible on all.
    let mut want = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let (lease, created) = node
            .client()
            .acquire(&format!("pod-host-{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("acquire on {}: {e}", node.name));
        assert!(created);
        want.insert(lease.node, lease.subnet.to_string());
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    converged(&refs, &want).await;

    // A voter (not the leader) dies: a learner takes its place after the grace period.
    let leader_name = leader_name(&c);
    let victim = roles(&c)
        .into_iter()
        .find_map(|(name, role)| (role == "voter").then_some(name))
        .unwrap_or_else(|| panic!("no follower voter in {c:#?}"));
    let victim_index = nodes
        .iter()
        .position(|n| n.name == victim)
        .unwrap_or_else(|| panic!("{victim}"));
    let mut dead = nodes.remove(victim_index);
    dead.proc.signal(Signal::SIGKILL);
    let observer = nodes
        .iter()
        .find(|n| n.name == leader_name)
        .unwrap_or_else(|| panic!("leader node"));
    let c = wait_cluster(observer, "dead voter replaced", |c| {
        voter_count(c) == 3
            && !c.membership_changing
            && roles(c).get(&victim).map(String::as_str) == Some("learner")
    })
    .await;
    assert!(c
        .members
        .iter()
        .filter(|m| m.role != "learner")
        .all(|m| m.name != victim));

    // SIGKILL the leader: the survivors elect a new leader and writes resume.
    let leader_index = nodes
        .iter()
        .position(|n| n.name == leader_name)
        .unwrap_or_else(|| panic!("leader"));
    let mut old_leader = nodes.remove(leader_index);
    old_leader.proc.signal(Signal::SIGKILL);
    let (lease, outage) = acquire_retrying(&nodes[0], "after-leader-loss").await;
    println!(
        "measured outage after leader SIGKILL: {} ms",
        outage.as_millis()
    );
    want.insert(lease.node, lease.subnet.to_string());
    let refs: Vec<&Node> = nodes.iter().collect();
    converged(&refs, &want).await;

    // SIGKILL every node, restart all with their data dirs: every acknowledged lease is intact.
    drop(dead);
    drop(old_leader);
    let mut names = Vec::new();
    for mut node in nodes.drain(..) {
        node.proc.signal(Signal::SIGKILL);
        names.push((node.name.clone(), node.addr.clone()));
    }
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("n{i}");
        let peers: Vec<&str> = all.iter().copied().filter(|a| *a != addr).collect();
        nodes.push(cluster.start(&name, addr, &peers, &[]));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    converged(&refs, &want).await;
    let (again, _) = acquire_retrying(&nodes[3], "after-full-restart").await;
    assert!(want.values().all(|s| *s != again.subnet.to_string()));
    for n in &nodes {
        n.proc.assert_no_panics();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_around_a_blocked_path_to_the_leader() {
    let cluster = Cluster::new();
    let (a0, a1, a2) = (free_addr(), free_addr(), free_addr());
    let n0 = cluster.start("n0", &a0, &[], &[]);
    let n1 = cluster.start("n1", &a1, &[&a0], &[]);
    // n2 cannot dial the leader n0 at all; it joins and writes through n1.
    let mut cmd = cluster.command("n2", &a2, &[&a1], &[]);
    cmd.env("EVIO_TEST_DENY_PEERS", &a0);
    let n2 = cluster.start_with(cmd, "n2", &a2);
    let c = wait_cluster(&n0, "3 members", |c| c.members.len() == 3).await;
    assert_eq!(c.leader_id, Some(c.node_id), "n0 leads");

    let (lease, created) = n2
        .client()
        .acquire("via-n1", None)
        .await
        .unwrap_or_else(|e| panic!("write from n2 must be forwarded through n1: {e}"));
    assert!(created);
    // a linearizable read from n2 takes the same detour
    let got = n2
        .client()
        .get_lease("via-n1", Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.map(|l| l.subnet), Some(lease.subnet));
    // The detour was taken: n2 refused to dial n0 (the hook is on in test builds).
    assert!(
        n2.proc
            .logs()
            .contains("not dialing: blocked by EVIO_TEST_DENY_PEERS"),
        "{}",
        n2.proc.logs()
    );
    converged(
        &[&n0, &n1, &n2],
        &BTreeMap::from([(lease.node.clone(), lease.subnet.to_string())]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_rejoins_with_its_subnet_and_bad_peers_are_refused() {
    let cluster = Cluster::new();
    let (a0, a1, a2) = (free_addr(), free_addr(), free_addr());
    let n0 = cluster.start("n0", &a0, &[], &[]);
    let _n1 = cluster.start("n1", &a1, &[&a0], &[]);
    let mut n2 = cluster.start("n2", &a2, &[&a0], &[]);
    wait_cluster(&n0, "3 members", |c| c.members.len() == 3).await;
    n0.client()
        .acquire("filler", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (own, _) = n2
        .client()
        .acquire("n2", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let old_id = status(&n2)
        .await
        .map(|c| c.node_id)
        .unwrap_or_else(|| panic!("n2 status"));

    // Same name while n2 is alive: refused, naming the name.
    let other = free_addr();
    let mut twin = cluster.command_in("n2", "n2-twin", &other, &[&a0], &[]);
    let stderr = output_fails(twin.env("EVIO_LOG", "error"));
    assert!(
        stderr.contains("already used by live member") && stderr.contains("n2"),
        "{stderr}"
    );

    // n2 loses its disk and comes back: new id, old id gone, same subnet for its name.
    n2.proc.signal(Signal::SIGKILL);
    drop(n2);
    std::fs::remove_dir_all(cluster.path("n2")).unwrap_or_else(|e| panic!("{e}"));
    let n2 = cluster.start("n2", &a2, &[&a0], &[]);
    let c = wait_cluster(&n0, "n2 back under a new id", |c| {
        c.members.len() == 3 && c.members.iter().all(|m| m.id != old_id)
    })
    .await;
    let new_id = status(&n2).await.map(|c| c.node_id);
    assert_ne!(new_id, Some(old_id));
    assert!(c
        .members
        .iter()
        .any(|m| Some(m.id) == new_id && m.name == "n2"));
    let (back, created) = n2
        .client()
        .acquire("n2", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!created);
    assert_eq!(back.subnet, own.subnet);

    // Another pool: refused with both values named.
    let stderr = refused_join(
        &cluster,
        "n9",
        &a0,
        ("10.0.0.0/8", "12"),
        &cluster.token_file,
    );
    for needle in ["10.244.0.0/16", "nodeBits 8", "10.0.0.0/8", "nodeBits 12"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    // Wrong token: the certificate request is refused (401) and the member set is unchanged.
    let wrong = cluster.dir.path().join("wrong-token");
    evio_test_support::cluster::write_token(&wrong, "not-the-token-but-long-enough-to-be-read");
    let stderr = refused_join(&cluster, "intruder", &a0, ("10.244.0.0/16", "8"), &wrong);
    assert!(stderr.contains("401"), "{stderr}");

    // Lease writes and Raft RPC without a certificate (a TLS client trusting the CA, with or
    // without a token), then with n0's certificate and a wrong cluster, target or body.
    let ca = std::fs::read_to_string(evio_test_support::cluster::ca_file(&cluster.path("n0")))
        .unwrap_or_else(|e| panic!("{e}"));
    let anonymous = evio_raft::tls::http_client(
        evio_raft::tls::anonymous_client_config(
            evio_raft::tls::Trust::ca_pem(&ca).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}")),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let http = n0.proc.http();
    let base = &n0.proc.base;
    let ours = identity_cluster_id(&cluster.path("n0"));
    let n0_id = status(&n0)
        .await
        .map(|c| c.node_id.to_string())
        .unwrap_or_else(|| panic!("n0 status"));
    assert_eq!(
        identity_cluster_id(&cluster.path("n2")),
        ours,
        "members share one cluster id"
    );
    let rpc = |kind: &str, cluster_id: &str, target: &str| {
        http.post(format!("{base}/raft/{kind}"))
            .bearer_auth(TOKEN)
            .header("x-evio-cluster", cluster_id)
            .header("x-evio-target-node", target)
    };
    let cases = [
        (anonymous.put(format!("{base}/v1/leases/x")), 401),
        (
            anonymous
                .put(format!("{base}/v1/leases/x"))
                .bearer_auth(TOKEN),
            401,
        ),
        (anonymous.delete(format!("{base}/v1/leases/filler")), 401),
        (
            anonymous
                .post(format!("{base}/raft/vote"))
                .bearer_auth(TOKEN)
                .body("{}"),
            401,
        ),
        (rpc("append", &ours, &n0_id).body("{garbage"), 400),
        (rpc("vote", &ours, &n0_id).body(""), 400),
        (rpc("vote", "another-cluster", &n0_id).body("{}"), 403),
        (rpc("vote", &ours, "12345").body("{}"), 421),
    ];
    for (request, want) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, want, "{body}");
        assert!(body["code"].is_string(), "{body}");
    }
    let c = status(&n0).await.unwrap_or_else(|| panic!("n0 status"));
    assert_eq!(c.members.len(), 3, "{c:#?}");
    let leases = n0
        .client()
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(leases.iter().any(|l| l.node == "filler") && !leases.iter().any(|l| l.node == "x"));
    n0.proc.assert_no_panics();
}

/// `evio-node run` of a new member `name` joining `join` with `pool` (CIDR, node bits) and
/// the token in `token`, trusting n0's CA: it must fail. Its stderr.
fn refused_join(
    cluster: &Cluster,
    name: &str,
    join: &str,
    pool: (&str, &str),
    token: &Path,
) -> String {
    let data = cluster.path(name).to_string_lossy().into_owned();
    let socket = format!("{data}.cni.sock");
    let ca = evio_test_support::cluster::ca_file(&cluster.path("n0"));
    let flags = [
        ("--node-name", name),
        ("--data-dir", &data),
        ("--cni-socket", &socket),
        ("--listen", &free_addr()),
        ("--join", join),
        ("--pod-cidr", pool.0),
        ("--node-bits", pool.1),
        ("--cluster-token-file", &token.to_string_lossy()),
        ("--ca-file", &ca),
    ];
    let mut args = vec!["run"];
    args.extend(flags.iter().flat_map(|(flag, value)| [*flag, *value]));
    output_fails(&mut evio_node(&args))
}

/// The cluster id this member recorded in its data dir's identity.
fn identity_cluster_id(data_dir: &Path) -> String {
    let bytes = std::fs::read(data_dir.join("identity.json")).unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
    v["clusterId"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no clusterId in {}", data_dir.display()))
}

/// The member's `evio_raft_purged_index` from /metrics.
async fn purged_index(node: &Node) -> u64 {
    let text = node.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("evio_raft_purged_index "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_survive_losing_two_including_the_leader() {
    let cluster = Cluster::new();
    let addrs: Vec<String> = (0..5).map(|_| free_addr()).collect();
    let mut nodes = vec![cluster.start("v0", &addrs[0], &[], &["--voters", "5"])];
    for i in 1..5 {
        nodes.push(cluster.start(
            &format!("v{i}"),
            &addrs[i],
            &[&addrs[0]],
            &["--voters", "5"],
        ));
    }
    // Every member must hold the final 5-voter configuration (not the joint one): losing two
    // of the old three voters in the middle of the change would leave no quorum, by design.
    let mut c = None;
    for node in &nodes {
        c = Some(
            wait_cluster(node, "5 voters, change complete", |c| {
                c.members.len() == 5 && voter_count(c) == 5 && !c.membership_changing
            })
            .await,
        );
    }
    let c = c.unwrap_or_else(|| panic!("no nodes"));
    let leader_name = leader_name(&c);

    // Lose the leader and one more member.
    let leader_index = nodes
        .iter()
        .position(|n| n.name == leader_name)
        .unwrap_or_else(|| panic!("leader"));
    let mut lost = vec![nodes.remove(leader_index), nodes.remove(0)];
    for node in &mut lost {
        node.proc.signal(Signal::SIGKILL);
    }
    let mut want = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let (lease, outage) = acquire_retrying(node, &format!("after-two-lost-{i}")).await;
        if i == 0 {
            println!(
                "5 voters, leader + 1 lost: first write after {} ms",
                outage.as_millis()
            );
        }
        want.insert(lease.node, lease.subnet.to_string());
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    converged(&refs, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_far_behind_catches_up_by_snapshot() {
    let cluster = Cluster::new();
    let opts = ["--snapshot-every", "10", "--snapshot-keep", "0"];
    let (a0, a1, a2) = (free_addr(), free_addr(), free_addr());
    let n0 = cluster.start("s0", &a0, &[], &opts);
    let n1 = cluster.start("s1", &a1, &[&a0], &opts);
    let mut n2 = cluster.start("s2", &a2, &[&a0], &opts);
    wait_cluster(&n0, "3 voters", |c| voter_count(c) == 3).await;
    let applied_before = status(&n2).await.and_then(|c| c.last_applied).unwrap_or(0);
    n2.proc.signal(Signal::SIGKILL);
    drop(n2);

    let mut want = BTreeMap::new();
    for i in 0..60 {
        let (lease, _) = n0
            .client()
            .acquire(&format!("behind-{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        want.insert(lease.node, lease.subnet.to_string());
    }
    // The leader's log no longer holds what s2 is missing: only a snapshot can bring it back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while purged_index(&n0).await <= applied_before + 1 {
        assert!(Instant::now() < deadline, "leader never purged its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n2 = cluster.start("s2", &a2, &[&a0], &opts);
    converged(&[&n0, &n1, &n2], &want).await;
    n2.proc.assert_no_panics();
}

#[test]
fn join_to_an_unreachable_address_retries_with_backoff() {
    let cluster = Cluster::new();
    let nobody = free_addr(); // nothing listens here
    let addr = free_addr();
    let mut child = cluster
        .command(
            "lonely",
            &addr,
            &[&nobody],
            &["--ca-hash", &format!("sha256:{}", "0".repeat(64))],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut retries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while retries.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "join: cannot join through this peer yet" {
                assert_eq!(v["fields"]["peer"], nobody.as_str(), "{line}");
                retries.push(
                    v["fields"]["retry_in"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    }
    let still_running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "evio-node gave up instead of retrying");
    // backing off: 250ms, 500ms, 1s
    assert_eq!(retries, ["250ms", "500ms", "1s"], "{retries:?}");
}

/// Leases whose snapshot, as earlier versions sent it (JSON numbers, ~330 bytes a lease),
/// is well over the 2 MiB Raft body limit: a member joining at this size never caught up.
const BIG_TABLE: usize = 12_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_joins_a_table_too_big_for_one_json_snapshot() {
    use futures::StreamExt;

    // Small chunks, so this table (~300 KiB in the binary format) crosses several of them.
    let opts = ["--snapshot-chunk-kib", "64"];
    let cluster = Cluster::new().with_pool("10.0.0.0/8", 16);
    let nodes = cluster.three(&opts).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = evio_test_support::cluster::leader(&refs).await;
    let client = leader.client();
    let failures = futures::stream::iter(0..BIG_TABLE)
        .map(|i| {
            let client = client.clone();
            async move {
                // A burst this size on a loaded host may outlast a heartbeat window and cost
                // an election; a client retries the 503 (an acquire by name is idempotent).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    match client.acquire(&format!("big-{i}"), None).await {
                        Err(e)
                            if e.status() == Some(503) && std::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await
                        }
                        result => return result.err(),
                    }
                }
            }
        })
        .buffer_unordered(32)
        .filter_map(|failed| async move { failed })
        .collect::<Vec<_>>()
        .await;
    assert!(
        failures.is_empty(),
        "{} acquires failed: {:?}",
        failures.len(),
        failures.first()
    );
    // Compacted: the joiner can only catch up by snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    while purged_index(leader).await == 0 {
        assert!(Instant::now() < deadline, "leader never purged its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let addr = free_addr();
    let joins: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let joiner = cluster.start("big-d", &addr, &joins, &opts);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = joiner
            .client()
            .list_leases(Consistency::Local)
            .await
            .map(|l| l.len())
            .unwrap_or(0);
        if held == BIG_TABLE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the joiner holds {held} of {BIG_TABLE} leases:\n{}",
            joiner.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = joiner.proc.logs();
    let installed = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "snapshot installed")
        .unwrap_or_else(|| panic!("the joiner installed no snapshot:\n{logs}"));
    let bytes = installed["fields"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 2 * 64 * 1024,
        "a snapshot of {bytes} bytes crossed no chunk boundary"
    );
    // Most of the table came in the snapshot (the rest from the log after it).
    let in_snapshot = installed["fields"]["leases"].as_u64().unwrap_or(0);
    assert!(
        in_snapshot > BIG_TABLE as u64 / 2,
        "the snapshot held {in_snapshot} leases"
    );
    let c = status(&joiner)
        .await
        .unwrap_or_else(|| panic!("joiner status"));
    assert_eq!(c.members.len(), 4, "{c:#?}");
    joiner.proc.assert_no_panics();
}

/// `evio-node config-gen` offline on `data`'s replica (the daemon dead, no member to ask):
/// the node subnet it wrote for `node`, or its error.
fn offline_config_gen(cluster: &Cluster, data: &Path, node: &str) -> Result<String, String> {
    let net_conf = cluster.path("net-conf.json");
    std::fs::write(
        &net_conf,
        r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"evioPlugin","bridge":"evioB1","bridgeType":"LXBR","podCIDR":"10.244.0.0/16","nodeBits":"8"}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conf_dir = cluster.path(&format!("net.d-{node}"));
    let args = [
        "config-gen",
        "--net-conf",
        &net_conf.to_string_lossy(),
        "--cni-conf-dir",
        &conf_dir.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
        "--node-name",
        node,
        "--deadline",
        "1s",
    ];
    let out = evio_node(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let bytes = std::fs::read(conf_dir.join("10-evio.conflist")).unwrap_or_else(|e| panic!("{e}"));
    let conflist: serde_json::Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
    Ok(conflist["plugins"][0]["nodeSubnet"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Durability of the commit point: the leader SIGKILLed right after acknowledging a lease
/// still has it on disk for the init container (offline config-gen). Earlier the commit
/// index was written but not flushed, so config-gen ignored the last entries as possibly
/// uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_lease_survives_a_sigkill_of_the_leader_for_config_gen() {
    let cluster = Cluster::new();
    let mut nodes = cluster.three(&[]).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader_name = evio_test_support::cluster::leader(&refs).await.name.clone();
    let at = nodes
        .iter()
        .position(|n| n.name == leader_name)
        .unwrap_or_else(|| panic!("leader {leader_name} not found"));
    // 8 clients at once, so the last entries commit together; every acknowledgement counts.
    let client = nodes[at].client();
    let acked: Vec<evio_api::LeaseJson> = futures::future::join_all((0..8).map(|c| {
        let client = client.clone();
        async move {
            let mut last = None;
            for i in 0..5 {
                let (lease, _) = client
                    .acquire(&format!("acked-{c}-{i}"), None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                last = Some(lease);
            }
            last.unwrap_or_else(|| panic!("no lease"))
        }
    }))
    .await;
    // Right after the acknowledgements: no time for a background flush.
    nodes[at].proc.signal(Signal::SIGKILL);
    for lease in acked {
        let subnet = offline_config_gen(&cluster, &cluster.path(&leader_name), &lease.node)
            .unwrap_or_else(|e| {
                panic!(
                    "config-gen lost the acknowledged lease of {}: {e}",
                    lease.node
                )
            });
        assert_eq!(subnet, lease.subnet.to_string());
    }
}

/// A member that stops answering (SIGSTOP: a pause or a partition) keeps its name while the
/// leader heard from it within --voter-grace: a second node under that name is told to wait
/// (503, retried), not admitted in its place. Earlier one failed 2 s probe evicted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_name_join_never_evicts_a_member_heard_within_the_grace() {
    let cluster = Cluster::new(); // --voter-grace 60s
    let mut nodes = cluster.three(&[]).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader_name = evio_test_support::cluster::leader(&refs).await.name.clone();
    let victim = nodes
        .iter()
        .position(|n| n.name != leader_name)
        .unwrap_or_else(|| panic!("no follower"));
    let asker = nodes
        .iter()
        .position(|n| n.name == leader_name)
        .unwrap_or_else(|| panic!("no leader"));
    let victim_name = nodes[victim].name.clone();
    let victim_id = status(&nodes[victim])
        .await
        .map(|c| c.node_id)
        .unwrap_or_else(|| panic!("victim status"));
    let pid = nix::unistd::Pid::from_raw(nodes[victim].proc.child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap_or_else(|e| panic!("{e}"));

    let joins: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let mut twin = cluster
        .command_in(&victim_name, "twin", &free_addr(), &joins, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Several admission attempts, each with a failed probe of the paused member.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let c = status(&nodes[asker])
        .await
        .unwrap_or_else(|| panic!("leader status"));
    let _ = twin.kill();
    let _ = twin.wait();
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.members.iter().any(|m| m.id == victim_id),
        "the paused member {victim_name} was evicted: {c:#?}"
    );
    assert_eq!(
        c.members.iter().filter(|m| m.name == victim_name).count(),
        1,
        "{c:#?}"
    );
    nodes[victim].proc.assert_no_panics();
    for n in &mut nodes {
        n.proc.assert_no_panics();
    }
}
