//! The etcd mirror and the importer against a real etcd (Debian `etcd-server`, started here
//! on free 127.0.0.1 ports with its own data dir and killed afterwards) and real
//! `evio-node run` processes: keys appear in the original Evio layout and disappear on
//! release; with etcd down, leases are still granted; after etcd comes back and the leader
//! changed, the new leader reconciles etcd; wrong credentials leave the mirror unhealthy and
//! nothing else; ranges written in the original layout are imported and claimed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use evio_api::{Client, Consistency};
use evio_test_support::cluster::{Cluster, Node};
use evio_test_support::etcd::Etcd;
use evio_test_support::evio_node;
use evio_test_support::have;
use nix::sys::signal::Signal;

fn original_key(block: u8) -> String {
    format!("/evpn/10.244.{block}.2,10.244.{block}.254,10.244.{block}.1/16")
}

/// Waits until etcd's keys under `/evpn/` and `/evio/leases/` are exactly `want`
/// (lease JSON values are checked for their subnet only).
async fn etcd_holds(etcd: &Etcd, want: &BTreeMap<String, String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = etcd.dump("/evpn/").await;
        for (key, value) in etcd.dump("/evio/leases/").await {
            let subnet = serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| v["subnet"].as_str().map(str::to_string))
                .unwrap_or(value);
            got.insert(key, subnet);
        }
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: etcd holds {got:#?}, want {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expect(leases: &[(&str, u8)]) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    for (node, block) in leases {
        want.insert(original_key(*block), "ok".to_string());
        want.insert(
            format!("/evio/leases/{node}"),
            format!("10.244.{block}.0/24"),
        );
    }
    want
}

/// A TLS cluster to start members in and a real etcd named `name` in its dir; `None`
/// (skipped, or failed under CI) without etcd.
fn cluster_and_etcd(name: &str) -> Option<(Cluster, Etcd)> {
    if !have("etcd", "etcd-server") {
        return None;
    }
    let cluster = Cluster::new();
    let etcd = Etcd::start(cluster.dir.path(), name);
    Some((cluster, etcd))
}

/// A single member bootstrapping a cluster that mirrors to `etcd`.
fn mirroring_solo(cluster: &Cluster, etcd: &Etcd) -> Node {
    let addr = evio_test_support::cluster::free_addr();
    cluster.start("solo", &addr, &[], &["--etcd-endpoints", &etcd.client_url])
}

/// `evio-node import-etcd` from etcd into `node`, as run on that member.
fn import_etcd(cluster: &Cluster, node: &Node, etcd: &Etcd) -> std::process::Output {
    let mut args = vec![
        "import-etcd".to_string(),
        "--endpoints".into(),
        etcd.client_url.clone(),
    ];
    args.extend(node.cli_args(cluster));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    evio_node(&args).output().unwrap_or_else(|e| panic!("{e}"))
}

async fn mirror_of(node: &Node) -> evio_api::EtcdMirrorJson {
    let c = node
        .client()
        .cluster()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.etcd_mirror
        .unwrap_or_else(|| panic!("no etcdMirror in /v1/cluster of {}", node.name))
}

async fn wait_mirror(node: &Node, what: &str, check: impl Fn(&evio_api::EtcdMirrorJson) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = mirror_of(node).await;
        if check(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {m:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_follows_leases_and_reconciles_after_outage_and_leader_change() {
    let Some((cluster, mut etcd)) = cluster_and_etcd("mirror") else {
        return;
    };
    // A key of the original tool's own (its lock) must survive every reconcile.
    etcd.put("/evpn/evio-lock/694d", "x").await;
    let endpoints = etcd.client_url.clone();
    let mut nodes = cluster.three(&["--etcd-endpoints", &endpoints]).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = evio_test_support::cluster::leader(&refs).await;
    evio_test_support::cluster::acquire(leader, "n0").await;
    evio_test_support::cluster::acquire(leader, "n1").await;
    let mut want = expect(&[("n0", 0), ("n1", 1)]);
    want.insert("/evpn/evio-lock/694d".into(), "x".into());
    etcd_holds(&etcd, &want, "after two acquires").await;
    let raw = etcd.dump("/evio/leases/n1").await;
    let json: serde_json::Value =
        serde_json::from_str(raw.values().next().map_or("", String::as_str)).unwrap_or_default();
    assert_eq!(json["rangeStart"], "10.244.1.2");
    assert_eq!(json["gateway"], "10.244.1.1");

    leader
        .client()
        .release("n1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    want = expect(&[("n0", 0)]);
    want.insert("/evpn/evio-lock/694d".into(), "x".into());
    etcd_holds(&etcd, &want, "after releasing n1").await;
    wait_mirror(leader, "healthy, caught up", |m| {
        m.active && m.healthy && m.lag_revisions == 0 && m.last_sync_at.is_some()
    })
    .await;
    // The status page reads the same state from this member's node.
    let node = leader
        .client()
        .node()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        node.etcd_mirror
            .as_ref()
            .is_some_and(|m| m.active && m.last_sync_at.is_some()),
        "{node:#?}"
    );
    for follower in refs.iter().filter(|n| n.name != leader.name) {
        let m = mirror_of(follower).await;
        assert!(!m.active, "{}: a follower mirrors: {m:#?}", follower.name);
    }
    let metrics = leader.metrics().await;
    assert!(metrics.contains("evio_etcd_mirror_healthy 1"), "{metrics}");
    assert!(
        metrics.contains("evio_etcd_mirror_lag_revisions 0"),
        "{metrics}"
    );

    // etcd down: leases are still granted, the mirror says it is behind and unhealthy.
    etcd.kill();
    evio_test_support::cluster::acquire(leader, "n2").await;
    leader
        .client()
        .release("n0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_mirror(leader, "unhealthy and behind", |m| {
        !m.healthy && m.lag_revisions > 0 && m.last_error.is_some()
    })
    .await;

    // The leader dies while etcd is down; etcd comes back; the new leader reconciles.
    let old_leader = leader.name.clone();
    let index = nodes.iter().position(|n| n.name == old_leader).unwrap_or(0);
    nodes[index].proc.signal(Signal::SIGKILL);
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.name != old_leader).collect();
    let new_leader = evio_test_support::cluster::leader(&survivors).await;
    assert_ne!(new_leader.name, old_leader);
    evio_test_support::cluster::acquire(new_leader, "n3").await;
    etcd.restart();
    // n0 released, n1 released, n2 at block 1 (lowest free then), n3 at block 0.
    let mut want = expect(&[("n2", 1), ("n3", 0)]);
    want.insert("/evpn/evio-lock/694d".into(), "x".into());
    etcd_holds(&etcd, &want, "after etcd came back under a new leader").await;
    wait_mirror(new_leader, "new leader healthy", |m| {
        m.active && m.healthy && m.lag_revisions == 0
    })
    .await;
    for node in &survivors {
        node.proc.assert_no_panics();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_leave_the_mirror_unhealthy_and_nothing_else() {
    let Some((cluster, etcd)) = cluster_and_etcd("auth") else {
        return;
    };
    {
        // etcd's auth API, through the same JSON gateway evio uses.
        let admin = etcd.client().await;
        for (path, body) in [
            (
                "/v3/auth/user/add",
                serde_json::json!({"name": "root", "password": "right-password"}),
            ),
            (
                "/v3/auth/user/grant",
                serde_json::json!({"user": "root", "role": "root"}),
            ),
            ("/v3/auth/enable", serde_json::json!({})),
        ] {
            let _: serde_json::Value = admin
                .call(path, &body)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
    std::fs::write(cluster.path("username"), "root\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(cluster.path("password"), "wrong-password\n").unwrap_or_else(|e| panic!("{e}"));
    let user = cluster.path("username").to_string_lossy().to_string();
    let password = cluster.path("password").to_string_lossy().to_string();
    let addr = evio_test_support::cluster::free_addr();
    let node = cluster.start(
        "solo",
        &addr,
        &[],
        &[
            "--etcd-endpoints",
            &etcd.client_url,
            "--etcd-username-file",
            &user,
            "--etcd-password-file",
            &password,
        ],
    );
    let lease = evio_test_support::cluster::acquire(&node, "n0").await;
    assert_eq!(lease.subnet.to_string(), "10.244.0.0/24");
    wait_mirror(&node, "unhealthy with the refusal", |m| {
        !m.healthy
            && m.last_error.as_deref().is_some_and(|e| {
                e.contains("auth") || e.contains("password") || e.contains("authentication")
            })
    })
    .await;
    assert!(node.proc.logs().contains("etcd mirror: etcd unavailable"));
    // The lease API is unaffected.
    let leases = node
        .client()
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_ranges_are_imported_reserved_and_claimed() {
    let Some((cluster, etcd)) = cluster_and_etcd("import") else {
        return;
    };
    let addr = evio_test_support::cluster::free_addr();
    let node = cluster.start("solo", &addr, &[], &[]);
    // A node evio already knows holds block 0 (the original tool never used block 0).
    evio_test_support::cluster::acquire(&node, "known").await;
    // What the original tool left behind: its lock, three ranges, and a range of another pool.
    etcd.put("/evpn/evio-lock/1234", "lock").await;
    for block in [0u8, 3, 7] {
        etcd.put(&original_key(block), "ok").await;
    }
    etcd.put("/evpn/10.9.1.2,10.9.1.254,10.9.1.1/16", "ok")
        .await;

    let import = || import_etcd(&cluster, &node, &etcd);
    let out = import();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // Two ranges could not be imported (block 0 is known's, 10.9.1.0 is outside): reported.
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("2 of 5 keys"), "{stderr}");
    assert!(stdout.contains("imported  /evpn/10.244.3.2"), "{stdout}");
    assert!(stdout.contains("imported  /evpn/10.244.7.2"), "{stdout}");
    assert!(stdout.contains("already leased to known"), "{stdout}");
    assert!(stdout.contains("outside the pool"), "{stdout}");
    assert!(
        stdout.contains("ignored   /evpn/evio-lock/1234"),
        "{stdout}"
    );

    let client: Client = node.client();
    let leases: BTreeMap<String, String> = client
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| (l.node, l.subnet.to_string()))
        .collect();
    let legacy3 = "legacy:10.244.3.2-10.244.3.254";
    let legacy7 = "legacy:10.244.7.2-10.244.7.254";
    assert_eq!(
        leases.get(legacy3).map(String::as_str),
        Some("10.244.3.0/24")
    );
    assert_eq!(
        leases.get(legacy7).map(String::as_str),
        Some("10.244.7.0/24")
    );
    // Re-import: the same, nothing new.
    let again = import();
    let stdout = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(stdout.contains("present   /evpn/10.244.3.2"), "{stdout}");
    assert_eq!(
        client
            .list_leases(Consistency::Linearizable)
            .await
            .map(|l| l.len())
            .ok(),
        Some(3)
    );
    // New nodes never get a reserved block.
    for name in ["new-1", "new-2", "new-3"] {
        let lease = evio_test_support::cluster::acquire(&node, name).await;
        assert!(!["10.244.3.0/24", "10.244.7.0/24"].contains(&lease.subnet.to_string().as_str()));
    }
    // Claim: edge-7 takes the range it had under the original tool.
    let mut claim = vec!["leases", "claim", "edge-7", "--from", legacy7, "-o", "json"];
    let member = node.cli_args(&cluster);
    claim.extend(member.iter().map(String::as_str));
    evio_test_support::output_ok(&mut evio_node(&claim));
    let claimed = client
        .get_lease("edge-7", Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("edge-7 holds no lease"));
    assert_eq!(claimed.subnet.to_string(), "10.244.7.0/24");
    assert_eq!(
        client
            .get_lease(legacy7, Consistency::Linearizable)
            .await
            .ok(),
        Some(None)
    );
    // Claiming again (the source is gone) or into a node that holds a lease is refused.
    let err = client
        .claim("edge-8", legacy7)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let err = client
        .claim("known", legacy3)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    // Without a certificate, nothing changes.
    evio_test_support::cluster::refused(
        node.anonymous_client().claim("edge-9", legacy3).await,
        evio_api::ErrorCode::CertificateRequired,
    );
    // An operator can release a reservation.
    client
        .release(legacy3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        client
            .get_lease(legacy3, Consistency::Linearizable)
            .await
            .ok(),
        Some(None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_is_fenced_off_by_the_term_key() {
    let Some((cluster, etcd)) = cluster_and_etcd("fence") else {
        return;
    };
    // As if a leader of a much later term had mirrored already.
    etcd.put("/evio/mirror/term", &format!("{:020}", u64::MAX / 2))
        .await;
    let node = mirroring_solo(&cluster, &etcd);
    evio_test_support::cluster::acquire(&node, "n0").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.proc.logs().contains("a later leader wrote etcd") {
        assert!(
            Instant::now() < deadline,
            "not fenced:\n{}",
            node.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(etcd.dump("/evio/leases/").await.is_empty());
    assert!(etcd.dump("/evpn/").await.is_empty());
    // Once the later term is gone, this leader mirrors again.
    etcd.delete("/evio/mirror/term").await;
    etcd_holds(&etcd, &expect(&[("n0", 0)]), "after the fence was lifted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_and_claimed_ranges_are_mirrored_under_their_owner() {
    let Some((cluster, etcd)) = cluster_and_etcd("claim") else {
        return;
    };
    let node = mirroring_solo(&cluster, &etcd);
    evio_test_support::cluster::acquire(&node, "known").await;
    etcd_holds(&etcd, &expect(&[("known", 0)]), "known mirrored").await;
    etcd.put(&original_key(4), "ok").await;
    let out = import_etcd(&cluster, &node, &etcd);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    // The key evio's own mirror wrote for `known` is recognised, not a conflict.
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mirrored by evio for known"), "{stdout}");
    let legacy = "legacy:10.244.4.2-10.244.4.254";
    etcd_holds(
        &etcd,
        &expect(&[("known", 0), (legacy, 4)]),
        "reservation mirrored",
    )
    .await;
    node.client()
        .claim("edge-4", legacy)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    etcd_holds(
        &etcd,
        &expect(&[("known", 0), ("edge-4", 4)]),
        "claim mirrored",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_over_tls_with_a_client_certificate() {
    if !have("etcd", "etcd-server") || !have("openssl", "openssl") {
        return;
    }
    let cluster = Cluster::new();
    let tls = evio_test_support::etcd::TlsFiles::make(cluster.dir.path());
    let etcd = Etcd::start_tls(cluster.dir.path(), "tls", tls.clone());
    let arg = |p: &std::path::Path| p.to_string_lossy().to_string();
    let (ca, cert, key) = (arg(&tls.ca), arg(&tls.client_cert), arg(&tls.client_key));
    let node = cluster.start(
        "solo",
        &evio_test_support::cluster::free_addr(),
        &[],
        &[
            "--etcd-endpoints",
            &etcd.client_url,
            "--etcd-ca-file",
            &ca,
            "--etcd-cert-file",
            &cert,
            "--etcd-key-file",
            &key,
        ],
    );
    evio_test_support::cluster::acquire(&node, "n0").await;
    etcd_holds(&etcd, &expect(&[("n0", 0)]), "mirrored over TLS").await;
    wait_mirror(&node, "healthy over TLS", |m| {
        m.healthy && m.lag_revisions == 0
    })
    .await;
}
