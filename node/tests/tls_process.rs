//! Mutual TLS with real `evio-node run` processes on 127.0.0.1: operator-supplied
//! certificates (no CA key on any member), renewal in place with short lifetimes, the token
//! file refused when others can read it or it is too short, and a removed member's
//! certificate revoked everywhere. (The cluster CA made by
//! the bootstrap member, joins by token and CA file, and the refused peers are exercised by
//! every test built on `evio_test_support::cluster`, which runs with TLS.)

use std::time::{Duration, Instant};

use evio_api::Consistency;
use evio_raft::tls::{self, Authority};
use evio_test_support::cluster::{
    acquire, free_addr, local_has, refused, wait_cluster, write_token, Cluster, Node, TOKEN,
};
use evio_test_support::evio_node;

/// Writes a key and an operator-issued certificate naming `id` and `name` into `dir`.
fn issue(ca: &Authority, dir: &std::path::Path, id: u64, name: &str) -> (String, String) {
    let (key, csr) = tls::new_key_and_request(id, name).unwrap_or_else(|e| panic!("{e}"));
    let cert = ca
        .sign_request(&csr, id, name, Duration::from_secs(3600))
        .unwrap_or_else(|e| panic!("{e}"));
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert).unwrap_or_else(|e| panic!("{e}"));
    evio_raft::data_dir::write_atomic(&key_path, key.as_bytes(), 0o600)
        .unwrap_or_else(|e| panic!("{e}"));
    (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_supplied_certificates_form_a_cluster_without_a_ca_key() {
    let cluster = Cluster::new();
    let ca = Authority::generate("operator").unwrap_or_else(|e| panic!("{e}"));
    let ca_file = cluster.path("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap_or_else(|e| panic!("{e}"));
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let (a_cert, a_key) = issue(&ca, cluster.dir.path(), 11, "op-a");
    let (b_cert, b_key) = issue(&ca, cluster.dir.path(), 12, "op-b");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let files = |cert: &str, key: &str| {
        [
            "--ca-file".to_string(),
            ca_arg.clone(),
            "--cert-file".into(),
            cert.into(),
            "--key-file".into(),
            key.into(),
        ]
    };
    let a_files = files(&a_cert, &a_key);
    let a_extra: Vec<&str> = a_files.iter().map(String::as_str).collect();
    let a = cluster.start("op-a", &a_addr, &[], &a_extra);
    let b_files = files(&b_cert, &b_key);
    let b_extra: Vec<&str> = b_files.iter().map(String::as_str).collect();
    // Joiners name their trust themselves here (the helper adds --ca-file otherwise).
    let b = cluster.start_with(
        cluster.command("op-b", &b_addr, &[&a_addr], &b_extra),
        "op-b",
        &b_addr,
    );
    let c = wait_cluster(&a, "two members", |c| c.members.len() == 2).await;
    // The node ids are the certificates'.
    let mut ids: Vec<u64> = c.members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![11, 12]);
    // The CLI's way from outside: the operator's files.
    let config = tls::Credentials::load(
        &ca_file,
        std::path::Path::new(&b_cert),
        std::path::Path::new(&b_key),
    )
    .and_then(|c| c.client_config())
    .unwrap_or_else(|e| panic!("{e}"));
    let b_client = evio_api::Client::new(&b.proc.base)
        .and_then(|c| c.with_tls(config))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut deadline = Instant::now() + Duration::from_secs(30);
    let lease = loop {
        match b_client.acquire("from-b", None).await {
            Ok((lease, _)) => break lease,
            Err(e) => assert!(Instant::now() < deadline, "acquire: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    deadline = Instant::now() + Duration::from_secs(30);
    while a
        .proc
        .client(None)
        .get_lease("from-b", evio_api::Consistency::Local)
        .await
        .ok()
        .flatten()
        .map(|l| l.subnet)
        != Some(lease.subnet)
    {
        assert!(Instant::now() < deadline, "a never saw b's write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No CA key on any member: nothing in their data dirs but what they were given.
    for name in ["op-a", "op-b"] {
        assert!(
            !cluster.path(name).join("tls").exists(),
            "{name} made a PKI of its own"
        );
    }
    // A member whose data dir belongs to another id than its certificate names is refused.
    let out = evio_node(&[
        "run",
        "--node-name",
        "op-a",
        "--data-dir",
        &cluster.path("op-a").to_string_lossy(),
        "--listen",
        &free_addr(),
        "--pod-cidr",
        "10.244.0.0/16",
        "--node-bits",
        "8",
        "--cluster-token-file",
        &cluster.token_arg(),
        "--cni-socket",
        &cluster.path("op-a2.sock").to_string_lossy(),
        "--join",
        &b_addr,
        "--ca-file",
        &ca_arg,
        "--cert-file",
        &b_cert,
        "--key-file",
        &b_key,
    ])
    .output()
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node id 12"), "{stderr}");
    a.proc.assert_no_panics();
    b.proc.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_without_a_restart() {
    let cluster = Cluster::new();
    let extra = ["--cert-lifetime", "6s"];
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = cluster.start("rn-a", &a_addr, &[], &extra);
    let b = cluster.start("rn-b", &b_addr, &[&a_addr], &extra);
    wait_cluster(&a, "two members", |c| c.members.len() == 2).await;
    let cert_path = |name: &str| cluster.path(name).join("tls").join("node.pem");
    let first = std::fs::read(cert_path("rn-b")).unwrap_or_else(|e| panic!("{e}"));
    // Renewal starts when 2 s are left: within a few seconds both certificates change.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(cert_path("rn-b")).ok().as_deref() == Some(first.as_slice()) {
        assert!(
            Instant::now() < deadline,
            "rn-b's certificate was never renewed:\n{}",
            b.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Long after the first certificates expired, the same processes still replicate
    // (new connections are made with the renewed certificates).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let lease = acquire(&a, "after-renewal").await;
    assert_eq!(local_has(&b, "after-renewal").await.subnet, lease.subnet);
    assert!(b.proc.logs().contains("renewed this member's certificate"));
    a.proc.assert_no_panics();
    b.proc.assert_no_panics();
}

#[test]
fn token_files_readable_by_others_or_short_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let open = dir.path().join("open");
    std::fs::write(&open, TOKEN).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let short = dir.path().join("short");
    write_token(&short, "only-20-bytes-secret");
    for (file, needle) in [(&open, "chmod 600"), (&short, "head -c 32 /dev/urandom")] {
        let data = dir.path().join("data");
        let out = evio_node(&[
            "run",
            "--node-name",
            "t",
            "--data-dir",
            &data.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--pod-cidr",
            "10.244.0.0/16",
            "--node-bits",
            "8",
            "--bootstrap",
            "--cluster-token-file",
            &file.to_string_lossy(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert!(!data.exists(), "a refused start left a data dir");
    }
}

/// A client of `to` presenting `from`'s certificate (its data dir's).
fn client_as(cluster: &Cluster, from: &str, to: &Node) -> evio_api::Client {
    let [ca, _, cert, key] = tls::managed_paths(&cluster.path(from).join(tls::TLS_DIR));
    let credentials = tls::Credentials::load(&ca, &cert, &key).unwrap_or_else(|e| panic!("{e}"));
    let config = credentials
        .client_config()
        .unwrap_or_else(|e| panic!("{e}"));
    evio_api::Client::new(&to.proc.base)
        .and_then(|c| c.with_tls(config))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An error with every source it carries (what the CLI prints).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `evio-node cluster remove`: the removed member's certificate is refused by every member
/// from then on (writes, Raft RPC, a certificate for its node id), nothing changes, and the
/// node comes back with a wiped data dir as a new node id with a fresh certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_certificate_is_revoked_and_a_wiped_rejoin_works() {
    let cluster = Cluster::new();
    let mut nodes = cluster.three(&[]).await;
    acquire(&nodes[0], "before").await;
    // Removed by name through the CLI on a's node, as an operator would: b or c, whichever
    // is not the leader (the leader cannot remove itself, and leadership may move under
    // load); a stays, as joiners trust its data dir's CA file.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (victim_name, old_id) = loop {
        let status = nodes[0].client().cluster().await.ok();
        let candidate = status.as_ref().and_then(|c| {
            c.members
                .iter()
                .find(|m| m.name != "a" && Some(m.id) != c.leader_id)
        });
        if let Some(m) = candidate {
            let mut args = vec!["cluster".to_string(), "remove".into(), m.name.clone()];
            args.extend(nodes[0].cli_args(&cluster));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = evio_node(&args).output().unwrap_or_else(|e| panic!("{e}"));
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            if out.status.success() {
                assert!(
                    stdout.contains(&format!("removed {}", m.name)) && stdout.contains("revoked"),
                    "{stdout}"
                );
                break (m.name.clone(), m.id);
            }
            assert!(
                stderr.contains("is the leader") && Instant::now() < deadline,
                "{stderr}"
            );
        }
        assert!(Instant::now() < deadline, "no member to remove: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let victim_at = nodes
        .iter()
        .position(|n| n.name == victim_name)
        .unwrap_or_else(|| panic!("{victim_name} gone"));
    let victim = nodes.remove(victim_at);
    let a = &nodes[0];
    wait_cluster(a, "the victim gone", |c| {
        c.members.iter().all(|m| m.id != old_id)
    })
    .await;

    // Every remaining member refuses the victim's certificate, with a clear reason on both
    // sides, and nothing changes.
    let leases_before = a
        .client()
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for member in &nodes {
        let member_sees_revocation = || async {
            let intruder = client_as(&cluster, &victim.name, member);
            intruder.acquire("intruder", None).await
        };
        // Applied on this member a moment after the leader committed it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = loop {
            match member_sees_revocation().await {
                Err(e) if chain(&e).contains("CertificateRevoked") => break e,
                other => assert!(
                    Instant::now() < deadline,
                    "{}: the removed member's certificate still works: {other:?}",
                    member.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            chain(&err).contains("CertificateRevoked"),
            "{}",
            chain(&err)
        );
        // The server's log line (read from its stderr a moment later).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !member
            .proc
            .logs()
            .contains("the member was removed from the cluster")
        {
            assert!(
                Instant::now() < deadline,
                "{}: no refusal logged:\n{}",
                member.name,
                member.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The CLI on the removed node says why, and what to do.
    let victim_data = cluster.path(&victim.name).to_string_lossy().into_owned();
    let out = evio_node(&[
        "leases",
        "acquire",
        "intruder",
        "--data-dir",
        &victim_data,
        "--api",
        &a.proc.base,
    ])
    .output()
    .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("removed from the cluster")
            && stderr.contains("wipe its data dir"),
        "{stderr}"
    );
    let leases_after = a
        .client()
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        leases_before, leases_after,
        "a refused write changed the leases"
    );

    // The token does not buy a new certificate for the revoked node id either.
    let (_, csr) = tls::new_key_and_request(old_id, &victim.name).unwrap_or_else(|e| panic!("{e}"));
    let request = evio_api::types::CertificateRequest {
        node_id: old_id,
        name: victim.name.clone(),
        csr,
    };
    let token_holder = a.anonymous_client().with_token(Some(TOKEN.to_string()));
    let err = refused(
        token_holder.certificate(&request).await.map(|_| ()),
        evio_api::ErrorCode::CertificateRefused,
    );
    assert!(err.to_string().contains("revoked"), "{err}");

    // Back with a wiped data dir: a new node id, a fresh certificate, a member again.
    drop(victim);
    std::fs::remove_dir_all(cluster.path(&victim_name)).unwrap_or_else(|e| panic!("{e}"));
    let back = cluster.start(&victim_name, &free_addr(), &[&a.addr], &[]);
    let status = wait_cluster(a, "the wiped node back", |c| {
        c.members
            .iter()
            .any(|m| m.name == victim_name && m.id != old_id)
    })
    .await;
    assert!(status.members.iter().all(|m| m.id != old_id));
    acquire(&back, "after-rejoin").await;
    back.proc.assert_no_panics();
    for member in &nodes {
        member.proc.assert_no_panics();
    }
}
