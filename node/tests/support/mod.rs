//! Helpers for the config-gen and etcd tests: small `evio-node run` clusters on 127.0.0.1
//! and a real `etcd` server (Debian `etcd-server`) on free loopback ports.

#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evio_api::{ClusterJson, Consistency, LeaseJson};

use crate::common::{evio_node, Proc};

pub const TOKEN: &str = "support-test-token";

/// A free 127.0.0.1 port (bound and released; the race is harmless in tests).
pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True when `program` can run; under CI=true a missing program fails the test loudly.
pub fn have(program: &str, package: &str) -> bool {
    let found = Path::new(program).is_file()
        || std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        });
    if !found {
        assert!(
            !ci(),
            "{program} is missing (Debian package {package}; scripts/install-deps.sh installs it)"
        );
        eprintln!("SKIPPED: {program} missing (install {package})");
    }
    found
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
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
}

impl Cluster {
    pub fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap_or_else(|e| panic!("{e}"));
        Cluster { dir, token_file }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn token_arg(&self) -> String {
        self.token_file.to_string_lossy().to_string()
    }

    /// `evio-node run` for `name` (bootstrap when `join` is empty) plus `extra` flags.
    pub fn start(&self, name: &str, addr: &str, join: &[&str], extra: &[&str]) -> Node {
        let data = self.path(name).to_string_lossy().to_string();
        let cni_socket = format!("{data}.cni.sock");
        let token = self.token_arg();
        let mut args = vec![
            "run",
            "--node-name",
            name,
            "--data-dir",
            &data,
            "--listen",
            addr,
            "--pod-cidr",
            "10.244.0.0/16",
            "--node-bits",
            "8",
            "--cluster-token-file",
            &token,
            "--voter-grace",
            "60s",
            "--cni-socket",
            &cni_socket,
        ];
        let join = join.join(",");
        if join.is_empty() {
            args.push("--bootstrap");
        } else {
            args.extend_from_slice(&["--join", &join]);
        }
        args.extend_from_slice(extra);
        let proc = Proc::spawn(evio_node(&args)).unwrap_or_else(|e| panic!("{name}: {e}"));
        Node {
            name: name.to_string(),
            addr: addr.to_string(),
            proc,
        }
    }

    /// Three members a, b, c (a bootstraps), each with `extra`; returns once all three are
    /// voters.
    pub async fn three(&self, extra: &[&str]) -> Vec<Node> {
        let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
        let a = self.start("a", &addrs[0], &[], extra);
        let b = self.start("b", &addrs[1], &[&addrs[0]], extra);
        let c = self.start("c", &addrs[2], &[&addrs[0]], extra);
        wait_cluster(&a, "three voters", |c| {
            c.members
                .iter()
                .filter(|m| m.role == "voter" || m.role == "leader")
                .count()
                == 3
        })
        .await;
        vec![a, b, c]
    }
}

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

/// A real etcd server on free 127.0.0.1 ports with its own data dir; killed on drop.
pub struct Etcd {
    pub client_url: String,
    peer_url: String,
    data: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    tls: Option<TlsFiles>,
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with
/// the `openssl` command.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    pub fn make(dir: &Path) -> TlsFiles {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=evio-test-ca",
        ]);
        run(&ca);
        for (name, usage) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let mut req = vec!["req"];
            req.extend_from_slice(&ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let ext = format!("{name}.ext");
            req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
            run(&req);
            std::fs::write(dir.join(&ext), usage.replace("\\n", "\n"))
                .unwrap_or_else(|e| panic!("{e}"));
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    fn options(&self) -> etcd_client::ConnectOptions {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
                .identity(etcd_client::Identity::from_pem(
                    read(&self.client_cert),
                    read(&self.client_key),
                )),
        )
    }
}

impl Etcd {
    pub fn start(dir: &Path, name: &str) -> Etcd {
        Self::start_with(dir, name, None)
    }

    /// etcd serving clients over TLS only, requiring a client certificate from `tls.ca`.
    pub fn start_tls(dir: &Path, name: &str, tls: TlsFiles) -> Etcd {
        Self::start_with(dir, name, Some(tls))
    }

    fn start_with(dir: &Path, name: &str, tls: Option<TlsFiles>) -> Etcd {
        let data = dir.join(format!("{name}.etcd"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            tls,
            client_url: format!("{scheme}://{}", free_addr()),
            peer_url: format!("http://{}", free_addr()),
            log: dir.join(format!("{name}.etcd.log")),
            data,
            child: None,
        };
        etcd.restart();
        etcd
    }

    /// Starts (again, on the same ports and data) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let log = std::fs::File::create(&self.log).unwrap_or_else(|e| panic!("{e}"));
        let mut tls_args: Vec<String> = Vec::new();
        if let Some(tls) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &tls.server_cert),
                ("--key-file", &tls.server_key),
                ("--trusted-ca-file", &tls.ca),
            ] {
                tls_args.push(flag.into());
                tls_args.push(path.to_string_lossy().into());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let child = Command::new("etcd")
            .args(&tls_args)
            .args([
                "--name",
                "evio-test",
                "--data-dir",
                &self.data.to_string_lossy(),
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &format!("evio-test={}", self.peer_url),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn etcd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// etcd's own `/health` on the client URL (plain HTTP/1.0, no client needed).
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            // Over TLS: the port being open is enough; readers retry until etcd answers.
            let addr = self.client_url.trim_start_matches("https://");
            return std::net::TcpStream::connect(addr).is_ok();
        }
        let addr = self.client_url.trim_start_matches("http://");
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client, retrying (30 s at most) while etcd finishes starting.
    pub async fn client(&self) -> etcd_client::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = self.tls.as_ref().map(TlsFiles::options);
            let attempt = async {
                let mut client =
                    etcd_client::Client::connect([self.client_url.as_str()], options).await?;
                client.get("probe", None).await?;
                Ok::<_, etcd_client::Error>(client)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(client)) => return client,
                Ok(Err(e)) => assert!(Instant::now() < deadline, "connect etcd: {e}"),
                Err(_) => assert!(Instant::now() < deadline, "connect etcd: timed out"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every key/value under `prefix`.
    pub async fn dump(&self, prefix: &str) -> std::collections::BTreeMap<String, String> {
        let mut client = self.client().await;
        let response = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap_or_else(|e| panic!("etcd get: {e}"));
        response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }

    pub async fn put(&self, key: &str, value: &str) {
        self.client()
            .await
            .put(key, value, None)
            .await
            .unwrap_or_else(|e| panic!("etcd put {key}: {e}"));
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
