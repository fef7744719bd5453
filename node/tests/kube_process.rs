//! The Kubernetes integration of real `evio-node run` processes: Node annotations,
//! `--join-from-kubernetes`, and the leader's release of deleted Nodes' leases.
//!
//! No Kubernetes API server can be installed on the test machines, so these tests run
//! against a small local HTTP stand-in (`evio_test_support::kube_standin`) that serves the
//! real API paths and JSON (`/api/v1/nodes` list and watch streams, `/api/v1/nodes/{name}` GET and
//! merge-patch PATCH, `Status` errors); evio-node reaches it through a kubeconfig file,
//! exactly as it would reach a real cluster.
//!
//! One file (about 700 lines) on purpose: every scenario needs the stand-in plus real members, and
//! shares those helpers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use evio_api::{Client, Consistency};
use evio_test_support::cluster::{free_addr, run_args, TOKEN};
use evio_test_support::kube_standin::KubeStandIn;
use evio_test_support::{evio_node, Proc};
use nix::sys::signal::Signal;

const SUBNET: &str = "evio.io/pod-subnet";
const API_ADDRESS: &str = "evio.io/api-address";

struct Env {
    dir: tempfile::TempDir,
    token_file: PathBuf,
    kubeconfig: PathBuf,
    kube: KubeStandIn,
    /// The data dir of the member started with --bootstrap: members joining by address
    /// trust its CA (those joining from Kubernetes read it from the cluster record).
    bootstrap_data: std::sync::Mutex<Option<PathBuf>>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token_file = dir.path().join("token");
        evio_test_support::cluster::write_token(&token_file, TOKEN);
        let kube = KubeStandIn::start();
        let kubeconfig = kube.write_kubeconfig(dir.path());
        Env {
            dir,
            token_file,
            kubeconfig,
            kube,
            bootstrap_data: std::sync::Mutex::new(None),
        }
    }

    /// `evio-node run` for `name` on `addr` with the stand-in's kubeconfig, plus `extra`.
    fn start(&self, name: &str, addr: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.command(name, addr, extra);
        cmd.args(["--node-name", name]);
        Proc::spawn(cmd).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Like `start`, with the node name only in `$NODE_NAME` (the downward API's way).
    fn start_named_by_env(&self, name: &str, addr: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.command(name, addr, extra);
        cmd.env("NODE_NAME", name);
        Proc::spawn(cmd).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn command(&self, name: &str, addr: &str, extra: &[&str]) -> std::process::Command {
        self.command_with(name, addr, extra, true)
    }

    /// `command`, with the kubeconfig passed as `--kubeconfig` or else in `$KUBECONFIG`.
    fn command_with(
        &self,
        name: &str,
        addr: &str,
        extra: &[&str],
        kubeconfig_flag: bool,
    ) -> std::process::Command {
        let data = self.dir.path().join(name).to_string_lossy().to_string();
        let token = self.token_file.to_string_lossy().to_string();
        let kubeconfig = self.kubeconfig.to_string_lossy().to_string();
        let base = run_args(&data, addr, &token);
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        if !extra.contains(&"--voters") {
            args.extend_from_slice(&["--voters", "1"]);
        }
        if kubeconfig_flag && !extra.contains(&"--kubeconfig") {
            args.extend_from_slice(&["--kubeconfig", &kubeconfig]);
        }
        args.extend_from_slice(extra);
        let mut bootstrap = self
            .bootstrap_data
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if extra.contains(&"--bootstrap") {
            *bootstrap = Some(self.dir.path().join(name));
        }
        let ca_file = bootstrap
            .as_deref()
            .filter(|_| extra.contains(&"--join") && !extra.contains(&"--join-from-kubernetes"))
            .map(evio_test_support::cluster::ca_file);
        if let Some(ca_file) = &ca_file {
            args.extend_from_slice(&["--ca-file", ca_file]);
        }
        let mut cmd = evio_node(&args);
        if kubeconfig_flag {
            cmd.env_remove("KUBECONFIG");
        } else {
            cmd.env("KUBECONFIG", &kubeconfig);
        }
        cmd
    }
}

/// Polls `check` until it returns Some (30 s at most), else panics with `what` and `logs`.
async fn eventually<T, F, Fut>(what: &str, logs: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}:\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acquires `node`'s lease, retrying while the cluster has no leader yet (503).
async fn acquire(client: &Client, node: &str) -> evio_api::LeaseJson {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.acquire(node, None).await {
            Ok((lease, _)) => return lease,
            Err(e) if e.status() == Some(503) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("acquire {node}: {e}"),
        }
    }
}

async fn lease_subnet(client: &Client, node: &str) -> Option<String> {
    client
        .get_lease(node, Consistency::Local)
        .await
        .unwrap_or_else(|e| panic!("get lease {node}: {e}"))
        .map(|l| l.subnet.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_annotated_and_a_second_node_joins_from_annotations() {
    let env = Env::new();
    env.kube.add_node("kn-a");
    env.kube.add_node("kn-b");
    env.kube.add_node("kn-c");
    // kn-c starts first, when no Node carries an address yet: it keeps re-reading them. It
    // finds the API through $KUBECONFIG.
    let addr_c = free_addr();
    let mut early = env.command_with("kn-c", &addr_c, &["--join-from-kubernetes"], false);
    early.args(["--node-name", "kn-c"]);
    let early = tokio::task::spawn_blocking(move || Proc::spawn(early));
    eventually("kn-c's first Node list", String::new, || async {
        (env.kube.lists() > 0).then_some(())
    })
    .await;
    let addr_a = free_addr();
    let a = env.start("kn-a", &addr_a, &["--bootstrap", "--kubernetes"]);
    let api_a = a.client(Some(TOKEN));

    // Without a lease: the API address only.
    let annotated = |key, want: String| {
        let kube = &env.kube;
        move || {
            let want = want.clone();
            async move { kube.annotation("kn-a", key).filter(|v| *v == want) }
        }
    };
    let what = "kn-a's api-address annotation";
    eventually(what, || a.logs(), annotated(API_ADDRESS, addr_a.clone())).await;
    assert_eq!(env.kube.annotation("kn-a", SUBNET), None);

    // A lease shows up as the subnet annotation.
    let lease_a = acquire(&api_a, "kn-a").await;
    let subnet_a = lease_a.subnet.to_string();
    let what = "kn-a's pod-subnet annotation";
    eventually(what, || a.logs(), annotated(SUBNET, subnet_a.clone())).await;

    let c = early
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("kn-c: {e}"));

    // kn-b knows no member address: only kn-a's annotation leads it to the cluster. Its
    // name comes from $NODE_NAME, as the DaemonSet's downward API sets it.
    let addr_b = free_addr();
    let b = env.start_named_by_env("kn-b", &addr_b, &["--join-from-kubernetes", "--kubernetes"]);
    let api_b = b.client(Some(TOKEN));
    let cluster = api_b.cluster().await.unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["kn-a", "kn-b", "kn-c"], "{cluster:?}");
    let lease_b = acquire(&api_b, "kn-b").await;
    assert_ne!(lease_b.subnet, lease_a.subnet);
    let subnet_b = lease_b.subnet.to_string();
    eventually(
        "kn-b's annotations",
        || b.logs(),
        || async {
            let subnet = env.kube.annotation("kn-b", SUBNET)?;
            let addr = env.kube.annotation("kn-b", API_ADDRESS)?;
            (subnet == subnet_b && addr == addr_b).then_some(())
        },
    )
    .await;

    // Releasing kn-a's lease removes its subnet annotation (the address stays).
    api_b
        .release("kn-a")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(
        "kn-a's pod-subnet annotation removed",
        || a.logs(),
        || async { env.kube.annotation("kn-a", SUBNET).is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        env.kube.annotation("kn-a", API_ADDRESS),
        Some(addr_a.clone())
    );
    a.assert_no_panics();
    b.assert_no_panics();
    c.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_deleted_nodes_lose_their_leases_after_the_grace() {
    let env = Env::new();
    for name in ["gc-a", "gc-b", "gc-c", "gc-d", "gc-e"] {
        env.kube.add_node(name);
    }
    let addr_a = free_addr();
    let a = env.start(
        "gc-a",
        &addr_a,
        &["--bootstrap", "--kubernetes", "--node-gc-grace", "2s"],
    );
    let api = a.client(Some(TOKEN));

    // gc-c runs evio-node, holds a lease, then dies and goes NotReady: its Node stays.
    let addr_c = free_addr();
    let mut c = env.start("gc-c", &addr_c, &["--join", &addr_a]);
    let lease_c = acquire(&c.client(Some(TOKEN)), "gc-c").await;
    c.signal(Signal::SIGKILL);
    env.kube.set_not_ready("gc-c");

    let mut subnets = std::collections::BTreeMap::new();
    for name in ["gc-a", "gc-b", "gc-d", "gc-e", "gc-ghost"] {
        let lease = acquire(&api, name).await;
        subnets.insert(name, lease.subnet.to_string());
    }
    // gc-d is deleted and re-created at once, well within the grace; gc-b is deleted for
    // good; gc-e is deleted while the watch is cut and the history compacted (only the
    // relist after 410 Gone shows it); gc-ghost never had a Node at all.
    env.kube.delete_node("gc-d");
    env.kube.add_node("gc-d");
    env.kube.delete_node("gc-b");
    env.kube.delete_node_unseen("gc-e");

    for gone in ["gc-b", "gc-e", "gc-ghost"] {
        eventually(
            &format!("{gone}'s lease released"),
            || a.logs(),
            || async { lease_subnet(&api, gone).await.is_none().then_some(()) },
        )
        .await;
    }
    // Any wrong release of the others would have happened by now (gc-d was deleted before
    // gc-b); wait two more grace periods to be sure they are kept.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lease_subnet(&api, "gc-c").await,
        Some(lease_c.subnet.to_string()),
        "a Node whose evio-node died keeps its lease:\n{}",
        a.logs()
    );
    for kept in ["gc-a", "gc-d"] {
        assert_eq!(
            lease_subnet(&api, kept).await.as_ref(),
            subnets.get(kept),
            "{kept} keeps its lease:\n{}",
            a.logs()
        );
    }

    let logs = a.logs();
    let released: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "released the lease of a deleted Node")
        .collect();
    assert_eq!(released.len(), 3, "{logs}");
    for entry in &released {
        let node = entry["fields"]["node"].as_str().unwrap_or_default();
        assert!(["gc-b", "gc-e", "gc-ghost"].contains(&node), "{entry}");
        assert_eq!(
            entry["fields"]["subnet"].as_str(),
            subnets.get(node).map(String::as_str),
            "{entry}"
        );
        assert!(entry["fields"]["gone_for"].as_str().is_some(), "{entry}");
    }
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("evio_node_gc_releases_total 3"),
        "{metrics}"
    );
    a.assert_no_panics();
}

#[test]
fn an_unreadable_kubeconfig_is_refused_naming_it() {
    let env = Env::new();
    let missing = env.dir.path().join("no-such-kubeconfig");
    let missing_arg = missing.to_string_lossy().to_string();
    let mut cmd = env.command(
        "kn-x",
        &free_addr(),
        &["--bootstrap", "--kubernetes", "--kubeconfig", &missing_arg],
    );
    cmd.args(["--node-name", "kn-x"]);
    let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&missing_arg), "{stderr}");
    assert!(!env.dir.path().join("kn-x").exists(), "nothing written");
}

/// A new leader takes over the node GC: the timer of a Node deleted under the old leader
/// restarts when the new leader first sees it missing, and its lease is released then; the
/// dead leader's own Node still exists, so its lease stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_releases_what_the_old_one_did_not_get_to() {
    let env = Env::new();
    for name in ["lf-a", "lf-b", "lf-c", "lf-gone"] {
        env.kube.add_node(name);
    }
    let gc = ["--kubernetes", "--node-gc-grace", "2s", "--voters", "3"];
    let addr_a = free_addr();
    let mut first = vec!["--bootstrap"];
    first.extend_from_slice(&gc);
    let mut procs = vec![env.start("lf-a", &addr_a, &first)];
    let mut rest = vec!["--join", addr_a.as_str()];
    rest.extend_from_slice(&gc);
    for name in ["lf-b", "lf-c"] {
        procs.push(env.start(name, &free_addr(), &rest));
    }
    let api = procs[0].client(Some(TOKEN));
    eventually(
        "three voters",
        || procs[0].logs(),
        || async {
            let cluster = api.cluster().await.ok()?;
            let voters = cluster
                .members
                .iter()
                .filter(|m| m.role == "leader" || m.role == "voter")
                .count();
            (voters == 3).then_some(())
        },
    )
    .await;
    let mut subnets = std::collections::BTreeMap::new();
    for name in ["lf-a", "lf-b", "lf-c", "lf-gone"] {
        let lease = acquire(&api, name).await;
        subnets.insert(name, lease.subnet.to_string());
    }

    // lf-gone's Node goes away and the leader dies before the grace is over.
    let cluster = api.cluster().await.unwrap_or_else(|e| panic!("{e}"));
    let leader = cluster
        .members
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.name.clone())
        .unwrap_or_else(|| panic!("no leader: {cluster:?}"));
    env.kube.delete_node("lf-gone");
    let dead = procs
        .iter()
        .position(|p| p.base.ends_with(&leader_addr(&cluster, &leader)))
        .unwrap_or_else(|| panic!("leader {leader} is not one of ours"));
    let mut dead_proc = procs.remove(dead);
    dead_proc.signal(Signal::SIGKILL);

    let survivor = procs[0].client(Some(TOKEN));
    eventually(
        "lf-gone's lease released by the new leader",
        || procs[0].logs(),
        || async {
            match survivor.get_lease("lf-gone", Consistency::Local).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    // The log line may reach the test's log reader a moment after the release applies.
    eventually(
        "the release log line of the new leader",
        || procs.iter().map(Proc::logs).collect(),
        || async {
            let released_by = procs
                .iter()
                .filter(|p| p.logs().contains("released the lease of a deleted Node"))
                .count();
            (released_by == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        lease_subnet(&survivor, &leader).await.as_ref(),
        subnets.get(leader.as_str()),
        "the dead leader's Node still exists: its lease stays"
    );
    for p in &procs {
        p.assert_no_panics();
    }
}

fn leader_addr(cluster: &evio_api::ClusterJson, leader: &str) -> String {
    cluster
        .members
        .iter()
        .find(|m| m.name == leader)
        .map(|m| m.addr.clone())
        .unwrap_or_default()
}

/// Three nodes of a fresh install start at the same moment with `--kubernetes
/// --join-from-kubernetes` and no `--bootstrap`: the create-if-absent ConfigMap
/// `evio-cluster` lets exactly one of them create the cluster, the others join it. Then the
/// bootstrapper's data dir is wiped: it joins the same cluster again (a new node id) instead
/// of creating a second one, and an explicit `--bootstrap` on another wiped node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_create_one_cluster_and_a_wiped_bootstrapper_joins() {
    let env = Env::new();
    let names = ["kb-a", "kb-b", "kb-c"];
    for name in names {
        env.kube.add_node(name);
    }
    let auto = ["--kubernetes", "--join-from-kubernetes", "--voters", "3"];
    let addrs: Vec<String> = names.iter().map(|_| free_addr()).collect();
    let barrier = std::sync::Barrier::new(names.len());
    let mut procs: Vec<Proc> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .zip(&addrs)
            .map(|(name, addr)| {
                let (env, barrier) = (&env, &barrier);
                scope.spawn(move || {
                    let cmd = {
                        let mut cmd = env.command(name, addr, &auto);
                        cmd.args(["--node-name", name]);
                        cmd
                    };
                    barrier.wait();
                    Proc::spawn(cmd).unwrap_or_else(|e| panic!("{name}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a starter thread panicked"))
            })
            .collect()
    });
    let all_logs = |procs: &[Proc]| {
        procs
            .iter()
            .map(Proc::logs)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let bootstrappers: Vec<usize> = (0..procs.len())
        .filter(|&i| procs[i].logs().contains("bootstrapped a new cluster"))
        .collect();
    assert_eq!(bootstrappers.len(), 1, "{}", all_logs(&procs));
    let (created, conflicts) = env.kube.config_map_creates();
    assert_eq!(
        (created, conflicts),
        (1, 2),
        "one record per install, the others refused with 409 AlreadyExists"
    );
    let record = env
        .kube
        .config_map("kube-system", "evio-cluster")
        .unwrap_or_else(|| panic!("no cluster record"));
    let first = bootstrappers[0];
    assert_eq!(record["data"]["bootstrap-node"], names[first], "{record}");

    // One cluster of three, the same cluster id in every data dir.
    let client = |i: usize| procs[i].client(Some(TOKEN));
    // Three voters, so that losing the bootstrapper (the first leader) keeps a quorum: seen
    // by every member, the change to them complete. A member still in the joint configuration
    // ({bootstrapper} and {all three}) needs the bootstrapper's vote to elect anyone, so
    // killing it then would leave the survivors without a leader for good.
    let cluster = eventually(
        "three voters, seen by every member",
        || all_logs(&procs),
        || async {
            let mut seen = None;
            for i in 0..procs.len() {
                let c = client(i).cluster().await.ok()?;
                let voters = c
                    .members
                    .iter()
                    .filter(|m| m.role == "voter" || m.role == "leader")
                    .count();
                if voters != 3 || c.membership_changing {
                    return None;
                }
                seen = Some(c);
            }
            seen
        },
    )
    .await;
    assert_eq!(cluster.members.len(), 3);
    // The cluster id each member recorded in its data dir.
    let cluster_id_of = |name: &str| -> Option<String> {
        let path = env.dir.path().join(name).join("identity.json");
        let identity: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        identity["clusterId"].as_str().map(str::to_string)
    };
    let cluster_id = cluster_id_of(names[first]).unwrap_or_else(|| panic!("no cluster id"));
    for name in names {
        let id = eventually(
            "the cluster id recorded",
            || all_logs(&procs),
            || async { cluster_id_of(name) },
        )
        .await;
        assert_eq!(id, cluster_id, "{name}");
    }
    eventually(
        "the cluster id in the record",
        || all_logs(&procs),
        || async {
            let record = env.kube.config_map("kube-system", "evio-cluster")?;
            (record["data"]["cluster-id"].as_str() == Some(cluster_id.as_str())).then_some(())
        },
    )
    .await;

    // The bootstrapper loses its data dir: it must join, not create a second cluster. It
    // comes back at its own address, as a DaemonSet pod on the same host does: that is how
    // the leader tells a wiped node from a paused one and replaces it at once (a new address
    // would wait out --voter-grace, issue 14 item 8).
    let old_id = procs[first]
        .client(Some(TOKEN))
        .cluster()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .node_id;
    procs[first].signal(Signal::SIGKILL);
    std::fs::remove_dir_all(env.dir.path().join(names[first])).unwrap_or_else(|e| panic!("{e}"));
    // The survivors elect a leader of their own first, then the wiped member rejoins.
    let survivor = (first + 1) % names.len();
    eventually(
        "a leader among the survivors",
        || all_logs(&procs),
        || async {
            let c = procs[survivor].client(Some(TOKEN)).cluster().await.ok()?;
            c.leader_id.filter(|id| *id != old_id).map(|_| ())
        },
    )
    .await;
    let rejoined = env.start(names[first], &addrs[first], &auto);
    assert!(
        !rejoined.logs().contains("bootstrapped a new cluster"),
        "{}",
        rejoined.logs()
    );
    assert_eq!(
        cluster_id_of(names[first]).as_deref(),
        Some(cluster_id.as_str()),
        "{}",
        rejoined.logs()
    );
    assert_eq!(env.kube.config_map_creates().0, 1);

    // An explicit --bootstrap on a wiped node of this install is refused, naming the record.
    let other = (first + 1) % names.len();
    procs[other].signal(Signal::SIGKILL);
    std::fs::remove_dir_all(env.dir.path().join(names[other])).unwrap_or_else(|e| panic!("{e}"));
    let out = env
        .command(names[other], &free_addr(), &["--kubernetes", "--bootstrap"])
        .args(["--node-name", names[other]])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--bootstrap refused") && stderr.contains("evio-cluster"),
        "{stderr}"
    );
    rejoined.assert_no_panics();
}

/// `GET /v1/node` (what the status page and `evio-node status` show): a Node that does not
/// exist yet leaves the integration with the annotation's error and not annotated; once the
/// Node exists it is annotated and the error stays recorded, with its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integration_state_shows_annotation_errors_then_the_annotation() {
    let env = Env::new();
    let addr = free_addr();
    let member = env.start("kn-late", &addr, &["--bootstrap", "--kubernetes"]);
    let api = member.client(Some(TOKEN));
    let failed = eventually(
        "an annotation error in /v1/node",
        || member.logs(),
        || async {
            let node = api.node().await.ok()?;
            node.kubernetes.last_error.is_some().then_some(node)
        },
    )
    .await;
    let k = &failed.kubernetes;
    assert!(k.enabled && !k.annotated && k.errors >= 1, "{failed:#?}");
    assert_eq!(k.node_name.as_deref(), Some("kn-late"));
    assert!(
        k.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("annotating the Node")),
        "{failed:#?}"
    );
    assert!(k.last_error_at.is_some(), "{failed:#?}");

    env.kube.add_node("kn-late");
    let node = eventually(
        "the Node annotated",
        || member.logs(),
        || async {
            let node = api.node().await.ok()?;
            node.kubernetes.annotated.then_some(node)
        },
    )
    .await;
    assert!(node.kubernetes.annotated_at.is_some(), "{node:#?}");
    assert!(node.kubernetes.last_error.is_some(), "{node:#?}");
    assert_eq!(
        env.kube.annotation("kn-late", API_ADDRESS).as_deref(),
        Some(addr.as_str())
    );
    // Alone, it leads: the Node watch of the lease GC runs here.
    eventually(
        "node GC active on the leader",
        || member.logs(),
        || async {
            api.node()
                .await
                .ok()?
                .kubernetes
                .node_gc_active
                .then_some(())
        },
    )
    .await;
}
