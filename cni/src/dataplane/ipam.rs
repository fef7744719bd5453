//! IPAM delegation as the spec says: exec the IPAM plugin named by `ipam.type` from
//! `CNI_PATH`, with the same `CNI_*` environment and the complete network config on stdin.
//! The exec is async and bounded by the request's deadline: a plugin still running then is
//! killed. `evio-ipam` is the exception: the daemon is that plugin, so it is served in-process
//! ([`run`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command as Process;
use tokio::time::Instant;

use super::evio_ipam::{self, AllocError, Allocator};
use crate::spec::{code, version_key, CniError, Command, Request};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid ipam.type {0:?}")]
    InvalidType(String),
    #[error("IPAM plugin {plugin:?} not found in CNI_PATH")]
    NotFound { plugin: String, path: String },
    #[error("running {binary}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("IPAM plugin {plugin:?} supports no version up to {version}")]
    Version { plugin: String, version: String },
    #[error("{plugin} {command} did not finish before the request's deadline (killed)")]
    Deadline { plugin: String, command: String },
    /// The plugin's own CNI error, passed on as it is.
    #[error(transparent)]
    Plugin(CniError),
    #[error("{plugin} {command} failed")]
    Failed {
        plugin: String,
        command: String,
        output: String,
    },
    #[error("{plugin} printed an unreadable result")]
    Unreadable {
        plugin: String,
        source: serde_json::Error,
    },
    #[error("IPAM returned no address")]
    NoAddress { result: String },
    #[error(transparent)]
    Evio(#[from] AllocError),
}

impl IpamError {
    pub fn code(&self) -> u32 {
        match self {
            IpamError::InvalidType(_) | IpamError::NotFound { .. } => code::INVALID_NETWORK_CONFIG,
            IpamError::Spawn { .. } | IpamError::Failed { .. } => code::IO_FAILURE,
            IpamError::Version { .. } => code::INCOMPATIBLE_VERSION,
            IpamError::Deadline { .. } => code::TRY_AGAIN_LATER,
            IpamError::Plugin(e) => e.code,
            IpamError::Unreadable { .. } | IpamError::NoAddress { .. } => code::DECODE_FAILURE,
            IpamError::Evio(e) => e.code(),
        }
    }

    /// What the CNI error's `details` carry.
    pub fn details(&self) -> String {
        match self {
            IpamError::NotFound { path, .. } => path.clone(),
            IpamError::Spawn { source, .. } => source.to_string(),
            IpamError::Failed { output, .. } => output.clone(),
            IpamError::Unreadable { source, .. } => source.to_string(),
            IpamError::NoAddress { result } => result.clone(),
            _ => String::new(),
        }
    }
}

/// The versions each IPAM binary supports (asked once per binary with VERSION).
static SUPPORTED: Mutex<Option<HashMap<PathBuf, Vec<String>>>> = Mutex::new(None);

async fn supported_versions(binary: &Path, deadline: Instant) -> Vec<String> {
    let known = SUPPORTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(binary)
        .cloned();
    if let Some(known) = known {
        return known;
    }
    let output = Process::new(binary)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(Ok(output)) = tokio::time::timeout_at(deadline, output).await else {
        return Vec::new(); // not cached: asked again next time
    };
    let versions: Vec<String> = serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .and_then(|v| v["supportedVersions"].as_array().cloned())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    SUPPORTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(binary.to_path_buf(), versions.clone());
    versions
}

/// The config version to hand the IPAM plugin: the requested one if it supports it, else the
/// newest it supports below it (an IPAM result is the same from 1.0.0 on). `None` when the
/// plugin supports nothing at or below the request.
fn ipam_version(supported: Vec<String>, requested: &str) -> Option<String> {
    if supported.is_empty() || supported.iter().any(|v| v == requested) {
        return Some(requested.to_string());
    }
    supported
        .into_iter()
        .filter(|v| version_key(v) <= version_key(requested))
        .max_by_key(|v| version_key(v))
}

/// Whether the request's IPAM plugin answers `version` (e.g. STATUS needs 1.1.0).
pub async fn supports(request: &Request, version: &str, deadline: Instant) -> bool {
    match plugin_path(request) {
        Ok(binary) => supported_versions(&binary, deadline)
            .await
            .iter()
            .any(|v| v == version),
        Err(_) => false,
    }
}

fn command_name(command: Command) -> &'static str {
    match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Status => "STATUS",
        Command::Gc => "GC",
        Command::Version => "VERSION",
    }
}

/// Finds `plugin` in the colon-separated `CNI_PATH`.
fn find_plugin(cni_path: &str, plugin: &str) -> Option<PathBuf> {
    cni_path
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(plugin))
        .find(|candidate| candidate.is_file())
}

fn plugin_name(request: &Request) -> &str {
    request.config["ipam"]["type"].as_str().unwrap_or("")
}

/// The IPAM plugin binary the request names (`ipam.type`, searched in `CNI_PATH`).
pub fn plugin_path(request: &Request) -> Result<PathBuf, IpamError> {
    let plugin = plugin_name(request);
    if plugin.is_empty() || plugin.contains('/') {
        return Err(IpamError::InvalidType(plugin.to_string()));
    }
    find_plugin(&request.path, plugin).ok_or_else(|| IpamError::NotFound {
        plugin: plugin.to_string(),
        path: request.path.clone(),
    })
}

/// Checks, before anything is built, that the request's IPAM can serve it: evio-ipam's
/// config against the node's block, any other plugin's binary in `CNI_PATH`.
pub fn usable(allocator: &Allocator, request: &Request) -> Result<(), IpamError> {
    if evio_ipam::is_requested(request) {
        allocator.validate(request)?;
    } else {
        plugin_path(request)?;
    }
    Ok(())
}

/// Runs the request's IPAM for `command`: evio-ipam in-process, any other plugin exec'd.
pub async fn run(
    allocator: &Allocator,
    request: &Request,
    command: Command,
    deadline: Instant,
) -> Result<Value, IpamError> {
    if !evio_ipam::is_requested(request) {
        return delegate(request, command, deadline).await;
    }
    Ok(match command {
        Command::Add => allocator.add(request)?,
        Command::Del => allocator.del(request).map(|()| Value::Null)?,
        Command::Check => allocator.check(request).map(|()| Value::Null)?,
        Command::Status => allocator.status().map(|()| Value::Null)?,
        // GC needs the runtime's list (see `gc`); VERSION never reaches IPAM.
        Command::Gc | Command::Version => Value::Null,
    })
}

/// Runs the request's IPAM plugin for `command`; returns its result (Null when it printed
/// nothing, as DEL does). A plugin still running at `deadline` is killed.
pub async fn delegate(
    request: &Request,
    command: Command,
    deadline: Instant,
) -> Result<Value, IpamError> {
    let version = request.version();
    let plugin = plugin_name(request).to_string();
    let binary = plugin_path(request)?;
    let timed_out = || IpamError::Deadline {
        plugin: plugin.clone(),
        command: command_name(command).into(),
    };
    let ipam_version = ipam_version(supported_versions(&binary, deadline).await, &version)
        .ok_or_else(|| IpamError::Version {
            plugin: plugin.clone(),
            version: version.clone(),
        })?;
    let mut config = request.config.clone();
    if ipam_version != version {
        config["cniVersion"] = Value::String(ipam_version);
    }
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let mut child = Process::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command_name(command))
        .env("CNI_CONTAINERID", &request.container_id)
        .env("CNI_NETNS", &request.netns)
        .env("CNI_IFNAME", &request.ifname)
        .env("CNI_ARGS", &request.args)
        .env("CNI_PATH", &request.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped at the deadline: the plugin is killed, not left holding its lock.
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| IpamError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits before reading its stdin reports why on stdout.
            let _ = stdin.write_all(&config).await;
        }
        child.wait_with_output().await
    };
    let output = tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| IpamError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        // The plugin's own CNI error, passed on as it is when it is one.
        return Err(match serde_json::from_slice::<CniError>(&output.stdout) {
            Ok(e) => IpamError::Plugin(e),
            Err(_) => IpamError::Failed {
                plugin,
                command: command_name(command).into(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            },
        });
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|source| IpamError::Unreadable { plugin, source })
}
