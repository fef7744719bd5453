//! The evio-cni plugin's keys in a network config: one typed struct that the conflist writer
//! serialises ([`crate::conf::conflist`]) and the daemon parses back ([`PluginConf::parse`]),
//! so no key is lost between the two. DEL and GC read the lenient [`TeardownConf`]: they must
//! work with whatever config the runtime still has.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{valid_id, valid_ifname, ID_RULE};

/// The plugin binary kubelet execs; CNI requires `type` to name it.
pub const PLUGIN_TYPE: &str = "evio-cni";
/// Pod MTU when the config names none.
pub const DEFAULT_MTU: u32 = 1500;

/// Which bridge the pods hang off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BridgeType {
    /// Open vSwitch (the original Evio's default).
    #[default]
    #[serde(rename = "OVS")]
    Ovs,
    /// A Linux bridge.
    #[serde(rename = "LXBR")]
    Linux,
}

/// The OVS datapath a bridge evio creates uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OvsDatapath {
    /// The kernel datapath (production; needs the openvswitch module).
    #[default]
    System,
    /// The userspace datapath (no kernel module needed; slower).
    Netdev,
    /// Decided by the daemon on this host: `system` when the openvswitch module is usable,
    /// `netdev` when only userspace OVS runs, a Linux bridge when OVS is absent.
    Auto,
}

impl OvsDatapath {
    /// The OVSDB `datapath_type` value (`Auto` never reaches OVSDB: it is resolved first).
    pub fn as_str(self) -> &'static str {
        match self {
            OvsDatapath::System => "system",
            OvsDatapath::Netdev => "netdev",
            OvsDatapath::Auto => "auto",
        }
    }
}

fn plugin_type() -> String {
    PLUGIN_TYPE.into()
}

/// `isGateway` was always honoured as true by evio (the bridge carried the gateway address).
fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !b
}

/// One plugin object of the conflist, as written and as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConf {
    #[serde(rename = "type", default = "plugin_type")]
    pub plugin_type: String,
    pub bridge: String,
    #[serde(default)]
    pub bridge_type: BridgeType,
    /// The bridge's IPv4 address (the pods' gateway) with the pod CIDR's prefix; absent on an
    /// IPv6-only network. At least one of `bridgeIPv4` and `bridgeIPv6` is required.
    #[serde(
        rename = "bridgeIPv4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bridge_ipv4: Option<Ipv4Network>,
    /// The bridge's IPv6 address (`::1` of the node's block) with the IPv6 pod CIDR's prefix.
    #[serde(
        rename = "bridgeIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bridge_ipv6: Option<Ipv6Network>,
    /// Whether the bridge gets its addresses (forced on by `isDefaultGateway`, as the
    /// reference bridge plugin does).
    #[serde(default = "yes")]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Masquerade IPv4 pod traffic leaving the pod network.
    #[serde(default, rename = "isIPMasq")]
    pub is_ip_masq: bool,
    /// Masquerade IPv6 pod traffic leaving the pod network (off by default: ULA pod networks
    /// are usually routed, and global ones never need it).
    #[serde(default, rename = "isIPv6Masq", skip_serializing_if = "is_false")]
    pub is_ipv6_masq: bool,
    /// Pod MTU; absent → the MTU of the link carrying `hostIP` (the host overlay), else
    /// [`DEFAULT_MTU`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// This node's address on the host overlay (from its lease): the link carrying it bounds
    /// the pod MTU.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::Ipv4Addr>,
    /// Hairpin on the bridge port (Linux bridge): a pod reaches itself through a service IP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hairpin_mode: bool,
    /// The evio-node CNI socket the shim forwards to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Seconds the shim waits for the daemon (default 120); the daemon's deadline for the
    /// request shrinks to fit below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_timeout: Option<u64>,
    #[serde(default)]
    pub ovs_datapath: OvsDatapath,
    /// ovsdb-server's socket when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovsdb_socket: Option<String>,
    /// The pod overlay and this node's block (masquerade needs both).
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_subnet: Option<Ipv4Network>,
    /// The IPv6 pod overlay and this node's IPv6 block (IPv6 masquerade needs both).
    #[serde(default, rename = "podCIDRv6", skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Network>,
    #[serde(
        default,
        rename = "nodeSubnetV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_subnet_v6: Option<Ipv6Network>,
    /// Handed to the IPAM plugin as is (its `type` is checked).
    #[serde(default)]
    pub ipam: Value,
}

/// A config key the daemon refuses: CNI code 7 naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid evio-cni network config key {key}: {reason}")]
pub struct InvalidKey {
    pub key: String,
    pub reason: String,
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> InvalidKey {
    InvalidKey {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Deserialises `value`, naming the bad key under `prefix` ("" for the top level) when it
/// fails: serde alone would only say what was wrong with its value.
pub(crate) fn deserialize_keyed<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
) -> Result<T, InvalidKey> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = match (path.as_str(), prefix) {
            (".", "") => "(top level)".to_string(),
            (".", prefix) => prefix.to_string(),
            (path, "") => path.to_string(),
            (path, prefix) => format!("{prefix}.{path}"),
        };
        invalid(key, e.inner().to_string())
    })
}

impl PluginConf {
    /// Parses and checks a runtime's network config (the plugin object with the list's
    /// `name` and `cniVersion`), naming the bad key.
    pub fn parse(config: &Value) -> Result<Self, InvalidKey> {
        let conf: PluginConf = deserialize_keyed(config, "")?;
        let name = &config["name"];
        if !name.as_str().is_some_and(valid_id) {
            return Err(invalid("name", format!("{name}: {ID_RULE}")));
        }
        conf.validate()?;
        Ok(conf)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        valid_ifname(&self.bridge)
            .map_err(|reason| invalid("bridge", format!("{:?}: {reason}", self.bridge)))?;
        if let Some(mtu) = self.mtu.filter(|m| !(68..=65535).contains(m)) {
            return Err(invalid("mtu", format!("{mtu}: expected 68 to 65535")));
        }
        if let Some(secs) = self
            .reply_timeout
            .filter(|s| !crate::spec::REPLY_TIMEOUT_RANGE.contains(s))
        {
            let range = crate::spec::REPLY_TIMEOUT_RANGE;
            return Err(invalid(
                "replyTimeout",
                format!(
                    "{secs}: expected {} to {} seconds",
                    range.start(),
                    range.end()
                ),
            ));
        }
        if self.bridge_ipv4.is_none() && self.bridge_ipv6.is_none() {
            return Err(invalid(
                "bridgeIPv4",
                "(missing): bridgeIPv4, bridgeIPv6 or both are required",
            ));
        }
        // isIPMasq is about IPv4: an IPv6-only network ignores it, as it has no IPv4 pods.
        if self.is_ip_masq
            && self.bridge_ipv4.is_some()
            && (self.node_subnet.is_none() || self.pod_cidr.is_none())
        {
            return Err(invalid(
                "isIPMasq",
                "isIPMasq needs nodeSubnet and podCIDR in the network config",
            ));
        }
        if self.is_ipv6_masq && (self.node_subnet_v6.is_none() || self.pod_cidr_v6.is_none()) {
            return Err(invalid(
                "isIPv6Masq",
                "isIPv6Masq needs nodeSubnetV6 and podCIDRv6 in the network config",
            ));
        }
        for (key, bridge, cidr) in [
            (
                "bridgeIPv4",
                self.bridge_ipv4.map(IpNetwork::V4),
                self.pod_cidr.map(IpNetwork::V4),
            ),
            (
                "bridgeIPv6",
                self.bridge_ipv6.map(IpNetwork::V6),
                self.pod_cidr_v6.map(IpNetwork::V6),
            ),
        ] {
            if let (Some(bridge), Some(cidr)) = (bridge, cidr) {
                if !cidr.contains(bridge.ip()) {
                    return Err(invalid(
                        key,
                        format!("{bridge} is outside the pod CIDR {cidr}"),
                    ));
                }
            }
        }
        for (key, path) in [
            ("socket", &self.socket),
            ("ovsdbSocket", &self.ovsdb_socket),
        ] {
            if path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                return Err(invalid(key, "expected an absolute path"));
            }
        }
        if !self.ipam.is_object() {
            let shown = if self.ipam.is_null() {
                "(missing)".to_string()
            } else {
                self.ipam.to_string()
            };
            return Err(invalid(
                "ipam",
                format!("{shown}: expected an object with a type"),
            ));
        }
        Ok(())
    }

    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    /// The addresses the bridge carries, IPv4 first (none without `isGateway`;
    /// `isDefaultGateway` implies it).
    pub fn bridge_addresses(&self) -> Vec<IpNetwork> {
        if !(self.is_gateway || self.is_default_gateway) {
            return Vec::new();
        }
        self.bridge_ipv4
            .map(IpNetwork::V4)
            .into_iter()
            .chain(self.bridge_ipv6.map(IpNetwork::V6))
            .collect()
    }

    /// The bridge's (gateway's) address in the family of `addr`.
    pub fn gateway_for(&self, addr: std::net::IpAddr) -> Option<std::net::IpAddr> {
        match addr {
            std::net::IpAddr::V4(_) => self.bridge_ipv4.map(|n| n.ip().into()),
            std::net::IpAddr::V6(_) => self.bridge_ipv6.map(|n| n.ip().into()),
        }
    }

    /// Whether any family of this network is IPv6.
    pub fn has_ipv6(&self) -> bool {
        self.bridge_ipv6.is_some()
    }

    pub fn ovsdb_socket(&self) -> &str {
        self.ovsdb_socket
            .as_deref()
            .unwrap_or(crate::dataplane::ovsdb::DEFAULT_SOCKET)
    }

    pub fn teardown(&self) -> TeardownConf {
        TeardownConf {
            bridge_type: self.bridge_type,
            ovs_datapath: self.ovs_datapath,
            ovsdb_socket: self.ovsdb_socket().to_string(),
        }
    }
}

/// What DEL and GC need, read leniently: any key that is missing or wrong takes its default
/// (OVS unless the config says LXBR, the default OVSDB socket), so a broken or older config
/// never keeps a pod's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownConf {
    pub bridge_type: BridgeType,
    pub ovs_datapath: OvsDatapath,
    pub ovsdb_socket: String,
}

impl TeardownConf {
    pub fn parse(config: &Value) -> Self {
        fn key<T: serde::de::DeserializeOwned + Default>(config: &Value, k: &str) -> T {
            serde_json::from_value(config[k].clone()).unwrap_or_default()
        }
        TeardownConf {
            bridge_type: key(config, "bridgeType"),
            ovs_datapath: key(config, "ovsDatapath"),
            ovsdb_socket: config["ovsdbSocket"]
                .as_str()
                .filter(|s| s.starts_with('/'))
                .unwrap_or(crate::dataplane::ovsdb::DEFAULT_SOCKET)
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({"cniVersion": "1.1.0", "name": "n", "type": "evio-cni", "bridge": "br0",
               "bridgeType": "LXBR", "bridgeIPv4": "10.1.3.1/16", "isGateway": false,
               "isDefaultGateway": false, "isIPMasq": true, "mtu": 1400, "hairpinMode": true,
               "ovsDatapath": "auto", "podCIDR": "10.1.0.0/16", "nodeSubnet": "10.1.3.0/24",
               "ipam": {"type": "host-local"}})
    }

    #[test]
    fn round_trips_every_key() {
        let conf = PluginConf::parse(&sample()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!conf.is_gateway);
        assert_eq!(conf.bridge_addresses(), vec![]);
        assert_eq!(conf.ovs_datapath, OvsDatapath::Auto);
        let mut written = serde_json::to_value(&conf).unwrap_or_default();
        written["name"] = json!("n");
        assert_eq!(PluginConf::parse(&written).ok(), Some(conf));
    }

    #[test]
    fn names_the_bad_key() {
        for (key, value) in [
            ("ovsDatapath", json!("dpdk")),
            ("bridgeType", json!("VXLAN")),
            ("mtu", json!(10)),
            ("bridge", json!("a/b")),
            ("ipam", json!(null)),
            ("ovsdbSocket", json!("db.sock")),
        ] {
            let mut config = sample();
            config[key] = value;
            let err = PluginConf::parse(&config).map(|_| ()).unwrap_err();
            assert!(err.key.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn ipv6_and_dual_stack_keys() {
        let mut dual = sample();
        dual["bridgeIPv6"] = json!("fd00:1:0:3::1/56");
        dual["podCIDRv6"] = json!("fd00:1::/56");
        dual["nodeSubnetV6"] = json!("fd00:1:0:3::/64");
        dual["isIPv6Masq"] = json!(true);
        dual["isGateway"] = json!(true);
        let conf = PluginConf::parse(&dual).unwrap_or_else(|e| panic!("{e}"));
        let shown: Vec<String> = conf
            .bridge_addresses()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(shown, ["10.1.3.1/16", "fd00:1:0:3::1/56"]);
        let mut written = serde_json::to_value(&conf).unwrap_or_default();
        written["name"] = json!("n");
        assert_eq!(PluginConf::parse(&written).ok(), Some(conf));
        // IPv6 only: isIPMasq (IPv4) does not need the IPv4 keys
        let mut v6 = dual.clone();
        for key in ["bridgeIPv4", "podCIDR", "nodeSubnet"] {
            v6.as_object_mut().map(|o| o.remove(key));
        }
        assert!(PluginConf::parse(&v6).is_ok());
        for (key, value, named) in [
            ("bridgeIPv6", json!("fd00:1:0:3::1/129"), "bridgeIPv6"),
            ("bridgeIPv6", json!("10.1.3.1/16"), "bridgeIPv6"),
            ("bridgeIPv6", json!("fd09::1/56"), "bridgeIPv6"),
            ("nodeSubnetV6", json!(null), "isIPv6Masq"),
            ("podCIDRv6", json!("fd00:1::/999"), "podCIDRv6"),
        ] {
            let mut config = dual.clone();
            config[key] = value;
            let err = PluginConf::parse(&config).map(|_| ()).unwrap_err();
            assert!(err.key.contains(named), "{key}: {err}");
        }
        let mut neither = v6;
        neither.as_object_mut().map(|o| o.remove("bridgeIPv6"));
        let err = PluginConf::parse(&neither).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("bridgeIPv6"), "{err}");
    }

    #[test]
    fn teardown_is_lenient() {
        let t = TeardownConf::parse(&json!({"bridgeType": 7, "ovsdbSocket": "rel"}));
        assert_eq!(t.bridge_type, BridgeType::Ovs);
        assert_eq!(t.ovsdb_socket, crate::dataplane::ovsdb::DEFAULT_SOCKET);
        let t = TeardownConf::parse(&json!({"bridgeType": "LXBR"}));
        assert_eq!(t.bridge_type, BridgeType::Linux);
    }
}
