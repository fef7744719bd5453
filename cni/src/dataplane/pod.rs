//! ADD and DEL of one pod interface on a Linux bridge: bridge with the gateway address, a veth
//! pair (host end on the bridge, pod end renamed to `CNI_IFNAME` in the pod netns), IPAM by
//! delegation, address and default route. ADD undoes everything it did when any step fails;
//! DEL is keyed on the container id alone, so it works when the netns is already gone.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use rtnetlink::Handle;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ipam;
use super::masquerade::Masquerade;
use super::netlink::{self, NetlinkError};
use super::ovsdb::{self, Ovsdb, OvsdbError};
use super::reaper::{Reaper, RETIRED, RETIRED_GROUP};
use crate::conf::BridgeType;
use crate::result;
use crate::spec::{code, valid_id, valid_ifname, CniError, Command, Request, ID_RULE};

/// Interface-name collisions in the pod netns (plugin-specific code, as the spec allows).
pub const CODE_INTERFACE_EXISTS: u32 = 100;
/// A netlink step failed.
pub const CODE_NETLINK: u32 = 101;
/// An OVSDB step failed.
pub const CODE_OVSDB: u32 = 102;

/// The plugin keys of the generated conflist this module reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PluginConf {
    bridge: String,
    #[serde(default)]
    bridge_type: Option<BridgeType>,
    #[serde(rename = "bridgeIPv4")]
    bridge_ipv4: Ipv4Network,
    #[serde(default = "default_mtu")]
    mtu: u32,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default, rename = "isIPMasq")]
    is_ip_masq: bool,
    /// This node's block and the pod CIDR (written by evio's conflist), for masquerade.
    #[serde(default)]
    node_subnet: Option<Ipv4Network>,
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<Ipv4Network>,
    /// OVS datapath: "system" (kernel, production) or "netdev" (userspace).
    #[serde(default)]
    ovs_datapath: Option<String>,
    /// ovsdb-server's socket.
    #[serde(default)]
    ovsdb_socket: Option<String>,
}

impl PluginConf {
    fn is_ovs(&self) -> bool {
        self.bridge_type.unwrap_or(BridgeType::Ovs) == BridgeType::Ovs
    }

    fn ovsdb(&self) -> Ovsdb {
        Ovsdb::new(
            self.ovsdb_socket
                .as_deref()
                .unwrap_or(ovsdb::DEFAULT_SOCKET),
        )
    }
}

/// The OVSDB the raw config names (DEL and GC must work even when the rest of it is off).
fn ovsdb_for(request: &Request) -> Ovsdb {
    Ovsdb::new(
        request.config["ovsdbSocket"]
            .as_str()
            .unwrap_or(ovsdb::DEFAULT_SOCKET),
    )
}

fn default_mtu() -> u32 {
    1500
}

/// Deterministic per (container, ifname), at most 15 characters (IFNAMSIZ - 1).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "evio{:011x}",
        fnv(&format!("{container_id}/{ifname}")) & 0xfff_ffff_ffff
    )
}

/// The host veth's alias (and the OVS port's `evio-owner`): which network and attachment it
/// belongs to, so GC touches only its own network's leftovers.
fn owner_alias(request: &Request, ifname: &str) -> String {
    format!("{}{}/{ifname}", owner_prefix(request), request.container_id)
}

fn owner_prefix(request: &Request) -> String {
    format!(
        "evio:{}:",
        request.config["name"].as_str().unwrap_or_default()
    )
}

/// The (container id, ifname) of an owner string of this request's network.
fn parse_owner<'a>(owner: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    owner.strip_prefix(prefix)?.rsplit_once('/')
}

fn parse_conf(request: &Request) -> Result<PluginConf, CniError> {
    let invalid =
        |msg: String| CniError::new(&request.version(), code::INVALID_NETWORK_CONFIG, msg);
    // The path names the bad key (serde alone would only say what was wrong with its value).
    let conf: PluginConf = serde_path_to_error::deserialize(&request.config).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { "(top level)" } else { &key };
        invalid(format!("invalid evio-cni network config key {key}"))
            .with_details(e.inner().to_string())
    })?;
    let name = &request.config["name"];
    if !name.as_str().is_some_and(valid_id) {
        return Err(invalid(format!("invalid name {name}: {ID_RULE}")));
    }
    valid_ifname(&conf.bridge)
        .map_err(|reason| invalid(format!("invalid bridge {:?}: {reason}", conf.bridge)))?;
    if !(68..=65535).contains(&conf.mtu) {
        return Err(invalid(format!(
            "invalid mtu {}: expected 68 to 65535",
            conf.mtu
        )));
    }
    if conf.is_ip_masq && (conf.node_subnet.is_none() || conf.pod_cidr.is_none()) {
        return Err(invalid(
            "isIPMasq needs nodeSubnet and podCIDR in the network config".into(),
        ));
    }
    if let Some(datapath) = conf.ovs_datapath.as_deref() {
        if datapath != "system" && datapath != "netdev" {
            return Err(invalid(format!(
                "invalid ovsDatapath {datapath:?}: \"system\" or \"netdev\""
            )));
        }
    }
    if !request.config["ipam"].is_object() {
        return Err(invalid(format!(
            "invalid ipam {}: expected an object with a type",
            request
                .config
                .get("ipam")
                .map_or_else(|| "(missing)".into(), Value::to_string)
        )));
    }
    Ok(conf)
}

fn netlink_error(version: &str) -> impl Fn(NetlinkError) -> CniError + '_ {
    move |e| CniError::new(version, CODE_NETLINK, e.action).with_details(e.reason)
}

/// The pod's address and gateway from the IPAM result (any supported result version).
fn ipam_address(
    result: &Value,
    version: &str,
) -> Result<(Ipv4Network, Option<Ipv4Addr>), CniError> {
    let first = &result["ips"][0];
    let address: Ipv4Network = first["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            CniError::new(
                version,
                code::DECODE_FAILURE,
                "IPAM returned no IPv4 address",
            )
            .with_details(result.to_string())
        })?;
    let gateway = first["gateway"].as_str().and_then(|g| g.parse().ok());
    Ok((address, gateway))
}

/// The node's pod networking: one netlink handle, bridge creation serialised, masquerade
/// rules remembered.
pub struct PodNetwork {
    handle: Handle,
    bridge_lock: tokio::sync::Mutex<()>,
    masquerade: Masquerade,
    /// Bounds the requests in flight on the shared netlink socket: with ~50 at once its
    /// receive buffer overflowed and an answer was lost (an ADD then waited forever).
    in_flight: tokio::sync::Semaphore,
    reaper: Reaper,
}

/// Requests served at once; more wait their turn (kubelet may send dozens together).
const MAX_IN_FLIGHT: usize = 8;

impl PodNetwork {
    /// Must be called inside a tokio runtime (the netlink connection runs on it).
    pub fn new() -> Result<Self, NetlinkError> {
        let handle = netlink::connect()?;
        Ok(Self {
            reaper: Reaper::start(handle.clone()),
            handle,
            bridge_lock: tokio::sync::Mutex::new(()),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            masquerade: Masquerade::default(),
        })
    }

    async fn turn(&self, request: &Request) -> Result<tokio::sync::SemaphorePermit<'_>, CniError> {
        self.in_flight
            .acquire()
            .await
            .map_err(|_| CniError::new(&request.version(), code::TRY_AGAIN_LATER, "shutting down"))
    }

    /// Sets up the pod interface; returns the CNI result for the config's version.
    pub async fn add(&self, request: &Request) -> Result<Value, CniError> {
        let _turn = self.turn(request).await?;
        add(&self.handle, &self.bridge_lock, &self.masquerade, request).await
    }

    /// Removes the pod interface and releases its address. Idempotent; needs no netns.
    pub async fn del(&self, request: &Request) -> Result<Value, CniError> {
        let _turn = self.turn(request).await?;
        del(&self.handle, &self.reaper, request).await
    }

    /// Waits until the veths of deleted pods are gone (DEL leaves their deletion to a queue).
    pub async fn settled(&self) {
        self.reaper.drained().await
    }

    /// Verifies the pod's interface, address, default route and bridge port against
    /// `prevResult`, then delegates CHECK to IPAM.
    pub async fn check(&self, request: &Request) -> Result<Value, CniError> {
        let _turn = self.turn(request).await?;
        check(&self.handle, request).await
    }

    /// Ready when the config is valid and its IPAM plugin is installed.
    pub fn status(&self, request: &Request) -> Result<Value, CniError> {
        parse_conf(request)?;
        ipam::plugin_path(request).map_err(|e| CniError {
            code: CODE_PLUGIN_NOT_AVAILABLE,
            ..e
        })?;
        Ok(Value::Null)
    }

    /// Removes evio veths and host-local reservations of attachments not listed in
    /// `cni.dev/valid-attachments`.
    pub async fn gc(&self, request: &Request) -> Result<Value, CniError> {
        let _turn = self.turn(request).await?;
        gc(&self.handle, request).await
    }
}

/// The spec's "plugin not available" (STATUS).
pub const CODE_PLUGIN_NOT_AVAILABLE: u32 = 50;
/// CHECK found the pod's network not as ADD left it.
pub const CODE_CHECK_FAILED: u32 = 110;

async fn check(handle: &Handle, request: &Request) -> Result<Value, CniError> {
    let version = request.version();
    let conf = parse_conf(request)?;
    let failed = |what: String| CniError::new(&version, CODE_CHECK_FAILED, what);
    let prev = &request.config["prevResult"];
    if !prev.is_object() {
        return Err(CniError::new(
            &version,
            code::INVALID_NETWORK_CONFIG,
            "CHECK needs prevResult",
        ));
    }
    // In a chain, prevResult also lists other plugins' addresses: check ours.
    let ours = result::ips_of(prev, &request.ifname, &request.netns);
    if ours.is_empty() {
        return Err(CniError::new(
            &version,
            code::INVALID_NETWORK_CONFIG,
            format!("prevResult has no address for {}", request.ifname),
        )
        .with_details(prev.to_string()));
    }
    let (address, gateway) = ipam_address(&json!({ "ips": ours }), &version)?;
    let host = host_veth_name(&request.container_id, &request.ifname);
    let bridge = netlink::link_by_name(handle, &conf.bridge)
        .await
        .map_err(netlink_error(&version))?
        .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
    let attached = if conf.is_ovs() {
        let owner = owner_alias(request, &request.ifname);
        conf.ovsdb()
            .owned_ports()
            .await
            .map_err(|e| CniError::new(&version, CODE_OVSDB, e.to_string()))?
            .contains(&(host.clone(), owner))
            && netlink::link_by_name(handle, &host)
                .await
                .map_err(netlink_error(&version))?
                .is_some()
    } else {
        netlink::links(handle)
            .await
            .map_err(netlink_error(&version))?
            .into_iter()
            .any(|link| link.name == host && link.controller == Some(bridge.header.index))
    };
    if !attached {
        return Err(failed(format!(
            "host veth {host} is missing or not on bridge {}",
            conf.bridge
        )));
    }
    let state = {
        let pod = netlink::PodNetns::open(Path::new(&request.netns), false)
            .await
            .map_err(netlink_error(&version))?;
        netlink::pod_side_state(&pod.handle, &request.ifname)
            .await
            .map_err(netlink_error(&version))?
    };
    let Some((addresses, default_gw)) = state else {
        return Err(failed(format!(
            "interface {} is missing in {}",
            request.ifname, request.netns
        )));
    };
    if !addresses.contains(&(address.ip(), address.prefix())) {
        return Err(failed(format!(
            "{} does not carry {address}",
            request.ifname
        )));
    }
    let wanted_gw = gateway.unwrap_or(conf.bridge_ipv4.ip());
    if conf.is_default_gateway && default_gw != Some(wanted_gw) {
        return Err(failed(format!(
            "default route is via {default_gw:?}, expected {wanted_gw}"
        )));
    }
    ipam::delegate(request, Command::Check)?;
    Ok(Value::Null)
}

async fn gc(handle: &Handle, request: &Request) -> Result<Value, CniError> {
    let version = request.version();
    // Without the list every attachment of the network would look stale.
    let Some(valid) = request.config["cni.dev/valid-attachments"].as_array() else {
        return Err(CniError::new(
            &version,
            code::INVALID_NETWORK_CONFIG,
            "GC needs cni.dev/valid-attachments (a list)",
        ));
    };
    let valid: std::collections::HashSet<(String, String)> = valid
        .iter()
        .filter_map(|a| {
            Some((
                a["containerID"].as_str()?.to_string(),
                a["ifname"].as_str()?.to_string(),
            ))
        })
        .collect();
    let prefix = owner_prefix(request);
    if request.config["bridgeType"] != "LXBR" {
        let ovsdb = ovsdb_for(request);
        let ovs_error = |e: OvsdbError| CniError::new(&version, CODE_OVSDB, e.to_string());
        for (port, owner) in ovsdb.owned_ports().await.map_err(ovs_error)? {
            let Some((container, ifname)) = parse_owner(&owner, &prefix) else {
                continue;
            };
            if !valid.contains(&(container.to_string(), ifname.to_string())) {
                tracing::info!(port, container, ifname, "GC: removing stale OVS port");
                ovsdb.del_port(&port).await.map_err(ovs_error)?;
            }
        }
    }
    for link in netlink::links(handle)
        .await
        .map_err(netlink_error(&version))?
    {
        // Retired veths are no attachment's: normally the reaper's, but GC makes sure.
        let stale = link.alias.starts_with(RETIRED)
            || parse_owner(&link.alias, &prefix).is_some_and(|(container, ifname)| {
                !valid.contains(&(container.to_string(), ifname.to_string()))
            });
        if stale {
            tracing::info!(veth = %link.name, owner = %link.alias, "GC: removing stale veth");
            netlink::delete_index(handle, link.index)
                .await
                .map_err(netlink_error(&version))?;
        }
    }
    gc_host_local(request, &valid).map_err(|e| {
        CniError::new(&version, code::IO_FAILURE, "GC of host-local reservations")
            .with_details(e.to_string())
    })?;
    Ok(Value::Null)
}

/// host-local keeps one file per address (`<containerID>\r\n<ifname>`) under
/// `<dataDir>/<network name>/`, guarded by `flock` on `lock`; stale ones are removed under
/// the same lock.
fn gc_host_local(
    request: &Request,
    valid: &std::collections::HashSet<(String, String)>,
) -> std::io::Result<()> {
    if request.config["ipam"]["type"].as_str() != Some("host-local") {
        return Ok(());
    }
    let base = request.config["ipam"]["dataDir"]
        .as_str()
        .unwrap_or("/var/lib/cni/networks");
    let Some(name) = request.config["name"]
        .as_str()
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return Ok(());
    };
    let dir = std::path::Path::new(base).join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(()); // nothing reserved yet
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.parse::<std::net::IpAddr>().is_err() {
            continue; // lock, last_reserved_ip.*
        }
        let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = content.split("\r\n").map(str::trim);
        let container = lines.next().unwrap_or_default().to_string();
        let ifname = lines.next().unwrap_or_default().to_string();
        if !valid.contains(&(container.clone(), ifname.clone())) {
            tracing::info!(address = %file_name, container, ifname, "GC: releasing stale host-local reservation");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// What an ADD has done so far, undone in reverse when a later step fails.
#[derive(Default)]
struct AddUndo {
    veth: bool,
    ovs_port: bool,
    ipam: bool,
}

async fn add(
    handle: &Handle,
    bridge_lock: &tokio::sync::Mutex<()>,
    masquerade: &Masquerade,
    request: &Request,
) -> Result<Value, CniError> {
    let version = request.version();
    let conf = parse_conf(request)?;
    // Not first in the chain: what the plugins before us did is answered with ours.
    let prev = result::prev_result(&request.config, &version)?;
    // Before anything is created: an IPAM plugin that cannot run fails the ADD here.
    ipam::plugin_path(request)?;
    // The owner tag is the host veth's alias, which the kernel limits to 255 bytes.
    if owner_alias(request, &request.ifname).len() > 255 {
        return Err(CniError::new(
            &version,
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_CONTAINERID is too long: {} bytes with the network name (at most 255 in all)",
                request.container_id.len()
            ),
        ));
    }
    let netns_path = Path::new(&request.netns);
    let bad_netns = |why: String| {
        CniError::new(
            &version,
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} {why}", request.netns),
        )
    };
    let netns = File::open(netns_path)
        .map_err(|e| bad_netns("cannot be opened".into()).with_details(e.to_string()))?;
    if !netlink::is_netns(&netns) {
        return Err(bad_netns("is not a network namespace".into()));
    }
    let ifname = request.ifname.as_str();
    let host = host_veth_name(&request.container_id, ifname);
    if let Some(existing) = netlink::link_by_name(handle, &host)
        .await
        .map_err(netlink_error(&version))?
    {
        if !netlink::alias_of(&existing).starts_with(RETIRED) {
            return Err(CniError::new(
                &version,
                CODE_INTERFACE_EXISTS,
                format!(
                    "container {} already has {ifname} on this network (host veth {host})",
                    request.container_id
                ),
            ));
        }
        // A DEL of this attachment retired it and its deletion is still queued.
        netlink::delete_index(handle, existing.header.index)
            .await
            .map_err(netlink_error(&version))?;
    }
    let pod = netlink::PodNetns::open(netns_path, true)
        .await
        .map_err(netlink_error(&version))?;
    if netlink::link_by_name(&pod.handle, ifname)
        .await
        .map_err(netlink_error(&version))?
        .is_some()
    {
        return Err(CniError::new(
            &version,
            CODE_INTERFACE_EXISTS,
            format!("interface {ifname} already exists in {}", request.netns),
        ));
    }

    // host-local's exec is most of an ADD: it runs while the links are built.
    let ipam = {
        let request = request.clone();
        tokio::task::spawn_blocking(move || ipam::delegate(&request, Command::Add))
    };
    let mut undo = AddUndo::default();
    let links = add_links(
        handle,
        bridge_lock,
        &conf,
        request,
        &host,
        &netns,
        &mut undo,
    )
    .await;
    // The pod end is up (and its MAC known) by the time the address arrives.
    let links = match links {
        Ok(bridge_index) => netlink::bring_up_pod_side(&pod, &request.ifname)
            .await
            .map(|interface| (bridge_index, interface))
            .map_err(netlink_error(&version)),
        Err(e) => Err(e),
    };
    let ipam_result = ipam.await.map_err(|e| {
        CniError::new(&version, code::IO_FAILURE, "IPAM worker").with_details(e.to_string())
    });
    undo.ipam = matches!(ipam_result, Ok(Ok(_)));
    let result = match (links, ipam_result) {
        (Ok((bridge_index, interface)), Ok(Ok(ipam_result))) => {
            configure(
                handle,
                masquerade,
                &conf,
                request,
                &pod,
                &interface,
                &host,
                bridge_index,
                &ipam_result,
                prev.as_ref(),
            )
            .await
        }
        (Err(e), _) | (_, Err(e)) | (_, Ok(Err(e))) => Err(e),
    };
    if result.is_err() {
        roll_back(handle, &conf, request, &host, &undo).await;
    }
    result
}

/// The host side: bridge, veth pair (pod end born in the pod netns), OVS port. Returns the
/// bridge's index.
async fn add_links(
    handle: &Handle,
    bridge_lock: &tokio::sync::Mutex<()>,
    conf: &PluginConf,
    request: &Request,
    host: &str,
    netns: &File,
    undo: &mut AddUndo,
) -> Result<u32, CniError> {
    let version = request.version();
    let ovs_error = |e: OvsdbError| CniError::new(&version, CODE_OVSDB, e.to_string());
    let bridge_index = {
        let _serialized = bridge_lock.lock().await;
        foreign_bridge_name(handle, conf, &version).await?;
        if conf.is_ovs() {
            let datapath = conf.ovs_datapath.as_deref().unwrap_or("system");
            conf.ovsdb()
                .ensure_bridge(&conf.bridge, datapath)
                .await
                .map_err(ovs_error)?;
        } else {
            netlink::ensure_linux_bridge(handle, &conf.bridge, conf.mtu)
                .await
                .map_err(netlink_error(&version))?;
        }
        netlink::bridge_ready(
            handle,
            &conf.bridge,
            conf.bridge_ipv4.ip(),
            conf.bridge_ipv4.prefix(),
        )
        .await
        .map_err(netlink_error(&version))?
    };
    let owner = owner_alias(request, &request.ifname);
    let linux_bridge = (!conf.is_ovs()).then_some(bridge_index);
    netlink::create_veth(
        handle,
        host,
        &request.ifname,
        &owner,
        conf.mtu,
        linux_bridge,
        netns,
    )
    .await
    .map_err(netlink_error(&version))?;
    undo.veth = true;
    if conf.is_ovs() {
        let ids = [
            ("evio-owner", owner.as_str()),
            ("container_id", request.container_id.as_str()),
            ("ifname", request.ifname.as_str()),
        ];
        undo.ovs_port = true; // a failed add may still have committed
        conf.ovsdb()
            .add_port(&conf.bridge, host, &ids)
            .await
            .map_err(ovs_error)?;
    }
    Ok(bridge_index)
}

/// The pod side and the node-wide rules, once the links and the address exist; builds the
/// result.
#[allow(clippy::too_many_arguments)]
async fn configure(
    handle: &Handle,
    masquerade: &Masquerade,
    conf: &PluginConf,
    request: &Request,
    pod: &netlink::PodNetns,
    interface: &netlink::PodInterface,
    host: &str,
    bridge_index: u32,
    ipam_result: &Value,
    prev: Option<&Value>,
) -> Result<Value, CniError> {
    let version = request.version();
    let ifname = request.ifname.as_str();
    let (address, ipam_gateway) = ipam_address(ipam_result, &version)?;
    let gateway = ipam_gateway.unwrap_or(conf.bridge_ipv4.ip());
    let default_gw = conf.is_default_gateway.then_some(gateway);
    netlink::address_pod_side(pod, interface, address.ip(), address.prefix(), default_gw)
        .await
        .map_err(netlink_error(&version))?;
    let pod_mac = interface.mac_text();
    enable_forwarding();
    if let (true, Some(subnet), Some(cidr)) = (conf.is_ip_masq, conf.node_subnet, conf.pod_cidr) {
        masquerade.ensure(subnet, cidr).map_err(|e| {
            CniError::new(&version, CODE_NETLINK, "installing the masquerade rule")
                .with_details(e.0)
        })?;
    }
    let mac_of = |link: Option<rtnetlink::packet_route::link::LinkMessage>| {
        link.map(|l| netlink::mac_of(&l)).unwrap_or_default()
    };
    let host_mac = mac_of(netlink::link_by_name(handle, host).await.ok().flatten());
    let bridge_mac = mac_of(
        netlink::link_by_index(handle, bridge_index)
            .await
            .ok()
            .flatten(),
    );
    let ip =
        json!({"address": address.to_string(), "gateway": gateway.to_string(), "interface": 2});
    let mut own = json!({
        "cniVersion": version,
        "interfaces": [
            {"name": conf.bridge, "mac": bridge_mac},
            {"name": host, "mac": host_mac},
            {"name": ifname, "mac": pod_mac, "sandbox": request.netns},
        ],
        "ips": [ip],
        "routes": [],
        "dns": ipam_result.get("dns").cloned().unwrap_or_else(|| json!({})),
    });
    if let Some(gw) = default_gw {
        own["routes"] = json!([{"dst": "0.0.0.0/0", "gw": gw.to_string()}]);
    }
    Ok(result::chain(prev, &own, &version))
}

async fn roll_back(
    handle: &Handle,
    conf: &PluginConf,
    request: &Request,
    host: &str,
    undo: &AddUndo,
) {
    if undo.ipam {
        if let Err(e) = ipam::delegate(request, Command::Del) {
            tracing::warn!(error = %e, "IPAM DEL during rollback failed");
        }
    }
    if undo.ovs_port {
        if let Err(e) = conf.ovsdb().del_port(host).await {
            tracing::warn!(error = %e, port = %host, "OVS port rollback failed");
        }
    }
    if undo.veth {
        if let Err(e) = netlink::delete_link(handle, host).await {
            tracing::warn!(error = %e, veth = %host, "veth rollback failed");
        }
    }
}

/// Refuses a `bridge` that names an existing interface of another kind (a NIC, a veth, a
/// bridge of the other type): ADD would otherwise put the gateway address on it.
async fn foreign_bridge_name(
    handle: &Handle,
    conf: &PluginConf,
    version: &str,
) -> Result<(), CniError> {
    let Some(link) = netlink::link_by_name(handle, &conf.bridge)
        .await
        .map_err(netlink_error(version))?
    else {
        return Ok(());
    };
    let ours = if conf.is_ovs() {
        conf.ovsdb()
            .bridge_exists(&conf.bridge)
            .await
            .map_err(|e| CniError::new(version, CODE_OVSDB, e.to_string()))?
    } else {
        netlink::is_bridge(&link)
    };
    if ours {
        return Ok(());
    }
    let kind = if conf.is_ovs() { "an OVS" } else { "a Linux" };
    Err(CniError::new(
        version,
        code::INVALID_NETWORK_CONFIG,
        format!(
            "invalid bridge {:?}: an existing interface that is not {kind} bridge",
            conf.bridge
        ),
    ))
}

async fn del(handle: &Handle, reaper: &Reaper, request: &Request) -> Result<Value, CniError> {
    let version = request.version();
    // host-local's exec is most of a DEL: it runs while the links are retired. Releasing the
    // address first is the reference bridge plugin's order too; a runtime calls DEL once the
    // pod's processes are gone.
    let ipam = request.config["ipam"]["type"].is_string().then(|| {
        let request = request.clone();
        tokio::task::spawn_blocking(move || ipam::delegate(&request, Command::Del))
    });
    let links = retire_links(handle, reaper, request).await;
    if let Some(ipam) = ipam {
        ipam.await.map_err(|e| {
            CniError::new(&version, code::IO_FAILURE, "IPAM worker").with_details(e.to_string())
        })??;
    }
    links.map(|()| Value::Null)
}

/// DEL's link part: the OVS port goes, the pair is cut off (host end down) and its interface
/// name in the pod netns freed; the kernel's slow part, deleting the pair, happens after the
/// answer (see `reaper`).
async fn retire_links(handle: &Handle, reaper: &Reaper, request: &Request) -> Result<(), CniError> {
    let version = request.version();
    let host = host_veth_name(&request.container_id, &request.ifname);
    // DEL must work with whatever config it gets: OVS unless it says LXBR.
    let is_lxbr = request.config["bridgeType"] == "LXBR";
    if !is_lxbr {
        ovsdb_for(request)
            .del_port(&host)
            .await
            .map_err(|e| CniError::new(&version, CODE_OVSDB, e.to_string()))?;
    }
    let Some(link) = netlink::link_by_name(handle, &host)
        .await
        .map_err(netlink_error(&version))?
    else {
        return Ok(()); // deleted already, or with its netns
    };
    let alias = netlink::alias_of(&link);
    if alias.starts_with(RETIRED) {
        return Ok(()); // a repeated DEL
    }
    let index = link.header.index;
    // The kernel keeps at most 255 bytes of alias; the prefix is what counts.
    let mut retired = format!("{RETIRED}{alias}");
    while retired.len() > 255 {
        retired.pop();
    }
    if !netlink::retire(handle, index, &retired, RETIRED_GROUP)
        .await
        .map_err(netlink_error(&version))?
    {
        return Ok(()); // gone with its netns meanwhile
    }
    reaper.delete_later();
    retire_pod_end(request, index).await;
    Ok(())
}

/// Frees `CNI_IFNAME` in the pod netns (renamed, down) so the runtime may reuse it at once.
/// Best effort: the netns may be gone, and the reaper deletes the pair either way.
async fn retire_pod_end(request: &Request, host_index: u32) {
    if request.netns.is_empty() || !Path::new(&request.netns).exists() {
        return;
    }
    let retired_name = format!(
        "evr{}",
        &host_veth_name(&request.container_id, &request.ifname)[4..]
    );
    let outcome = match netlink::PodNetns::open(Path::new(&request.netns), false).await {
        Ok(pod) => netlink::retire_pod_end(&pod, &request.ifname, host_index, &retired_name).await,
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, netns = %request.netns, "retiring the pod interface failed");
    }
}

/// Pods route through the host: forwarding must be on. Failing to set it is logged, not
/// fatal (it may be managed, and already on, elsewhere).
fn enable_forwarding() {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1") {
        tracing::warn!(error = %e, "cannot enable IPv4 forwarding");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_are_stable() {
        let a = host_veth_name("0123456789abcdef0123456789abcdef", "eth0");
        assert_eq!(
            a,
            host_veth_name("0123456789abcdef0123456789abcdef", "eth0")
        );
        assert_ne!(
            a,
            host_veth_name("0123456789abcdef0123456789abcdef", "eth1")
        );
        assert!(a.len() <= 15 && a.starts_with("evio"), "{a}");
    }
}
