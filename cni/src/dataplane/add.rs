//! ADD: validate everything (nothing is created for a bad request), then the bridge, the
//! veth pair (pod end born in the pod netns), its bridge port and the masquerade check while
//! IPAM runs, then the pod's addresses (one per family) and routes and the result. Any
//! failure undoes what was done.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::attachment::{host_veth_name, owner_alias};
use super::bridge::{Bridge, BridgeDriver, Port};
use super::error::{DataplaneError, Result};
use super::ipam::{self, IpamError};
use super::netlink;
use super::pod_netns::{self, PodInterface, PodNetns};
use super::pods::{enable_forwarding, PodNetwork, ROLLBACK_BUDGET};
use super::reaper::RETIRED;
use super::timing::Laps;
use crate::plugin_conf::{InvalidKey, PluginConf, DEFAULT_MTU};
use crate::result;
use crate::spec::{Command, Request};

/// The pod's addresses (one per family on a dual-stack network) and their gateways from the
/// IPAM result (any supported result version).
pub(super) fn ipam_addresses(result: &Value) -> Result<Vec<(IpNetwork, Option<IpAddr>)>> {
    let no_address = || IpamError::NoAddress {
        result: result.to_string(),
    };
    let ips = result["ips"].as_array().ok_or_else(no_address)?;
    let mut addresses = Vec::with_capacity(ips.len());
    for ip in ips {
        let address: IpNetwork = ip["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(no_address)?;
        let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok());
        addresses.push((address, gateway));
    }
    if addresses.is_empty() {
        return Err(no_address().into());
    }
    Ok(addresses)
}

/// The pod MTU: the config's `mtu`, which the link carrying the node's host IP (the host
/// overlay) must be able to carry; absent, that link's MTU ([`DEFAULT_MTU`] without one).
async fn pod_mtu(net: &PodNetwork, conf: &PluginConf) -> Result<u32> {
    let carrier = match conf.host_ip {
        Some(ip) => netlink::link_carrying(&net.handle, ip)
            .await?
            .map(|(link, mtu)| (ip, link, mtu)),
        None => None,
    };
    match (conf.mtu, carrier) {
        (Some(mtu), Some((ip, link, limit))) if mtu > limit => Err(InvalidKey {
            key: "mtu".into(),
            reason: format!(
                "{mtu} is more than {link} carries ({limit}), the link holding hostIP {ip}"
            ),
        }
        .into()),
        (Some(mtu), _) => Ok(mtu),
        (None, Some((ip, link, mtu))) => {
            tracing::info!(mtu, %ip, link, "pod MTU follows the host overlay's link");
            Ok(mtu)
        }
        (None, None) => Ok(DEFAULT_MTU),
    }
}

/// What an ADD has done so far, undone in reverse when a later step fails.
#[derive(Default)]
struct Undo {
    veth: bool,
    port: bool,
    ipam: bool,
}

pub(super) async fn add(net: &PodNetwork, request: &Request, deadline: Instant) -> Result<Value> {
    let started = std::time::Instant::now();
    let mut laps = Laps::start();
    let result = add_timed(net, request, deadline, &mut laps).await;
    laps.log(
        "ADD",
        request.config["name"].as_str().unwrap_or_default(),
        &request.container_id,
        started,
    );
    result
}

async fn add_timed(
    net: &PodNetwork,
    request: &Request,
    deadline: Instant,
    laps: &mut Laps,
) -> Result<Value> {
    let version = request.version();
    let conf = PluginConf::parse(&request.config)?;
    // Not first in the chain: what the plugins before us did is answered with ours.
    let prev = result::prev_result(&request.config, &version)?;
    // Before anything is created: an IPAM that cannot serve fails the ADD here.
    ipam::usable(&net.allocator, request)?;
    let owner = owner_alias(request);
    // The owner tag is the host veth's alias, which the kernel limits to 255 bytes.
    if owner.len() > 255 {
        return Err(DataplaneError::Environment(format!(
            "CNI_CONTAINERID is too long: {} bytes with the network name (at most 255 in all)",
            request.container_id.len()
        )));
    }
    let netns_path = Path::new(&request.netns);
    let netns = File::open(netns_path).map_err(|e| {
        DataplaneError::Environment(format!("CNI_NETNS {} cannot be opened: {e}", request.netns))
    })?;
    if !netlink::is_netns(&netns) {
        return Err(DataplaneError::Environment(format!(
            "CNI_NETNS {} is not a network namespace",
            request.netns
        )));
    }
    laps.lap("parse");
    let driver = net.drivers.pick(&conf.teardown()).await;
    driver.validate(&net.handle, &conf.bridge).await?;
    laps.lap("validate");
    let mut conf = conf;
    conf.mtu = Some(pod_mtu(net, &conf).await?);
    laps.lap("mtu");
    let ifname = request.ifname.as_str();
    let host = host_veth_name(&request.container_id, ifname);
    if let Some(existing) = netlink::link_by_name(&net.handle, &host).await? {
        if !netlink::alias_of(&existing).starts_with(RETIRED) {
            return Err(DataplaneError::InterfaceExists(format!(
                "container {} already has {ifname} on this network (host veth {host})",
                request.container_id
            )));
        }
        // A DEL of this attachment retired it and its deletion is still queued.
        netlink::delete_index(&net.handle, existing.header.index).await?;
    }
    laps.lap("host_lookup");
    let pod = PodNetns::open(netns_path, true).await?;
    laps.lap("pod_sockets");
    if netlink::link_by_name(&pod.handle, ifname).await?.is_some() {
        return Err(DataplaneError::InterfaceExists(format!(
            "interface {ifname} already exists in {}",
            request.netns
        )));
    }
    laps.lap("pod_lookup");

    // host-local's exec is most of an ADD: it runs while the links are built.
    let mut undo = Undo::default();
    let mut link_laps = Laps::start();
    let links = async {
        let (bridge_index, host_link) = add_links(
            net,
            &*driver,
            &conf,
            request,
            &host,
            &owner,
            &netns,
            &mut undo,
            &mut link_laps,
        )
        .await?;
        let interface = pod_netns::bring_up_pod_side(&pod, ifname).await?;
        link_laps.lap("|pod_up");
        Ok::<_, DataplaneError>((bridge_index, host_link, interface))
    };
    let mut ipam_laps = Laps::start();
    let allocate = async {
        let result = ipam::run(&net.allocator, request, Command::Add, deadline).await;
        ipam_laps.lap("|ipam");
        result
    };
    // The masquerade check runs then too: node-wide and idempotent.
    let mut masquerade_laps = Laps::start();
    let masquerade = async {
        if let (true, Some(subnet), Some(cidr)) = (conf.is_ip_masq, conf.node_subnet, conf.pod_cidr)
        {
            net.masquerade
                .ensure(subnet.into(), cidr.into(), deadline)
                .await?;
        }
        if let (true, Some(subnet), Some(cidr)) =
            (conf.is_ipv6_masq, conf.node_subnet_v6, conf.pod_cidr_v6)
        {
            net.masquerade
                .ensure(subnet.into(), cidr.into(), deadline)
                .await?;
        }
        masquerade_laps.lap("|masquerade");
        Ok::<(), super::masquerade::MasqueradeError>(())
    };
    let (links, ipam_result, masqueraded) = tokio::join!(links, allocate, masquerade);
    laps.lap("concurrent");
    laps.extend(link_laps);
    laps.extend(ipam_laps);
    laps.extend(masquerade_laps);
    undo.ipam = ipam_result.is_ok();
    let result = match (links, ipam_result, masqueraded) {
        (Ok((bridge_index, host_link, interface)), Ok(ipam_result), Ok(())) => {
            let built = Built {
                pod: &pod,
                interface: &interface,
                host: &host,
                host_mac: netlink::mac_of(&host_link),
                bridge_index,
            };
            configure(
                net,
                &conf,
                request,
                &built,
                &ipam_result,
                prev.as_ref(),
                laps,
            )
            .await
        }
        (Err(e), _, _) => Err(e),
        (_, Err(e), _) => Err(e.into()),
        (_, _, Err(e)) => Err(e.into()),
    };
    if result.is_err() {
        roll_back(net, &*driver, request, &host, &undo).await;
    }
    result
}

/// The host side: bridge, veth pair (pod end born in the pod netns), bridge port. Returns the
/// bridge's index and the host end's link.
#[allow(clippy::too_many_arguments)]
async fn add_links(
    net: &PodNetwork,
    driver: &dyn BridgeDriver,
    conf: &PluginConf,
    request: &Request,
    host: &str,
    owner: &str,
    netns: &File,
    undo: &mut Undo,
    laps: &mut Laps,
) -> Result<(u32, rtnetlink::packet_route::link::LinkMessage)> {
    let addresses = conf.bridge_addresses();
    let bridge = Bridge {
        name: &conf.bridge,
        mtu: conf.mtu(),
        addresses: &addresses,
    };
    let bridge_index = {
        let _serialized = net.bridge_lock.lock().await;
        driver.ensure(&net.handle, bridge).await?
    };
    laps.lap("|bridge");
    let controller = driver.controller_at_creation(bridge_index);
    let host_link = netlink::create_veth(
        &net.handle,
        host,
        &request.ifname,
        owner,
        conf.mtu(),
        netns,
        controller,
    )
    .await?;
    undo.veth = true;
    laps.lap("|veth");
    let port = Port {
        name: host,
        index: host_link.header.index,
        owner,
        container_id: &request.container_id,
        ifname: &request.ifname,
        hairpin: conf.hairpin_mode,
    };
    undo.port = true; // a failed attach may still have committed
                      // Created on the bridge already, unless the kernel did not take it or hairpin is asked.
    if controller.is_none() || netlink::controller_of(&host_link) != controller || port.hairpin {
        driver
            .attach(&net.handle, &conf.bridge, bridge_index, &port)
            .await?;
    }
    laps.lap("|attach");
    Ok((bridge_index, host_link))
}

/// What the host side built.
struct Built<'a> {
    pod: &'a PodNetns,
    interface: &'a PodInterface,
    host: &'a str,
    host_mac: String,
    bridge_index: u32,
}

/// The pod side and the node-wide rules, once the links and the address exist; builds the
/// result.
async fn configure(
    net: &PodNetwork,
    conf: &PluginConf,
    request: &Request,
    built: &Built<'_>,
    ipam_result: &Value,
    prev: Option<&Value>,
    laps: &mut Laps,
) -> Result<Value> {
    let version = request.version();
    let addresses = ipam_addresses(ipam_result)?;
    let mut ips = Vec::with_capacity(addresses.len());
    let mut default_gws = Vec::new();
    for (address, ipam_gateway) in &addresses {
        // A family the network has no bridge address for has no gateway to route through.
        let Some(bridge_gateway) = conf.gateway_for(address.ip()) else {
            let key = if address.is_ipv4() {
                "bridgeIPv4"
            } else {
                "bridgeIPv6"
            };
            return Err(InvalidKey {
                key: key.into(),
                reason: format!(
                    "(missing): IPAM gave the pod {address}, but the network config has no {key} for that family"
                ),
            }
            .into());
        };
        let gateway = Some(ipam_gateway.unwrap_or(bridge_gateway));
        if conf.is_default_gateway {
            default_gws.extend(gateway);
        }
        let mut ip = json!({"address": address.to_string(), "interface": 2});
        if let Some(gateway) = gateway {
            ip["gateway"] = json!(gateway.to_string());
        }
        ips.push(ip);
    }
    let pod_addresses: Vec<IpNetwork> = addresses.iter().map(|(a, _)| *a).collect();
    // The bridge's MAC (it may change as ports join) is read while the pod side is addressed.
    let (addressed, bridge) = tokio::join!(
        pod_netns::address_pod_side(built.pod, built.interface, &pod_addresses, &default_gws),
        netlink::link_by_index(&net.handle, built.bridge_index)
    );
    addressed?;
    laps.lap("address");
    enable_forwarding(pod_addresses.iter().any(|a| a.is_ipv6()));
    laps.lap("forwarding");
    let bridge_mac = bridge.ok().flatten().map(|l| netlink::mac_of(&l));
    let (host_mac, bridge_mac) = (&built.host_mac, bridge_mac.unwrap_or_default());
    let mut own = json!({
        "cniVersion": version,
        "interfaces": [
            {"name": conf.bridge, "mac": bridge_mac},
            {"name": built.host, "mac": host_mac},
            {"name": request.ifname, "mac": built.interface.mac_text(), "sandbox": request.netns},
        ],
        "ips": ips,
        "routes": [],
        "dns": ipam_result.get("dns").cloned().unwrap_or_else(|| json!({})),
    });
    own["routes"] = default_gws
        .iter()
        .map(|gw| {
            let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            json!({"dst": dst, "gw": gw.to_string()})
        })
        .collect();
    let chained = result::chain(prev, &own, &version);
    laps.lap("result");
    Ok(chained)
}

async fn roll_back(
    net: &PodNetwork,
    driver: &dyn BridgeDriver,
    request: &Request,
    host: &str,
    undo: &Undo,
) {
    // Its own budget: the request's deadline may be what failed it.
    let deadline = Instant::now() + ROLLBACK_BUDGET;
    if undo.ipam {
        if let Err(e) = ipam::run(&net.allocator, request, Command::Del, deadline).await {
            tracing::warn!(error = %e, "IPAM DEL during rollback failed");
        }
    }
    if undo.port {
        if let Err(e) = driver.detach(host).await {
            tracing::warn!(error = %e, port = %host, "bridge port rollback failed");
        }
    }
    if undo.veth {
        if let Err(e) = netlink::delete_link(&net.handle, host).await {
            tracing::warn!(error = %e, veth = %host, "veth rollback failed");
        }
    }
}
