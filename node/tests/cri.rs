//! kubelet's own path: pods created through containerd's CRI (the gRPC API kubelet drives),
//! containerd exec'ing the real `evio-cni` with the conflist `evio-node dev` wrote, the real
//! `evio-node dev` daemon, host-local, loopback and portmap. Debian's containerd and runc run
//! here with their own root/state dirs, socket, CNI dirs and a pause image built from
//! busybox-static by scripts/pause-image.sh (nothing is pulled). Per datapath (Linux bridge,
//! OVS on the userspace datapath): pods get addresses in the node's block and ping each other
//! and the gateway; a pod removed while evio-node was restarted tears down; with evio-node
//! down RunPodSandbox fails with the CNI error and works once it is back; after a containerd
//! restart the pods still tear down; nothing (veth, bridge port, reservation) is left.
//!
//! One file (over 600 lines) on purpose: containerd's own setup (root, socket, pause image, CRI
//! client) is part of every scenario and used nowhere else.

#[allow(clippy::all, clippy::pedantic, dead_code, unused_qualifications)]
mod cri_api {
    include!("cri/third_party/runtime_v1.rs");
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_support::{in_netns, plugin, DevNode, LinuxBridge, MasqueradeRule, OvsBridge};
use cri_api::runtime_service_client::RuntimeServiceClient;
use cri_api::{
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};
use evio_test_support::cni as cni_support;
use evio_test_support::{is_root, prerequisites};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

const PAUSE_IMAGE: &str = "localhost/evio-pause:test";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn ready(test: &str, ovs: bool) -> bool {
    let mut checks = vec![
        ("root", is_root()),
        ("containerd", on_path("containerd")),
        ("runc", on_path("runc")),
        ("ctr", on_path("ctr")),
        ("busybox-static", Path::new("/bin/busybox").is_file()),
        ("host-local", plugin("host-local").is_file()),
        ("loopback", plugin("loopback").is_file()),
    ];
    if ovs {
        checks.push(("ovsdb", Path::new("/run/openvswitch/db.sock").exists()));
    }
    prerequisites(test, &checks)
}

/// A private containerd (CRI plugin on, native snapshotter, runc) under `dir`, SIGKILLed with
/// its shims on drop.
struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    /// Every shim seen: children of this subreaper, so their pids stay theirs until reaped
    /// on drop (a shim that exits on RemovePodSandbox stays a zombie until then).
    seen: std::sync::Mutex<std::collections::BTreeSet<i32>>,
    /// Every pod sandbox id seen: their processes are killed on drop.
    pods: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Containerd {
    fn start(dir: &Path, cni_bin: &Path, cni_conf: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        let d = dir.display();
        // The facts of these machines: no CAP_SYS_RESOURCE (restrict_oom_score_adj), no
        // overlay snapshotter (native), the CRI plugin runs `loopback` from its bin dir.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            socket = socket.display(),
            bin = cni_bin.display(),
            conf = cni_conf.display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap_or_else(|e| panic!("{e}"));
        // containerd's shims daemonize; as a subreaper this process inherits them (instead
        // of an init that may never reap them), so they can be reaped after the test.
        nix::sys::prctl::set_child_subreaper(true).unwrap_or_else(|e| panic!("{e}"));
        let mut containerd = Containerd {
            dir: dir.to_path_buf(),
            socket,
            child: None,
            seen: Default::default(),
            pods: Default::default(),
        };
        containerd.restart();
        let image = dir.join("pause.tar");
        evio_test_support::run(
            &scripts().join("pause-image.sh").to_string_lossy(),
            &[&image.to_string_lossy(), PAUSE_IMAGE],
        );
        containerd.ctr(&["images", "import", &image.to_string_lossy()]);
        containerd
    }

    fn ctr(&self, args: &[&str]) -> String {
        let socket = self.socket.to_string_lossy();
        let mut all = vec!["--address", &socket, "--namespace", "k8s.io"];
        all.extend_from_slice(args);
        evio_test_support::run("ctr", &all)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Starts containerd (again) and waits for its socket.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "containerd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn containerd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the CRI plugin serves (after a restart it first recovers its pods).
    async fn cri_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = self.client().await;
        while let Err(e) = client.status(StatusRequest { verbose: false }).await {
            assert!(
                Instant::now() < deadline,
                "CRI not ready: {e}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL containerd only (its shims, and so the pods, keep running).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> RuntimeServiceClient<Channel> {
        let (shims, _) = self.descendants();
        if let Ok(mut seen) = self.seen.lock() {
            seen.extend(shims);
        }
        let socket = self.socket.clone();
        // The URI is ignored: every connection goes to the unix socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap_or_else(|e| panic!("CRI connect: {e}"));
        RuntimeServiceClient::new(channel)
    }

    fn saw_pod(&self, id: &str) {
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert(id.to_string());
        }
    }

    /// The processes this containerd started, found now: its shims (they outlive it: that
    /// is how pods survive a containerd restart) and the sandboxes (in a cgroup named after
    /// a pod this test made), as (shims, sandboxes).
    fn descendants(&self) -> (Vec<i32>, Vec<i32>) {
        let socket = self.socket.to_string_lossy().into_owned();
        let pods = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
        let (mut shims, mut sandboxes) = (Vec::new(), Vec::new());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return (shims, sandboxes);
        };
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            if std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&socket))
            {
                shims.push(pid);
            } else if std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cgroup| pods.iter().any(|id| cgroup.contains(id.as_str())))
            {
                sandboxes.push(pid);
            }
        }
        (shims, sandboxes)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        let (shims, sandboxes) = self.descendants();
        for &pid in &sandboxes {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut shims: std::collections::BTreeSet<i32> = shims.into_iter().collect();
        if let Ok(seen) = self.seen.lock() {
            shims.extend(seen.iter());
        }
        for pid in shims {
            let pid = Pid::from_raw(pid);
            let _ = kill(pid, Signal::SIGKILL);
            // Re-parented to this process (a subreaper): reap them.
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        // With their shims gone the sandboxes are this process's children too (a waitpid
        // for a pid that is not one is refused, nothing else).
        for pid in sandboxes {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        // The sandboxes' netns mounts and rootfs bind mounts live under the state dir.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let dir = self.dir.to_string_lossy().into_owned();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// One test's world: an evio-node dev for a pod CIDR of its own, its conflist (bridge of
/// its own) in containerd's conf dir, containerd.
struct World {
    node_name: String,
    pod_cidr: String,
    evio: Option<DevNode>,
    containerd: Containerd,
    bridge: String,
    ovs: bool,
    ipam_dir: PathBuf,
    subnet: ipnetwork::Ipv4Network,
    gateway: String,
    /// Last: removed after containerd and evio-node are gone.
    dir: tempfile::TempDir,
}

impl World {
    fn start(tag: &str, second_octet: u8, ovs: bool) -> World {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let node_name = format!("cri-{tag}");
        let pod_cidr = format!("10.{second_octet}.0.0/16");
        let evio = DevNode::start(dir.path(), &node_name, Some(&pod_cidr));
        let bridge = format!("ecri{}{}", &tag[..1], std::process::id() % 100_000);
        let ipam_dir = dir.path().join("ipam");
        // The conflist dev wrote, as containerd will read it: this test's own network
        // name, bridge and host-local dir; OVS on the userspace datapath (no kernel
        // module on these machines).
        let mut conflist = evio.conflist.clone();
        conflist["name"] = json!(format!("evio-cri-{tag}"));
        // Debian 12's containerd 1.6 (libcni 1.1) ignores `cniVersions` and reads only
        // `cniVersion`, which the generated conflist keeps at 1.0.0 for such runtimes.
        assert_eq!(conflist["cniVersion"], "1.0.0", "{conflist}");
        let plugin0 = &mut conflist["plugins"][0];
        plugin0["bridge"] = json!(bridge);
        plugin0["bridgeType"] = json!(if ovs { "OVS" } else { "LXBR" });
        if ovs {
            plugin0["ovsDatapath"] = json!("netdev");
        }
        plugin0["ipam"]["dataDir"] = json!(ipam_dir);
        let subnet: ipnetwork::Ipv4Network = plugin0["nodeSubnet"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("conflist without nodeSubnet: {plugin0}"));
        let gateway = plugin0["ipam"]["ranges"][0][0]["gateway"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let conf_dir = dir.path().join("net.d");
        let bin_dir = dir.path().join("cni-bin");
        for d in [&conf_dir, &bin_dir] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(
            conf_dir.join("10-evio.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(cni_support::evio_cni_binary(), bin_dir.join("evio-cni"))
            .unwrap_or_else(|e| panic!("{e}"));
        for name in ["host-local", "loopback", "portmap"] {
            std::os::unix::fs::symlink(plugin(name), bin_dir.join(name))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let state = dir.path().join("containerd");
        std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("{e}"));
        let containerd = Containerd::start(&state, &bin_dir, &conf_dir);
        World {
            dir,
            node_name,
            pod_cidr,
            evio: Some(evio),
            containerd,
            bridge,
            ovs,
            ipam_dir,
            subnet,
            gateway,
        }
    }

    fn start_evio(&mut self) {
        assert!(self.evio.is_none());
        self.evio = Some(DevNode::start(
            self.dir.path(),
            &self.node_name,
            Some(&self.pod_cidr),
        ));
    }

    fn evio_logs(&self) -> String {
        self.evio
            .as_ref()
            .map(|e| e.daemon.logs())
            .unwrap_or_default()
    }

    async fn run_pod(&self, name: &str, attempt: u32) -> Result<String, tonic::Status> {
        let uid = format!("{name}-{}", std::process::id());
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: "evio-cri".into(),
                attempt,
            }),
            hostname: name.to_string(),
            log_directory: self.dir.path().join("pod-logs").to_string_lossy().into(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let mut client = self.containerd.client().await;
        client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
            .inspect(|id| self.containerd.saw_pod(id))
    }

    /// The pod's address and the pid of its sandbox process (whose netns is the pod's).
    async fn pod_status(&self, id: &str) -> (String, i64) {
        let mut client = self.containerd.client().await;
        let answer = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("status {id}: {e}"))
            .into_inner();
        let ip = answer
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let info: Value = answer
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        (ip, info["pid"].as_i64().unwrap_or_default())
    }

    async fn sandboxes(&self) -> Vec<String> {
        let mut client = self.containerd.client().await;
        client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .unwrap_or_else(|e| panic!("list: {e}"))
            .into_inner()
            .items
            .into_iter()
            .map(|s| s.id)
            .inspect(|id| self.containerd.saw_pod(id))
            .collect()
    }

    async fn remove_pod(&self, id: &str) {
        let mut client = self.containerd.client().await;
        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("stop {id}: {e}\n{}", self.evio_logs()));
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove {id}: {e}"));
    }

    fn ping_from(&self, pid: i64, target: &str) {
        let mut cmd = Command::new("ping");
        cmd.args(["-c", "1", "-W", "5", target]);
        let out = in_netns(&mut cmd, format!("/proc/{pid}/ns/net"))
            .output()
            .unwrap_or_else(|e| panic!("ping: {e}"));
        assert!(
            out.status.success(),
            "ping {target} from pid {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The bridge's ports (OVS ports other than the bridge's own, or Linux bridge slaves).
    fn bridge_ports(&self) -> Vec<String> {
        let out = if self.ovs {
            let exists = Command::new("ovs-vsctl")
                .args(["br-exists", &self.bridge])
                .status()
                .is_ok_and(|s| s.success());
            if !exists {
                return Vec::new();
            }
            evio_test_support::run("ovs-vsctl", &["list-ports", &self.bridge])
        } else {
            cni_support::ip(&["-o", "link", "show", "master", &self.bridge])
        };
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Addresses host-local holds for this network.
    fn reservations(&self) -> Vec<String> {
        let Ok(dirs) = std::fs::read_dir(&self.ipam_dir) else {
            return Vec::new();
        };
        dirs.filter_map(Result::ok)
            .filter_map(|net| std::fs::read_dir(net.path()).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }

    fn wait_clean(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ports, held) = (self.bridge_ports(), self.reservations());
            if ports.is_empty() && held.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: ports {ports:?}, reservations {held:?} left\n{}",
                self.evio_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn pods_through_cri(tag: &str, second_octet: u8, ovs: bool) {
    let mut world = World::start(tag, second_octet, ovs);
    let _masquerade = MasqueradeRule(world.subnet);
    let (_ovs_bridge, _linux_bridge) = if ovs {
        (Some(OvsBridge(world.bridge.clone())), None)
    } else {
        (None, Some(LinuxBridge(world.bridge.clone())))
    };

    // Several pods: addresses in the node's block, reachable from each other and reaching
    // the gateway.
    let mut pods = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let id = world.run_pod(name, 0).await.unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {name}: {e}\n{}\n{}",
                world.evio_logs(),
                world.containerd.log()
            )
        });
        let (ip, pid) = world.pod_status(&id).await;
        let addr: std::net::Ipv4Addr = ip
            .parse()
            .unwrap_or_else(|e| panic!("pod {name} address {ip:?}: {e}"));
        assert!(
            world.subnet.contains(addr),
            "{addr} outside {}",
            world.subnet
        );
        assert!(pid > 0, "no sandbox pid for {name}");
        pods.insert(name, (id, ip, pid));
    }
    assert_eq!(world.bridge_ports().len(), 3, "{:?}", world.bridge_ports());
    assert_eq!(world.reservations().len(), 3);
    let (_, ip_b, pid_a) = (&pods["a"].0, &pods["b"].1, pods["a"].2);
    world.ping_from(pid_a, ip_b);
    world.ping_from(pods["c"].2, &pods["a"].1);
    world.ping_from(pid_a, &world.gateway.clone());

    // evio-node restarted while pods run: their DEL still works.
    let evio = world.evio.take();
    drop(evio);
    world.start_evio();
    let (id_a, _, _) = pods.remove("a").unwrap_or_default();
    world.remove_pod(&id_a).await;
    world.ping_from(pods["c"].2, &pods["b"].1);

    // evio-node down: RunPodSandbox fails with the CNI error, and works once it is back.
    world.evio = None;
    let before = world.sandboxes().await;
    let refused = world
        .run_pod("down", 0)
        .await
        .expect_err("RunPodSandbox with evio-node down");
    assert!(
        refused.message().contains("evio") || refused.message().contains("cni"),
        "{refused:?}"
    );
    world.start_evio();
    // As kubelet does: the failed sandbox is removed (its DEL finds nothing to undo) and
    // the pod retried as the next attempt.
    for id in world.sandboxes().await {
        if !before.contains(&id) {
            world.remove_pod(&id).await;
        }
    }
    let id_back = world.run_pod("down", 1).await.unwrap_or_else(|e| {
        panic!(
            "RunPodSandbox once evio-node is back: {e}\n{}",
            world.evio_logs()
        )
    });
    let (_, pid_back) = world.pod_status(&id_back).await;
    world.ping_from(pid_back, &pods["b"].1);

    // containerd restarted (SIGKILL; the pods live on in their shims): they still tear down.
    world.containerd.kill();
    world.containerd.restart();
    world.containerd.cri_ready().await;
    for id in [id_back, pods["b"].0.clone(), pods["c"].0.clone()] {
        world.remove_pod(&id).await;
    }
    world.wait_clean("after every pod was removed");
    let left = world.containerd.ctr(&["containers", "list", "--quiet"]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    if let Some(evio) = &world.evio {
        evio.daemon.assert_no_panics();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_linux_bridge_through_containerd() {
    if !ready("CRI on a Linux bridge", false) {
        return;
    }
    pods_through_cri("lxbr", 231, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_ovs_through_containerd() {
    if !ready("CRI on OVS", true) {
        return;
    }
    pods_through_cri("ovs", 232, true).await;
}
