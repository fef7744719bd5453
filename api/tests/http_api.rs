//! The HTTP API over real HTTP on 127.0.0.1, backed by a real single-member Raft replica on a
//! temp dir (sled, flushes and all).
//!
//! One file (over 700 lines) on purpose: a route matrix over one kind of real member, sharing its
//! request helpers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use evio_api::{Client, Consistency, ErrorCode};
use evio_raft::EvioNode;
use reqwest::Method;

mod common;

use common::{acquired, error_code, pool, Member};

/// Starts a member; `single` bootstraps it alone, otherwise it is made one of two voters
/// whose peer does not exist, so it can never reach a quorum.
async fn start(cidr: &str, bits: u8, single: bool) -> Member {
    let member = Member::start("api-test", pool(cidr, bits), Default::default()).await;
    if single {
        return member.lead().await;
    }
    let replica = &member.replica;
    // A closed port on loopback: the second voter never answers.
    let members = BTreeMap::from([
        (replica.node_id(), replica.node().clone()),
        (
            replica.node_id() ^ 1,
            EvioNode {
                name: "ghost".into(),
                addr: "127.0.0.1:9".into(),
            },
        ),
    ]);
    replica
        .initialize(members)
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}"));
    member
}

fn client(server: &Member) -> Client {
    server.client()
}

/// `method` on `path` of `member` with the token: (status, Retry-After, body).
async fn call(
    member: &Member,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Option<String>, String) {
    raw(method, &format!("{}{path}", member.base), body).await
}

/// The status of a bodiless `method` on `path` of `member` with the token.
async fn status_of(member: &Member, method: Method, path: &str) -> u16 {
    call(member, method, path, None).await.0
}

async fn raw(method: Method, url: &str, body: Option<&str>) -> (u16, Option<String>, String) {
    evio_raft::tls::ensure_provider();
    let http = reqwest::Client::new();
    let mut request = http.request(method, url).bearer_auth(common::TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.text().await.unwrap_or_default();
    (status, retry_after, text)
}

#[tokio::test]
async fn lease_lifecycle() {
    let server = start("10.244.0.16/16", 8, true).await;
    let api = client(&server);

    assert!(api
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());

    let (a, created) = acquired(&api, "node-a").await;
    assert!(created);
    assert_eq!(a.subnet.to_string(), "10.244.0.0/24");
    assert_eq!(a.gateway, Ipv4Addr::new(10, 244, 0, 1));
    assert_eq!(a.range_start, Ipv4Addr::new(10, 244, 0, 2));
    assert_eq!(a.range_end, Ipv4Addr::new(10, 244, 0, 254));
    assert_eq!(a.pod_cidr.to_string(), "10.244.0.0/16");
    assert!(a.revision > 0);
    assert!(a.acquired_at.ends_with('Z'), "{}", a.acquired_at);

    // idempotent: same lease, 200 not 201
    let (again, created) = acquired(&api, "node-a").await;
    assert!(!created);
    assert_eq!(again, a);
    assert_eq!(
        status_of(&server, Method::PUT, "/v1/leases/node-a").await,
        200
    );

    let (b, _) = api
        .acquire("node-b", Some(Ipv4Addr::new(10, 10, 0, 3)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.subnet.to_string(), "10.244.1.0/24");
    assert_eq!(b.host_ip, Some(Ipv4Addr::new(10, 10, 0, 3)));

    for consistency in [Consistency::Local, Consistency::Linearizable] {
        let got = api
            .get_lease("node-b", consistency)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.as_ref(), Some(&b));
        let all = api
            .list_leases(consistency)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all, vec![a.clone(), b.clone()]);
    }
    assert_eq!(
        api.get_lease("node-z", Consistency::Local)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        None
    );
    let (status, _, body) = call(&server, Method::GET, "/v1/leases/node-z", None).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));

    // release: 204, also when absent; the lowest block comes back first
    for _ in 0..2 {
        assert_eq!(
            status_of(&server, Method::DELETE, "/v1/leases/node-a").await,
            204
        );
    }
    let (c, created) = acquired(&api, "node-c").await;
    assert!(created);
    assert_eq!(c.subnet.to_string(), "10.244.0.0/24");

    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_json_4xx() {
    let server = start("10.244.0.0/16", 8, true).await;
    let cases = [
        (
            Method::PUT,
            "/v1/leases/Bad_Name",
            None,
            400,
            "invalid_node_name",
        ),
        (Method::PUT, "/v1/leases/-x", None, 400, "invalid_node_name"),
        (
            Method::GET,
            "/v1/leases/UPPER",
            None,
            400,
            "invalid_node_name",
        ),
        (
            Method::DELETE,
            "/v1/leases/a_b",
            None,
            400,
            "invalid_node_name",
        ),
        (
            Method::PUT,
            "/v1/leases/ok",
            Some("{not json"),
            400,
            "invalid_body",
        ),
        (
            Method::PUT,
            "/v1/leases/ok",
            Some(r#"{"hostIP":"300.1.1.1"}"#),
            400,
            "invalid_body",
        ),
        (
            Method::PUT,
            "/v1/leases/ok",
            Some(r#"{"hostIp":"10.0.0.1"}"#),
            400,
            "invalid_body",
        ),
        (
            Method::GET,
            "/v1/leases?consistency=eventual",
            None,
            400,
            "invalid_query",
        ),
        (Method::GET, "/v1/nope", None, 404, "not_found"),
    ];
    for (method, url, body, want_status, want_code) in cases {
        let (status, _, text) = call(&server, method.clone(), url, body).await;
        assert_eq!(status, want_status, "{method} {url} {body:?}: {text}");
        assert_eq!(error_code(&text), want_code, "{method} {url}: {text}");
    }
    // nothing was leased by any of them
    let leases = client(&server)
        .list_leases(Consistency::Local)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(leases.is_empty(), "{leases:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn exhausted_pool_is_409() {
    // /28 split by 2 bits: four /30 blocks.
    let server = start("192.168.7.0/28", 2, true).await;
    let api = client(&server);
    for i in 0..4 {
        let (lease, created) = acquired(&api, &format!("n{i}")).await;
        assert!(created);
        assert_eq!(
            lease.range_start, lease.range_end,
            "a /30 has one pod address"
        );
    }
    let err = api.acquire("late", None).await.map(|_| ()).unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some(ErrorCode::PoolExhausted)),
        "{err}"
    );
    // holders still get theirs
    let (lease, created) = acquired(&api, "n3").await;
    assert!(!created);
    assert_eq!(lease.subnet.to_string(), "192.168.7.12/30");
    server.shutdown().await;
}

#[tokio::test]
async fn no_quorum_is_503_with_retry_after_and_local_reads_still_answer() {
    let server = start("10.244.0.0/16", 8, false).await;
    for (method, path) in [(Method::PUT, "/v1/leases/n1"), (Method::GET, "/v1/leases")] {
        let (status, retry_after, body) = call(&server, method, path, None).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{path}");
        assert_eq!(error_code(&body), "no_quorum", "{path}: {body}");
    }

    let local = "/v1/leases?consistency=local";
    let (status, _, body) = call(&server, Method::GET, local, None).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    server.shutdown().await;
}

#[tokio::test]
async fn cluster_health_and_metrics() {
    let server = start("10.244.0.0/16", 8, true).await;
    let api = client(&server);
    api.acquire("m1", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.acquire("m2", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let cluster = api.cluster().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.node_id, server.replica.node_id());
    assert_eq!(cluster.node_name, "api-test");
    assert_eq!(cluster.leader_id, Some(server.replica.node_id()));
    assert!(cluster.term >= 1);
    assert!(cluster.last_applied >= Some(3), "{cluster:?}");
    assert_eq!(cluster.members.len(), 1);
    assert_eq!(cluster.members[0].role, "leader");
    assert_eq!(
        cluster.members[0].addr,
        server.base.trim_start_matches("http://")
    );
    // the JSON keys are the documented camelCase ones
    let (_, _, text) = call(&server, Method::GET, "/v1/cluster", None).await;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    for key in [
        "nodeId",
        "nodeName",
        "leaderId",
        "term",
        "lastApplied",
        "members",
    ] {
        assert!(value.get(key).is_some(), "missing {key}: {text}");
    }

    for probe in ["/healthz", "/readyz"] {
        assert_eq!(status_of(&server, Method::GET, probe).await, 200, "{probe}");
    }

    let (status, _, text) = call(&server, Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    for line in [
        "evio_leases 2",
        "evio_leases_free 254",
        "evio_pool_cidr{family=\"IPv4\",pod_cidr=\"10.244.0.0/16\"} 1",
        "evio_raft_is_leader 1",
        &format!(
            "evio_raft_leader{{leader_id=\"{}\"}} 1",
            server.replica.node_id()
        ),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains(
            r#"evio_http_requests_total{method="PUT",route="/v1/leases/{node}",status="201"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains("evio_http_request_duration_seconds_bucket"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn readyz_is_503_before_joining_a_cluster() {
    let member = Member::start("lonely", pool("10.244.0.0/16", 8), Default::default()).await;
    assert!(!member.replica.is_ready());
    assert_eq!(status_of(&member, Method::GET, "/readyz").await, 503);
    let member = member.lead().await;
    assert!(member.replica.is_ready());
    assert_eq!(status_of(&member, Method::GET, "/readyz").await, 200);
    member.shutdown().await;
}

#[tokio::test]
async fn reads_can_be_closed_and_writes_always_need_the_token() {
    let options = evio_api::ApiOptions {
        auth_reads: true,
        ..Default::default()
    };
    let member = Member::start_with(
        "closed",
        pool("10.244.0.0/16", 8),
        Default::default(),
        options,
    )
    .await
    .lead()
    .await;
    let anonymous = Client::new(&member.base).unwrap_or_else(|e| panic!("{e}"));
    let err = anonymous
        .list_leases(Consistency::Local)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some(ErrorCode::Unauthorized)),
        "{err}"
    );
    let err = anonymous.acquire("n1", None).await.map(|_| ()).unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let wrong = anonymous.clone().with_token(Some("wrong".into()));
    assert_eq!(
        wrong
            .get_lease("n1", Consistency::Local)
            .await
            .map(|_| ())
            .unwrap_err()
            .status(),
        Some(401)
    );
    // probes stay open
    assert_eq!(status_of(&member, Method::GET, "/healthz").await, 200);
    // with the token everything works, and nothing was changed by the refused calls
    let leases = member
        .client()
        .list_leases(Consistency::Local)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(leases.is_empty());
    member.shutdown().await;
}

#[tokio::test]
async fn reserve_and_claim_over_http() {
    let server = start("10.244.0.0/16", 8, true).await;
    let owner = "legacy:10.244.3.2-10.244.3.254";
    // without an etcd mirror, /v1/cluster says nothing about one
    let (status, _, text) = call(&server, Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, 200);
    assert!(!text.contains("etcdMirror"), "{text}");
    let post = |path: &str, body: &str| {
        let body = body.to_string();
        let path = path.to_string();
        let server = &server;
        async move { call(server, Method::POST, &path, Some(&body)).await }
    };
    let reservation =
        |owner: &str, subnet: &str| format!(r#"{{"owner":"{owner}","subnet":"{subnet}"}}"#);
    let reserve = reservation(owner, "10.244.3.0/24");
    let (status, _, body) = post("/v1/reservations", &reserve).await;
    assert_eq!(status, 201, "{body}");
    let (status, _, _) = post("/v1/reservations", &reserve).await;
    assert_eq!(status, 200);
    // bad input: named, 4xx, nothing changes
    let other = "legacy:10.244.4.2-10.244.4.254";
    let cases = [
        (
            reservation("legacy:x", "10.244.4.0/24"),
            400,
            "invalid_node_name",
        ),
        (reservation(other, "10.9.4.0/24"), 400, "outside_pool"),
        (reservation(other, "10.244.4.0/25"), 400, "outside_pool"),
        (
            reservation("legacy:10.244.9.2-10.244.9.254", "10.244.3.0/24"),
            409,
            "block_taken",
        ),
        (r#"{"owner":1}"#.to_string(), 400, "invalid_body"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, _, text) = post("/v1/reservations", &body).await;
        assert_eq!(
            (status, error_code(&text).as_str()),
            (want_status, want_code),
            "{body}: {text}"
        );
    }
    // a new node never gets the reserved block
    for i in 0..5 {
        let (lease, _) = client(&server)
            .acquire(&format!("n{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(lease.subnet.to_string(), "10.244.3.0/24");
    }
    // claims: a bad name, a node holding another lease, the owner's block, then nothing left
    let claim = format!(r#"{{"from":"{owner}"}}"#);
    let refused = [
        ("Bad_Name", 400, "invalid_node_name"),
        ("n0", 409, "holds_other_lease"),
    ];
    for (node, want_status, want_code) in refused {
        let (status, _, text) = post(&format!("/v1/leases/{node}/claim"), &claim).await;
        assert_eq!(
            (status, error_code(&text).as_str()),
            (want_status, want_code),
            "{node}: {text}"
        );
    }
    let (status, _, text) = post("/v1/leases/edge/claim", &claim).await;
    assert_eq!(status, 200, "{text}");
    let lease: evio_api::LeaseJson = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (lease.node.as_str(), lease.subnet.to_string().as_str()),
        ("edge", "10.244.3.0/24")
    );
    let (status, _, text) = post("/v1/leases/edge2/claim", &claim).await;
    assert_eq!(
        (status, error_code(&text).as_str()),
        (404, "not_found"),
        "{text}"
    );
}

/// Every path segment of every route that is also a valid Kubernetes node name (DNS-1123)
/// must work as a node name: actions live outside `/v1/leases/{node}` (issue 19 item 5).
#[tokio::test]
async fn node_names_equal_to_route_words_get_leases() {
    let server = start("10.244.0.0/16", 8, true).await;
    let api = client(&server);
    let routes = [
        "/",
        "/openapi.json",
        "/v1/leases",
        "/v1/leases/{node}",
        "/v1/leases/{node}/claim",
        "/v1/reservations",
        "/v1/cluster",
        "/v1/cluster/join",
        "/v1/pods",
        "/healthz",
        "/readyz",
        "/metrics",
        evio_raft::network::APPEND_PATH,
        evio_raft::network::VOTE_PATH,
        evio_raft::network::SNAPSHOT_PATH,
        // words people might try next
        "/v1/leases/reserve",
        "/v1/leases/release",
        "/v1/leases/acquire",
        "/v1/status",
    ];
    let mut words: Vec<&str> = routes
        .iter()
        .flat_map(|r| r.split('/'))
        .filter(|w| !w.is_empty() && !w.starts_with('{'))
        .collect();
    words.sort_unstable();
    words.dedup();
    let names: Vec<&str> = words
        .into_iter()
        .filter(|w| evio_raft::validate_node_name(w).is_ok())
        .collect();
    assert!(
        names.contains(&"reserve") && names.contains(&"claim"),
        "{names:?}"
    );
    for name in &names {
        let path = format!("/v1/leases/{name}");
        let (status, _, text) = call(&server, Method::PUT, &path, None).await;
        assert_eq!(status, 201, "PUT {name}: {text}");
        let lease = api
            .get_lease(name, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("GET {name}: {e}"));
        assert_eq!(lease.map(|l| l.node).as_deref(), Some(*name));
        let (status, _, text) = call(&server, Method::GET, &path, None).await;
        assert_eq!(status, 200, "GET {name}: {text}");
    }
    let held = api
        .list_leases(Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held.len(), names.len());
    for name in &names {
        let path = format!("/v1/leases/{name}");
        let (status, _, text) = call(&server, Method::DELETE, &path, None).await;
        assert_eq!(status, 204, "DELETE {name}: {text}");
        assert!(api
            .get_lease(name, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("GET {name}: {e}"))
            .is_none());
    }
    server.shutdown().await;
}

/// Without the token, linearizable reads (each a heartbeat round to every voter) cannot
/// pile up: beyond a small budget they get 429 + Retry-After at once; with the token they
/// wait for the leader as before; local reads always answer.
#[tokio::test]
async fn anonymous_linearizable_reads_are_capped() {
    let server = start("10.244.0.0/16", 8, false).await;
    let url = format!("{}/v1/leases", server.base);
    evio_raft::tls::ensure_provider();
    let anonymous = reqwest::Client::new();
    let reads = (0..16).map(|_| {
        let request = anonymous.get(&url).send();
        async move {
            let response = request.await.unwrap_or_else(|e| panic!("{e}"));
            let retry = response.headers().contains_key("retry-after");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, retry, error_code(&text))
        }
    });
    let answers = futures::future::join_all(reads).await;
    let limited = answers
        .iter()
        .filter(|(s, retry, code)| *s == 429 && *retry && code == "rate_limited")
        .count();
    assert!(limited >= 8, "{answers:?}");
    let (status, retry, text) = raw(Method::GET, &url, None).await;
    assert_eq!((status, error_code(&text).as_str()), (503, "no_quorum"));
    assert!(retry.is_some());
    let local = anonymous
        .get(format!("{url}?consistency=local"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(local.status(), 200);
    server.shutdown().await;
}

/// A stand-in for the daemon's view of its node (the CNI socket and Kubernetes are the
/// node crate's; their real providers are tested there, end to end).
struct FakeNode;

impl evio_api::NodeProvider for FakeNode {
    fn cni_socket(&self) -> Option<String> {
        Some("/run/evio/test.sock".into())
    }

    fn pods(&self) -> evio_api::PodsFuture<'_> {
        Box::pin(async {
            Ok(vec![evio_api::PodJson {
                container_id: "c0ffee".into(),
                interface: "eth0".into(),
                network: "evio".into(),
                addresses: vec!["10.244.0.2/16".into()],
                host_interface: "evio0123456789a".into(),
                attached_at: None,
            }])
        })
    }

    fn kubernetes(&self) -> evio_api::KubernetesJson {
        evio_api::KubernetesJson {
            enabled: true,
            node_name: Some("node-api".into()),
            last_error: Some("annotating the Node: 403".into()),
            errors: 1,
            ..Default::default()
        }
    }
}

/// A leading member named `name` whose node is [`FakeNode`].
async fn with_fake_node(name: &str, auth_reads: bool) -> Member {
    let options = evio_api::ApiOptions {
        auth_reads,
        node: Some(std::sync::Arc::new(FakeNode)),
        ..Default::default()
    };
    Member::start_with(name, pool("10.244.0.0/16", 8), Default::default(), options)
        .await
        .lead()
        .await
}

#[tokio::test]
async fn node_routes_show_the_daemons_view_and_this_member_reaches_itself() {
    let member = with_fake_node("node-api", false).await;
    let anonymous = Client::new(&member.base).unwrap_or_else(|e| panic!("{e}"));
    let node = anonymous.node().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.node_name, "node-api");
    assert!(node.lease.is_none(), "{node:?}");
    assert!(node.cni.enabled && node.cni.socket.as_deref() == Some("/run/evio/test.sock"));
    assert!(
        node.kubernetes.enabled && node.kubernetes.errors == 1,
        "{node:?}"
    );
    assert!(node.etcd_mirror.is_none());
    let lease = member
        .client()
        .acquire("node-api", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let node = anonymous.node().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.lease.map(|l| l.subnet), Some(lease.0.subnet));

    let pods = anonymous
        .node_pods()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pods.cni && pods.node_name == "node-api");
    assert_eq!(pods.pods.len(), 1);
    assert_eq!(pods.pods[0].addresses, ["10.244.0.2/16"]);

    let cluster = anonymous.cluster().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.members[0].reachable, Some(true), "{cluster:?}");
    member.shutdown().await;
}

#[tokio::test]
async fn node_routes_without_a_daemon_and_behind_auth_reads() {
    let member = start("10.244.0.0/16", 8, true).await;
    let client = client(&member);
    let pods = client.node_pods().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!pods.cni && pods.pods.is_empty(), "{pods:?}");
    let node = client.node().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!node.cni.enabled && !node.kubernetes.enabled, "{node:?}");
    member.shutdown().await;

    let closed = with_fake_node("closed", true).await;
    let anonymous = Client::new(&closed.base).unwrap_or_else(|e| panic!("{e}"));
    for err in [
        anonymous.node().await.map(|_| ()).unwrap_err(),
        anonymous.node_pods().await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    }
    assert!(closed.client().node_pods().await.is_ok());
    closed.shutdown().await;
}

/// A voter whose only peer never answers: its vote requests fail, so the peer shows as
/// unreachable with the reason, while the member itself is reachable.
#[tokio::test]
async fn an_unanswering_peer_is_unreachable_in_cluster_status() {
    let member = start("10.244.0.0/16", 8, false).await;
    let client = client(&member);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ghost = loop {
        let cluster = client.cluster().await.unwrap_or_else(|e| panic!("{e}"));
        let ghost = cluster.members.iter().find(|m| m.name == "ghost").cloned();
        let ghost = ghost.unwrap_or_else(|| panic!("no ghost member: {cluster:?}"));
        if ghost.reachable == Some(false) && ghost.last_error.is_some() {
            let me = cluster.members.iter().find(|m| m.id == cluster.node_id);
            assert_eq!(me.and_then(|m| m.reachable), Some(true), "{cluster:?}");
            break ghost;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ghost never showed as unreachable: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ghost.heard_ms_ago.is_none() && ghost.reached_ms_ago.is_none(),
        "{ghost:?}"
    );
    member.shutdown().await;
}
