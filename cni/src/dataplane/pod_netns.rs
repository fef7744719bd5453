//! Inside a pod's network namespace: the sockets the daemon opens there ([`PodNetns`]) and
//! the pod-side steps of ADD (bring up, addresses, a default route per family, the address
//! announcements of `announce`), DEL (free `CNI_IFNAME`) and CHECK (what is configured), over
//! rtnetlink (no `ip` exec).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::announce;
use super::netlink::{
    add_address, fail, is_exists, link_by_name, mac_text, set_down, set_link, set_up, NetlinkError,
};

/// Netlink (and, for ADD, a packet socket to announce the pod's address) inside a pod's
/// network namespace, served by the daemon's runtime. A socket belongs to the namespace it was
/// created in, so only the creation happens inside the pod netns ([`in_netns`]).
pub struct PodNetns {
    pub handle: Handle,
    announce: Option<std::os::fd::OwnedFd>,
}

/// The daemon's own network namespace, where every thread returns after [`in_netns`].
static HOME: std::sync::OnceLock<std::io::Result<File>> = std::sync::OnceLock::new();

/// Runs `f` with the calling thread inside the namespace `ns`, then brings the thread back:
/// what `f` creates (sockets) belongs to `ns`. `f` is synchronous, so no other task runs on
/// this (runtime worker) thread meanwhile and nothing else sees the switch; this costs two
/// `setns` calls where a thread per request cost a spawn and a wake-up. A thread that cannot
/// return home would serve the daemon from a pod's namespace: the process aborts instead.
fn in_netns<T>(ns: &File, shown: &str, f: impl FnOnce() -> T) -> Result<T, NetlinkError> {
    use nix::sched::{setns, CloneFlags};
    let home = HOME
        .get_or_init(|| File::open("/proc/self/ns/net"))
        .as_ref()
        .map_err(|e| NetlinkError::other("opening the daemon's netns", &e.to_string()))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetlinkError::new(format!("entering netns {shown}"), e))?;
    let made = f();
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        tracing::error!(error = %e, netns = shown, "cannot return to the daemon's netns: aborting");
        std::process::abort();
    }
    Ok(made)
}

impl PodNetns {
    /// Opens the sockets in the namespace at `netns`; `announce` also opens the packet socket
    /// [`PodNetns::announce`] sends from. Needs the daemon's runtime (the netlink socket is
    /// served by it).
    pub async fn open(netns: &Path, announce: bool) -> Result<Self, NetlinkError> {
        let ns_file = File::open(netns)
            .map_err(|e| NetlinkError::new(format!("opening netns {}", netns.display()), e))?;
        let shown = netns.display().to_string();
        let sockets = in_netns(&ns_file, &shown, || {
            let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| {
                NetlinkError::new(format!("opening a netlink socket in {shown}"), e)
            })?;
            let announce = announce.then(announce::packet_socket).transpose()?;
            Ok::<_, NetlinkError>((connection, handle, announce))
        })?;
        let (connection, handle, announce) = sockets?;
        tokio::spawn(connection);
        Ok(Self { handle, announce })
    }

    /// Announces `ip` on the pod's interface `index` (the `announce` module says how).
    pub fn announce(&self, index: u32, mac: [u8; 6], ip: IpAddr) {
        if let Some(socket) = self.announce.as_ref().and_then(|s| s.try_clone().ok()) {
            announce::announce(socket, index, mac, ip);
        }
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Closing a packet socket waits for an RCU grace period (several ms): not on the
        // request's path.
        if let Some(fd) = self.announce.take() {
            announce::close_later(fd);
        }
    }
}

/// Inside the pod netns: takes `ifname` down and renames it to `retired_name`, if it is the
/// peer of host link `peer_index` (never someone else's interface of that name). The name is
/// free for the runtime at once; the pair is deleted later. Returns whether it did.
pub async fn retire_pod_end(
    pod: &PodNetns,
    ifname: &str,
    peer_index: u32,
    retired_name: &str,
) -> Result<bool, NetlinkError> {
    let handle = &pod.handle;
    let Some(link) = link_by_name(handle, ifname).await? else {
        return Ok(false);
    };
    let is_peer = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Link(index) if *index == peer_index));
    if !is_peer {
        return Ok(false);
    }
    let index = link.header.index;
    // A link must be down to be renamed; the kernel applies a name before flags, so two steps.
    set_down(handle, index).await?;
    let rename = LinkUnspec::new_with_index(index).name(retired_name).build();
    set_link(handle, rename, || {
        format!("renaming {ifname} to {retired_name}")
    })
    .await?;
    Ok(true)
}

/// The pod's interface in its netns once it is up: what the address step needs.
pub struct PodInterface {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
}

impl PodInterface {
    pub fn mac_text(&self) -> String {
        self.mac.map(|mac| mac_text(&mac)).unwrap_or_default()
    }
}

/// Inside the pod netns: brings `ifname` and `lo` up (no address needed yet, so this runs
/// while IPAM does).
pub async fn bring_up_pod_side(pod: &PodNetns, ifname: &str) -> Result<PodInterface, NetlinkError> {
    /// `lo` has this index in every namespace.
    const LOOPBACK_INDEX: u32 = 1;
    let handle = &pod.handle;
    let (link, lo) = tokio::join!(link_by_name(handle, ifname), set_up(handle, LOOPBACK_INDEX));
    lo?;
    let link = link?
        .ok_or_else(|| NetlinkError::other(format!("finding link {ifname}"), "no such link"))?;
    let index = link.header.index;
    set_up(handle, index).await?;
    Ok(PodInterface {
        index,
        mac: mac_bytes(&link),
    })
}

/// Inside the pod netns: gives the interface its addresses and (optionally) a default route
/// per family, and announces the addresses.
pub async fn address_pod_side(
    pod: &PodNetns,
    interface: &PodInterface,
    addresses: &[ipnetwork::IpNetwork],
    default_gws: &[IpAddr],
) -> Result<(), NetlinkError> {
    let handle = &pod.handle;
    let index = interface.index;
    for address in addresses {
        add_address(handle, index, address.ip(), address.prefix()).await?;
    }
    for gw in default_gws {
        let route = match gw {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(*gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .gateway(*gw)
                .output_interface(index)
                .build(),
        };
        match handle.route().add(route).execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(fail(format!("adding default route via {gw}"))(e)),
        }
    }
    if let Some(mac) = interface.mac {
        for address in addresses {
            pod.announce(index, mac, address.ip());
        }
    }
    Ok(())
}

fn mac_bytes(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => mac.as_slice().try_into().ok(),
        _ => None,
    })
}

/// What CHECK finds inside the pod netns.
#[derive(Debug, Default)]
pub struct PodSideState {
    /// The interface's addresses (both families) with their prefixes.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The default routes' gateways (at most one per family).
    pub default_gws: Vec<IpAddr>,
}

/// What CHECK verifies inside the pod netns: the interface's addresses and the default
/// routes' gateways. `None` when the interface is missing.
pub async fn pod_side_state(
    handle: &Handle,
    ifname: &str,
) -> Result<Option<PodSideState>, NetlinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let Some(link) = link_by_name(handle, ifname).await? else {
        return Ok(None);
    };
    let index = link.header.index;
    let mut addresses = Vec::new();
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = stream.try_next().await.map_err(fail("listing addresses"))? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(a) = attr {
                addresses.push((*a, msg.header.prefix_len));
            }
        }
    }
    let mut default_gws = Vec::new();
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for request in requests {
        let mut routes = handle.route().get(request).execute();
        while let Some(route) = routes.try_next().await.map_err(fail("listing routes"))? {
            if route.header.destination_prefix_length != 0 {
                continue;
            }
            for attr in &route.attributes {
                match attr {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                        default_gws.push(IpAddr::V4(*gw))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => {
                        default_gws.push(IpAddr::V6(*gw))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Some(PodSideState {
        addresses,
        default_gws,
    }))
}
