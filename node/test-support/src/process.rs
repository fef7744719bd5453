//! Real `evio-node` processes for tests: spawned with JSON logs, ready once they log their
//! API address, killed (and reaped) on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use evio_api::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The evio-node binary of this target dir (see `target_bin`).
pub fn evio_node_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        crate::target_bin("evio-node")
            .to_string_lossy()
            .into_owned()
    })
}

/// `evio-node --log-format json ARGS` with a clean environment for the knobs tests set.
pub fn evio_node(args: &[&str]) -> Command {
    let mut cmd = Command::new(evio_node_bin());
    cmd.args(["--log-format", "json"]).args(args);
    cmd.env_remove("NODE_NAME")
        .env_remove("EVIO_TOKEN_FILE")
        .env_remove("EVIO_TEST_DENY_PEERS")
        .env("EVIO_LOG", "info");
    cmd
}

pub struct Proc {
    pub child: Child,
    /// `https://host:port` (`http://` in plaintext) of the API, from the ready log line.
    pub base: String,
    /// `--data-dir`: where a member keeps its certificate (the clients below present it).
    pub data_dir: Option<std::path::PathBuf>,
    /// `--ca-file`, `--cert-file`, `--key-file` of a member with operator-supplied PKI.
    pub tls_files: Option<[std::path::PathBuf; 3]>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns `cmd` and waits (60 s at most) for the log line that carries `fields.api`.
    pub fn spawn(mut cmd: Command) -> Result<Proc, String> {
        let arg = |flag: &str| {
            cmd.get_args()
                .skip_while(|a| *a != flag)
                .nth(1)
                .map(std::path::PathBuf::from)
        };
        let data_dir = arg("--data-dir");
        let tls_files = match (arg("--ca-file"), arg("--cert-file"), arg("--key-file")) {
            (Some(ca), Some(cert), Some(key)) => Some([ca, cert, key]),
            _ => None,
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", evio_node_bin()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(api) = value["fields"]["api"].as_str() {
                        let _ = tx.send(api.to_string());
                    }
                }
                if let Ok(mut logs) = sink.lock() {
                    logs.push(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => Ok(Proc {
                child,
                base,
                data_dir,
                tls_files,
                logs,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "evio-node did not become ready:\n{}",
                    logs.lock().map(|l| l.join("\n")).unwrap_or_default()
                ))
            }
        }
    }

    /// A client of this member: over TLS with the member's own certificate (as the CLI on a
    /// node), else plaintext with `token`.
    pub fn client(&self, token: Option<&str>) -> Client {
        let client = Client::new(&self.base).unwrap_or_else(|e| panic!("{e}"));
        match self.tls_config() {
            Some(config) => client.with_tls(config).unwrap_or_else(|e| panic!("{e}")),
            None => client.with_token(token.map(str::to_string)),
        }
    }

    /// A raw HTTP client for this member (`/metrics` and the like), TLS when it speaks TLS.
    pub fn http(&self) -> reqwest::Client {
        evio_raft::tls::ensure_provider();
        match self.tls_config() {
            Some(config) => evio_raft::tls::http_client(config, Some(Duration::from_secs(30)))
                .unwrap_or_else(|e| panic!("{e}")),
            None => reqwest::Client::new(),
        }
    }

    /// The member's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        let response = self.http().get(&url).send().await;
        let response = response.unwrap_or_else(|e| panic!("{url}: {e}"));
        response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// The member's certificate as a client identity, when it speaks TLS.
    pub fn tls_config(&self) -> Option<evio_raft::tls::ClientConfig> {
        if !self.base.starts_with("https://") {
            return None;
        }
        let [ca, cert, key] = match &self.tls_files {
            Some(files) => files.clone(),
            None => {
                let data = self.data_dir.as_ref()?;
                let [ca, _, cert, key] =
                    evio_raft::tls::managed_paths(&data.join(evio_raft::tls::TLS_DIR));
                [ca, cert, key]
            }
        };
        let credentials = evio_raft::tls::Credentials::load(&ca, &cert, &key)
            .unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
        Some(
            credentials
                .client_config()
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Sends `signal` and waits (at most 30 s) for the process to exit.
    pub fn signal(&mut self, signal: Signal) -> ExitStatus {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, signal).unwrap_or_else(|e| panic!("kill {signal}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => panic!("evio-node ignored {signal} for 30 s:\n{}", self.logs()),
                Err(e) => panic!("wait: {e}"),
            }
        }
    }

    pub fn assert_no_panics(&self) {
        let logs = self.logs();
        assert!(
            !logs.contains("panicked"),
            "panic in evio-node log:\n{logs}"
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `evio-node dev` on data dir `data`, its API on a free loopback port, node name `name`,
/// plus `extra` flags.
pub fn dev_command(data: &std::path::Path, name: &str, extra: &[&str]) -> Command {
    let data = data.to_string_lossy();
    let mut args = vec![
        "dev",
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--node-name",
        name,
    ];
    args.extend_from_slice(extra);
    evio_node(&args)
}

/// `evio-node dev` named `name` in `dir` (data dir `dir/data`, CNI socket `dir/cni.sock`),
/// ready; with the cluster token it generated.
pub fn spawn_dev(dir: &std::path::Path, name: &str) -> (Proc, String) {
    let socket = dir.join("cni.sock").to_string_lossy().to_string();
    let dev = Proc::spawn(dev_command(
        &dir.join("data"),
        name,
        &["--cni-socket", &socket],
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let token = std::fs::read_to_string(dir.join("data/cluster-token"))
        .unwrap_or_else(|e| panic!("token: {e}"));
    (dev, token.trim().to_string())
}
