//! The snapshot body: the pool and every lease record, in a compact versioned binary format
//! (about 25 bytes a lease, so 65,536 leases fit in under 2 MiB). Snapshots written by
//! earlier versions as JSON (`{"pool":…,"leases":[…]}`) are still read.
//!
//! Format v1, all integers LEB128 varints unless sized:
//! `b"EVSNAP"`, version byte `1`, pod CIDR address (4 bytes, big endian), prefix (1 byte),
//! nodeBits (1 byte), record count, then per record: name length, name (UTF-8), block,
//! host IP flag (1 byte: 0 none, 1 followed by 4 bytes), revision, acquiredAt. Records are
//! sorted by block, so every member builds the same bytes from the same table.
//!
//! Format v2 (pools with IPv6): as v1, but the pool is a CIDR count (1 byte) then per CIDR a
//! family byte (4 or 6), its address (4 or 16 bytes) and prefix (1 byte), then nodeBits.
//! IPv4-only pools are still written as v1, so members not yet upgraded read them.
//!
//! Format v3 (a table with revoked node ids): as v2, then after the records the count of
//! revoked node ids and each id. Written only when some id is revoked, so members one
//! release behind keep reading every snapshot of a cluster that never removed a member.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::lease::{LeaseRecord, LeaseTable};
use crate::pool::Pool;

const MAGIC: &[u8] = b"EVSNAP";
/// The version IPv4-only pools are written in (readable by every release).
const VERSION_V4: u8 = 1;
/// The version for pools with an IPv6 CIDR.
const VERSION: u8 = 2;
/// v2 plus the revoked node ids.
const VERSION_REVOKED: u8 = 3;

/// Why snapshot bytes cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    #[error("snapshot is neither evio's binary format nor its earlier JSON")]
    UnknownFormat,
    #[error("snapshot format version {0} is newer than this evio-node reads (1 to 3)")]
    UnsupportedVersion(u8),
    #[error("snapshot ends early (reading {0})")]
    Truncated(&'static str),
    #[error("snapshot {0} does not fit its field")]
    Overflow(&'static str),
    #[error("snapshot holds a lease name that is not UTF-8")]
    BadName,
    #[error("snapshot pool: {0}")]
    Pool(#[from] crate::pool::PoolError),
    #[error("snapshot has {0} bytes after its last record")]
    Trailing(usize),
    #[error("earlier JSON snapshot: {0}")]
    Json(#[from] serde_json::Error),
}

/// A decoded snapshot: its pool and its lease records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBody {
    pub pool: Pool,
    pub leases: Vec<LeaseRecord>,
    /// Node ids whose certificates are refused (removed members).
    pub revoked: Vec<u64>,
}

/// The JSON body earlier versions wrote.
#[derive(Deserialize)]
struct LegacyBody {
    pool: Pool,
    leases: Vec<LeaseRecord>,
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Encodes `table` in the current format.
pub fn encode(table: &LeaseTable) -> Vec<u8> {
    let mut records: Vec<&LeaseRecord> = table.records().collect();
    records.sort_unstable_by_key(|r| r.block);
    let pool = table.pool();
    let mut out = Vec::with_capacity(16 + records.len() * 28);
    out.extend_from_slice(MAGIC);
    let revoked = table.revoked();
    match pool.pod_cidrs().as_slice() {
        [IpNetwork::V4(v4)] if revoked.is_empty() => {
            out.push(VERSION_V4);
            out.extend_from_slice(&v4.network().octets());
            out.push(v4.prefix());
        }
        cidrs => {
            out.push(if revoked.is_empty() {
                VERSION
            } else {
                VERSION_REVOKED
            });
            out.push(cidrs.len() as u8);
            for cidr in cidrs {
                match cidr.network() {
                    IpAddr::V4(a) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
                out.push(cidr.prefix());
            }
        }
    }
    out.push(pool.node_bits());
    put_varint(&mut out, records.len() as u64);
    for record in records {
        put_varint(&mut out, record.node.len() as u64);
        out.extend_from_slice(record.node.as_bytes());
        put_varint(&mut out, u64::from(record.block));
        match record.host_ip {
            None => out.push(0),
            Some(ip) => {
                out.push(1);
                out.extend_from_slice(&ip.octets());
            }
        }
        put_varint(&mut out, record.revision);
        put_varint(&mut out, record.acquired_at);
    }
    if !revoked.is_empty() {
        put_varint(&mut out, revoked.len() as u64);
        for id in revoked {
            put_varint(&mut out, *id);
        }
    }
    out
}

/// Reads a snapshot in the current format or the earlier JSON one.
pub fn decode(bytes: &[u8]) -> Result<SnapshotBody, SnapshotFormatError> {
    if bytes.first() == Some(&b'{') {
        let legacy: LegacyBody = serde_json::from_slice(bytes)?;
        return Ok(SnapshotBody {
            pool: legacy.pool,
            leases: legacy.leases,
            revoked: Vec::new(),
        });
    }
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len(), "magic").ok() != Some(MAGIC) {
        return Err(SnapshotFormatError::UnknownFormat);
    }
    let version = r.byte("version")?;
    let cidrs = match version {
        VERSION_V4 => vec![r.cidr(4)?],
        VERSION | VERSION_REVOKED => {
            let count = r.byte("pool CIDR count")?;
            if !(1..=2).contains(&count) {
                return Err(SnapshotFormatError::Overflow("pool CIDR count"));
            }
            let mut cidrs = Vec::with_capacity(2);
            for _ in 0..count {
                let family = r.byte("pool family")?;
                cidrs.push(r.cidr(family)?);
            }
            cidrs
        }
        other => return Err(SnapshotFormatError::UnsupportedVersion(other)),
    };
    let node_bits = r.byte("nodeBits")?;
    let pool = match cidrs.as_slice() {
        [one] => Pool::new(*one, node_bits)?,
        [a, b] => Pool::dual(*a, *b, node_bits)?,
        _ => return Err(SnapshotFormatError::Overflow("pool CIDR count")),
    };
    let count = r.varint("record count")?;
    // Never trust the count for an allocation: each record takes at least 5 bytes.
    let mut leases = Vec::with_capacity((count as usize).min(bytes.len() / 5));
    for _ in 0..count {
        let len = usize::try_from(r.varint("name length")?)
            .map_err(|_| SnapshotFormatError::Overflow("name length"))?;
        let name = std::str::from_utf8(r.take(len, "name")?)
            .map_err(|_| SnapshotFormatError::BadName)?
            .to_string();
        let block = u32::try_from(r.varint("block")?)
            .map_err(|_| SnapshotFormatError::Overflow("block"))?;
        let host_ip = match r.byte("host IP flag")? {
            0 => None,
            1 => Some(r.ipv4("host IP")?),
            _ => return Err(SnapshotFormatError::Overflow("host IP flag")),
        };
        let revision = r.varint("revision")?;
        let acquired_at = r.varint("acquiredAt")?;
        leases.push(LeaseRecord {
            node: name,
            block,
            host_ip,
            revision,
            acquired_at,
        });
    }
    let mut revoked = Vec::new();
    if version == VERSION_REVOKED {
        let count = r.varint("revoked count")?;
        for _ in 0..count {
            revoked.push(r.varint("revoked node id")?);
        }
    }
    match bytes.len() - r.at {
        0 => Ok(SnapshotBody {
            pool,
            leases,
            revoked,
        }),
        rest => Err(SnapshotFormatError::Trailing(rest)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotFormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(SnapshotFormatError::Truncated(what))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, SnapshotFormatError> {
        Ok(self.take(1, what)?[0])
    }

    fn ipv4(&mut self, what: &'static str) -> Result<Ipv4Addr, SnapshotFormatError> {
        let b = self.take(4, what)?;
        Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }

    /// A pool CIDR of `family` (4 or 6): address then prefix.
    fn cidr(&mut self, family: u8) -> Result<IpNetwork, SnapshotFormatError> {
        let addr = match family {
            4 => IpAddr::V4(self.ipv4("pool address")?),
            6 => {
                let b: [u8; 16] = self
                    .take(16, "pool address")?
                    .try_into()
                    .map_err(|_| SnapshotFormatError::Truncated("pool address"))?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(SnapshotFormatError::Overflow("pool family")),
        };
        let prefix = self.byte("pool prefix")?;
        IpNetwork::new(addr, prefix).map_err(|_| SnapshotFormatError::Overflow("pool prefix"))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, SnapshotFormatError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(SnapshotFormatError::Overflow(what));
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SnapshotFormatError::Overflow(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseCommand;

    fn table(pool: Pool, n: usize) -> LeaseTable {
        let mut table = LeaseTable::new(pool);
        for i in 0..n {
            let host_ip = (i % 3 == 0).then(|| Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8));
            let command = LeaseCommand::Acquire {
                node: format!("node-{i}"),
                host_ip,
                request_id: format!("r{i}"),
                at: 1_700_000_000_000 + i as u64,
            };
            table.apply(&command, 10 + i as u64);
        }
        table
    }

    fn sorted(mut records: Vec<LeaseRecord>) -> Vec<LeaseRecord> {
        records.sort_by_key(|r| r.block);
        records
    }

    #[test]
    fn round_trip_keeps_every_record_and_the_pool() {
        let pool = Pool::parse("10.0.0.0/8", 16).unwrap_or_else(|e| panic!("{e}"));
        let t = table(pool, 1000);
        let bytes = encode(&t);
        let body = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.pool, pool);
        assert_eq!(body.leases, sorted(t.records().cloned().collect()));
        let rebuilt = LeaseTable::from_records(pool, body.leases).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rebuilt.leases(), t.leases());
        // Deterministic: the same table gives the same bytes.
        assert_eq!(encode(&rebuilt), bytes);
    }

    #[test]
    fn revoked_node_ids_round_trip_in_v3_and_only_then() {
        let pool = Pool::parse("10.244.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"));
        let mut t = table(pool, 5);
        assert_eq!(
            encode(&t)[MAGIC.len()],
            VERSION_V4,
            "no revocation: still v1"
        );
        for node_id in [42, 7, 42] {
            t.apply(&LeaseCommand::Revoke { node_id, at: 1 }, 99);
        }
        let bytes = encode(&t);
        assert_eq!(bytes[MAGIC.len()], VERSION_REVOKED);
        let body = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((body.pool, body.revoked.clone()), (pool, vec![7, 42]));
        assert_eq!(body.leases, sorted(t.records().cloned().collect()));
        let rebuilt = LeaseTable::from_records(pool, body.leases)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_revoked(body.revoked);
        assert_eq!(encode(&rebuilt), bytes);
        assert!(
            decode(&bytes[..bytes.len() - 1]).is_err(),
            "truncated revoked list"
        );
    }

    #[test]
    fn ipv6_and_dual_stack_pools_round_trip() {
        for (text, bits, version) in [
            ("10.244.0.0/16", 8, VERSION_V4),
            ("fd00:10:244::/56", 8, VERSION),
            ("fd00:10::/48", 16, VERSION),
            ("10.244.0.0/16,fd00:10:244::/56", 8, VERSION),
        ] {
            let pool = Pool::parse(text, bits).unwrap_or_else(|e| panic!("{e}"));
            let t = table(pool, 300);
            let bytes = encode(&t);
            assert_eq!(bytes[MAGIC.len()], version, "{text}");
            let body = decode(&bytes).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(body.pool, pool, "{text}");
            let rebuilt =
                LeaseTable::from_records(pool, body.leases).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rebuilt.leases(), t.leases(), "{text}");
            assert_eq!(encode(&rebuilt), bytes, "{text}");
            for cut in 0..bytes.len().min(64) {
                assert!(decode(&bytes[..cut]).is_err(), "{text} cut at {cut}");
            }
        }
        // a dual-stack snapshot naming two IPv4 CIDRs is refused, not half-read
        let pool = Pool::parse("10.244.0.0/16,fd00::/56", 8).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = encode(&table(pool, 1));
        let second_family = MAGIC.len() + 2 + 4 + 1 + 1;
        assert_eq!(bytes[second_family], 6);
        bytes[second_family] = 4;
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn the_full_pool_fits_in_two_mebibytes() {
        let pool = Pool::parse("10.0.0.0/8", 16).unwrap_or_else(|e| panic!("{e}"));
        let t = table(pool, 65_536);
        let bytes = encode(&t);
        assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes).map(|b| b.leases.len()).ok(), Some(65_536));
    }

    #[test]
    fn the_earlier_json_snapshot_is_still_read() {
        // What versions before the binary format stored in the snapshot tree.
        let json = br#"{"pool":{"podCidr":"10.244.0.0/16","nodeBits":8},"leases":[
            {"node":"a","block":0,"hostIp":null,"revision":3,"acquiredAt":17},
            {"node":"b","block":5,"hostIp":"192.168.1.2","revision":4,"acquiredAt":18}]}"#;
        let body = decode(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            body.pool,
            Pool::parse("10.244.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(body.leases.len(), 2);
        assert_eq!(body.leases[1].host_ip, Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(body.leases[1].acquired_at, 18);
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let pool = Pool::parse("10.244.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"));
        let bytes = encode(&table(pool, 20));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = bytes.clone();
        newer[MAGIC.len()] = 4;
        assert!(matches!(
            decode(&newer),
            Err(SnapshotFormatError::UnsupportedVersion(4))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(SnapshotFormatError::Trailing(1))
        ));
        assert!(matches!(
            decode(b"garbage"),
            Err(SnapshotFormatError::UnknownFormat)
        ));
        // A huge record count on a short body fails on the data, not on an allocation.
        let mut huge = bytes[..MAGIC.len() + 7].to_vec();
        put_varint(&mut huge, u64::MAX);
        assert!(decode(&huge).is_err());
    }
}
