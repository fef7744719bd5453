//! The CNI network configuration list (`10-evio.conflist`) for this node's lease.
//!
//! Keys follow the original Evio `net-conf.json` (`bridge`, `bridgeType`, `isGateway`,
//! `isDefaultGateway`, `isIPMasq`) plus `bridgeIPv4` = gateway with the podCIDR's prefix, so
//! pods get the podCIDR mask: one flat L2 pod network across hosts.

use std::path::Path;

use evio_lease_model::write_atomic;
use evio_lease_model::Lease;
use serde::Deserialize;
use serde_json::{json, Value};

pub use crate::plugin_conf::{BridgeType, OvsDatapath, PluginConf, PLUGIN_TYPE};
use crate::spec::{version_key, LATEST_VERSION, SUPPORTED_VERSIONS};

pub const CONFLIST_FILE: &str = "10-evio.conflist";

/// The node-independent part of the network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub bridge_type: BridgeType,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub is_ip_masq: bool,
    /// Masquerade IPv6 pods too (off by default).
    pub is_ipv6_masq: bool,
    /// Pod MTU; `None` lets each ADD follow the link carrying the node's host IP.
    pub mtu: Option<u32>,
    /// The evio-node CNI socket the plugin forwards requests to.
    pub socket: String,
    /// OVS datapath: kernel, userspace, or decided by the daemon on its host.
    pub ovs_datapath: OvsDatapath,
    /// ovsdb-server's socket when not the default `/run/openvswitch/db.sock`; written to the
    /// conflist only when set.
    pub ovsdb_socket: Option<String>,
    /// Seconds the shim waits for the daemon (`replyTimeout`); written only when set.
    pub reply_timeout: Option<u64>,
    /// The conflist's `ipam.type`: host-local (default) or evio-ipam (served by the daemon).
    pub ipam_type: IpamType,
}

/// Which IPAM the conflist names (net-conf.json `ipamType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum IpamType {
    #[default]
    #[serde(rename = "host-local")]
    HostLocal,
    #[serde(rename = "evio-ipam")]
    EvioIpam,
}

impl IpamType {
    pub fn as_str(self) -> &'static str {
        match self {
            IpamType::HostLocal => "host-local",
            IpamType::EvioIpam => crate::dataplane::evio_ipam::PLUGIN,
        }
    }
}

impl Default for NetConf {
    fn default() -> Self {
        Self {
            cni_version: LATEST_VERSION.into(),
            name: "k8s-pod-network".into(),
            bridge: "evioB1B111B".into(),
            bridge_type: BridgeType::Ovs,
            is_gateway: true,
            is_default_gateway: true,
            is_ip_masq: true,
            is_ipv6_masq: false,
            mtu: None,
            socket: crate::spec::DEFAULT_SOCKET.into(),
            ovs_datapath: OvsDatapath::System,
            ovsdb_socket: None,
            reply_timeout: None,
            ipam_type: IpamType::HostLocal,
        }
    }
}

/// The original Evio `net-conf.json` (a ConfigMap): `nodeBits` may be a string or a number,
/// `podCIDR` may carry host bits. Unknown keys (`dataStore`, `auth`, ...) are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalNetConf {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    pub node_bits: StringOrNumber,
    pub cni_version: Option<String>,
    pub name: Option<String>,
    pub bridge: Option<String>,
    pub bridge_type: Option<BridgeType>,
    pub is_gateway: Option<bool>,
    pub is_default_gateway: Option<bool>,
    #[serde(rename = "isIPMasq")]
    pub is_ip_masq: Option<bool>,
    #[serde(rename = "isIPv6Masq")]
    pub is_ipv6_masq: Option<bool>,
    pub mtu: Option<u32>,
    pub socket: Option<String>,
    pub ovs_datapath: Option<OvsDatapath>,
    pub ovsdb_socket: Option<String>,
    pub reply_timeout: Option<u64>,
    pub ipam_type: Option<IpamType>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrNumber {
    String(String),
    Number(u64),
}

impl StringOrNumber {
    pub fn as_string(&self) -> String {
        match self {
            StringOrNumber::String(s) => s.clone(),
            StringOrNumber::Number(n) => n.to_string(),
        }
    }
}

impl OriginalNetConf {
    /// Reads and checks the file; an error names the bad key and its value.
    pub fn load(path: &Path) -> Result<Self, ConfError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfError::Read {
            path: shown.clone(),
            source,
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| ConfError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Self::from_value(&shown, &value)
    }

    /// Checks every known key's type and value (unknown keys such as `dataStore` are kept
    /// out of the way, as the original tool ignored what it did not use).
    pub fn from_value(path: &str, value: &Value) -> Result<Self, ConfError> {
        let Some(object) = value.as_object() else {
            return Err(ConfError::Parse {
                path: path.to_string(),
                reason: "expected a JSON object".into(),
            });
        };
        let invalid = |key: &str, reason: &str| ConfError::Invalid {
            path: path.to_string(),
            key: key.to_string(),
            value: object
                .get(key)
                .map_or_else(|| "(missing)".into(), Value::to_string),
            reason: reason.to_string(),
        };
        fn typed<T: serde::de::DeserializeOwned>(
            object: &serde_json::Map<String, Value>,
            key: &str,
        ) -> Result<Option<T>, String> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| e.to_string()),
            }
        }
        macro_rules! field {
            ($key:literal) => {
                typed(object, $key).map_err(|reason| invalid($key, &reason))?
            };
        }
        let pod_cidr: String = field!("podCIDR").ok_or_else(|| {
            invalid(
                "podCIDR",
                "required, e.g. \"10.244.0.0/16\", \"fd00:10:244::/56\" or both, comma-separated",
            )
        })?;
        let node_bits: StringOrNumber =
            field!("nodeBits").ok_or_else(|| invalid("nodeBits", "required, e.g. \"8\""))?;
        let conf = OriginalNetConf {
            pod_cidr,
            node_bits,
            cni_version: field!("cniVersion"),
            name: field!("name"),
            bridge: field!("bridge"),
            bridge_type: field!("bridgeType"),
            is_gateway: field!("isGateway"),
            is_default_gateway: field!("isDefaultGateway"),
            is_ip_masq: field!("isIPMasq"),
            is_ipv6_masq: field!("isIPv6Masq"),
            mtu: field!("mtu"),
            socket: field!("socket"),
            ovs_datapath: field!("ovsDatapath"),
            ovsdb_socket: field!("ovsdbSocket"),
            reply_timeout: field!("replyTimeout"),
            ipam_type: field!("ipamType"),
        };
        let bits = evio_lease_model::Pool::parse_node_bits(&conf.node_bits.as_string())
            .map_err(|e| invalid("nodeBits", &e.to_string()))?;
        evio_lease_model::Pool::parse(&conf.pod_cidr, bits)
            .map_err(|e| invalid("podCIDR", &e.to_string()))?;
        if let Some(bridge) = &conf.bridge {
            let ok = !bridge.is_empty()
                && bridge.len() <= 15
                && !bridge.contains(|c: char| c == '/' || c.is_whitespace());
            if !ok {
                return Err(invalid(
                    "bridge",
                    "an interface name: 1 to 15 characters, no '/' or spaces",
                ));
            }
        }
        if conf.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            return Err(invalid("mtu", "expected 68 to 65535"));
        }
        if conf.socket.as_ref().is_some_and(|s| !s.starts_with('/')) {
            return Err(invalid("socket", "expected an absolute path"));
        }
        let replies = crate::spec::REPLY_TIMEOUT_RANGE;
        if conf.reply_timeout.is_some_and(|s| !replies.contains(&s)) {
            return Err(invalid(
                "replyTimeout",
                &format!("expected {} to {} seconds", replies.start(), replies.end()),
            ));
        }
        if conf
            .ovsdb_socket
            .as_ref()
            .is_some_and(|s| !s.starts_with('/'))
        {
            return Err(invalid("ovsdbSocket", "expected an absolute path"));
        }
        if conf
            .cni_version
            .as_ref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(invalid("cniVersion", "must not be empty"));
        }
        if conf.name.as_ref().is_some_and(|v| v.trim().is_empty()) {
            return Err(invalid("name", "must not be empty"));
        }
        Ok(conf)
    }

    /// The pool this file describes (already checked by `load`).
    pub fn pool(&self) -> Result<evio_lease_model::Pool, evio_lease_model::PoolError> {
        let bits = evio_lease_model::Pool::parse_node_bits(&self.node_bits.as_string())?;
        evio_lease_model::Pool::parse(&self.pod_cidr, bits)
    }

    /// The node-independent CNI settings, defaults where the file is silent.
    pub fn net_conf(&self) -> NetConf {
        let d = NetConf::default();
        NetConf {
            cni_version: self.cni_version.clone().unwrap_or(d.cni_version),
            name: self.name.clone().unwrap_or(d.name),
            bridge: self.bridge.clone().unwrap_or(d.bridge),
            bridge_type: self.bridge_type.unwrap_or(d.bridge_type),
            is_gateway: self.is_gateway.unwrap_or(d.is_gateway),
            is_default_gateway: self.is_default_gateway.unwrap_or(d.is_default_gateway),
            is_ip_masq: self.is_ip_masq.unwrap_or(d.is_ip_masq),
            is_ipv6_masq: self.is_ipv6_masq.unwrap_or(d.is_ipv6_masq),
            mtu: self.mtu.or(d.mtu),
            socket: self.socket.clone().unwrap_or(d.socket),
            ovs_datapath: self.ovs_datapath.unwrap_or(d.ovs_datapath),
            ovsdb_socket: self.ovsdb_socket.clone().or(d.ovsdb_socket),
            reply_timeout: self.reply_timeout.or(d.reply_timeout),
            ipam_type: self.ipam_type.unwrap_or(d.ipam_type),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid net-conf.json: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: invalid net-conf.json key {key:?} = {value}: {reason}")]
    Invalid {
        path: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The plugin object of the conflist for `lease`: per family of the pool, a bridge address
/// (the block's gateway with the podCIDR's prefix), one host-local range and a default route.
pub fn plugin_conf(conf: &NetConf, lease: &Lease) -> PluginConf {
    use ipnetwork::IpNetwork;
    let mut plugin = PluginConf {
        plugin_type: PLUGIN_TYPE.into(),
        bridge: conf.bridge.clone(),
        bridge_type: conf.bridge_type,
        bridge_ipv4: None,
        bridge_ipv6: None,
        is_gateway: conf.is_gateway,
        is_default_gateway: conf.is_default_gateway,
        is_ip_masq: conf.is_ip_masq,
        is_ipv6_masq: conf.is_ipv6_masq,
        mtu: conf.mtu,
        host_ip: lease.record.host_ip,
        hairpin_mode: false,
        socket: Some(conf.socket.clone()),
        ovs_datapath: conf.ovs_datapath,
        ovsdb_socket: conf.ovsdb_socket.clone(),
        reply_timeout: conf.reply_timeout,
        pod_cidr: None,
        node_subnet: None,
        pod_cidr_v6: None,
        node_subnet_v6: None,
        ipam: Value::Null,
    };
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    for block in lease.blocks() {
        let Some(pod_cidr) = lease.pool.cidr_of(block.family()) else {
            continue;
        };
        ranges.push(json!([{
            "subnet": pod_cidr.to_string(),
            "rangeStart": block.range_start.to_string(),
            "rangeEnd": block.range_end.to_string(),
            "gateway": block.gateway.to_string(),
        }]));
        // The gateway with the podCIDR's prefix (a prefix of its own family always fits).
        let bridge = IpNetwork::new(block.gateway, pod_cidr.prefix())
            .unwrap_or(IpNetwork::from(block.gateway));
        match (bridge, pod_cidr, block.subnet) {
            (IpNetwork::V4(bridge), IpNetwork::V4(cidr), IpNetwork::V4(subnet)) => {
                plugin.bridge_ipv4 = Some(bridge);
                (plugin.pod_cidr, plugin.node_subnet) = (Some(cidr), Some(subnet));
                routes.push(json!({"dst": "0.0.0.0/0"}));
            }
            (IpNetwork::V6(bridge), IpNetwork::V6(cidr), IpNetwork::V6(subnet)) => {
                plugin.bridge_ipv6 = Some(bridge);
                (plugin.pod_cidr_v6, plugin.node_subnet_v6) = (Some(cidr), Some(subnet));
                routes.push(json!({"dst": "::/0"}));
            }
            _ => {}
        }
    }
    plugin.ipam = json!({"type": conf.ipam_type.as_str(), "ranges": ranges, "routes": routes});
    plugin
}

/// The `cniVersion` a runtime reads when its libcni predates `cniVersions` (containerd 1.6
/// and 1.7, libcni < 1.2): they refuse a 1.1.0 result outright, so that field stays at 1.0.0
/// unless net-conf.json asks for less.
const COMPAT_VERSION: &str = "1.0.0";

/// Renders the conflist for `lease`: `cniVersions` lists every version we support up to the
/// configured one, so libcni >= 1.2 runtimes pick the newest they share with us (1.1.0 by
/// default) and send STATUS and GC; `cniVersion` is what older runtimes use (see
/// [`COMPAT_VERSION`]). Every plugin of the list must support the chosen version: with an
/// older `portmap` (Debian 12's stops at 1.0.0) set `cniVersion` "1.0.0" in net-conf.json.
pub fn conflist(conf: &NetConf, lease: &Lease) -> Value {
    let versions: Vec<&str> = SUPPORTED_VERSIONS
        .into_iter()
        .filter(|v| version_key(v) <= version_key(&conf.cni_version))
        .collect();
    let compat = if version_key(&conf.cni_version) > version_key(COMPAT_VERSION) {
        COMPAT_VERSION
    } else {
        conf.cni_version.as_str()
    };
    json!({
        "cniVersion": compat,
        "cniVersions": versions,
        "name": conf.name,
        "plugins": [
            plugin_conf(conf, lease),
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// Writes the conflist into `dir` atomically (mode 0644). Returns false when the file already
/// held exactly this content (nothing written).
pub fn write_conflist(dir: &Path, conf: &NetConf, lease: &Lease) -> Result<bool, ConfError> {
    let path = dir.join(CONFLIST_FILE);
    let err = |source| ConfError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(&conflist(conf, lease)).map_err(|e| err(e.into()))?;
    bytes.push(b'\n');
    if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    write_atomic(&path, &bytes, 0o644).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
