//! **Where each bridge kind lives**: the [`BridgeDriver`] trait the pod path is written
//! against, with one implementation per kind — [`ovs::OvsBridge`] (Open vSwitch, over the
//! daemon's one OVSDB session) and [`linux::LinuxBridge`] (a kernel bridge over rtnetlink).
//! [`Drivers`] picks one per request from the parsed config (resolving `ovsDatapath: auto`
//! once per OVSDB socket) and keeps it for the daemon's life.

pub mod linux;
pub mod ovs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ipnetwork::IpNetwork;
use rtnetlink::Handle;

use super::error::Result;
use super::ovsdb::Ovsdb;
use crate::plugin_conf::{BridgeType, OvsDatapath, TeardownConf};

/// A bridge as the network config wants it.
#[derive(Clone, Copy)]
pub struct Bridge<'a> {
    pub name: &'a str,
    pub mtu: u32,
    pub addresses: &'a [IpNetwork],
}

/// The host end of a pod's veth pair, as a bridge port.
pub struct Port<'a> {
    pub name: &'a str,
    pub index: u32,
    /// `evio:<network>:<container>/<ifname>`: whose port it is (GC reads it back).
    pub owner: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub hairpin: bool,
}

/// One kind of bridge. Methods return boxed futures so the daemon can hold `dyn` drivers.
pub trait BridgeDriver: Send + Sync {
    /// For logs: "OVS (netdev datapath)", "Linux bridge".
    fn describe(&self) -> String;

    /// Before anything is created: refuses a `bridge` name held by a link of another kind
    /// (code 7). Cheap once the bridge is known.
    fn validate<'a>(&'a self, handle: &'a Handle, bridge: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Makes the bridge exist and be up, carrying its addresses. A bridge this call created
    /// that does not come up is removed again. Returns its link index.
    fn ensure<'a>(&'a self, handle: &'a Handle, bridge: Bridge<'a>) -> BoxFuture<'a, Result<u32>>;

    /// The bridge to create a port's veth on, when the kernel attaches it in the same request
    /// (a Linux bridge); `None` when [`BridgeDriver::attach`] does it.
    fn controller_at_creation(&self, _bridge_index: u32) -> Option<u32> {
        None
    }

    /// Puts `port` on the bridge.
    fn attach<'a>(
        &'a self,
        handle: &'a Handle,
        bridge: &'a str,
        bridge_index: u32,
        port: &'a Port<'a>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Takes port `name` off whatever bridge holds it; absent is fine.
    fn detach<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Whether `port` is on the bridge (CHECK).
    fn is_attached<'a>(
        &'a self,
        handle: &'a Handle,
        bridge_index: u32,
        port: &'a Port<'a>,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Ports the bridge itself records as evio's: (port name, owner). A Linux bridge
    /// records none (its ports are the veths, found by their alias).
    fn owned_ports(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>>;

    /// STATUS: whether it can serve ADDs now.
    fn available(&self) -> BoxFuture<'_, Result<()>>;
}

/// Whether the kernel's openvswitch datapath is usable (the module is loaded).
fn kernel_datapath_usable() -> bool {
    std::path::Path::new("/sys/module/openvswitch").exists()
}

/// The drivers of one daemon: the Linux one, and one OVS driver per (OVSDB socket, datapath)
/// over one shared OVSDB session per socket.
pub struct Drivers {
    linux: Arc<linux::LinuxBridge>,
    sessions: Mutex<HashMap<String, Arc<Ovsdb>>>,
    ovs: Mutex<HashMap<(String, OvsDatapath), Arc<ovs::OvsBridge>>>,
    /// `auto` resolved per OVSDB socket (decided once, logged once).
    auto: tokio::sync::Mutex<HashMap<String, Option<OvsDatapath>>>,
    ovsdb_timeout: Duration,
}

impl Drivers {
    pub fn new(ovsdb_timeout: Duration) -> Self {
        Self {
            linux: Arc::new(linux::LinuxBridge),
            sessions: Mutex::default(),
            ovs: Mutex::default(),
            auto: tokio::sync::Mutex::default(),
            ovsdb_timeout,
        }
    }

    fn session(&self, socket: &str) -> Arc<Ovsdb> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(socket.to_string())
            .or_insert_with(|| Arc::new(Ovsdb::with_timeout(socket, self.ovsdb_timeout)))
            .clone()
    }

    fn ovs(&self, socket: &str, datapath: OvsDatapath) -> Arc<dyn BridgeDriver> {
        let ovsdb = self.session(socket);
        self.ovs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((socket.to_string(), datapath))
            .or_insert_with(|| Arc::new(ovs::OvsBridge::new(ovsdb, datapath)))
            .clone()
    }

    /// `auto` on this host: `system` when the kernel module is loaded, `netdev` when only
    /// userspace OVS answers, `None` (a Linux bridge) when OVS is absent.
    async fn resolve_auto(&self, socket: &str) -> Option<OvsDatapath> {
        let mut resolved = self.auto.lock().await;
        if let Some(choice) = resolved.get(socket) {
            return *choice;
        }
        let choice = match self.session(socket).ping().await {
            Err(e) => {
                tracing::info!(ovsdb = socket, reason = %e, "ovsDatapath auto: OVS is not running, pods go on a Linux bridge");
                None
            }
            Ok(()) if kernel_datapath_usable() => {
                tracing::info!(
                    ovsdb = socket,
                    "ovsDatapath auto: OVS with the kernel datapath (system)"
                );
                Some(OvsDatapath::System)
            }
            Ok(()) => {
                tracing::info!(ovsdb = socket, "ovsDatapath auto: no openvswitch kernel module, OVS userspace datapath (netdev)");
                Some(OvsDatapath::Netdev)
            }
        };
        resolved.insert(socket.to_string(), choice);
        choice
    }

    /// The driver for a request's bridge type, datapath and OVSDB socket.
    pub async fn pick(&self, conf: &TeardownConf) -> Arc<dyn BridgeDriver> {
        match (conf.bridge_type, conf.ovs_datapath) {
            (BridgeType::Linux, _) => self.linux.clone(),
            (BridgeType::Ovs, OvsDatapath::Auto) => {
                match self.resolve_auto(&conf.ovsdb_socket).await {
                    Some(datapath) => self.ovs(&conf.ovsdb_socket, datapath),
                    None => self.linux.clone(),
                }
            }
            (BridgeType::Ovs, datapath) => self.ovs(&conf.ovsdb_socket, datapath),
        }
    }
}
