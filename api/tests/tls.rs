//! Mutual TLS between real members (replica + API listener on loopback): the certificate
//! exchange a joining node makes, replication over TLS, and every refusal of issue 13's
//! "Bad input" list, each with nothing changed.

mod common;

use std::time::Duration;

use common::{pool, Member, TOKEN};
use evio_api::tls::{self, Authority, Credentials, Trust};
use evio_api::types::{CertificateRequest, ErrorCode};
use evio_api::{Client, ClientError, Consistency};
use evio_raft::JoinRequest;

/// A bootstrapped TLS member leading its cluster, with its CA.
async fn first(name: &str) -> Member {
    let member = Member::start_tls(name, pool("10.244.0.0/16", 8)).await;
    let tls = member.replica.peers().tls().cloned();
    let tls = tls.unwrap_or_else(|| panic!("member without TLS"));
    tls.create_authority("test", member.replica.node_id(), name)
        .unwrap_or_else(|e| panic!("create CA: {e}"));
    member.lead().await
}

fn ca_hash(member: &Member) -> String {
    let tls = member.replica.peers().tls().cloned();
    let tls = tls.unwrap_or_else(|| panic!("member without TLS"));
    let ca = tls.authority().unwrap_or_else(|e| panic!("{e}"));
    ca.hash()
}

/// A client trusting `trust`, presenting `credentials` when given.
fn client(member: &Member, trust: Trust, credentials: Option<&Credentials>) -> Client {
    let config = match credentials {
        Some(c) => c.client_config(),
        None => tls::anonymous_client_config(trust),
    }
    .unwrap_or_else(|e| panic!("client config: {e}"));
    Client::new(&member.base)
        .and_then(|c| c.with_tls(config))
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// What a joining node does: certificate by the token (trusting the CA hash), then the
/// join with its certificate.
async fn join(leader: &Member, joiner: &Member, name: &str) {
    let hash = ca_hash(leader);
    let (key, csr) = tls::new_key_and_request(joiner.replica.node_id(), name)
        .unwrap_or_else(|e| panic!("csr: {e}"));
    let issued = client(leader, Trust::CaHash(hash), None)
        .with_token(Some(TOKEN.into()))
        .certificate(&CertificateRequest {
            node_id: joiner.replica.node_id(),
            name: name.into(),
            csr,
        })
        .await
        .unwrap_or_else(|e| panic!("certificate: {e}"));
    let tls = joiner.replica.peers().tls().cloned();
    let tls = tls.unwrap_or_else(|| panic!("member without TLS"));
    tls.store_managed(
        &issued.ca,
        issued.ca_key.as_deref(),
        &issued.certificate,
        &key,
    )
    .unwrap_or_else(|e| panic!("store: {e}"));
    let credentials = tls.credentials().unwrap_or_else(|e| panic!("{e}"));
    let response = client(leader, Trust::CaHash(ca_hash(leader)), Some(&credentials))
        .join(&JoinRequest {
            node_id: joiner.replica.node_id(),
            name: name.into(),
            addr: joiner.replica.node().addr.clone(),
            pod_cidr: "10.244.0.0/16".into(),
            node_bits: 8,
        })
        .await
        .unwrap_or_else(|e| panic!("join: {e}"));
    joiner
        .replica
        .set_cluster_id(&response.cluster_id)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A certificate request for `node_id`/`name` with a fresh key (the key is not needed).
fn certificate_request(node_id: u64, name: &str) -> CertificateRequest {
    let (_, csr) = tls::new_key_and_request(node_id, name).unwrap_or_else(|e| panic!("{e}"));
    CertificateRequest {
        node_id,
        name: name.into(),
        csr,
    }
}

/// Credentials for `node_id`/`name` issued by `member`'s cluster CA, valid for `lifetime`.
fn issued_by(member: &Member, node_id: u64, name: &str, lifetime: Duration) -> Credentials {
    let tls = member.replica.peers().tls().cloned();
    let tls = tls.unwrap_or_else(|| panic!("member without TLS"));
    let authority = tls.authority().unwrap_or_else(|e| panic!("{e}"));
    let (key, csr) = tls::new_key_and_request(node_id, name).unwrap_or_else(|e| panic!("{e}"));
    let cert = authority
        .sign_request(&csr, node_id, name, lifetime)
        .unwrap_or_else(|e| panic!("{e}"));
    Credentials::from_pem(authority.cert_pem(), &cert, &key).unwrap_or_else(|e| panic!("{e}"))
}

fn member_credentials(member: &Member) -> Credentials {
    let tls = member.replica.peers().tls().cloned();
    let tls = tls.unwrap_or_else(|| panic!("member without TLS"));
    tls.credentials().unwrap_or_else(|e| panic!("{e}"))
}

/// The members' lease count as `member` reads it locally.
async fn leases(member: &Member) -> usize {
    let creds = member_credentials(member);
    client(member, Trust::CaHash(ca_hash(member)), Some(&creds))
        .list_leases(Consistency::Local)
        .await
        .map(|l| l.len())
        .unwrap_or_else(|e| panic!("list: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn members_join_by_token_and_ca_hash_and_replicate_over_mutual_tls() {
    let a = first("tls-a").await;
    let b = Member::start_tls("tls-b", pool("10.244.0.0/16", 8)).await;
    join(&a, &b, "tls-b").await;
    // A lease written at the leader with a's certificate reaches b over TLS.
    let creds = member_credentials(&a);
    let writer = client(&a, Trust::CaHash(ca_hash(&a)), Some(&creds));
    writer
        .acquire("node-1", None)
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leases(&b).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never reached b"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b holds the CA key too: it signs the next join while a is busy or down.
    assert_eq!(ca_hash(&b), ca_hash(&a));
    // A write at b (a learner) is forwarded to the leader with b's certificate.
    let b_creds = member_credentials(&b);
    client(&b, Trust::CaHash(ca_hash(&b)), Some(&b_creds))
        .acquire("node-2", None)
        .await
        .unwrap_or_else(|e| panic!("forwarded acquire: {e}"));
    b.shutdown().await;
    a.shutdown().await;
}

/// A join for node B made with node A's certificate: the leader refuses it (403
/// `wrong_sender`); a member that is not the leader and does not know A (as a member just
/// admitted does not yet know the members forwarding to it) sends it on to the leader (503
/// `not_leader`) instead of refusing it in the cluster's name. Nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_in_another_nodes_name_is_refused_by_the_leader_and_deferred_elsewhere() {
    let a = first("tls-j").await;
    let b = Member::start_tls("tls-jb", pool("10.244.0.0/16", 8)).await;
    join(&a, &b, "tls-jb").await;
    let n17 = issued_by(&a, 17, "n17", Duration::from_secs(3600));
    let as_n18 = JoinRequest {
        node_id: 18,
        name: "n18".into(),
        addr: "127.0.0.1:9".into(),
        pod_cidr: "10.244.0.0/16".into(),
        node_bits: 8,
    };
    let members_before = a
        .replica
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .count();
    let at = |m: &Member| client(m, Trust::CaHash(ca_hash(&a)), Some(&n17));
    let err = at(&a).join(&as_n18).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WrongSender), "{err}");
    let err = at(&b).join(&as_n18).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotLeader), "{err}");
    assert_eq!(
        a.replica
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .count(),
        members_before
    );
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_leave_nothing_changed() {
    let a = first("tls-r").await;
    let hash = ca_hash(&a);
    let creds = member_credentials(&a);
    let pool_size = || async { leases(&a).await };
    let before = pool_size().await;

    // Plaintext to the TLS port: 400 tls_required, nothing served.
    let plain_base = a.base.replacen("https://", "http://", 1);
    let plain = Client::new(&plain_base)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_token(Some(TOKEN.into()));
    let err = plain.acquire("plain", None).await.map(|_| ()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TlsRequired), "{err}");

    // A TLS client without a certificate on a write route: 401 certificate_required.
    let anonymous = client(&a, Trust::CaHash(hash.clone()), None).with_token(Some(TOKEN.into()));
    let err = anonymous
        .acquire("anon", None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CertificateRequired), "{err}");
    // ... but reads (and probes) need none.
    assert!(anonymous.cluster().await.is_ok());

    // A certificate from another CA: the handshake is refused.
    let other = Authority::generate("other").unwrap_or_else(|e| panic!("{e}"));
    let (key, csr) =
        tls::new_key_and_request(a.replica.node_id(), "tls-r").unwrap_or_else(|e| panic!("{e}"));
    let cert = other
        .sign_request(
            &csr,
            a.replica.node_id(),
            "tls-r",
            Duration::from_secs(3600),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The stranger trusts the real CA (so only the server's check can refuse it).
    let ca_pem = a
        .replica
        .peers()
        .tls()
        .map(|t| t.ca_pem())
        .unwrap_or_else(|| panic!("no TLS"))
        .unwrap_or_else(|e| panic!("{e}"));
    let stranger = Credentials::from_pem(&ca_pem, &cert, &key).unwrap_or_else(|e| panic!("{e}"));
    let err = client(&a, Trust::CaHash(hash.clone()), Some(&stranger))
        .acquire("stranger", None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");

    // An expired certificate of the right CA: refused at the handshake.
    // Valid from an hour ago until now (whole seconds): expired a moment later.
    let expired = issued_by(&a, 99, "old", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = client(&a, Trust::CaHash(hash.clone()), Some(&expired))
        .acquire("expired", None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");

    // An impostor: a server whose CA does not match the hash gets nothing (the token is
    // never sent: the handshake fails first).
    let impostor = first("tls-impostor").await;
    let err = client(&impostor, Trust::CaHash(hash.clone()), None)
        .with_token(Some(TOKEN.into()))
        .certificate(&certificate_request(5, "victim"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Transport { .. }),
        "impostor answered: {err}"
    );
    impostor.shutdown().await;

    // A wrong token on the certificate route: 401.
    let err = client(&a, Trust::CaHash(hash.clone()), None)
        .with_token(Some("wrong".into()))
        .certificate(&certificate_request(6, "n6"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

    // A certificate request naming a live member's id under another name: refused.
    let err = client(&a, Trust::CaHash(hash.clone()), None)
        .with_token(Some(TOKEN.into()))
        .certificate(&certificate_request(a.replica.node_id(), "thief"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CertificateRefused), "{err}");

    // Node A's certificate speaking as node B: a vote naming another candidate is refused.
    let n7 = issued_by(&a, 7, "n7", Duration::from_secs(3600));
    let http = tls::http_client(
        n7.client_config().unwrap_or_else(|e| panic!("{e}")),
        Some(Duration::from_secs(5)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let term_before = a.replica.metrics().current_term;
    let vote = serde_json::json!({
        "vote": {"leader_id": {"term": term_before + 5, "node_id": 8}, "committed": false},
        "last_log_id": null
    });
    let response = http
        .post(format!("{}/raft/vote", a.base))
        .header(
            evio_raft::network::TARGET_HEADER,
            a.replica.node_id().to_string(),
        )
        .header(
            evio_raft::network::CLUSTER_HEADER,
            a.replica.cluster_id().unwrap_or_default(),
        )
        .json(&vote)
        .send()
        .await
        .unwrap_or_else(|e| panic!("vote: {e}"));
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 403, "{body}");
    assert_eq!(common::error_code(&body), "wrong_sender");
    // A Raft RPC without a certificate (token or not): 401.
    let response = reqwest_anonymous(&hash)
        .post(format!("{}/raft/vote", a.base))
        .bearer_auth(TOKEN)
        .json(&vote)
        .send()
        .await
        .unwrap_or_else(|e| panic!("vote: {e}"));
    assert_eq!(response.status().as_u16(), 401);

    // Nothing changed: same term, same leader, same leases.
    assert_eq!(a.replica.metrics().current_term, term_before);
    assert_eq!(
        a.replica.metrics().current_leader,
        Some(a.replica.node_id())
    );
    assert_eq!(pool_size().await, before);
    let _ = creds;
    a.shutdown().await;
}

fn reqwest_anonymous(hash: &str) -> reqwest::Client {
    tls::http_client(
        tls::anonymous_client_config(Trust::CaHash(hash.to_string()))
            .unwrap_or_else(|e| panic!("{e}")),
        Some(Duration::from_secs(5)),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
