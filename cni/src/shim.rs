//! **Where a CNI request enters**: the `evio-cni` shim kubelet execs. It answers VERSION
//! itself and forwards everything else — the operation, every `CNI_*` variable and the config
//! — to the node's evio-node over its unix socket, then prints the daemon's answer. No async
//! runtime: it starts in about a millisecond.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use serde_json::Value;

use crate::dataplane::error::CODE_PLUGIN_NOT_AVAILABLE;
use crate::spec::{
    code, version_result, CniError, Command, Plugin, Reply, Request, LATEST_VERSION,
};

/// What the shim prints on stdout and its exit code.
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

impl Outcome {
    fn ok(value: &Value) -> Self {
        Self {
            stdout: value.to_string(),
            exit_code: 0,
        }
    }

    fn error(error: &CniError) -> Self {
        Self {
            stdout: serde_json::to_string(error).unwrap_or_default(),
            exit_code: 1,
        }
    }
}

/// Runs one CNI invocation of evio-cni.
pub fn run(env: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    run_as(Plugin::EvioCni, env, stdin)
}

/// Runs one CNI invocation of `plugin` (evio-cni, or evio-ipam as another plugin's IPAM).
pub fn run_as(plugin: Plugin, env: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    if env.get("CNI_COMMAND").map(String::as_str) == Some("VERSION") {
        return Outcome::ok(&version_result(stdin));
    }
    let request = match Request::from_env(env, stdin) {
        Ok(request) => Request { plugin, ..request },
        Err(e) => return Outcome::error(&e),
    };
    match forward(&request) {
        Ok(Reply::Ok(value)) if value.is_null() => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Ok(Reply::Ok(value)) => Outcome::ok(&value),
        Ok(Reply::Error(e)) => Outcome::error(&e),
        // STATUS asks whether ADDs can be served: without the daemon they cannot (the spec's
        // "plugin not available"), which is not a reason to retry the STATUS itself.
        Err(e) if request.command == Command::Status => Outcome::error(&CniError {
            code: CODE_PLUGIN_NOT_AVAILABLE,
            ..e
        }),
        Err(e) => Outcome::error(&e),
    }
}

/// Sends the request as one JSON line and reads the reply until the daemon closes.
fn forward(request: &Request) -> Result<Reply, CniError> {
    let version = request.version();
    let socket = request.socket();
    let unreachable = |what: &str, e: std::io::Error| {
        CniError::new(
            &version,
            code::TRY_AGAIN_LATER,
            format!("evio-node is not reachable ({what}: {e})"),
        )
        .with_details(socket.clone())
    };
    let mut stream = UnixStream::connect(&socket).map_err(|e| unreachable("connect", e))?;
    stream
        .set_read_timeout(Some(request.reply_timeout()))
        .map_err(|e| unreachable("socket", e))?;
    let mut line = serde_json::to_vec(request).map_err(|e| {
        CniError::new(
            &version,
            code::DECODE_FAILURE,
            format!("encoding the request: {e}"),
        )
    })?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| unreachable("send", e))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| unreachable("receive", e))?;
    serde_json::from_slice(&reply).map_err(|e| {
        CniError::new(
            &version,
            code::IO_FAILURE,
            "evio-node sent an unreadable reply",
        )
        .with_details(format!("{e}: {}", String::from_utf8_lossy(&reply)))
    })
}

/// A shim binary's whole life: stdin and `CNI_*` in, the answer on stdout, its exit code.
pub fn main_as(plugin: Plugin) -> ! {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run_as(plugin, &cni_env(), &stdin),
        Err(e) => stdin_error(&e),
    };
    let mut stdout = std::io::stdout();
    // Nothing more can be reported if stdout itself is gone.
    let _ = stdout.write_all(outcome.stdout.as_bytes());
    let _ = stdout.flush();
    std::process::exit(outcome.exit_code);
}

/// The `CNI_*` variables of this process.
pub fn cni_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect()
}

/// Used by the binary when stdin cannot even be read.
pub fn stdin_error(e: &std::io::Error) -> Outcome {
    Outcome::error(
        &CniError::new(
            LATEST_VERSION,
            code::IO_FAILURE,
            "cannot read the network configuration from stdin",
        )
        .with_details(e.to_string()),
    )
}
