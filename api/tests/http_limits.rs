//! The listener and router limits of issue 14 items 1–3, over real TCP on loopback against a
//! real single-member replica: slow and idle connections are closed, the connection cap keeps
//! a share for members, bodies are bounded per route, metrics labels are bounded
//! and reads without the token cannot pile up linearizable barriers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use evio_api::{Admission, ErrorBody, ServeLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;

use common::{pool, Member};

/// The "member" address of these tests: it gets the peers' reserved share; every other
/// loopback address counts as an outsider here (in production loopback is exempt).
const PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn start(limits: ServeLimits) -> Member {
    let classify: evio_api::Classify = Arc::new(|ip: IpAddr| {
        if ip == IpAddr::V4(PEER) {
            Admission::Peer
        } else {
            Admission::Other
        }
    });
    Member::start_limited("limits", pool("10.244.0.0/16", 8), limits, classify)
        .await
        .lead()
        .await
}

/// The default limits but for the header timeout and the connection caps (all, members').
fn capped(header_read_timeout: Duration, all: usize, members: usize) -> ServeLimits {
    ServeLimits {
        header_read_timeout,
        max_connections: all,
        max_peer_connections: members,
        ..Default::default()
    }
}

/// Sends `request`: the answer's status and error `code`.
async fn status_and_code(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (
        status,
        error_code(&response.text().await.unwrap_or_default()),
    )
}

fn addr(member: &Member) -> SocketAddr {
    member
        .base
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", member.base))
}

async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(to).await
}

/// Reads until EOF or error; true when the server closed the connection within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn http(from: Option<Ipv4Addr>) -> reqwest::Client {
    evio_raft::tls::ensure_provider();
    reqwest::Client::builder()
        .local_address(from.map(IpAddr::V4))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
        .code
        .to_string()
}

/// Thousands of connections that send half a request head are closed by the header-read
/// timeout; while they are open, the API still answers a member (Raft RPC included),
/// and a keep-alive connection left idle is closed too.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_while_peers_are_served() {
    let timeout = Duration::from_secs(2);
    let server = start(capped(timeout, 1000, 64)).await;
    let to = addr(&server);
    let mut slow = Vec::new();
    for i in 0..3000 {
        let Ok(mut stream) = connect_from(Ipv4Addr::LOCALHOST, to).await else {
            continue;
        };
        // Half a request head: never finished.
        let _ = stream
            .write_all(format!("GET /v1/leases HTTP/1.1\r\nHost: x\r\nX-Slow: {i}\r\n").as_bytes())
            .await;
        slow.push(stream);
    }
    assert!(slow.len() >= 2000, "only {} connections opened", slow.len());

    // A member still gets the API and Raft RPC (a wrong-target RPC is refused by the
    // Raft layer, which proves it was served) while the flood is open.
    let peer = http(Some(PEER));
    let response = peer
        .get(format!("{}/v1/leases", server.base))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("peer read during the flood: {e}"));
    assert_eq!(response.status(), 200);
    let response = peer
        .post(format!("{}{}", server.base, evio_raft::network::VOTE_PATH))
        .bearer_auth(common::TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap_or_else(|e| panic!("peer Raft RPC during the flood: {e}"));
    assert_eq!(
        response.status(),
        421,
        "a Raft answer, not a closed connection"
    );

    // Every slow connection is closed by the server (a generous bound, not a timing claim).
    let mut still_open = 0;
    for stream in &mut slow {
        if !closed_within(stream, timeout * 5).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "slow connections left open by the server");

    // An idle keep-alive connection is closed as well.
    let mut idle = connect_from(Ipv4Addr::LOCALHOST, to)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_within(&mut idle, timeout * 5).await,
        "idle keep-alive connection left open"
    );
    server.shutdown().await;
}

/// Past the cap, new connections from outsiders are closed at once, and a member still
/// gets in through its reserved share.
#[tokio::test]
async fn connection_cap_keeps_a_share_for_members() {
    let server = start(capped(Duration::from_secs(60), 50, 8)).await;
    let to = addr(&server);
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(
            connect_from(Ipv4Addr::LOCALHOST, to)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}")),
        );
    }
    // Let the server accept them all before the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = connect_from(Ipv4Addr::LOCALHOST, to)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut over, Duration::from_secs(10)).await,
        "a connection over the cap was served"
    );
    let response = http(Some(PEER))
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("member over the cap: {e}"));
    assert_eq!(response.status(), 200);
    // Once the held connections go, outsiders are served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = http(None)
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("after the cap cleared: {e}"));
    assert_eq!(response.status(), 200);
    server.shutdown().await;
}

/// 5,000 requests with random 100-byte methods and random paths leave /metrics small:
/// methods become `other`, unknown paths `unmatched`.
#[tokio::test]
async fn method_and_path_flood_leaves_metrics_bounded() {
    let server = start(ServeLimits::default()).await;
    let to = addr(&server);
    let metrics_len = || async {
        let url = format!("{}/metrics", server.base);
        let response = http(None).get(url).send().await;
        let response = response.unwrap_or_else(|e| panic!("metrics: {e}"));
        response.text().await.unwrap_or_default()
    };
    let before = metrics_len().await.len();
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, to)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut sent = 0;
    for i in 0..5000u32 {
        let method: String = (0..100)
            .map(|j| char::from(b'A' + ((i.wrapping_mul(31) + j * 7) % 26) as u8))
            .collect();
        let request = format!("{method}{i} /x{i}/{method} HTTP/1.1\r\nHost: x\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            stream = connect_from(Ipv4Addr::LOCALHOST, to)
                .await
                .unwrap_or_else(|e| panic!("reconnect: {e}"));
            continue;
        }
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => sent += 1,
            _ => {
                stream = connect_from(Ipv4Addr::LOCALHOST, to)
                    .await
                    .unwrap_or_else(|e| panic!("reconnect: {e}"));
            }
        }
    }
    assert!(sent >= 4000, "only {sent} flood requests answered");
    let text = metrics_len().await;
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        !text.contains("AAAA") && !text.contains("/x1"),
        "client data in labels"
    );
    assert!(
        text.len() < before + 16 * 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    server.shutdown().await;
}

/// Bodies: lease routes take small ones (413 JSON beyond), GET refuses any, Raft RPC takes
/// snapshot-chunk sized ones (more than axum's 2 MiB default).
#[tokio::test]
async fn bodies_are_bounded_per_route() {
    let server = start(ServeLimits::default()).await;
    let client = http(None);
    let big = vec![b' '; evio_api::server::API_MAX_BODY + 1];
    let put = client.put(format!("{}/v1/leases/node-a", server.base));
    let put = put.bearer_auth(common::TOKEN).body(big);
    let answer = status_and_code(put).await;
    assert_eq!(answer, (413, "payload_too_large".into()));
    let get = client.get(format!("{}/v1/leases", server.base)).body("{}");
    let answer = status_and_code(get).await;
    assert_eq!(answer, (400, "body_not_allowed".into()));
    // Nearly the Raft body limit (2 MiB: a 1 MiB snapshot chunk or an append batch) of JSON
    // whitespace then garbage: read in full and refused as a bad RPC body, not as too large.
    let mut chunk = vec![b' '; evio_raft::network::RPC_BODY_LIMIT - 1024];
    chunk.extend_from_slice(b"{\"not\": \"an rpc\"}");
    let me = server.replica.node_id().to_string();
    let mut request = client
        .post(format!(
            "{}{}",
            server.base,
            evio_raft::network::APPEND_PATH
        ))
        .bearer_auth(common::TOKEN)
        .header(evio_raft::network::TARGET_HEADER, &me)
        .body(chunk);
    if let Some(cluster) = server.replica.cluster_id() {
        request = request.header(evio_raft::network::CLUSTER_HEADER, cluster);
    }
    let answer = status_and_code(request).await;
    assert_eq!(answer, (400, "invalid_body".into()));
    server.shutdown().await;
}
