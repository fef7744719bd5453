//! A real `etcd` server (Debian `etcd-server`) on free loopback ports, with TLS files when a
//! test needs them, and a client through evio-node's etcd JSON gateway.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evio_node::etcd_gateway::{Gateway, Op, RangeShape, TlsFiles as TlsGateway};

use crate::cluster::free_addr;

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
            crate::output_ok(Command::new("openssl").args(args).current_dir(dir));
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
                // clientAuth too: etcd's JSON gateway dials etcd's own gRPC port with the
                // server certificate, which --client-cert-auth then checks.
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
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

    fn gateway(&self) -> TlsGateway<'_> {
        TlsGateway {
            ca: Some(&self.ca),
            identity: Some((&self.client_cert, &self.client_key)),
        }
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

    /// A client (through etcd's JSON gateway, as evio talks to it), retrying (30 s at most)
    /// while etcd finishes starting.
    pub async fn client(&self) -> Gateway {
        let deadline = Instant::now() + Duration::from_secs(30);
        let tls = self.tls.as_ref().map(TlsFiles::gateway).unwrap_or_default();
        let client = Gateway::new(
            std::slice::from_ref(&self.client_url),
            &tls,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        loop {
            match client.range_prefix("probe", RangeShape::CountOnly).await {
                Ok(_) => return client,
                Err(e) => assert!(Instant::now() < deadline, "connect etcd: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every key/value under `prefix`.
    pub async fn dump(&self, prefix: &str) -> std::collections::BTreeMap<String, String> {
        let client = self.client().await;
        let response = client
            .range_prefix(prefix, RangeShape::KeysAndValues)
            .await
            .unwrap_or_else(|e| panic!("etcd get: {e}"));
        response
            .kvs
            .iter()
            .map(|kv| (kv.key_str(), kv.value_str()))
            .collect()
    }

    pub async fn put(&self, key: &str, value: &str) {
        self.write(Op::Put(key.into(), value.into())).await;
    }

    pub async fn delete(&self, key: &str) {
        self.write(Op::Delete(key.into())).await;
    }

    async fn write(&self, op: Op) {
        self.client()
            .await
            .txn(&[], std::slice::from_ref(&op), &[])
            .await
            .unwrap_or_else(|e| panic!("etcd {op:?}: {e}"));
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
