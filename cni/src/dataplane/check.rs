//! CHECK: the pod's network is as ADD left it — bridge, bridge port, interface, address,
//! and the routes the final result (`prevResult`) lists, so a later plugin in the chain may
//! change routes — then IPAM's CHECK.

use std::net::IpAddr;
use std::path::Path;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::add::ipam_addresses;
use super::attachment::{host_veth_name, owner_alias};
use super::bridge::Port;
use super::error::{DataplaneError, Result};
use super::ipam;
use super::netlink;
use super::pod_netns::{self, PodNetns};
use super::pods::PodNetwork;
use crate::plugin_conf::{InvalidKey, PluginConf};
use crate::result;
use crate::spec::{code, CniError, Command, Request};

/// The default routes' gateways the result promises (one per family at most).
fn promised_default_gateways(result: &Value) -> Vec<IpAddr> {
    let Some(routes) = result["routes"].as_array() else {
        return Vec::new();
    };
    routes
        .iter()
        .filter(|r| r["dst"] == "0.0.0.0/0" || r["dst"] == "::/0")
        .filter_map(|r| r["gw"].as_str()?.parse().ok())
        .collect()
}

pub(super) async fn check(net: &PodNetwork, request: &Request, deadline: Instant) -> Result<Value> {
    let version = request.version();
    let conf = PluginConf::parse(&request.config)?;
    let failed = |what: String| DataplaneError::CheckFailed(what);
    let prev = &request.config["prevResult"];
    if !prev.is_object() {
        return Err(InvalidKey {
            key: "prevResult".into(),
            reason: "CHECK needs prevResult".into(),
        }
        .into());
    }
    // In a chain, prevResult also lists other plugins' addresses: check ours.
    let ours = result::ips_of(prev, &request.ifname, &request.netns);
    if ours.is_empty() {
        return Err(CniError::new(
            &version,
            code::INVALID_NETWORK_CONFIG,
            format!("prevResult has no address for {}", request.ifname),
        )
        .with_details(prev.to_string())
        .into());
    }
    let addresses = ipam_addresses(&json!({ "ips": ours }))?;
    let driver = net.drivers.pick(&conf.teardown()).await;
    let host = host_veth_name(&request.container_id, &request.ifname);
    let owner = owner_alias(request);
    let bridge = netlink::link_by_name(&net.handle, &conf.bridge)
        .await?
        .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
    let host_index = netlink::link_by_name(&net.handle, &host)
        .await?
        .map_or(0, |l| l.header.index);
    let port = Port {
        name: &host,
        index: host_index,
        owner: &owner,
        container_id: &request.container_id,
        ifname: &request.ifname,
        hairpin: conf.hairpin_mode,
    };
    if host_index == 0
        || !driver
            .is_attached(&net.handle, bridge.header.index, &port)
            .await?
    {
        return Err(failed(format!(
            "host veth {host} is missing or not on bridge {}",
            conf.bridge
        )));
    }
    let state = {
        let pod = PodNetns::open(Path::new(&request.netns), false).await?;
        pod_netns::pod_side_state(&pod.handle, &request.ifname).await?
    };
    let Some(state) = state else {
        return Err(failed(format!(
            "interface {} is missing in {}",
            request.ifname, request.netns
        )));
    };
    for (address, _) in &addresses {
        if !state.addresses.contains(&(address.ip(), address.prefix())) {
            return Err(failed(format!(
                "{} does not carry {address}",
                request.ifname
            )));
        }
    }
    for wanted_gw in promised_default_gateways(prev) {
        if !state.default_gws.contains(&wanted_gw) {
            return Err(failed(format!(
                "no default route via {wanted_gw} (default routes via {:?})",
                state.default_gws
            )));
        }
    }
    ipam::run(&net.allocator, request, Command::Check, deadline).await?;
    Ok(Value::Null)
}
