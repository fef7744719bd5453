//! The CNI protocol as the shim and the daemon speak it: versions, error codes and the
//! request a shim forwards over the daemon's unix socket (CNI spec 1.1.0, accepting configs
//! from 0.3.0 on).

use std::collections::BTreeMap;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions a config may declare.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";
/// Where the shim finds the daemon unless the config's `socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/evio/cni.sock";
/// How long the shim waits for the daemon by default; the daemon's deadline stays below it.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// `replyTimeout` seconds allowed: room for a deadline and a rollback below it, at most an hour.
pub const REPLY_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 15..=3600;

/// The spec's well-known error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
}

/// The error object a plugin prints on stdout (with a non-zero exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// Older plugins (e.g. host-local 1.1) leave it out of their errors.
    #[serde(default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(version: &str, code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: version.to_string(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

/// The CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The lowest config version that may ask for this operation.
    fn min_version(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }

    /// The `CNI_*` variables the operation needs.
    fn required_env(self) -> &'static [&'static str] {
        match self {
            // CNI_PATH: ADD, CHECK and DEL delegate to the IPAM plugin found there.
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc | Command::Version => &[],
        }
    }
}

/// Orders dotted versions numerically ("0.10.0" > "0.4.0").
pub fn version_key(version: &str) -> Vec<u32> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Which binary forwarded a request: evio-cni (the network plugin) or evio-ipam (an IPAM
/// plugin another plugin delegated to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plugin {
    #[default]
    EvioCni,
    EvioIpam,
}

impl Plugin {
    fn is_evio_cni(&self) -> bool {
        *self == Plugin::EvioCni
    }
}

/// What the shim forwards to the daemon: the operation, every `CNI_*` variable and the
/// network configuration (with `prevResult`, `cni.dev/valid-attachments`, ...) as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as given (`K=V;K=V`).
    pub args: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Plugin::is_evio_cni")]
    pub plugin: Plugin,
    pub config: Value,
}

/// The daemon's answer: a result object (printed as is) or a CNI error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Ok(Value),
    Error(CniError),
}

impl Request {
    /// Builds a request from the environment and the config read from stdin, checking what
    /// the spec requires before anything is sent: a known command, a supported version that
    /// allows it, and the variables it needs.
    pub fn from_env(env: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Self, CniError> {
        let command_text = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
        let command = Command::parse(command_text).ok_or_else(|| {
            CniError::new(
                LATEST_VERSION,
                code::INVALID_ENVIRONMENT,
                format!("invalid CNI_COMMAND {command_text:?}"),
            )
            .with_details("expected ADD, DEL, CHECK, STATUS, GC or VERSION")
        })?;
        let config: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                LATEST_VERSION,
                code::DECODE_FAILURE,
                "the network configuration on stdin is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        if !config.is_object() {
            return Err(CniError::new(
                LATEST_VERSION,
                code::DECODE_FAILURE,
                "the network configuration on stdin is not a JSON object",
            )
            .with_details(config.to_string()));
        }
        let version = config_version(&config)?;
        if version_key(&version) < version_key(command.min_version()) {
            return Err(CniError::new(
                &version,
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{command_text} needs cniVersion {} or later; the config declares {version}",
                    command.min_version()
                ),
            ));
        }
        let missing: Vec<&str> = command
            .required_env()
            .iter()
            .copied()
            .filter(|name| env.get(*name).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                &version,
                code::INVALID_ENVIRONMENT,
                format!("missing environment variables: {}", missing.join(", ")),
            ));
        }
        let var = |name: &str| env.get(name).cloned().unwrap_or_default();
        let invalid_var = |name: &str, reason: &str| {
            CniError::new(
                &version,
                code::INVALID_ENVIRONMENT,
                format!("invalid {name} {:?}: {reason}", var(name)),
            )
        };
        if command.required_env().contains(&"CNI_CONTAINERID") && !valid_id(&var("CNI_CONTAINERID"))
        {
            return Err(invalid_var("CNI_CONTAINERID", ID_RULE));
        }
        if command.required_env().contains(&"CNI_IFNAME") {
            valid_ifname(&var("CNI_IFNAME")).map_err(|reason| invalid_var("CNI_IFNAME", reason))?;
        }
        // A socket of the wrong type or a relative one would silently reach another daemon.
        if let Some(socket) = config.get("socket") {
            if !socket.as_str().is_some_and(|s| s.starts_with('/')) {
                return Err(CniError::new(
                    &version,
                    code::INVALID_NETWORK_CONFIG,
                    format!("invalid socket {socket}: expected an absolute path"),
                ));
            }
        }
        Ok(Self {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
            plugin: Plugin::EvioCni,
            config,
        })
    }

    /// The config's declared version (validated at construction).
    pub fn version(&self) -> String {
        self.config["cniVersion"]
            .as_str()
            .unwrap_or(LATEST_VERSION)
            .to_string()
    }

    /// How long the shim waits for the daemon's answer: the config's `replyTimeout` (seconds,
    /// [`REPLY_TIMEOUT_RANGE`]), or [`DEFAULT_REPLY_TIMEOUT`]. A bad value falls back to the
    /// default here; the daemon refuses it (code 7) on ADD and CHECK.
    pub fn reply_timeout(&self) -> Duration {
        self.config["replyTimeout"]
            .as_u64()
            .filter(|s| REPLY_TIMEOUT_RANGE.contains(s))
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_REPLY_TIMEOUT)
    }

    /// The daemon socket named by the config (`socket`; for evio-ipam `ipam.socket` first),
    /// or the default.
    pub fn socket(&self) -> String {
        let ipam = match self.plugin {
            Plugin::EvioIpam => self.config["ipam"]["socket"].as_str(),
            Plugin::EvioCni => None,
        };
        ipam.or(self.config["socket"].as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_SOCKET)
            .to_string()
    }
}

/// What the spec allows in a container id and a network name.
pub const ID_RULE: &str = "expected an alphanumeric character, then alphanumerics, '_', '.' or '-'";

/// A container id or network name as the spec allows them (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`).
pub fn valid_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An interface name the kernel accepts: 1 to 15 bytes, not "." or "..", no '/', ':' or
/// whitespace.
pub fn valid_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 characters");
    }
    if name == "." || name == ".." {
        return Err("an interface name cannot be \".\" or \"..\"");
    }
    if name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("an interface name cannot contain '/', ':' or whitespace");
    }
    Ok(())
}

/// The config's `cniVersion`, if it is one we support.
pub fn config_version(config: &Value) -> Result<String, CniError> {
    let version = config["cniVersion"].as_str().unwrap_or("");
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(version.to_string())
    } else {
        let shown = config
            .get("cniVersion")
            .map_or_else(|| "(missing)".to_string(), Value::to_string);
        Err(CniError::new(
            LATEST_VERSION,
            code::INCOMPATIBLE_VERSION,
            format!("unsupported cniVersion {shown}"),
        )
        .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))))
    }
}

/// The answer to VERSION: the config's version (or the latest) and all we support.
pub fn version_result(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|c| c["cniVersion"].as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ADD_ENV: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn builds_a_request_for_every_supported_version() {
        for version in SUPPORTED_VERSIONS {
            let config = format!(
                r#"{{"cniVersion":"{version}","name":"n","type":"evio-cni","socket":"/tmp/s.sock"}}"#
            );
            let request = Request::from_env(&env(&ADD_ENV), config.as_bytes())
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(request.command, Command::Add);
            assert_eq!(request.ifname, "eth0");
            assert_eq!(request.version(), version);
            assert_eq!(request.socket(), "/tmp/s.sock");
        }
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        let cfg = |v: &str| format!(r#"{{"cniVersion":"{v}","name":"n","type":"evio-cni"}}"#);
        // (environment, config on stdin, expected code, text the error must name)
        type Case<'a> = (Vec<(&'a str, &'a str)>, String, u32, &'a str);
        let cases: [Case; 6] = [
            (
                vec![("CNI_COMMAND", "FROB")],
                cfg("1.1.0"),
                code::INVALID_ENVIRONMENT,
                "FROB",
            ),
            (
                ADD_ENV.to_vec(),
                "{nope".into(),
                code::DECODE_FAILURE,
                "JSON",
            ),
            (
                ADD_ENV.to_vec(),
                cfg("0.2.0"),
                code::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "e"),
                ],
                cfg("0.3.1"),
                code::INCOMPATIBLE_VERSION,
                "0.4.0",
            ),
            (
                vec![("CNI_COMMAND", "GC")],
                cfg("1.0.0"),
                code::INCOMPATIBLE_VERSION,
                "1.1.0",
            ),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")],
                cfg("1.0.0"),
                code::INVALID_ENVIRONMENT,
                "CNI_NETNS, CNI_IFNAME",
            ),
        ];
        for (vars, config, want_code, needle) in cases {
            let err = Request::from_env(&env(&vars), config.as_bytes())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.code, want_code, "{err:?}");
            let text = format!("{} {}", err.msg, err.details);
            assert!(text.contains(needle), "{needle}: {text}");
        }
        // DEL needs no netns (it may be gone already)
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]);
        assert!(Request::from_env(&del, cfg("0.3.1").as_bytes()).is_ok());
    }

    #[test]
    fn names_and_ids_follow_the_spec() {
        assert!(valid_id("0123abc_.-x") && !valid_id("") && !valid_id("-a") && !valid_id("a b"));
        assert!(valid_ifname("eth0").is_ok() && valid_ifname("0123456789abcde").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            assert!(valid_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_answer() {
        let v = version_result(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(5));
        assert_eq!(version_result(b"")["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new("1.0.0", code::TRY_AGAIN_LATER, "daemon unreachable")
            .with_details("/run/evio/cni.sock");
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":11,"msg":"daemon unreachable","details":"/run/evio/cni.sock"})
        );
    }
}
