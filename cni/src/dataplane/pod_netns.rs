//! Inside a pod's network namespace: the sockets the daemon opens there ([`PodNetns`]) and
//! the pod-side steps of ADD (bring up, addresses, a default route per family, gratuitous ARP
//! and unsolicited neighbour advertisements), DEL (free
//! `CNI_IFNAME`) and CHECK (what is configured), over rtnetlink (no `ip` exec).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::netlink::{
    add_address, fail, is_exists, link_by_name, mac_text, set_down, set_up, NetlinkError,
};

/// Netlink (and, for ADD, a packet socket to announce the pod's address) inside a pod's
/// network namespace, served by the daemon's runtime. A socket belongs to the namespace it was
/// created in, so only the creation needs a thread inside the pod netns: a short-lived one,
/// because a namespace switch is per thread and must not leak into the runtime's workers.
pub struct PodNetns {
    pub handle: Handle,
    announce: Option<std::os::fd::OwnedFd>,
}

impl PodNetns {
    /// Opens the sockets in the namespace at `netns`; `announce` also opens the packet socket
    /// [`PodNetns::announce`] sends gratuitous ARPs from.
    pub async fn open(netns: &Path, announce: bool) -> Result<Self, NetlinkError> {
        let ns_file = File::open(netns)
            .map_err(|e| NetlinkError::new(format!("opening netns {}", netns.display()), e))?;
        let shown = netns.display().to_string();
        let runtime = tokio::runtime::Handle::current();
        let (reply, opened) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let sockets = (|| {
                nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetlinkError::new(format!("entering netns {shown}"), e))?;
                // The socket registers with the daemon's reactor, not a runtime of this thread.
                let _runtime = runtime.enter();
                let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| {
                    NetlinkError::new(format!("opening a netlink socket in {shown}"), e)
                })?;
                let announce = announce.then(packet_socket).transpose()?;
                Ok((connection, handle, announce))
            })();
            // The receiver is gone only if the request was dropped; the sockets close with it.
            let _ = reply.send(sockets);
        });
        let (connection, handle, announce) = opened.await.map_err(|_| {
            NetlinkError::other(
                format!("entering netns {}", netns.display()),
                "namespace thread ended without an answer",
            )
        })??;
        tokio::spawn(connection);
        Ok(Self { handle, announce })
    }

    /// Neighbours learn the (possibly reused) address now, not on their next ARP or neighbour
    /// cache timeout: gratuitous ARPs (sender = target = `ip`) for IPv4, as the reference
    /// bridge plugin sends, and unsolicited neighbour advertisements (RFC 4861 7.2.6, override
    /// flag set) for IPv6, from interface `index`. Repeated off the request's path: the first
    /// one can beat the bridge port's move to forwarding (the carrier event is handled
    /// asynchronously), and closing a packet socket waits for an RCU grace period. Best
    /// effort: a lost announcement only delays the first packets.
    pub fn announce(&self, index: u32, mac: [u8; 6], ip: IpAddr) {
        let Some(socket) = self.announce.as_ref().and_then(|s| s.try_clone().ok()) else {
            return;
        };
        std::thread::spawn(move || {
            for pause_ms in [0, 20, 200] {
                std::thread::sleep(std::time::Duration::from_millis(pause_ms));
                let sent = match ip {
                    IpAddr::V4(v4) => send_gratuitous_arp(&socket, index, mac, v4),
                    IpAddr::V6(v6) => send_unsolicited_na(&socket, index, mac, v6),
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, index, %ip, "address announcement failed");
                    break;
                }
            }
        });
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Closing a packet socket waits for an RCU grace period (several ms): not on the
        // request's path.
        if let Some(fd) = self.announce.take() {
            std::thread::spawn(move || drop(fd));
        }
    }
}

/// A send-only packet socket (protocol 0: no receive hook) of the calling thread's namespace.
fn packet_socket() -> Result<std::os::fd::OwnedFd, NetlinkError> {
    use nix::libc;
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); a valid descriptor is owned by the OwnedFd from here on.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetlinkError::new(
            "opening a packet socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
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
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).name(retired_name).build())
        .execute()
        .await
        .map_err(fail(format!("renaming {ifname} to {retired_name}")))?;
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
    let handle = &pod.handle;
    let link = link_by_name(handle, ifname)
        .await?
        .ok_or_else(|| NetlinkError::other(format!("finding link {ifname}"), "no such link"))?;
    let index = link.header.index;
    set_up(handle, index).await?;
    if let Some(lo) = link_by_name(handle, "lo").await? {
        set_up(handle, lo.header.index).await?;
    }
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

/// Broadcasts one gratuitous ARP request (sender = target = `ip`) on interface `index` of
/// the socket's namespace, as the reference bridge plugin does after ADD.
fn send_gratuitous_arp(
    socket: &std::os::fd::OwnedFd,
    index: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
) -> std::io::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]); // destination: broadcast
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    send_frame(socket, index, ETH_P_ARP, [0xff; 6], &frame)
}

/// Sends a whole Ethernet frame of `protocol` to `dst_mac` on interface `index`.
fn send_frame(
    socket: &std::os::fd::OwnedFd,
    index: u32,
    protocol: u16,
    dst_mac: [u8; 6],
    frame: &[u8],
) -> std::io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed sockaddr_ll is a valid value; sendto gets a fully initialised address
    // and a frame buffer that outlive the call, on a descriptor the OwnedFd keeps open.
    let sent = unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What CHECK finds inside the pod netns.
#[derive(Debug, Default)]
pub struct PodSideState {
    /// The interface's addresses (both families) with their prefixes.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The default routes' gateways (at most one per family).
    pub default_gws: Vec<IpAddr>,
}

/// Sends one unsolicited neighbour advertisement for `ip` to all nodes (`ff02::1`) on
/// interface `index`: Ethernet + IPv6 (hop limit 255, as receivers require) + ICMPv6 type 136
/// with the override flag and the target link-layer address option.
fn send_unsolicited_na(
    socket: &std::os::fd::OwnedFd,
    index: u32,
    mac: [u8; 6],
    ip: Ipv6Addr,
) -> std::io::Result<()> {
    const ETH_P_IPV6: u16 = 0x86dd;
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type NA, code 0, checksum (filled below)
    icmp.extend_from_slice(&[0x20, 0, 0, 0]); // flags: override
    icmp.extend_from_slice(&ip.octets()); // target
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(&ip, &all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    let dst_mac = [0x33, 0x33, 0, 0, 0, 1]; // the multicast MAC of ff02::1
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&all_nodes.octets());
    frame.extend_from_slice(&icmp);
    send_frame(socket, index, ETH_P_IPV6, dst_mac, &frame)
}

/// The ICMPv6 checksum: over the IPv6 pseudo-header (source, destination, length, next
/// header 58) and the message.
fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(message.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmpv6_checksum_matches_a_captured_advertisement() {
        // The checksum verifies: summing a message that carries its checksum gives zero.
        let src: Ipv6Addr = "fd00:10:244:3::5".parse().unwrap_or_else(|e| panic!("{e}"));
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        icmp.extend_from_slice(&src.octets());
        icmp.extend_from_slice(&[2, 1, 0x02, 0x42, 0xac, 0x11, 0x00, 0x05]);
        let sum = icmpv6_checksum(&src, &dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(icmpv6_checksum(&src, &dst, &icmp), 0);
        assert_ne!(sum, 0);
    }
}
