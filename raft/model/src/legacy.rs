//! The original Evio key layout in etcd, and the owners of ranges imported from it.
//!
//! The original config generator recorded each node range as
//! `/evpn/<rangeStart>,<rangeEnd>,<gateway>/<podCIDR prefix>` = `ok`, without saying which
//! node holds it. Imported ranges become reserved leases owned by `legacy:<rangeStart>-<rangeEnd>`
//! until an operator claims them for a node (or releases them).

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use crate::lease::{validate_node_name, NodeNameError};
use crate::pool::{Block, Family, Pool};

/// Where the original tool kept its ranges.
pub const ORIGINAL_PREFIX: &str = "/evpn/";
/// Owner names of imported ranges start with this; they are never Kubernetes node names.
pub const LEGACY_OWNER_PREFIX: &str = "legacy:";

/// One range as the original tool wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalRange {
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The podCIDR's prefix length (pods get the podCIDR mask).
    pub prefix: u8,
}

/// Why an etcd key is not a range in the original layout, or not one of this pool's blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyKeyError {
    #[error("key {key:?} is not in the original layout <prefix><rangeStart>,<rangeEnd>,<gateway>/<podCIDR prefix>: {reason}")]
    Malformed { key: String, reason: String },
    #[error("range {range} is outside the pool {pool}")]
    OutsidePool { range: String, pool: Pool },
    #[error("range {range} does not match the pool's block layout (expected {expected})")]
    NotABlock { range: String, expected: String },
}

impl OriginalRange {
    /// The range the original tool would have written for `block` of `pool`; `None` for an
    /// IPv6 block (the original layout is IPv4-only).
    pub fn of_block(pool: &Pool, block: &Block) -> Option<Self> {
        let v4 = |addr| match addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        };
        Some(Self {
            range_start: v4(block.range_start)?,
            range_end: v4(block.range_end)?,
            gateway: v4(block.gateway)?,
            prefix: pool.cidr_of(Family::V4)?.prefix(),
        })
    }

    /// `<prefix><rangeStart>,<rangeEnd>,<gateway>/<podCIDR prefix>`, e.g.
    /// `/evpn/10.244.3.2,10.244.3.254,10.244.3.1/16`.
    pub fn key(&self, key_prefix: &str) -> String {
        format!(
            "{key_prefix}{},{},{}/{}",
            self.range_start, self.range_end, self.gateway, self.prefix
        )
    }

    /// Parses a key written by the original tool under `key_prefix`.
    pub fn parse_key(key: &str, key_prefix: &str) -> Result<Self, LegacyKeyError> {
        let malformed = |reason: &str| LegacyKeyError::Malformed {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let rest = key
            .strip_prefix(key_prefix)
            .ok_or_else(|| malformed("wrong prefix"))?;
        let (range, prefix) = rest
            .split_once('/')
            .ok_or_else(|| malformed("no /<prefix length>"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| malformed("the prefix length is not a number from 0 to 32"))?;
        let parts: Vec<&str> = range.split(',').collect();
        let [start, end, gateway] = parts.as_slice() else {
            return Err(malformed("expected three comma-separated addresses"));
        };
        let addr = |s: &str| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| malformed(&format!("{s:?} is not an IPv4 address")))
        };
        Ok(Self {
            range_start: addr(start)?,
            range_end: addr(end)?,
            gateway: addr(gateway)?,
            prefix,
        })
    }

    /// The owner name an imported range gets: `legacy:<rangeStart>-<rangeEnd>`.
    pub fn owner(&self) -> String {
        format!(
            "{LEGACY_OWNER_PREFIX}{}-{}",
            self.range_start, self.range_end
        )
    }

    /// The block of `pool` this range is, refusing ranges outside the pool or not on its
    /// block boundaries (another podCIDR or nodeBits).
    pub fn block_in(&self, pool: &Pool) -> Result<u32, LegacyKeyError> {
        let range = self.key("");
        let outside = || LegacyKeyError::OutsidePool {
            range: range.clone(),
            pool: *pool,
        };
        let IpNetwork::V4(pod_cidr) = pool.cidr_of(Family::V4).ok_or_else(outside)? else {
            return Err(outside());
        };
        if !pod_cidr.contains(self.range_start)
            || !pod_cidr.contains(self.range_end)
            || !pod_cidr.contains(self.gateway)
        {
            return Err(outside());
        }
        let offset = u32::from(self.gateway) - u32::from(pod_cidr.network());
        let index = offset >> (32 - u32::from(pod_cidr.prefix() + pool.node_bits()));
        let expected = pool
            .block_of(Family::V4, index)
            .and_then(|b| Self::of_block(pool, &b))
            .ok_or_else(outside)?;
        if expected != *self {
            return Err(LegacyKeyError::NotABlock {
                range,
                expected: expected.key(""),
            });
        }
        Ok(index)
    }
}

/// Whether `owner` names an imported range rather than a node.
pub fn is_legacy_owner(owner: &str) -> bool {
    owner.starts_with(LEGACY_OWNER_PREFIX)
}

/// A lease owner: a Kubernetes node name, or `legacy:<rangeStart>-<rangeEnd>`.
pub fn validate_owner(owner: &str) -> Result<(), NodeNameError> {
    let Some(range) = owner.strip_prefix(LEGACY_OWNER_PREFIX) else {
        return validate_node_name(owner);
    };
    let valid = range
        .split_once('-')
        .is_some_and(|(a, b)| a.parse::<Ipv4Addr>().is_ok() && b.parse::<Ipv4Addr>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(NodeNameError {
            name: owner.to_string(),
            reason: "a legacy owner is legacy:<rangeStart>-<rangeEnd>",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::parse("10.244.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn key_round_trips_in_the_original_layout() {
        let p = pool();
        let block = p.block(3).unwrap_or_else(|| panic!("block 3"));
        let range = OriginalRange::of_block(&p, &block).unwrap_or_else(|| panic!("IPv4 block"));
        let key = range.key(ORIGINAL_PREFIX);
        assert_eq!(key, "/evpn/10.244.3.2,10.244.3.254,10.244.3.1/16");
        let parsed =
            OriginalRange::parse_key(&key, ORIGINAL_PREFIX).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, range);
        assert_eq!(parsed.block_in(&p), Ok(3));
        assert_eq!(parsed.owner(), "legacy:10.244.3.2-10.244.3.254");
        assert!(validate_owner(&parsed.owner()).is_ok());
        assert!(is_legacy_owner(&parsed.owner()));
    }

    #[test]
    fn bad_keys_and_foreign_ranges_are_named() {
        for key in [
            "/evpn/evio-lock/123",
            "/evpn/10.244.3.2,10.244.3.254/16",
            "/evpn/10.244.3.2,10.244.3.254,10.244.3.x/16",
            "/evpn/10.244.3.2,10.244.3.254,10.244.3.1/99",
            "/other/10.244.3.2,10.244.3.254,10.244.3.1/16",
        ] {
            let err = OriginalRange::parse_key(key, ORIGINAL_PREFIX)
                .map(|_| ())
                .unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let p = pool();
        let outside = OriginalRange::parse_key("/evpn/10.9.3.2,10.9.3.254,10.9.3.1/16", "/evpn/")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            outside.block_in(&p),
            Err(LegacyKeyError::OutsidePool { .. })
        ));
        // a /25 layout is not one of this pool's /24 blocks
        let skewed =
            OriginalRange::parse_key("/evpn/10.244.3.2,10.244.3.126,10.244.3.1/16", "/evpn/")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            skewed.block_in(&p),
            Err(LegacyKeyError::NotABlock { .. })
        ));
        for bad in ["legacy:", "legacy:1.2.3.4", "legacy:x-y", "Legacy"] {
            assert!(validate_owner(bad).is_err(), "{bad}");
        }
    }
}
