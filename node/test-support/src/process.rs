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
    /// `http://host:port` of the API, from the ready log line.
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns `cmd` and waits (60 s at most) for the log line that carries `fields.api`.
    pub fn spawn(mut cmd: Command) -> Result<Proc, String> {
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
            Ok(base) => Ok(Proc { child, base, logs }),
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

    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.base)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_token(token.map(str::to_string))
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
