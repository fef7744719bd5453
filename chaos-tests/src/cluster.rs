//! The test hosts: a hub network namespace holding a private bridge (and the harness's own
//! address), one network namespace per node with a veth on that bridge, and a real
//! `evio-node run` in each. Everything lives in namespaces this run creates (names carry the
//! pid), so the root namespace is never touched except for one tmpfs mount; [`Cluster`]'s
//! Drop removes processes, mounts and namespaces even when the run fails.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The private test network; it exists only inside this run's namespaces.
pub const NET_PREFIX: &str = "10.123.0";
pub const HUB_IP: &str = "10.123.0.254";
pub const API_PORT: u16 = 7700;
pub const POD_CIDR: &str = "10.124.0.0/16";
pub const ELECTION_TIMEOUT_MS: u64 = 300;
/// tmpfs size for the disk-full node's data dir.
const TMPFS_SIZE: &str = "64m";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{command}: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("member {member}: {detail}")]
    Member { member: usize, detail: String },
}

/// Runs a command to completion; non-zero exit is an error carrying stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<(), ClusterError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `args` inside network namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<(), ClusterError> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    sh("ip", &full)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Node {
    pub index: usize,
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub cni_socket: PathBuf,
    pub ipam_dir: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// Data dir on a small tmpfs (the disk-full target).
    pub tmpfs: bool,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("{}:{API_PORT}", self.ip)
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr())
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
}

pub struct Binaries {
    pub evio_node: PathBuf,
    pub evio_cni: PathBuf,
}

pub struct Cluster {
    pub tag: String,
    pub hub: String,
    pub nodes: Vec<Node>,
    pub run_dir: PathBuf,
    pub token_file: PathBuf,
    pub bins: Binaries,
    /// Pod namespaces alive right now (removed by their task; Drop removes leftovers).
    pub pod_namespaces: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The checker's certificate, once member 0 has made the cluster CA.
    pub access: Option<crate::access::Access>,
    namespaces: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Cluster {
    /// Where member 0, the bootstrap member, keeps the cluster CA.
    pub fn tls_dir(&self) -> PathBuf {
        self.nodes[0].data_dir.join(evio_api::tls::TLS_DIR)
    }

    /// The copy of the cluster CA joiners trust (written by [`Cluster::keep_ca`]).
    pub fn ca_file(&self) -> PathBuf {
        self.run_dir.join("cluster-ca.pem")
    }

    /// Keeps a copy of the CA member 0 made, for every later join.
    pub fn keep_ca(&self) -> Result<(), ClusterError> {
        let made = self.tls_dir().join(evio_api::tls::CA_CERT_FILE);
        std::fs::copy(&made, self.ca_file()).map_err(io_err(&made))?;
        Ok(())
    }

    /// Creates the hub, the bridge and `count` node namespaces; the last node's data dir is
    /// on a tmpfs. Starts no process.
    pub fn create(count: usize, run_dir: &Path, bins: Binaries) -> Result<Cluster, ClusterError> {
        let tag = format!("evc{}", std::process::id());
        let hub = format!("{tag}-hub");
        let token_file = run_dir.join("token");
        // Mode 0600 and 32+ bytes, or evio-node refuses it.
        let token = format!(
            "chaos-{}-{:016x}{:016x}",
            tag,
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&token_file)
                .and_then(|mut f| f.write_all(token.as_bytes()))
                .map_err(io_err(&token_file))?;
        }
        let mut cluster = Cluster {
            tag: tag.clone(),
            hub: hub.clone(),
            nodes: Vec::new(),
            run_dir: run_dir.to_path_buf(),
            token_file,
            bins,
            pod_namespaces: Default::default(),
            access: None,
            namespaces: Vec::new(),
            mounts: Vec::new(),
        };
        sh("ip", &["netns", "add", &hub])?;
        cluster.namespaces.push(hub.clone());
        in_ns(&hub, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(
            &hub,
            &["ip", "addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"],
        )?;
        in_ns(&hub, &["ip", "link", "set", "br0", "up"])?;
        for index in 0..count {
            let ns = format!("{tag}-n{index}");
            sh("ip", &["netns", "add", &ns])?;
            cluster.namespaces.push(ns.clone());
            let ip: Ipv4Addr = format!("{NET_PREFIX}.{}", index + 1).parse().map_err(
                |e: std::net::AddrParseError| ClusterError::Member {
                    member: index,
                    detail: e.to_string(),
                },
            )?;
            let hub_end = format!("v{index}");
            in_ns(
                &hub,
                &[
                    "ip", "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ],
            )?;
            in_ns(&hub, &["ip", "link", "set", &hub_end, "master", "br0"])?;
            in_ns(&hub, &["ip", "link", "set", &hub_end, "up"])?;
            in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                &ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
            let dir = run_dir.join(format!("n{index}"));
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let tmpfs = index + 1 == count && count > 1;
            let data_dir = dir.join("data");
            if tmpfs {
                std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
                let target = data_dir.to_string_lossy().to_string();
                sh(
                    "mount",
                    &[
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={TMPFS_SIZE}"),
                        "tmpfs",
                        &target,
                    ],
                )?;
                cluster.mounts.push(data_dir.clone());
            }
            cluster.nodes.push(Node {
                index,
                name: format!("h{index}"),
                ns,
                ip,
                log_path: dir.join("evio-node.log"),
                cni_socket: dir.join("cni.sock"),
                ipam_dir: dir.join("ipam"),
                data_dir,
                child: None,
                paused: false,
                tmpfs,
            });
        }
        Ok(cluster)
    }

    /// Starts (or restarts) node `index`: node 0 bootstraps on its first start; every other
    /// start joins through the other members (an initialised data dir skips the join).
    pub fn start(&mut self, index: usize, bootstrap: bool) -> Result<(), ClusterError> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.index != index)
            .map(|n| n.addr())
            .collect();
        let ca_file = self.ca_file();
        let node = &mut self.nodes[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(io_err(&node.log_path))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .arg(&self.bins.evio_node)
            .args(["run", "--node-name", &node.name, "--data-dir"])
            .arg(&node.data_dir)
            .args(["--listen", &node.addr(), "--pod-cidr", POD_CIDR])
            .args(["--node-bits", "8", "--voters", "3", "--voter-grace", "8s"])
            .args(["--election-timeout-ms", &ELECTION_TIMEOUT_MS.to_string()])
            .args(["--heartbeat-ms", "75", "--snapshot-every", "200"])
            .args(["--snapshot-keep", "50", "--cluster-token-file"])
            .arg(&self.token_file)
            .arg("--cni-socket")
            .arg(&node.cni_socket);
        if bootstrap {
            cmd.arg("--bootstrap");
        } else {
            // Joiners trust the CA the bootstrap member made (the token buys a certificate);
            // a copy, as member 0's own data dir may be wiped by a fault.
            cmd.arg("--join")
                .arg(peers.join(","))
                .arg("--ca-file")
                .arg(&ca_file);
        }
        cmd.env_remove("NODE_NAME")
            .env_remove("EVIO_TEST_DENY_PEERS")
            .env("EVIO_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(|e| ClusterError::Member {
            member: index,
            detail: format!("spawn {}: {e}", self.bins.evio_node.display()),
        })?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn signal(&mut self, index: usize, signal: Signal) {
        let node = &mut self.nodes[index];
        if let Some(pid) = node.pid() {
            let _ = kill(pid, signal);
        }
        match signal {
            Signal::SIGSTOP => node.paused = true,
            Signal::SIGCONT => node.paused = false,
            _ => {}
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Whether the process is running (not exited).
    pub fn alive(&mut self, index: usize) -> bool {
        match self.nodes[index].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn wipe(&mut self, index: usize) -> Result<(), ClusterError> {
        let dir = self.nodes[index].data_dir.clone();
        let entries = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Fills the tmpfs data dir of node `index` until the write fails (ENOSPC).
    pub fn fill_disk(&self, index: usize) -> Result<PathBuf, ClusterError> {
        use std::io::Write;
        let path = self.nodes[index].data_dir.join("chaos-filler");
        let mut file = File::create(&path).map_err(io_err(&path))?;
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        Ok(path)
    }

    /// Drops every fault rule in node `index`'s namespace.
    pub fn flush_rules(&self, index: usize) -> Result<(), ClusterError> {
        let ns = &self.nodes[index].ns;
        in_ns(ns, &["iptables", "-F", "INPUT"])?;
        in_ns(ns, &["iptables", "-F", "OUTPUT"])
    }

    /// In `from`'s namespace: drop packets arriving from `peer` (and, `both_ways`, sent to it).
    pub fn block(&self, from: usize, peer: usize, both_ways: bool) -> Result<(), ClusterError> {
        let ns = &self.nodes[from].ns;
        let ip = self.nodes[peer].ip.to_string();
        in_ns(ns, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
        if both_ways {
            in_ns(ns, &["iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// In `from`'s namespace: drop a random share of the packets from every peer.
    pub fn lossy(&self, from: usize, probability: f64) -> Result<(), ClusterError> {
        let ns = &self.nodes[from].ns;
        let p = format!("{probability:.2}");
        for peer in self.nodes.iter().filter(|n| n.index != from) {
            let ip = peer.ip.to_string();
            in_ns(
                ns,
                &[
                    "iptables",
                    "-A",
                    "INPUT",
                    "-s",
                    &ip,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Joins the calling thread to the hub namespace, where the harness's clients live.
    pub fn hub_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.hub))
    }

    pub fn log_text(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log_path).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.signal(index, Signal::SIGCONT);
            self.kill(index);
        }
        let pods = self
            .pod_namespaces
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        for ns in pods.iter().chain(self.namespaces.iter().rev()) {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        for mount in &self.mounts {
            let target = mount.to_string_lossy().to_string();
            let deadline = Instant::now() + Duration::from_secs(5);
            while sh("umount", &[&target]).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
