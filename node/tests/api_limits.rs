//! A real `evio-node dev` under the two attacks of issue 14 (items 1 and 2), from loopback:
//! 5,000 requests with random 200-byte methods (RSS and `/metrics` stay bounded), then
//! 3,000 connections that send half a request head (all closed by the header-read timeout
//! while the API, a Raft RPC route and the CNI socket keep answering). Before the limits,
//! the same run grew `/metrics` to 28 MB and left all 3,000 connections open.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// One HTTP/1.1 request on a fresh connection; the status code.
fn request(addr: &str, head: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(head.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

fn metrics_size(addr: &str) -> usize {
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut out = Vec::new();
    let read = stream
        .write_all(request)
        .and_then(|()| stream.read_to_end(&mut out));
    read.unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    out.len()
}

#[test]
fn method_flood_and_slow_headers_do_nothing_measurable() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("cni.sock");
    let (mut dev, token) = evio_test_support::spawn_dev(dir.path(), "flood-host");
    let addr = dev.base.trim_start_matches("http://").to_string();
    let pid = dev.child.id();

    // Method flood on keep-alive connections.
    let rss_before = rss_kib(pid);
    let metrics_before = metrics_size(&addr);
    let mut stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{e}"));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..5000 {
        let method: String = (0..200)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'A' + (seed % 26) as u8)
            })
            .collect();
        let head = format!("{method} /v1/leases HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 1024];
        let answered =
            stream.write_all(head.as_bytes()).is_ok() && stream.read(&mut buf).is_ok_and(|n| n > 0);
        if !answered {
            stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    drop(stream);
    let rss_after = rss_kib(pid);
    let metrics_after = metrics_size(&addr);
    eprintln!(
        "method flood: RSS {rss_before} -> {rss_after} KiB, /metrics {metrics_before} -> \
         {metrics_after} bytes"
    );
    // Before the fix: +7.5 MiB RSS and a 28 MB /metrics page.
    assert!(
        metrics_after < metrics_before + 16 * 1024,
        "/metrics grew from {metrics_before} to {metrics_after} bytes"
    );
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // Slow half-header connections.
    let fds_before = open_fds(pid);
    let mut slow = Vec::new();
    for i in 0..3000 {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(format!("GET /v1/leases HTTP/1.1\r\nX-Slow: {i}\r\n").as_bytes());
            slow.push(s);
        }
    }
    assert!(slow.len() >= 2500, "only {} slow connections", slow.len());
    // While they are open: the API, a Raft RPC route (a wrong-target RPC gets the Raft
    // layer's 421) and the CNI socket answer.
    assert_eq!(
        request(&addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        200
    );
    let vote = format!(
        "POST /raft/vote HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 2\r\n\r\n{{}}",
        token
    );
    assert_eq!(request(&addr, &vote), 421);
    let mut cni = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("CNI socket: {e}"));
    cni.write_all(b"{}").unwrap_or_else(|e| panic!("{e}"));
    cni.shutdown(std::net::Shutdown::Write)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut reply = String::new();
    cni.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reply.contains("\"code\""), "CNI socket reply: {reply}");
    let fds_during = open_fds(pid);
    // The server closes them (10 s header-read timeout); a generous bound, not a timing claim.
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_fds(pid) > fds_before + 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let fds_after = open_fds(pid);
    eprintln!(
        "slow headers: {} opened; server fds {fds_before} -> {fds_during} -> {fds_after}",
        slow.len()
    );
    assert!(
        fds_after <= fds_before + 50,
        "server still holds {fds_after} fds (was {fds_before})"
    );
    drop(slow);
    dev.signal(nix::sys::signal::Signal::SIGTERM);
    dev.assert_no_panics();
}
