//! Subnet pool math: how `podCIDR` + `nodeBits` split the pod overlay into one block per node.
//!
//! Block *i* is the *i*-th subnet of prefix `podCIDR.prefix + nodeBits`. In a block, the first
//! address is unused, `+1` is the node's bridge gateway (`::1` in IPv6), `+2 ..= last-1` are pod
//! addresses and the last address is unused (IPv4 broadcast; IPv6 keeps the same layout so both
//! families read alike). Pods use the podCIDR's mask (one flat L2 pod network).
//!
//! A pool has one or two families. Dual stack is written as Kubernetes writes it,
//! `10.244.0.0/16,fd00:10:244::/56`: one nodeBits for both, so block *i* of each family belongs
//! to the same node (same index, same count).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNetwork) -> Self {
        match net {
            IpNetwork::V4(_) => Self::V4,
            IpNetwork::V6(_) => Self::V6,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Why a podCIDR/nodeBits pair cannot form a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("invalid podCIDR {value:?}: {reason}")]
    InvalidCidr { value: String, reason: String },
    #[error(
        "podCIDR {value:?} names {count} networks; at most two are allowed (one IPv4 and one \
         IPv6, e.g. 10.244.0.0/16,fd00:10:244::/56)"
    )]
    TooManyCidrs { value: String, count: usize },
    #[error(
        "podCIDR {value:?} names two {family} networks; a dual-stack pool has one IPv4 and one IPv6"
    )]
    SameFamilyTwice { value: String, family: Family },
    #[error(
        "nodeBits {node_bits} on podCIDR {cidr} leaves {host_bits} host bits per node block; \
         at least 2 are needed (gateway + one pod address)"
    )]
    TooFewHostBits {
        cidr: IpNetwork,
        node_bits: u8,
        host_bits: i32,
    },
    #[error("invalid nodeBits {0:?}: expected a whole number from 0 to 30")]
    InvalidNodeBits(String),
}

/// The cluster's pod address pool: one or two podCIDRs (host bits masked), each split into
/// `2^nodeBits` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The primary family: IPv4 when the pool has IPv4 (what `subnet` in a lease names).
    pod_cidr: IpNetwork,
    /// The IPv6 podCIDR of a dual-stack pool. Absent from single-family pools, so their JSON
    /// stays what earlier versions wrote and read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_cidr_v6: Option<IpNetwork>,
    node_bits: u8,
}

/// One node's block of one family's podCIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub index: u32,
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
}

impl Block {
    pub fn family(&self) -> Family {
        Family::of(&self.subnet)
    }
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(family: Family, value: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(value)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(value))),
    }
}

/// `net` with its host bits cleared, checked for room for `node_bits` blocks of at least a
/// gateway and one pod.
fn checked_cidr(net: IpNetwork, node_bits: u8) -> Result<IpNetwork, PoolError> {
    let masked =
        IpNetwork::new(net.network(), net.prefix()).map_err(|e| PoolError::InvalidCidr {
            value: net.to_string(),
            reason: format!("{e}"),
        })?;
    let host_bits =
        i32::from(Family::of(&masked).bits()) - i32::from(masked.prefix()) - i32::from(node_bits);
    if host_bits < 2 {
        return Err(PoolError::TooFewHostBits {
            cidr: masked,
            node_bits,
            host_bits,
        });
    }
    Ok(masked)
}

impl Pool {
    /// Builds a pool from a podCIDR string — one CIDR, or an IPv4 and an IPv6 CIDR separated by
    /// a comma — and the number of node bits. Host bits are masked, as the original config
    /// shipped `10.244.0.16/16`.
    pub fn parse(pod_cidr: &str, node_bits: u8) -> Result<Self, PoolError> {
        let parts: Vec<&str> = pod_cidr.split(',').map(str::trim).collect();
        if parts.len() > 2 {
            return Err(PoolError::TooManyCidrs {
                value: pod_cidr.to_string(),
                count: parts.len(),
            });
        }
        let mut nets = Vec::with_capacity(parts.len());
        for part in parts {
            let net: IpNetwork = part.parse().map_err(|e| PoolError::InvalidCidr {
                value: pod_cidr.to_string(),
                reason: format!("{e}"),
            })?;
            nets.push(net);
        }
        match nets.as_slice() {
            [one] => Self::new(*one, node_bits),
            [a, b] if Family::of(a) == Family::of(b) => Err(PoolError::SameFamilyTwice {
                value: pod_cidr.to_string(),
                family: Family::of(a),
            }),
            [a, b] => Self::dual(*a, *b, node_bits),
            _ => Err(PoolError::InvalidCidr {
                value: pod_cidr.to_string(),
                reason: "empty".into(),
            }),
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

    /// A single-family pool.
    pub fn new(pod_cidr: impl Into<IpNetwork>, node_bits: u8) -> Result<Self, PoolError> {
        Ok(Self {
            pod_cidr: checked_cidr(pod_cidr.into(), node_bits)?,
            pod_cidr_v6: None,
            node_bits,
        })
    }

    /// A dual-stack pool of one IPv4 and one IPv6 CIDR, in either order.
    pub fn dual(a: IpNetwork, b: IpNetwork, node_bits: u8) -> Result<Self, PoolError> {
        let (v4, v6) = match (a, b) {
            (IpNetwork::V4(_), IpNetwork::V6(_)) => (a, b),
            (IpNetwork::V6(_), IpNetwork::V4(_)) => (b, a),
            _ => {
                return Err(PoolError::SameFamilyTwice {
                    value: format!("{a},{b}"),
                    family: Family::of(&a),
                })
            }
        };
        Ok(Self {
            pod_cidr: checked_cidr(v4, node_bits)?,
            pod_cidr_v6: Some(checked_cidr(v6, node_bits)?),
            node_bits,
        })
    }

    /// The primary podCIDR: the IPv4 one when the pool has IPv4.
    pub fn pod_cidr(&self) -> IpNetwork {
        self.pod_cidr
    }

    /// Every podCIDR, IPv4 first.
    pub fn pod_cidrs(&self) -> Vec<IpNetwork> {
        std::iter::once(self.pod_cidr)
            .chain(self.pod_cidr_v6)
            .collect()
    }

    /// The podCIDR(s) as configured and stored: `10.244.0.0/16` or `10.244.0.0/16,fd00::/56`.
    pub fn pod_cidr_list(&self) -> String {
        joined(&self.pod_cidrs(), ",")
    }

    /// The podCIDR of `family`, if the pool has that family.
    pub fn cidr_of(&self, family: Family) -> Option<IpNetwork> {
        self.pod_cidrs()
            .into_iter()
            .find(|n| Family::of(n) == family)
    }

    /// The families this pool serves, IPv4 first.
    pub fn families(&self) -> Vec<Family> {
        self.pod_cidrs().iter().map(Family::of).collect()
    }

    /// The families as people say them: `IPv4`, `IPv6` or `IPv4+IPv6`.
    pub fn family_names(&self) -> String {
        joined(&self.families(), "+")
    }

    pub fn is_dual_stack(&self) -> bool {
        self.pod_cidr_v6.is_some()
    }

    pub fn node_bits(&self) -> u8 {
        self.node_bits
    }

    /// Prefix length of one node block of the primary family.
    pub fn block_prefix(&self) -> u8 {
        self.pod_cidr.prefix() + self.node_bits
    }

    /// Number of node blocks: `2^nodeBits` (the same in each family).
    pub fn block_count(&self) -> u64 {
        1u64 << self.node_bits
    }

    /// Pod addresses per block of the primary family: all but the first, gateway and last
    /// (saturating: an IPv6 /64 holds more than `u64::MAX`).
    pub fn pods_per_block(&self) -> u64 {
        Self::pods_in(self.pod_cidr, self.node_bits)
    }

    fn pods_in(cidr: IpNetwork, node_bits: u8) -> u64 {
        let host_bits = u32::from(Family::of(&cidr).bits() - cidr.prefix() - node_bits);
        let size = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        u64::try_from(size.saturating_sub(3)).unwrap_or(u64::MAX)
    }

    /// Block `index` of the primary family, or `None` past the end of the pool.
    pub fn block(&self, index: u32) -> Option<Block> {
        Self::block_in(self.pod_cidr, self.node_bits, index)
    }

    /// Block `index` of every family, IPv4 first (empty past the end of the pool).
    pub fn blocks(&self, index: u32) -> Vec<Block> {
        self.pod_cidrs()
            .into_iter()
            .filter_map(|cidr| Self::block_in(cidr, self.node_bits, index))
            .collect()
    }

    /// Block `index` of `family`, if the pool has that family.
    pub fn block_of(&self, family: Family, index: u32) -> Option<Block> {
        Self::block_in(self.cidr_of(family)?, self.node_bits, index)
    }

    fn block_in(cidr: IpNetwork, node_bits: u8, index: u32) -> Option<Block> {
        if u64::from(index) >= 1u64 << node_bits {
            return None;
        }
        let family = Family::of(&cidr);
        let block_prefix = cidr.prefix() + node_bits;
        let host_bits = u32::from(family.bits() - block_prefix);
        let block_size = 1u128.checked_shl(host_bits)?;
        let first = to_u128(cidr.network()).checked_add(u128::from(index) * block_size)?;
        let last = first.checked_add(block_size - 1)?;
        Some(Block {
            index,
            subnet: IpNetwork::new(from_u128(family, first)?, block_prefix).ok()?,
            gateway: from_u128(family, first + 1)?,
            range_start: from_u128(family, first + 2)?,
            range_end: from_u128(family, last - 1)?,
        })
    }

    /// The block whose subnet is exactly `subnet`, if it belongs to this pool (either family).
    pub fn index_of(&self, subnet: IpNetwork) -> Option<u32> {
        let cidr = self.cidr_of(Family::of(&subnet))?;
        let block_prefix = cidr.prefix() + self.node_bits;
        if subnet.prefix() != block_prefix || !cidr.contains(subnet.network()) {
            return None;
        }
        let offset = to_u128(subnet.network()) - to_u128(cidr.network());
        let shift = u32::from(Family::of(&cidr).bits() - block_prefix);
        u32::try_from(offset.checked_shr(shift).unwrap_or(0)).ok()
    }

    /// Whether an address (e.g. a pod address) lies in the pool.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.pod_cidrs().iter().any(|cidr| cidr.contains(addr))
    }
}

/// `items` as text, `sep` between them.
fn joined<T: fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "podCIDR {} nodeBits {}",
            self.pod_cidr_list(),
            self.node_bits
        )
    }
}

#[cfg(test)]
mod tests;
