//! Names of one attachment (container id, ifname) on the host: its host veth and the owner
//! tag (veth alias, OVS port `evio-owner`) that GC reads back.

use crate::spec::Request;

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

/// The pod end's name once DEL has retired it (frees `CNI_IFNAME` at once).
pub fn retired_pod_name(container_id: &str, ifname: &str) -> String {
    format!("evr{}", &host_veth_name(container_id, ifname)[4..])
}

/// Which network and attachment a host veth / OVS port belongs to, so GC touches only its
/// own network's leftovers.
pub fn owner_alias(request: &Request) -> String {
    format!(
        "{}{}/{}",
        owner_prefix(request),
        request.container_id,
        request.ifname
    )
}

pub fn owner_prefix(request: &Request) -> String {
    format!(
        "evio:{}:",
        request.config["name"].as_str().unwrap_or_default()
    )
}

/// The (network, container id, ifname) of any network's owner string.
pub fn parse_any_owner(owner: &str) -> Option<(&str, &str, &str)> {
    let (network, rest) = owner.strip_prefix("evio:")?.split_once(':')?;
    let (container, ifname) = rest.rsplit_once('/')?;
    Some((network, container, ifname))
}

/// The (container id, ifname) of an owner string of this request's network.
pub fn parse_owner<'a>(owner: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    owner.strip_prefix(prefix)?.rsplit_once('/')
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
        assert!(retired_pod_name("c", "eth0").len() <= 15);
    }

    #[test]
    fn owners_of_any_network_parse() {
        assert_eq!(
            parse_any_owner("evio:k8s-pod-network:abc/def/eth0"),
            Some(("k8s-pod-network", "abc/def", "eth0"))
        );
        assert_eq!(parse_any_owner("evio-retired:x"), None);
        assert_eq!(parse_any_owner("evio:net:no-ifname"), None);
    }
}
