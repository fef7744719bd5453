//! Open vSwitch bridges, over the daemon's one OVSDB session for the config's socket. Which
//! bridges and ports exist is answered by the session's monitor-fed cache, so a steady-state
//! ADD asks OVSDB nothing but to add its port.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use rtnetlink::Handle;

use super::{Bridge, BridgeDriver, Port};
use crate::dataplane::error::{DataplaneError, Result};
use crate::dataplane::netlink;
use crate::dataplane::ovsdb::Ovsdb;
use crate::plugin_conf::{InvalidKey, OvsDatapath};

pub struct OvsBridge {
    ovsdb: Arc<Ovsdb>,
    datapath: OvsDatapath,
}

impl OvsBridge {
    pub fn new(ovsdb: Arc<Ovsdb>, datapath: OvsDatapath) -> Self {
        Self { ovsdb, datapath }
    }
}

impl BridgeDriver for OvsBridge {
    fn describe(&self) -> String {
        format!(
            "OVS ({} datapath, {})",
            self.datapath.as_str(),
            self.ovsdb.socket().display()
        )
    }

    fn validate<'a>(&'a self, handle: &'a Handle, bridge: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            if netlink::link_by_name(handle, bridge).await?.is_none()
                || self.ovsdb.bridge_exists(bridge).await?
            {
                return Ok(());
            }
            Err(DataplaneError::Config(InvalidKey {
                key: "bridge".into(),
                reason: format!("{bridge:?}: an existing interface that is not an OVS bridge"),
            }))
        }
        .boxed()
    }

    fn ensure<'a>(&'a self, handle: &'a Handle, spec: Bridge<'a>) -> BoxFuture<'a, Result<u32>> {
        async move {
            let (bridge, addresses) = (spec.name, spec.addresses);
            // Asks OVSDB only when the cache has no such bridge.
            let created = self
                .ovsdb
                .ensure_bridge(bridge, self.datapath.as_str())
                .await?;
            match netlink::bridge_ready(handle, bridge, addresses, None).await {
                Ok(index) => Ok(index),
                Err(e) => {
                    if created {
                        // e.g. the system datapath without its kernel module: the record
                        // would stay behind with no interface.
                        tracing::warn!(bridge, datapath = self.datapath.as_str(), error = %e, "the OVS bridge did not come up: removing it");
                        if let Err(e) = self.ovsdb.del_bridge(bridge).await {
                            tracing::warn!(bridge, error = %e, "removing the OVS bridge failed");
                        }
                    }
                    Err(e.into())
                }
            }
        }
        .boxed()
    }

    fn attach<'a>(
        &'a self,
        _handle: &'a Handle,
        bridge: &'a str,
        _bridge_index: u32,
        port: &'a Port<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let ids = [
                ("evio-owner", port.owner),
                ("container_id", port.container_id),
                ("ifname", port.ifname),
            ];
            Ok(self.ovsdb.add_port(bridge, port.name, &ids).await?)
        }
        .boxed()
    }

    fn detach<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.ovsdb.del_port(name).await?;
            Ok(())
        }
        .boxed()
    }

    fn is_attached<'a>(
        &'a self,
        handle: &'a Handle,
        _bridge_index: u32,
        port: &'a Port<'a>,
    ) -> BoxFuture<'a, Result<bool>> {
        async move {
            let recorded = self
                .ovsdb
                .owned_ports()
                .await?
                .iter()
                .any(|(name, owner)| name == port.name && owner == port.owner);
            Ok(recorded && netlink::link_by_name(handle, port.name).await?.is_some())
        }
        .boxed()
    }

    fn owned_ports(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        async move { Ok(self.ovsdb.owned_ports().await?) }.boxed()
    }

    fn available(&self) -> BoxFuture<'_, Result<()>> {
        async move { Ok(self.ovsdb.ping().await?) }.boxed()
    }
}
