//! The status page at `GET /` loaded in headless Chromium (Debian's `chromium`) against a real
//! 3-member `evio-node run` cluster: every member, the leader and the pool's 256 blocks with
//! the held and reserved ones marked, no console messages, a screenshot kept under
//! target/tmp; then one member cut off (its peers SIGSTOPped) says it answers from its local
//! replica. `evio-node status -o json` is checked against the same cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evio_test_support::cluster::{acquire, leader, wait_cluster, Cluster, Node};
use evio_test_support::evio_node;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `extra` flags (a fresh profile under `dir`), killed
/// after 120 s; returns stdout (the DOM with `--dump-dom`) and stderr (its console log).
fn browse(chromium: &Path, dir: &Path, url: &str, extra: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir_in(dir).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join(format!("chromium-{}.out", profile_name(&profile)));
    let err = dir.join(format!("chromium-{}.err", profile_name(&profile)));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap_or_else(|e| panic!("{e}")))
        .stderr(std::fs::File::create(&err).unwrap_or_else(|e| panic!("{e}")))
        .spawn()
        .unwrap_or_else(|e| panic!("chromium: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium on {url} did not finish within 120 s");
            }
            Err(e) => panic!("wait chromium: {e}"),
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out), read(&err));
    assert!(status.success(), "chromium on {url}: {status}\n{stderr}");
    (stdout, stderr)
}

fn profile_name(dir: &tempfile::TempDir) -> String {
    dir.path()
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn dump_dom(chromium: &Path, dir: &Path, node: &Node) -> (String, String) {
    let url = format!("{}/", node.proc.base);
    browse(chromium, dir, &url, &["--dump-dom"])
}

fn status_json(node: &Node) -> serde_json::Value {
    let out = evio_node(&["status", "--api", &node.proc.base, "-o", "json"])
        .output()
        .unwrap_or_else(|e| panic!("evio-node status: {e}"));
    assert!(
        out.status.success(),
        "evio-node status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "evio-node status -o json is not JSON: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// SIGCONTs the paused members however the test ends, so their drop can reap them.
struct Paused(Vec<Pid>);

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(*pid, Signal::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_a_real_cluster_and_a_cut_off_member() {
    let chromium = chromium();
    if !evio_test_support::prerequisites("status_page", &[("chromium", chromium.is_some())]) {
        return;
    }
    let Some(chromium) = chromium else { return };
    let cluster = Cluster::new();
    let nodes = cluster.three(&[]).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader_name = leader(&refs).await.name.clone();
    for name in ["edge-1", "edge-2"] {
        acquire(&nodes[0], name).await;
    }
    let legacy = "legacy:10.244.200.2-10.244.200.254";
    nodes[0]
        .client()
        .reserve(
            legacy,
            "10.244.200.0/24"
                .parse::<ipnetwork::IpNetwork>()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("reserve: {e}"));
    let leases = nodes[0]
        .client()
        .list_leases(evio_api::Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let held: Vec<&str> = leases
        .iter()
        .filter(|l| !l.node.starts_with("legacy:"))
        .map(|l| l.node.as_str())
        .collect();
    let dir = cluster.path("browser");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));

    // Every member's page shows the same cluster.
    for node in &nodes {
        let (dom, log) = dump_dom(&chromium, &dir, node);
        assert!(
            dom.contains(r#"data-rendered="linearizable""#),
            "{}: the page did not render from a linearizable read:\n{dom}\n{log}",
            node.name
        );
        for m in &nodes {
            assert!(
                dom.contains(&format!(r#"data-name="{}""#, m.name)),
                "{}: member {} missing:\n{dom}",
                node.name,
                m.name
            );
        }
        assert!(
            dom.contains(&format!(
                r#"class="member leader" data-name="{leader_name}" data-role="leader""#
            )),
            "{}: leader {leader_name} not marked:\n{dom}",
            node.name
        );
        assert_eq!(dom.matches(r#"<div class="block"#).count(), 256, "{dom}");
        assert_eq!(
            dom.matches(r#"class="block held""#).count(),
            held.len(),
            "{dom}"
        );
        for name in &held {
            assert!(
                dom.contains(&format!(r#"data-node="{name}""#)),
                "{}: held block of {name} not marked:\n{dom}",
                node.name
            );
        }
        assert!(
            dom.contains(r#"title="10.244.200.0/24 · legacy:10.244.200.2-10.244.200.254" data-node="legacy:10.244.200.2-10.244.200.254""#)
                && dom.matches(r#"class="block legacy""#).count() == 1,
            "{}: reserved block not marked:\n{dom}",
            node.name
        );
        // The page logs nothing on success: any console line is an error or a warning.
        let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
        assert!(console.is_empty(), "{}: console: {console:#?}", node.name);
    }

    // The screenshot: kept under target/tmp as the test's artifact (docs/status-page.png is
    // a copy).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &chromium,
        &dir,
        &format!("{}/", nodes[0].proc.base),
        &[
            "--window-size=900,820",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {shot:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");

    // `evio-node status -o json`: the same picture.
    let status = status_json(&nodes[1]);
    assert_eq!(status["consistency"], "linearizable", "{status:#}");
    assert_eq!(
        status["cluster"]["members"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(status["pool"]["blocks"], 256, "{status:#}");
    assert_eq!(status["pool"]["held"], held.len() as u64, "{status:#}");
    assert_eq!(status["pool"]["reserved"], 1, "{status:#}");
    assert_eq!(
        status["pool"]["free"],
        256 - held.len() as u64 - 1,
        "{status:#}"
    );
    assert_eq!(
        status["leases"].as_array().map(Vec::len),
        Some(leases.len())
    );

    // Cut one follower off: its two peers stop answering (a partition, as it sees it).
    let victim = nodes
        .iter()
        .find(|n| n.name != leader_name)
        .unwrap_or_else(|| panic!("no follower"));
    let paused = Paused(
        nodes
            .iter()
            .filter(|n| n.name != victim.name)
            .map(|n| Pid::from_raw(n.proc.child.id() as i32))
            .collect(),
    );
    for pid in &paused.0 {
        kill(*pid, Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP: {e}"));
    }
    // Once it has given up on the old leader, a linearizable read fails at once.
    wait_cluster(victim, "the cut-off member lost its leader", |c| {
        c.leader_id.is_none()
    })
    .await;
    let (dom, log) = dump_dom(&chromium, &dir, victim);
    assert!(
        dom.contains(r#"data-rendered="local""#)
            && dom.contains("answering from its local replica"),
        "{}: the cut-off page does not say it reads its local replica:\n{dom}\n{log}",
        victim.name
    );
    assert!(
        dom.contains(r#"class="banner local""#)
            && dom.contains(&format!(
                "Cut off: {} cannot reach the cluster",
                victim.name
            )),
        "no cut-off banner:\n{dom}"
    );
    assert_eq!(
        dom.matches(r#"class="block held""#).count(),
        held.len(),
        "{dom}"
    );
    let status = status_json(victim);
    assert_eq!(status["consistency"], "local", "{status:#}");
    assert!(status["localBecause"].is_string(), "{status:#}");
    drop(paused);
    for n in &nodes {
        n.proc.assert_no_panics();
    }
}

/// With `--auth-reads` the page asks for the token instead of showing an error, and
/// `evio-node status` names the missing token; with `--token-file` it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_the_token_when_reads_need_it() {
    let chromium = chromium();
    if !evio_test_support::prerequisites("status_page", &[("chromium", chromium.is_some())]) {
        return;
    }
    let Some(chromium) = chromium else { return };
    let cluster = Cluster::new();
    let solo = cluster.start(
        "solo",
        &evio_test_support::cluster::free_addr(),
        &[],
        &["--auth-reads"],
    );
    wait_cluster(&solo, "a leader", |c| c.leader_id.is_some()).await;
    let dir = cluster.path("browser");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));

    let (dom, log) = dump_dom(&chromium, &dir, &solo);
    assert!(
        dom.contains(r#"<section id="token-box">"#)
            && dom.contains("Lease and node reads need the cluster token")
            && !dom.contains("data-rendered"),
        "the page does not ask for the token:\n{dom}\n{log}"
    );

    let out = evio_node(&["status", "--api", &solo.proc.base])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unauthorized"),
        "status without the token: {stderr}"
    );
    let out = evio_node(&[
        "status",
        "--api",
        &solo.proc.base,
        "--token-file",
        &cluster.token_arg(),
    ])
    .output()
    .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("leader:       solo"),
        "status with the token: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
