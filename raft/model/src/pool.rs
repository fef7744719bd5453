//! Subnet pool math: how `podCIDR` + `nodeBits` split the pod overlay into one block per node.
//!
//! Block *i* is the *i*-th subnet of prefix `podCIDR.prefix + nodeBits`. In a block, the first
//! address is unused, `+1` is the node's bridge gateway, `+2 ..= broadcast-1` are pod addresses
//! and the broadcast address is unused. Pods use the podCIDR's mask (one flat L2 pod network).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

/// Why a podCIDR/nodeBits pair cannot form a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("invalid podCIDR {value:?}: {reason}")]
    InvalidCidr { value: String, reason: String },
    #[error("podCIDR {0} is IPv6; only IPv4 pod networks are supported for now")]
    Ipv6Unsupported(String),
    #[error(
        "nodeBits {node_bits} on podCIDR {cidr} leaves {host_bits} host bits per node block; \
         at least 2 are needed (gateway + one pod address)"
    )]
    TooFewHostBits {
        cidr: Ipv4Network,
        node_bits: u8,
        host_bits: i32,
    },
    #[error("invalid nodeBits {0:?}: expected a whole number from 0 to 30")]
    InvalidNodeBits(String),
}

/// The cluster's pod address pool: the podCIDR (host bits masked) split into `2^nodeBits` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pod_cidr: Ipv4Network,
    node_bits: u8,
}

/// One node's block of the pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub index: u32,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
}

impl Pool {
    /// Builds a pool from a CIDR string (host bits are masked, as the original config shipped
    /// `10.244.0.16/16`) and the number of node bits.
    pub fn parse(pod_cidr: &str, node_bits: u8) -> Result<Self, PoolError> {
        let net: IpNetwork = pod_cidr
            .trim()
            .parse()
            .map_err(|e| PoolError::InvalidCidr {
                value: pod_cidr.to_string(),
                reason: format!("{e}"),
            })?;
        match net {
            IpNetwork::V4(v4) => Self::new(v4, node_bits),
            IpNetwork::V6(_) => Err(PoolError::Ipv6Unsupported(pod_cidr.to_string())),
        }
    }

    /// Parses nodeBits as the original `net-conf.json` carried it: a string or a number.
    pub fn parse_node_bits(value: &str) -> Result<u8, PoolError> {
        value
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|bits| *bits <= 30)
            .ok_or_else(|| PoolError::InvalidNodeBits(value.to_string()))
    }

    pub fn new(pod_cidr: Ipv4Network, node_bits: u8) -> Result<Self, PoolError> {
        let masked = Ipv4Network::new(pod_cidr.network(), pod_cidr.prefix()).map_err(|e| {
            PoolError::InvalidCidr {
                value: pod_cidr.to_string(),
                reason: format!("{e}"),
            }
        })?;
        let host_bits = 32 - i32::from(masked.prefix()) - i32::from(node_bits);
        if host_bits < 2 {
            return Err(PoolError::TooFewHostBits {
                cidr: masked,
                node_bits,
                host_bits,
            });
        }
        Ok(Self {
            pod_cidr: masked,
            node_bits,
        })
    }

    pub fn pod_cidr(&self) -> Ipv4Network {
        self.pod_cidr
    }

    pub fn node_bits(&self) -> u8 {
        self.node_bits
    }

    /// Prefix length of one node block.
    pub fn block_prefix(&self) -> u8 {
        self.pod_cidr.prefix() + self.node_bits
    }

    /// Number of node blocks: `2^nodeBits`.
    pub fn block_count(&self) -> u64 {
        1u64 << self.node_bits
    }

    /// Pod addresses per block: all but network, gateway and broadcast.
    pub fn pods_per_block(&self) -> u64 {
        (1u64 << (32 - u32::from(self.block_prefix()))) - 3
    }

    /// Block `index`, or `None` past the end of the pool.
    pub fn block(&self, index: u32) -> Option<Block> {
        if u64::from(index) >= self.block_count() {
            return None;
        }
        let block_size = 1u64 << (32 - u32::from(self.block_prefix()));
        let base = u64::from(u32::from(self.pod_cidr.network())) + u64::from(index) * block_size;
        let first = u32::try_from(base).ok()?;
        let last = u32::try_from(base + block_size - 1).ok()?;
        let subnet = Ipv4Network::new(Ipv4Addr::from(first), self.block_prefix()).ok()?;
        Some(Block {
            index,
            subnet,
            gateway: Ipv4Addr::from(first + 1),
            range_start: Ipv4Addr::from(first + 2),
            range_end: Ipv4Addr::from(last - 1),
        })
    }

    /// The block whose subnet is exactly `subnet`, if it belongs to this pool.
    pub fn index_of(&self, subnet: Ipv4Network) -> Option<u32> {
        if subnet.prefix() != self.block_prefix() || !self.pod_cidr.contains(subnet.network()) {
            return None;
        }
        let offset = u32::from(subnet.network()) - u32::from(self.pod_cidr.network());
        Some(offset >> (32 - u32::from(self.block_prefix())))
    }

    /// Whether an address (e.g. a pod address) lies in the pool.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => self.pod_cidr.contains(v4),
            IpAddr::V6(_) => false,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "podCIDR {} nodeBits {}", self.pod_cidr, self.node_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, bits: u8) -> Pool {
        match Pool::parse(cidr, bits) {
            Ok(pool) => pool,
            Err(e) => panic!("{cidr} / {bits}: {e}"),
        }
    }

    #[test]
    fn block_table() {
        // (cidr, nodeBits, index, subnet, gateway, rangeStart, rangeEnd, blocks, pods per block)
        let cases = [
            (
                "10.244.0.0/16",
                8,
                0,
                "10.244.0.0/24",
                "10.244.0.1",
                "10.244.0.2",
                "10.244.0.254",
                256,
                253,
            ),
            (
                "10.244.0.0/16",
                8,
                3,
                "10.244.3.0/24",
                "10.244.3.1",
                "10.244.3.2",
                "10.244.3.254",
                256,
                253,
            ),
            (
                "10.244.0.0/16",
                8,
                255,
                "10.244.255.0/24",
                "10.244.255.1",
                "10.244.255.2",
                "10.244.255.254",
                256,
                253,
            ),
            // The original shipped config carries host bits: they are masked.
            (
                "10.244.0.16/16",
                8,
                1,
                "10.244.1.0/24",
                "10.244.1.1",
                "10.244.1.2",
                "10.244.1.254",
                256,
                253,
            ),
            // nodeBits 0: the whole CIDR is one block.
            (
                "10.244.0.0/16",
                0,
                0,
                "10.244.0.0/16",
                "10.244.0.1",
                "10.244.0.2",
                "10.244.255.254",
                1,
                65533,
            ),
            // /30 blocks: one pod address each.
            (
                "192.168.0.0/24",
                6,
                63,
                "192.168.0.252/30",
                "192.168.0.253",
                "192.168.0.254",
                "192.168.0.254",
                64,
                1,
            ),
            // /8 with 16 bits: 65,536 blocks of /24.
            (
                "10.0.0.0/8",
                16,
                65535,
                "10.255.255.0/24",
                "10.255.255.1",
                "10.255.255.2",
                "10.255.255.254",
                65536,
                253,
            ),
            (
                "10.0.0.0/8",
                12,
                999,
                "10.62.112.0/20",
                "10.62.112.1",
                "10.62.112.2",
                "10.62.127.254",
                4096,
                4093,
            ),
        ];
        for (cidr, bits, index, subnet, gw, start, end, blocks, pods) in cases {
            let p = pool(cidr, bits);
            let b = p
                .block(index)
                .unwrap_or_else(|| panic!("{cidr}/{bits} block {index}"));
            assert_eq!(b.subnet.to_string(), subnet, "{cidr} {bits} {index}");
            assert_eq!(b.gateway.to_string(), gw, "{cidr} {bits} {index}");
            assert_eq!(b.range_start.to_string(), start, "{cidr} {bits} {index}");
            assert_eq!(b.range_end.to_string(), end, "{cidr} {bits} {index}");
            assert_eq!(p.block_count(), blocks, "{cidr} {bits}");
            assert_eq!(p.pods_per_block(), pods, "{cidr} {bits}");
            assert_eq!(p.index_of(b.subnet), Some(index));
            assert!(p.block(blocks as u32).is_none() || blocks > u64::from(u32::MAX));
        }
    }

    #[test]
    fn masks_host_bits() {
        assert_eq!(
            pool("10.244.0.16/16", 8).pod_cidr().to_string(),
            "10.244.0.0/16"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Pool::parse("10.244.0.0/16", 15),
            Err(PoolError::TooFewHostBits { host_bits: 1, .. })
        ));
        assert!(matches!(
            Pool::parse("10.244.0.0/16", 17),
            Err(PoolError::TooFewHostBits { host_bits: -1, .. })
        ));
        assert!(matches!(
            Pool::parse("10.0.0.1/32", 0),
            Err(PoolError::TooFewHostBits { .. })
        ));
        assert!(matches!(
            Pool::parse("fd00::/64", 8),
            Err(PoolError::Ipv6Unsupported(_))
        ));
        let err = Pool::parse("10.244.0.0/33", 8).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("10.244.0.0/33"), "{err}");
        let err = Pool::parse("banana", 8).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("banana"), "{err}");
        let err = Pool::parse("10.244.0.0/24", 7).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("nodeBits 7"), "{err}");
    }

    #[test]
    fn node_bits_from_string_or_number() {
        assert_eq!(Pool::parse_node_bits("8"), Ok(8));
        assert_eq!(Pool::parse_node_bits(" 16 "), Ok(16));
        assert!(Pool::parse_node_bits("eight").is_err());
        assert!(Pool::parse_node_bits("31").is_err());
        assert!(Pool::parse_node_bits("-1").is_err());
    }

    #[test]
    fn index_of_rejects_foreign_subnets() {
        let p = pool("10.244.0.0/16", 8);
        let foreign: Ipv4Network = "10.245.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.index_of(foreign), None);
        let wrong_size: Ipv4Network = "10.244.0.0/25".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.index_of(wrong_size), None);
    }
}
