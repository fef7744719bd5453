//! Our OVSDB layer (`evio_cni::dataplane::ovsdb`) against a real ovsdb-server: transactions,
//! the server's error replies, its inactivity probes on a long-lived connection, lookups
//! answered by the monitor-fed cache (changes by other clients included), and a server
//! restart under a client that keeps its `Ovsdb` (the cache rebuilt from the new server). (Why our own layer and not the
//! `ovsdb-client` crate: docs/decisions/ovsdb-client.md.)
//!
//! Each test starts a private ovsdb-server on a temp unix socket with a fresh
//! `vswitch.ovsschema` database (killed on drop), so nothing touches the node's OVS. Without
//! ovs-vswitchd nobody acknowledges `next_cfg`; [`VswitchdStandIn`] copies it to `cur_cfg` so
//! that our layer's "wait until applied" completes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evio_cni::dataplane::ovsdb::{Ovsdb, OvsdbError};
use serde_json::json;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const LOCAL_CONFIG_SCHEMA: &str = "/usr/share/openvswitch/local-config.ovsschema";
/// Bounds every wait so a broken server fails the test instead of hanging it (not a timing
/// assertion: the expected events come in well under a second or two).
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether ovsdb-server and the schema are installed; under CI they must be.
fn prerequisites() -> bool {
    let server = Command::new("ovsdb-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let schema = Path::new(SCHEMA).is_file() && Path::new(LOCAL_CONFIG_SCHEMA).is_file();
    evio_test_support::prerequisites(
        "OVSDB crate test",
        &[("ovsdb-server", server), ("schemas", schema)],
    )
}

/// `program args`, which must succeed; its stdout trimmed.
fn run(program: &str, args: &[&str]) -> String {
    evio_test_support::run(program, args).trim().to_string()
}

/// A private ovsdb-server. `db.sock` serves without inactivity probes (ovsdb-server's default
/// for unix sockets); `probe.sock` comes from a Manager row with `inactivity_probe` = 1000 ms,
/// so the server sends `echo` after 1 s of silence and disconnects a client that does not
/// answer within another second.
struct Server {
    dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    /// Serves the Open_vSwitch database, with one Open_vSwitch row as `ovs-vsctl init` makes.
    fn start() -> Server {
        Server::spawn(SCHEMA, |db, probe_socket| {
            let init = json!(["Open_vSwitch",
                {"op": "insert", "table": "Open_vSwitch",
                 "row": {"manager_options": ["named-uuid", "probing"]}},
                {"op": "insert", "table": "Manager", "uuid-name": "probing",
                 "row": {"target": format!("punix:{probe_socket}"), "inactivity_probe": 1000}}]);
            run("ovsdb-tool", &["transact", db, &init.to_string()]);
        })
    }

    /// Serves only `Local_Config` (another schema shipped with OVS): no Open_vSwitch database.
    fn start_without_open_vswitch() -> Server {
        Server::spawn(LOCAL_CONFIG_SCHEMA, |_, _| {})
    }

    fn spawn(schema: &str, init: impl FnOnce(&str, &str)) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("evio-ovsdb-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = |name: &str| dir.path().join(name).display().to_string();
        let db = path("conf.db");
        run("ovsdb-tool", &["create", &db, schema]);
        init(&db, &path("probe.sock"));
        let open_vswitch = schema == SCHEMA;
        let child = Server::launch(dir.path(), open_vswitch);
        let mut server = Server { dir, child };
        server.wait_until_serving(open_vswitch);
        server
    }

    /// Kills the server and starts another on the same database and sockets, as a restart
    /// of ovsdb-server does.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Server::launch(self.dir.path(), true);
        self.wait_until_serving(true);
    }

    fn launch(dir: &Path, open_vswitch: bool) -> Child {
        let path = |name: &str| dir.join(name).display().to_string();
        let db = path("conf.db");
        let mut args = vec![
            db,
            format!("--remote=punix:{}", path("db.sock")),
            format!("--unixctl={}", path("ctl")),
            format!("--log-file={}", path("log")),
            "-vconsole:off".to_string(),
        ];
        if open_vswitch {
            // Also listen where the Manager rows say (the probing socket).
            args.push("--remote=db:Open_vSwitch,Open_vSwitch,manager_options".to_string());
        }
        Command::new("ovsdb-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ovsdb-server {args:?}: {e}"))
    }

    fn wait_until_serving(&mut self, open_vswitch: bool) {
        let socket = self.socket();
        self.wait_for(&socket);
        if open_vswitch {
            let probe_socket = self.probe_socket();
            self.wait_for(&probe_socket);
        }
    }

    fn wait_for(&mut self, socket: &Path) {
        let deadline = std::time::Instant::now() + PATIENCE;
        // The socket file appears at bind(), before listen(): wait until it accepts.
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ovsdb-server exited ({status}): {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ovsdb-server does not listen on {}: {}",
                socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    fn probe_socket(&self) -> PathBuf {
        self.dir.path().join("probe.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `ovs-vsctl` on this server; never waits for a vswitchd.
    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.socket().display());
        let mut all = vec![db.as_str(), "--no-wait", "--timeout=10"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plays ovs-vswitchd's part of the configuration handshake: copies `next_cfg` to `cur_cfg`.
struct VswitchdStandIn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VswitchdStandIn {
    fn start(server: &Server) -> VswitchdStandIn {
        let db = format!("--db=unix:{}", server.socket().display());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let vsctl = |args: &[&str]| {
                Command::new("ovs-vsctl")
                    .args([db.as_str(), "--no-wait", "--timeout=10"])
                    .args(args)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            };
            let mut acknowledged = String::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Some(next) = vsctl(&["get", "Open_vSwitch", ".", "next_cfg"]) {
                    if next != acknowledged {
                        let set = format!("cur_cfg={next}");
                        if vsctl(&["set", "Open_vSwitch", ".", &set]).is_some() {
                            acknowledged = next;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        VswitchdStandIn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for VswitchdStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", evio_test_support::unique_tag())
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {PATIENCE:?}"))
}

/// The server's error reply (RFC 7047 shape: an "error" object, no JSON-RPC 2.0 code) is
/// returned as the server's reason, and the connection stays usable.
#[tokio::test]
async fn an_error_reply_is_reported_and_the_connection_stays_usable() {
    if !prerequisites() {
        return;
    }
    let other = Server::start_without_open_vswitch();
    let ours = Ovsdb::new(other.socket());
    for _ in 0..2 {
        match within("bridge_exists", ours.bridge_exists("evio-none")).await {
            Err(OvsdbError::Protocol(reason)) => {
                assert!(reason.contains("unknown database"), "{reason}")
            }
            other => panic!("expected the server's error reply, got {other:?}"),
        }
    }
    let server = Server::start();
    let ours = Ovsdb::new(server.socket());
    assert!(!within("bridge_exists", ours.bridge_exists("evio-none"))
        .await
        .unwrap_or_else(|e| panic!("{e}")));
}

/// One connection for the daemon's life: on a socket with 1 s inactivity probes, our layer
/// answers the server's `echo` while idle, so the connection survives several probe
/// intervals and the server never drops it.
#[tokio::test]
async fn the_long_lived_connection_answers_inactivity_probes() {
    let Some(server) = served() else {
        return;
    };
    let ours = Ovsdb::new(server.probe_socket());
    within("ping", ours.ping())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    within("ping", ours.ping())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let log = server.log();
    assert!(
        !log.contains("no response to inactivity probe") && !log.contains("connection dropped"),
        "server log: {log}"
    );
}

/// Waits until `ours` reports `bridge` as `present` (the cache hears of changes made by
/// other clients through the monitor).
async fn bridge_becomes(ours: &Ovsdb, bridge: &str, present: bool) {
    within("the cache to hear of the change", async {
        while ours.bridge_exists(bridge).await.ok() != Some(present) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// ovsdb-server restarted under a running daemon: the next call connects again, and its
/// cache is the new server's (a bridge created while it was away is seen, and one deleted
/// later is gone).
#[tokio::test]
async fn a_restarted_server_is_reconnected_to() {
    let Some(mut server) = served() else {
        return;
    };
    let ours = Ovsdb::new(server.socket());
    within("ping", ours.ping())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bridge = unique("evr");
    server.restart();
    server.vsctl(&["add-br", &bridge]);
    // The old connection closed with the old server; the reader noticed, the call reconnects.
    let mut answered = false;
    for _ in 0..50 {
        if within("ping", ours.ping()).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "no answer after the restart: {}", server.log());
    assert!(!within("bridge_exists", ours.bridge_exists("evio-none"))
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    assert!(within("bridge_exists", ours.bridge_exists(&bridge))
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    server.vsctl(&["del-br", &bridge]);
    bridge_becomes(&ours, &bridge, false).await;
}

/// Where the prerequisites hold: a server of our own.
fn served() -> Option<Server> {
    prerequisites().then(Server::start)
}

/// Where the prerequisites hold: a server with the vswitchd stand-in, and our client of it.
fn served_with_stand_in() -> Option<(Server, VswitchdStandIn, Ovsdb)> {
    let server = served()?;
    let vswitchd = VswitchdStandIn::start(&server);
    let ours = Ovsdb::new(server.socket());
    Some((server, vswitchd, ours))
}

/// Bridge and port lookups and the wait for vswitchd come from the monitor's cache: once
/// connected, asking sends nothing, and what other clients change is seen.
#[tokio::test]
async fn lookups_are_answered_from_the_monitor_cache() {
    let Some((server, _vswitchd, ours)) = served_with_stand_in() else {
        return;
    };
    let (bridge, port) = (unique("evc"), unique("evq"));
    ours.ensure_bridge(&bridge, "netdev")
        .await
        .unwrap_or_else(|e| panic!("ensure_bridge: {e}"));
    let owner = [("evio-owner", "net/container-2/eth0")];
    ours.add_port(&bridge, &port, &owner)
        .await
        .unwrap_or_else(|e| panic!("add_port: {e}"));
    // One transaction per change (monitor, ensure_bridge's, add_port's): no polling.
    assert_eq!(ours.requests(), 3);
    for _ in 0..10 {
        assert!(ours
            .bridge_exists(&bridge)
            .await
            .unwrap_or_else(|e| panic!("{e}")));
        assert!(!ours
            .bridge_exists("evio-none")
            .await
            .unwrap_or_else(|e| panic!("{e}")));
        let owned = ours.owned_ports().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(owned, vec![(port.clone(), owner[0].1.to_string())]);
        assert!(!ours
            .del_port("evio-none")
            .await
            .unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(!ours
        .ensure_bridge(&bridge, "netdev")
        .await
        .unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(ours.requests(), 3, "lookups went to the server");

    // Another client's changes reach the cache.
    let other = unique("evd");
    server.vsctl(&["add-br", &other]);
    bridge_becomes(&ours, &other, true).await;
    server.vsctl(&["del-br", &other]);
    bridge_becomes(&ours, &other, false).await;
    server.vsctl(&["del-port", &port]);
    within("the port's removal", async {
        while !ours.owned_ports().await.unwrap_or_default().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(ours.requests(), 3);
    ours.del_bridge(&bridge)
        .await
        .unwrap_or_else(|e| panic!("del_bridge: {e}"));
    assert_eq!(server.vsctl(&["list-br"]), "");
}

/// Our layer's transactions against the real server: bridge and ports created once, a
/// duplicate name fails the whole transaction (and nothing of it is kept), removal is
/// idempotent.
#[tokio::test]
async fn our_layer_creates_and_removes_ports_and_reports_a_failed_transaction() {
    let Some((server, _vswitchd, ours)) = served_with_stand_in() else {
        return;
    };
    let (bridge, port) = (unique("evo"), unique("evp"));
    for _ in 0..2 {
        ours.ensure_bridge(&bridge, "netdev")
            .await
            .unwrap_or_else(|e| panic!("ensure_bridge: {e}"));
    }
    assert_eq!(server.vsctl(&["list-br"]), bridge);

    let owner = [("evio-owner", "net/container-1/eth0")];
    ours.add_port(&bridge, &port, &owner)
        .await
        .unwrap_or_else(|e| panic!("add_port: {e}"));
    let owned = ours.owned_ports().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(owned, vec![(port.clone(), owner[0].1.to_string())]);
    let next_cfg = server.vsctl(&["get", "Open_vSwitch", ".", "next_cfg"]);

    match ours
        .add_port(&bridge, &port, &[("evio-owner", "other")])
        .await
    {
        Err(OvsdbError::Transaction(reason)) => {
            assert!(reason.contains("constraint violation"), "{reason}")
        }
        other => panic!("a duplicate port must fail the transaction, got {other:?}"),
    }
    assert_eq!(
        server.vsctl(&["get", "Open_vSwitch", ".", "next_cfg"]),
        next_cfg,
        "the failed transaction's next_cfg bump must not be kept"
    );
    let owned = ours.owned_ports().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(owned, vec![(port.clone(), owner[0].1.to_string())]);

    assert!(ours.del_port(&port).await.unwrap_or_else(|e| panic!("{e}")));
    assert!(!ours.del_port(&port).await.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(server.vsctl(&["list-ports", &bridge]), "");
    let name = format!("name={port}");
    assert_eq!(
        server.vsctl(&["find", "Interface", &name]),
        "",
        "interface kept"
    );
    ours.del_bridge(&bridge)
        .await
        .unwrap_or_else(|e| panic!("del_bridge: {e}"));
    assert_eq!(server.vsctl(&["list-br"]), "");
}
