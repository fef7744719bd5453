//! Clusters of real `evio-node run` processes on 127.0.0.1 for tests: one token file, one data
//! dir per member under a temp dir, members started bootstrapping or joining, and the waits
//! tests share (membership, leader, leases).

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use evio_api::{ClusterJson, Consistency, LeaseJson};

use crate::{evio_node, Proc};

/// At least 32 bytes: shorter tokens are refused.
pub const TOKEN: &str = "cluster-test-token-of-32-bytes-or-more";

/// Writes a token file as the README says (mode 0600; anything readable by others is refused).
pub fn write_token(path: &std::path::Path, token: &str) {
    evio_raft::data_dir::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The CA file a joining test member trusts: the bootstrap member `data`'s own CA.
pub fn ca_file(data: &std::path::Path) -> String {
    data.join(evio_raft::tls::TLS_DIR)
        .join(evio_raft::tls::CA_CERT_FILE)
        .to_string_lossy()
        .to_string()
}

/// A free 127.0.0.1 port (bound and released; the race is harmless in tests).
pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The flags every test member runs with: data dir (CNI socket beside it), listen address,
/// pod CIDR and the cluster token.
pub fn run_args(data: &str, addr: &str, token_file: &str) -> Vec<String> {
    [
        "run",
        "--data-dir",
        data,
        "--listen",
        addr,
        "--pod-cidr",
        "10.244.0.0/16",
        "--node-bits",
        "8",
        "--cluster-token-file",
        token_file,
        "--cni-socket",
        &format!("{data}.cni.sock"),
    ]
    .map(String::from)
    .into()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    grace: &'static str,
    /// `--pod-cidr` and `--node-bits` when not run_args' 10.244.0.0/16 with 8.
    pool: Option<(&'static str, u8)>,
    /// The data dir of the member that bootstrapped: joiners trust its CA (`--ca-file`).
    bootstrap_data: std::sync::Mutex<Option<PathBuf>>,
    /// Every member with `--insecure-plaintext`.
    plaintext: bool,
}

pub struct Node {
    pub name: String,
    pub addr: String,
    pub proc: Proc,
}

impl Node {
    pub fn client(&self) -> evio_api::Client {
        self.proc.client(Some(TOKEN))
    }

    /// The flags that reach this member as the CLI on its node does: `--api` and, over TLS,
    /// `--data-dir` (where the CLI finds the member's certificate); `--token-file` in plaintext.
    pub fn cli_args(&self, cluster: &Cluster) -> Vec<String> {
        let mut args = vec!["--api".to_string(), self.proc.base.clone()];
        match &self.proc.data_dir {
            Some(data) if self.proc.base.starts_with("https://") => {
                args.extend(["--data-dir".into(), data.to_string_lossy().into_owned()])
            }
            _ => args.extend(["--token-file".into(), cluster.token_arg()]),
        }
        args
    }

    /// The member's `/metrics` text (over TLS with its own certificate).
    pub async fn metrics(&self) -> String {
        self.proc.metrics().await
    }

    /// A client without credentials: over TLS it checks the member against the cluster CA
    /// but presents no certificate; in plaintext it sends no token.
    pub fn anonymous_client(&self) -> evio_api::Client {
        let client = evio_api::Client::new(&self.proc.base).unwrap_or_else(|e| panic!("{e}"));
        let Some(data) = self
            .proc
            .data_dir
            .as_ref()
            .filter(|_| self.proc.tls_config().is_some())
        else {
            return client;
        };
        let ca = std::fs::read_to_string(ca_file(data)).unwrap_or_else(|e| panic!("CA: {e}"));
        let trust = evio_raft::tls::Trust::ca_pem(&ca).unwrap_or_else(|e| panic!("{e}"));
        let config =
            evio_raft::tls::anonymous_client_config(trust).unwrap_or_else(|e| panic!("{e}"));
        client.with_tls(config).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster::new()
    }
}

impl Cluster {
    /// Members replace a lost voter only after 60 s (no test waits that long).
    pub fn new() -> Cluster {
        Cluster::with_grace("60s")
    }

    /// Members with `--voter-grace grace`.
    pub fn with_grace(grace: &'static str) -> Cluster {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token_file = dir.path().join("token");
        write_token(&token_file, TOKEN);
        Cluster {
            dir,
            token_file,
            grace,
            pool: None,
            bootstrap_data: std::sync::Mutex::new(None),
            plaintext: false,
        }
    }

    /// Members speaking plain HTTP with the token (`--insecure-plaintext`): for the one test
    /// of that mode itself (status_page's token box); everything else runs on TLS.
    pub fn plaintext() -> Cluster {
        let mut cluster = Cluster::new();
        cluster.plaintext = true;
        cluster
    }

    /// Members on another pool (e.g. 10.0.0.0/8 with 16 node bits, room for 65,536 leases).
    pub fn with_pool(mut self, pod_cidr: &'static str, node_bits: u8) -> Cluster {
        self.pool = Some((pod_cidr, node_bits));
        self
    }

    /// `name` under the cluster's temp dir (a member's data dir is its name).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn token_arg(&self) -> String {
        self.token_file.to_string_lossy().to_string()
    }

    /// `evio-node run` for `name` (bootstrap when `join` is empty) plus `extra` flags.
    pub fn command(
        &self,
        name: &str,
        addr: &str,
        join: &[&str],
        extra: &[&str],
    ) -> std::process::Command {
        self.command_in(name, name, addr, join, extra)
    }

    /// Like `command`, with the data dir named `data_name`.
    pub fn command_in(
        &self,
        name: &str,
        data_name: &str,
        addr: &str,
        join: &[&str],
        extra: &[&str],
    ) -> std::process::Command {
        let data = self.path(data_name).to_string_lossy().to_string();
        let mut args = run_args(&data, addr, &self.token_arg());
        if let Some((cidr, bits)) = self.pool {
            for (flag, value) in [
                ("--pod-cidr", cidr.to_string()),
                ("--node-bits", bits.to_string()),
            ] {
                if let Some(at) = args.iter().position(|a| a == flag) {
                    args[at + 1] = value;
                }
            }
        }
        args.extend(["--node-name", name, "--voter-grace", self.grace].map(String::from));
        let join = join.join(",");
        let mut bootstrap_data = self
            .bootstrap_data
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if join.is_empty() {
            args.push("--bootstrap".into());
            *bootstrap_data = Some(self.path(data_name));
        } else {
            args.extend(["--join".into(), join]);
        }
        if self.plaintext {
            args.push("--insecure-plaintext".into());
        }
        let plaintext = self.plaintext || extra.contains(&"--insecure-plaintext");
        let has_trust = extra.iter().any(|a| *a == "--ca-file" || *a == "--ca-hash");
        if let (false, false, Some(data)) = (plaintext, has_trust, bootstrap_data.as_ref()) {
            if !args.iter().any(|a| a == "--bootstrap") {
                args.extend(["--ca-file".into(), ca_file(data)]);
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        evio_node(&args)
    }

    pub fn start(&self, name: &str, addr: &str, join: &[&str], extra: &[&str]) -> Node {
        self.start_with(self.command(name, addr, join, extra), name, addr)
    }

    pub fn start_with(&self, cmd: std::process::Command, name: &str, addr: &str) -> Node {
        let proc = Proc::spawn(cmd).unwrap_or_else(|e| panic!("{name}: {e}"));
        Node {
            name: name.to_string(),
            addr: addr.to_string(),
            proc,
        }
    }

    /// Three members a, b, c (a bootstraps), each with `extra`; returns once all three are
    /// voters.
    pub async fn three(&self, extra: &[&str]) -> Vec<Node> {
        self.three_each(|_| extra.iter().map(|a| a.to_string()).collect())
            .await
    }

    /// Like `three`, with each member's `extra` flags given by its name.
    pub async fn three_each(&self, extra: impl Fn(&str) -> Vec<String>) -> Vec<Node> {
        let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
        let mut nodes = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let join: Vec<&str> = if i == 0 { vec![] } else { vec![&addrs[0]] };
            let extra = extra(name);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            nodes.push(self.start(name, &addrs[i], &join, &extra));
        }
        wait_cluster(&nodes[0], "three voters", |c| {
            c.members
                .iter()
                .filter(|m| m.role == "voter" || m.role == "leader")
                .count()
                == 3
        })
        .await;
        nodes
    }
}

/// The error of a call that must be refused with `code` (the test fails otherwise).
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, evio_api::ClientError>,
    code: evio_api::ErrorCode,
) -> evio_api::ClientError {
    match result {
        Ok(value) => panic!("expected {code:?}, got {value:?}"),
        Err(e) => {
            assert_eq!(e.code(), Some(code), "{e}");
            e
        }
    }
}

/// Waits until `check` holds for `node`'s view of the cluster.
pub async fn wait_cluster(
    node: &Node,
    what: &str,
    check: impl Fn(&ClusterJson) -> bool,
) -> ClusterJson {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = node.client().cluster().await {
            if check(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "{what}: last seen {c:#?}");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} unreachable",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live member that is leader, as seen by any of `nodes`.
pub async fn leader<'a>(nodes: &'a [&'a Node]) -> &'a Node {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for n in nodes {
            if let Ok(c) = n.client().cluster().await {
                if c.leader_id == Some(c.node_id) {
                    return n;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader among the live members"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acquires through `node`, retrying while the cluster elects a leader.
pub async fn acquire(node: &Node, name: &str) -> LeaseJson {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match node.client().acquire(name, None).await {
            Ok((lease, _)) => return lease,
            Err(e) => assert!(Instant::now() < deadline, "acquire {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node`'s local replica holds `name`'s lease.
pub async fn local_has(node: &Node, name: &str) -> LeaseJson {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(lease)) = node.client().get_lease(name, Consistency::Local).await {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "{} never saw {name}'s lease",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
