//! IPAM delegation as the spec says: exec the IPAM plugin named by `ipam.type` from
//! `CNI_PATH`, with the same `CNI_*` environment and the complete network config on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::spec::{code, version_key, CniError, Command, Request};

/// The versions each IPAM binary supports (asked once per binary with VERSION).
static SUPPORTED: Mutex<Option<HashMap<PathBuf, Vec<String>>>> = Mutex::new(None);

fn supported_versions(binary: &Path) -> Vec<String> {
    let mut cache = SUPPORTED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = cache.get_or_insert_with(HashMap::new).get(binary) {
        return known.clone();
    }
    let versions: Vec<String> = Process::new(binary)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
        .and_then(|v| v["supportedVersions"].as_array().cloned())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    cache
        .get_or_insert_with(HashMap::new)
        .insert(binary.to_path_buf(), versions.clone());
    versions
}

/// The config version to hand the IPAM plugin: the requested one if it supports it, else the
/// newest it supports below it (an IPAM result is the same from 1.0.0 on). `None` when the
/// plugin supports nothing at or below the request.
fn ipam_version(binary: &Path, requested: &str) -> Option<String> {
    let supported = supported_versions(binary);
    if supported.is_empty() || supported.iter().any(|v| v == requested) {
        return Some(requested.to_string());
    }
    supported
        .into_iter()
        .filter(|v| version_key(v) <= version_key(requested))
        .max_by_key(|v| version_key(v))
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

/// The IPAM plugin binary the request names (`ipam.type`, searched in `CNI_PATH`).
pub fn plugin_path(request: &Request) -> Result<PathBuf, CniError> {
    let version = request.version();
    let plugin = request.config["ipam"]["type"].as_str().unwrap_or("");
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            &version,
            code::INVALID_NETWORK_CONFIG,
            format!("invalid ipam.type {plugin:?}"),
        ));
    }
    find_plugin(&request.path, plugin).ok_or_else(|| {
        CniError::new(
            &version,
            code::INVALID_NETWORK_CONFIG,
            format!("IPAM plugin {plugin:?} not found in CNI_PATH"),
        )
        .with_details(request.path.clone())
    })
}

/// Runs the request's IPAM plugin for `command`; returns its result (Null when it printed
/// nothing, as DEL does).
pub fn delegate(request: &Request, command: Command) -> Result<Value, CniError> {
    let version = request.version();
    let plugin = request.config["ipam"]["type"].as_str().unwrap_or("");
    let binary = plugin_path(request)?;
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
        .spawn()
        .map_err(|e| {
            CniError::new(
                &version,
                code::IO_FAILURE,
                format!("running {}", binary.display()),
            )
            .with_details(e.to_string())
        })?;
    let mut config = request.config.clone();
    let ipam_version = ipam_version(&binary, &version).ok_or_else(|| {
        CniError::new(
            &version,
            code::INCOMPATIBLE_VERSION,
            format!("IPAM plugin {plugin:?} supports no version up to {version}"),
        )
    })?;
    if ipam_version != version {
        config["cniVersion"] = Value::String(ipam_version);
    }
    let config = serde_json::to_vec(&config).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits before reading its stdin reports why on stdout.
        let _ = stdin.write_all(&config);
    }
    let output = child.wait_with_output().map_err(|e| {
        CniError::new(
            &version,
            code::IO_FAILURE,
            format!("waiting for {}", binary.display()),
        )
        .with_details(e.to_string())
    })?;
    if !output.status.success() {
        // The plugin's own CNI error, passed on as it is when it is one (older plugins leave
        // out its cniVersion, which the spec requires in what we print).
        return Err(serde_json::from_slice::<CniError>(&output.stdout)
            .map(|e| {
                if e.cni_version.is_empty() {
                    CniError {
                        cni_version: version.clone(),
                        ..e
                    }
                } else {
                    e
                }
            })
            .unwrap_or_else(|_| {
                CniError::new(
                    &version,
                    code::IO_FAILURE,
                    format!("{plugin} {} failed", command_name(command)),
                )
                .with_details(format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        CniError::new(
            &version,
            code::DECODE_FAILURE,
            format!("{plugin} printed an unreadable result"),
        )
        .with_details(e.to_string())
    })
}
