//! Neighbours learn a (possibly reused) pod address at once, not on their next ARP or neighbour
//! cache timeout: gratuitous ARPs (sender = target = the address) for IPv4, as the reference
//! bridge plugin sends, and unsolicited neighbour advertisements (RFC 4861 7.2.6, override
//! flag set) for IPv6, sent from the pod's interface over a packet socket opened in its netns
//! ([`packet_socket`], by `pod_netns`).
//!
//! Repeated off the request's path, on the daemon's runtime: the first one can beat the bridge
//! port's move to forwarding (the carrier event is handled asynchronously). Closing a packet
//! socket waits for an RCU grace period (several ms), so the last descriptor is closed on the
//! blocking pool ([`close_later`]), whose threads are reused, not made per pod. Best effort: a
//! lost announcement only delays the first packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use super::netlink::NetlinkError;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// When each announcement goes out, after the address is set.
const PAUSES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_millis(200),
];

/// A send-only packet socket (protocol 0: no receive hook) of the calling thread's namespace.
pub(super) fn packet_socket() -> Result<OwnedFd, NetlinkError> {
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes a packet socket off the caller's path (see the module's doc).
pub(super) fn close_later(socket: OwnedFd) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(socket))),
        Err(_) => drop(std::thread::spawn(move || drop(socket))),
    }
}

/// Sends the announcements of `ip` from interface `index` (MAC `mac`) over `socket`, then
/// closes it. Needs the daemon's runtime (without one, nothing is sent).
pub(super) fn announce(socket: OwnedFd, index: u32, mac: [u8; 6], ip: IpAddr) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        close_later(socket);
        return;
    };
    let (protocol, destination, frame) = match ip {
        IpAddr::V4(v4) => (ETH_P_ARP, [0xff; 6], gratuitous_arp(mac, v4)),
        // The multicast MAC of ff02::1.
        IpAddr::V6(v6) => (
            ETH_P_IPV6,
            [0x33, 0x33, 0, 0, 0, 1],
            unsolicited_na(mac, v6),
        ),
    };
    runtime.spawn(async move {
        for pause in PAUSES {
            tokio::time::sleep(pause).await;
            // A packet socket's send does not block: the frame is queued on the device.
            if let Err(e) = send_frame(&socket, index, protocol, destination, &frame) {
                tracing::debug!(error = %e, index, %ip, "address announcement failed");
                break;
            }
        }
        close_later(socket);
    });
}

/// A gratuitous ARP request (sender = target = `ip`), broadcast.
fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]); // destination: broadcast
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    frame
}

/// An unsolicited neighbour advertisement for `ip` to all nodes (`ff02::1`): Ethernet + IPv6
/// (hop limit 255, as receivers require) + ICMPv6 type 136 with the override flag and the
/// target link-layer address option.
fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
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
    frame.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&all_nodes.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// Sends a whole Ethernet frame of `protocol` to `dst_mac` on interface `index`.
fn send_frame(
    socket: &OwnedFd,
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
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
        // The frame carries it where receivers look: after 14 bytes of Ethernet, 40 of IPv6.
        let frame = unsolicited_na([0x02, 0x42, 0xac, 0x11, 0x00, 0x05], src);
        assert_eq!(
            frame[14 + 40..14 + 40 + 4],
            [136, 0, sum.to_be_bytes()[0], sum.to_be_bytes()[1]]
        );
    }
}
