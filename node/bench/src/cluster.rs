//! The processes a benchmark runs: `evio-node run` members and `etcd` members, each in its own
//! directory under one temp dir, on free 127.0.0.1 ports. Dropping a cluster kills and reaps its
//! processes and removes its directory, also when a benchmark fails half-way.
//!
//! Over 500 lines: the two kinds of cluster are started, killed, measured (RSS) and cleaned up
//! the same way and share those helpers; every benchmark uses both side by side.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use evio_api::{Client, ClusterJson};
use evio_node::etcd_gateway::{int64, Gateway, TlsFiles};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::Bins;

/// 32+ bytes, written 0600: evio-node refuses anything else.
const TOKEN: &str = "evio-bench-token-of-at-least-32-bytes";

/// A free 127.0.0.1 port (bound and released; nothing else on this machine races for it long).
pub fn free_addr() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// A scratch directory on disk (not tmpfs: durability must cost what it costs).
pub fn scratch_dir(what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("evio-bench-{what}-"))
        .tempdir_in("/var/tmp")
        .context("create a scratch dir in /var/tmp")
}

/// One child process, restartable with the same command line; killed and reaped on drop.
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Added to the inherited environment.
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn start(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Result<Process> {
        Self::start_with_env(name, program, args, Vec::new(), log)
    }

    /// As [`Process::start`], with `env` added to the environment.
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Result<Process> {
        let mut process = Process {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env,
            log,
            child: None,
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut command = Command::new(&self.program);
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe prctl(2) call. It takes the child down with evio-bench even when
        // evio-bench itself is SIGKILLed and cannot run its cleanup.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("NODE_NAME")
            .env_remove("EVIO_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} ({})", self.program.display(), self.name))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How it ended, if it has.
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child
                .try_wait()
                .with_context(|| format!("wait {}", self.name))?),
            None => Ok(None),
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL)
                .with_context(|| format!("SIGKILL {}", self.name))?;
            child
                .wait()
                .with_context(|| format!("reap {}", self.name))?;
        }
        Ok(())
    }

    /// Starts it again with the same command line (and so the same data dir).
    pub fn restart(&mut self, args: Option<Vec<String>>) -> Result<()> {
        self.kill()?;
        if let Some(args) = args {
            self.args = args;
        }
        self.spawn()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS for {} (pid {pid})", self.name))
    }

    /// CPU time used so far (user and system, every thread), from the scheduler's per-thread
    /// nanosecond counters: clock ticks are too coarse for an idle member.
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let path = task?.path().join("schedstat");
            // A thread may end between the listing and the read.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("unreadable {}", path.display()))?;
        }
        Ok(Duration::from_nanos(total))
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it yields a value or `limit` passes.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct EvioMember {
    pub name: String,
    pub addr: String,
    pub process: Process,
}

/// A cluster of real `evio-node run` processes (3 voters by default).
pub struct EvioCluster {
    pub members: Vec<EvioMember>,
    bin: PathBuf,
    pod_cidr: String,
    node_bits: u8,
    run_args: Vec<String>,
    // Declared after `members`: processes die before their data dirs are removed.
    dir: tempfile::TempDir,
}

impl EvioCluster {
    pub async fn start(bins: &Bins, size: usize, pod_cidr: &str, node_bits: u8) -> Result<Self> {
        let dir = scratch_dir("evio")?;
        evio_raft::data_dir::write_atomic(&dir.path().join("token"), TOKEN.as_bytes(), 0o600)
            .context("write the cluster token")?;
        let mut cluster = EvioCluster {
            members: Vec::new(),
            bin: bins.evio_node.clone(),
            pod_cidr: pod_cidr.to_string(),
            node_bits,
            run_args: bins.evio_run_args.clone(),
            dir,
        };
        for i in 0..size {
            cluster.spawn_member()?;
            // Each joins once the one before it is serving, as an operator would.
            let client = cluster.client(i)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while client.cluster().await.is_err() {
                let process = &mut cluster.members[i].process;
                if let Some(status) = process.exit_status()? {
                    bail!("evio member {i} exited ({status}):\n{}", process.log_tail());
                }
                if Instant::now() > deadline {
                    bail!(
                        "evio member {i} API not up after 60 s:\n{}",
                        process.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let voters = size.min(3);
        cluster
            .wait_healthy(0, |c| {
                c.members.len() == size && voter_count(c) == voters && !c.membership_changing
            })
            .await?;
        Ok(cluster)
    }

    /// Starts one more member on a new data dir: the first bootstraps, the others join through
    /// every member started before. Returns at once; the new member is the last one.
    pub fn spawn_member(&mut self) -> Result<usize> {
        let others: Vec<String> = self.members.iter().map(|m| m.addr.clone()).collect();
        self.spawn_member_with(&others, &[])
    }

    /// Starts one more member that joins through `join` (bootstraps when it is the first),
    /// with `extra` arguments for `run`. Returns at once; the new member is the last one.
    pub fn spawn_member_with(&mut self, join: &[String], extra: &[String]) -> Result<usize> {
        let i = self.members.len();
        let name = format!("bench-{i}");
        let addr = free_addr()?;
        let data = self.dir.path().join(&name);
        let token_file = self.dir.path().join("token");
        let mut args: Vec<String> = [
            "--log-format",
            "json",
            "run",
            "--node-name",
            &name,
            "--data-dir",
            &data.to_string_lossy(),
            "--listen",
            &addr,
            "--pod-cidr",
            &self.pod_cidr,
            "--node-bits",
            &self.node_bits.to_string(),
            "--cluster-token-file",
            &token_file.to_string_lossy(),
            "--cni-socket",
            &format!("{}.cni.sock", data.to_string_lossy()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.run_args.iter().cloned());
        args.extend(
            extra
                .iter()
                .map(|a| a.replace("{data}", &data.to_string_lossy())),
        );
        if i == 0 {
            args.push("--bootstrap".into());
        } else {
            args.extend(["--join".to_string(), join.join(",")]);
            if !self.plaintext() {
                // Joiners trust the first member's CA (what --ca-hash does on real hosts).
                let ca = self
                    .dir
                    .path()
                    .join("bench-0")
                    .join(evio_raft::tls::TLS_DIR)
                    .join(evio_raft::tls::CA_CERT_FILE);
                args.extend(["--ca-file".to_string(), ca.to_string_lossy().into_owned()]);
            }
        }
        let log = self.dir.path().join(format!("{name}.log"));
        let process = Process::start(&name, &self.bin, args, log)?;
        self.members.push(EvioMember {
            name,
            addr,
            process,
        });
        Ok(i)
    }

    /// Members speak plaintext (`--evio-run-arg=--insecure-plaintext`), else mutual TLS.
    pub fn plaintext(&self) -> bool {
        self.run_args.iter().any(|a| a == "--insecure-plaintext")
    }

    /// The member's API root.
    pub fn base(&self, index: usize) -> String {
        let scheme = if self.plaintext() { "http" } else { "https" };
        format!("{scheme}://{}", self.members[index].addr)
    }

    /// The member's own certificate as a client identity (TLS), as the CLI on a node uses it.
    fn tls_config(&self, index: usize) -> Result<Option<evio_raft::tls::ClientConfig>> {
        if self.plaintext() {
            return Ok(None);
        }
        let data = self.dir.path().join(&self.members[index].name);
        let [ca, _, cert, key] = evio_raft::tls::managed_paths(&data.join(evio_raft::tls::TLS_DIR));
        // A member just started has its certificate once it bootstrapped or joined.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cert.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let member = &self.members[index];
        let credentials =
            evio_raft::tls::Credentials::load(&ca, &cert, &key).with_context(|| {
                format!(
                    "{}'s certificate\n{}",
                    member.name,
                    member.process.log_tail()
                )
            })?;
        Ok(Some(credentials.client_config()?))
    }

    pub fn client(&self, index: usize) -> Result<Client> {
        let client = Client::new(&self.base(index)).context("evio API client")?;
        Ok(match self.tls_config(index)? {
            Some(config) => client.with_tls(config)?,
            None => client.with_token(Some(TOKEN.to_string())),
        })
    }

    /// A raw HTTP client of the member (`/metrics`).
    pub fn http(&self, index: usize) -> Result<reqwest::Client> {
        evio_raft::tls::ensure_provider();
        Ok(match self.tls_config(index)? {
            Some(config) => evio_raft::tls::http_client(config, Some(Duration::from_secs(10)))?,
            None => reqwest::Client::new(),
        })
    }

    /// Waits until member `index` answers with a leader and `check` holds.
    pub async fn wait_healthy(
        &self,
        index: usize,
        check: impl Fn(&ClusterJson) -> bool,
    ) -> Result<ClusterJson> {
        let check = &check;
        let last = std::sync::Mutex::new(String::new());
        let last = &last;
        let healthy = wait_for("a healthy evio cluster", Duration::from_secs(60), || {
            // Made each time: a member has its certificate only once it bootstrapped or joined.
            let client = self.client(index);
            async move {
                let c = match client {
                    Ok(client) => client.cluster().await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                if let Ok(mut seen) = last.lock() {
                    *seen = format!("{c:?}");
                }
                let c = c.ok()?;
                (c.leader_id.is_some() && check(&c)).then_some(c)
            }
        })
        .await;
        healthy.map_err(|e| {
            let seen = last.lock().map(|s| s.clone()).unwrap_or_default();
            anyhow!(
                "{e}; member {index} last answered {seen}\n{}",
                self.members[index].process.log_tail()
            )
        })
    }

    /// The index of the member the cluster calls its leader.
    pub async fn leader_index(&self) -> Result<usize> {
        let live = self
            .members
            .iter()
            .position(|m| m.process.running())
            .ok_or_else(|| anyhow!("no live evio member"))?;
        let c = self.wait_healthy(live, |_| true).await?;
        let leader = c
            .members
            .iter()
            .find(|m| Some(m.id) == c.leader_id)
            .ok_or_else(|| anyhow!("leader not among the members"))?;
        self.members
            .iter()
            .position(|m| m.name == leader.name)
            .ok_or_else(|| anyhow!("unknown leader {}", leader.name))
    }

    /// Restarts a killed member on its data dir; it rejoins through the others.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        let others: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, m)| m.addr.clone())
            .collect();
        let member = &mut self.members[index];
        let mut args: Vec<String> = member
            .process
            .args
            .iter()
            .filter(|a| *a != "--bootstrap")
            .cloned()
            .collect();
        if let Some(at) = args.iter().position(|a| a == "--join") {
            args.drain(at..at + 2);
        }
        args.extend(["--join".to_string(), others.join(",")]);
        member.process.restart(Some(args))?;
        let voters = self.members.len().min(3);
        self.wait_healthy(index, |c| {
            voter_count(c) == voters && !c.membership_changing
        })
        .await?;
        Ok(())
    }
}

impl EvioCluster {
    /// Waits until every member agrees on the leader and has applied the same log index.
    pub async fn wait_caught_up(&self) -> Result<()> {
        let clients: Vec<Client> = (0..self.members.len())
            .map(|i| self.client(i))
            .collect::<Result<_>>()?;
        let clients = &clients;
        wait_for(
            "evio members to catch up",
            Duration::from_secs(60),
            || async move {
                let mut seen = Vec::new();
                for client in clients {
                    let c = client.cluster().await.ok()?;
                    seen.push((c.leader_id?, c.last_applied?));
                }
                seen.windows(2).all(|w| w[0] == w[1]).then_some(())
            },
        )
        .await
    }
}

fn voter_count(c: &ClusterJson) -> usize {
    c.members
        .iter()
        .filter(|m| m.role == "voter" || m.role == "leader")
        .count()
}

pub struct EtcdMember {
    pub client_url: String,
    pub process: Process,
}

/// A cluster of real `etcd` processes with etcd's defaults (fsync on every commit).
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub async fn start(bin: &Path, size: usize) -> Result<Self> {
        let dir = scratch_dir("etcd")?;
        let mut urls = Vec::new();
        for i in 0..size {
            urls.push((
                format!("etcd-{i}"),
                format!("http://{}", free_addr()?),
                format!("http://{}", free_addr()?),
            ));
        }
        let initial: Vec<String> = urls
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir,
        };
        for (name, client_url, peer_url) in &urls {
            let data = cluster.dir.path().join(name);
            let args: Vec<String> = [
                "--name",
                name,
                "--data-dir",
                &data.to_string_lossy(),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "evio-bench",
                "--logger",
                "zap",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = cluster.dir.path().join(format!("{name}.log"));
            let process = Process::start(name, bin, args, log)?;
            cluster.members.push(EtcdMember {
                client_url: client_url.clone(),
                process,
            });
        }
        for i in 0..size {
            cluster
                .wait_healthy(i)
                .await
                .map_err(|e| anyhow!("{e}\n{}", cluster.members[i].process.log_tail()))?;
        }
        Ok(cluster)
    }

    /// A client of the given members only.
    pub async fn client(&self, indexes: &[usize]) -> Result<Gateway> {
        self.client_with_timeout(indexes, Duration::from_secs(5))
            .await
    }

    /// A client of the given members whose every request gives up after `timeout`.
    pub async fn client_with_timeout(
        &self,
        indexes: &[usize],
        timeout: Duration,
    ) -> Result<Gateway> {
        let endpoints: Vec<String> = indexes
            .iter()
            .map(|&i| self.members[i].client_url.clone())
            .collect();
        Gateway::new(&endpoints, &TlsFiles::default(), timeout)
            .with_context(|| format!("etcd at {endpoints:?}"))
    }

    /// (this member's id, its leader's id) when it knows a leader.
    async fn status(&self, index: usize) -> Option<(u64, u64)> {
        #[derive(Deserialize)]
        struct Header {
            #[serde(deserialize_with = "int64")]
            member_id: u64,
        }
        #[derive(Deserialize)]
        struct Status {
            header: Header,
            #[serde(default, deserialize_with = "int64")]
            leader: u64,
        }
        let client = self.client(&[index]).await.ok()?;
        let status: Status = client
            .call("/v3/maintenance/status", &serde_json::json!({}))
            .await
            .ok()?;
        (status.leader != 0).then_some((status.header.member_id, status.leader))
    }

    /// Waits until member `index` answers and knows a leader.
    pub async fn wait_healthy(&self, index: usize) -> Result<()> {
        wait_for("a healthy etcd member", Duration::from_secs(60), || {
            self.status(index)
        })
        .await
        .map(|_| ())
    }

    pub async fn leader_index(&self) -> Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            if let Some((id, l)) = self.status(i).await {
                ids.push((i, id));
                leader = Some(l);
            }
        }
        let leader = leader.ok_or_else(|| anyhow!("no etcd member knows a leader"))?;
        ids.iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| *i)
            .ok_or_else(|| anyhow!("etcd leader {leader:x} is not a live member"))
    }

    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.members[index].process.restart(None)?;
        self.wait_healthy(index).await
    }
}
