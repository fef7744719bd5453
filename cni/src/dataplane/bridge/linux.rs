//! Linux bridges, over rtnetlink: the bridge is a kernel link, a pod's port is its host veth
//! enslaved to it (hairpin on request, as the reference bridge plugin offers).

use futures::future::BoxFuture;
use futures::FutureExt;
use rtnetlink::Handle;

use super::{Bridge, BridgeDriver, Port};
use crate::dataplane::error::{DataplaneError, Result};
use crate::dataplane::netlink;
use crate::plugin_conf::InvalidKey;

pub struct LinuxBridge;

impl BridgeDriver for LinuxBridge {
    fn describe(&self) -> String {
        "Linux bridge".into()
    }

    fn validate<'a>(&'a self, handle: &'a Handle, bridge: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            match netlink::link_by_name(handle, bridge).await? {
                Some(link) if !netlink::is_bridge(&link) => {
                    Err(DataplaneError::Config(InvalidKey {
                        key: "bridge".into(),
                        reason: format!(
                            "{bridge:?}: an existing interface that is not a Linux bridge"
                        ),
                    }))
                }
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn ensure<'a>(&'a self, handle: &'a Handle, spec: Bridge<'a>) -> BoxFuture<'a, Result<u32>> {
        async move {
            let Bridge {
                name: bridge,
                mtu,
                addresses,
            } = spec;
            let (created, known) = match netlink::ensure_linux_bridge(handle, bridge, mtu).await? {
                netlink::Ensured::Found(link) => (false, Some(link)),
                netlink::Ensured::Created => (true, None),
                netlink::Ensured::Exists => (false, None),
            };
            match netlink::bridge_ready(handle, bridge, addresses, known).await {
                Ok(index) => Ok(index),
                Err(e) => {
                    if created {
                        tracing::warn!(bridge, error = %e, "the bridge did not come up: removing it");
                        if let Err(e) = netlink::delete_link(handle, bridge).await {
                            tracing::warn!(bridge, error = %e, "removing the bridge failed");
                        }
                    }
                    Err(e.into())
                }
            }
        }
        .boxed()
    }

    fn controller_at_creation(&self, bridge_index: u32) -> Option<u32> {
        Some(bridge_index)
    }

    fn attach<'a>(
        &'a self,
        handle: &'a Handle,
        _bridge: &'a str,
        bridge_index: u32,
        port: &'a Port<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            netlink::enslave(handle, port.index, bridge_index, port.hairpin).await?;
            Ok(())
        }
        .boxed()
    }

    fn detach<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<()>> {
        // The port goes with its veth.
        async { Ok(()) }.boxed()
    }

    fn is_attached<'a>(
        &'a self,
        handle: &'a Handle,
        bridge_index: u32,
        port: &'a Port<'a>,
    ) -> BoxFuture<'a, Result<bool>> {
        async move {
            Ok(netlink::link_by_name(handle, port.name)
                .await?
                .is_some_and(|link| netlink::controller_of(&link) == Some(bridge_index)))
        }
        .boxed()
    }

    fn owned_ports(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn available(&self) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }
}
