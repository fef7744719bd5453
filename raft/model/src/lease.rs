//! Where a lease is decided: the deterministic lease table that every Raft member applies.
//!
//! Commands carry everything the decision needs (node name, host IP, request id, timestamp);
//! applying them never reads the clock, so every replica reaches the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::pool::{Block, Pool};

/// A command proposed to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum LeaseCommand {
    /// Give `node` a block (or return the one it holds).
    #[serde(rename_all = "camelCase")]
    Acquire {
        node: String,
        host_ip: Option<Ipv4Addr>,
        /// Read by nothing (every command is idempotent by its effect): optional when read,
        /// so the release after the next can stop writing it without breaking members that
        /// are one release behind in a rolling upgrade.
        #[serde(default)]
        request_id: String,
        /// Unix milliseconds, set by the proposer.
        at: u64,
    },
    /// Return `node`'s block to the pool; a no-op when it holds none. With `if_revision`,
    /// only when the lease is still at that revision (a stale release is refused).
    #[serde(rename_all = "camelCase")]
    Release {
        node: String,
        /// Read by nothing (every command is idempotent by its effect): optional when read,
        /// so the release after the next can stop writing it without breaking members that
        /// are one release behind in a rolling upgrade.
        #[serde(default)]
        request_id: String,
        at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_revision: Option<u64>,
    },
    /// Hold `block` for `owner` (an imported range, `legacy:...`), so it is never handed to a
    /// node. Idempotent for the same owner and block; refused when the block is taken.
    #[serde(rename_all = "camelCase")]
    Reserve {
        owner: String,
        block: u32,
        /// Read by nothing (every command is idempotent by its effect): optional when read,
        /// so the release after the next can stop writing it without breaking members that
        /// are one release behind in a rolling upgrade.
        #[serde(default)]
        request_id: String,
        at: u64,
    },
    /// Give `from`'s block (a reserved range) to `node`, which must hold no other lease.
    #[serde(rename_all = "camelCase")]
    Claim {
        node: String,
        from: String,
        /// Read by nothing (every command is idempotent by its effect): optional when read,
        /// so the release after the next can stop writing it without breaking members that
        /// are one release behind in a rolling upgrade.
        #[serde(default)]
        request_id: String,
        at: u64,
    },
    /// Revoke the certificates of a member removed from the cluster: every member refuses
    /// a certificate naming `node_id` from then on (a node back with a wiped data dir has a
    /// new id). Idempotent.
    #[serde(rename_all = "camelCase")]
    Revoke { node_id: u64, at: u64 },
}

/// What applying a command decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum LeaseOutcome {
    #[serde(rename_all = "camelCase")]
    Acquired { lease: LeaseRecord, created: bool },
    #[serde(rename_all = "camelCase")]
    Released { existed: bool },
    #[serde(rename_all = "camelCase")]
    PoolExhausted { blocks: u64 },
    /// A reservation or claim that cannot be done; nothing changed.
    #[serde(rename_all = "camelCase")]
    Refused { reason: Refusal },
    /// `node_id` is revoked (`new`: by this command).
    #[serde(rename_all = "camelCase")]
    Revoked { node_id: u64, new: bool },
    /// Log entries without application data (blank, membership) decide nothing.
    #[default]
    None,
}

/// Why a `Reserve` or `Claim` changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Refusal {
    /// The block is outside the pool.
    #[serde(rename_all = "camelCase")]
    OutsidePool { block: u32 },
    /// The block is leased to someone else.
    #[serde(rename_all = "camelCase")]
    BlockTaken { block: u32, holder: String },
    /// The owner (or claiming node) already holds another block.
    #[serde(rename_all = "camelCase")]
    OwnerHoldsOther { owner: String, block: u32 },
    /// The claimed lease does not exist.
    #[serde(rename_all = "camelCase")]
    NoSuchLease { owner: String },
    /// A claim names an owner that is not an imported `legacy:` range (a node's lease is
    /// never taken from it). Decided by the proposer, never in the log: older logs may hold
    /// such claims and must replay as they were applied.
    #[serde(rename_all = "camelCase")]
    NotLegacyOwner { owner: String },
    /// A conditional release named a revision the lease is no longer at.
    #[serde(rename_all = "camelCase")]
    RevisionMismatch {
        owner: String,
        expected: u64,
        actual: u64,
    },
}

/// One node's lease as stored: the block index plus bookkeeping. The subnet and addresses are
/// derived from the pool, so storage stays small at 65,536 leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub node: String,
    pub block: u32,
    pub host_ip: Option<Ipv4Addr>,
    /// Log index of the entry that last changed this lease.
    pub revision: u64,
    /// Unix milliseconds of the acquiring command.
    pub acquired_at: u64,
}

/// A lease with its addresses filled in from the pool: what the API and the CNI config see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub record: LeaseRecord,
    pub block: Block,
    pub pool: Pool,
}

impl Lease {
    /// The node's block in every family of the pool (IPv4 first, same index in each): what its
    /// bridge and IPAM serve.
    pub fn blocks(&self) -> Vec<Block> {
        self.pool.blocks(self.record.block)
    }

    /// The subnets of [`Lease::blocks`].
    pub fn subnets(&self) -> Vec<ipnetwork::IpNetwork> {
        self.blocks().iter().map(|b| b.subnet).collect()
    }
}

/// Free block indexes as a set of disjoint `[start, end)` intervals: lowest-free lookup,
/// acquire and release are O(log n) and the set stays tiny for any pool size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FreeBlocks {
    intervals: BTreeMap<u64, u64>,
}

impl FreeBlocks {
    fn all(count: u64) -> Self {
        let mut intervals = BTreeMap::new();
        if count > 0 {
            intervals.insert(0, count);
        }
        Self { intervals }
    }

    fn len(&self) -> u64 {
        self.intervals.iter().map(|(start, end)| end - start).sum()
    }

    fn take_lowest(&mut self) -> Option<u32> {
        let (&start, &end) = self.intervals.iter().next()?;
        self.intervals.remove(&start);
        if start + 1 < end {
            self.intervals.insert(start + 1, end);
        }
        u32::try_from(start).ok()
    }

    /// Marks `index` used; false when it was not free.
    fn take(&mut self, index: u32) -> bool {
        let index = u64::from(index);
        let Some((&start, &end)) = self.intervals.range(..=index).next_back() else {
            return false;
        };
        if index >= end {
            return false;
        }
        self.intervals.remove(&start);
        if start < index {
            self.intervals.insert(start, index);
        }
        if index + 1 < end {
            self.intervals.insert(index + 1, end);
        }
        true
    }

    fn give_back(&mut self, index: u32) {
        let mut start = u64::from(index);
        let mut end = start + 1;
        if let Some((&prev_start, &prev_end)) = self.intervals.range(..start).next_back() {
            if prev_end == start {
                self.intervals.remove(&prev_start);
                start = prev_start;
            }
        }
        if let Some(next_end) = self.intervals.remove(&end) {
            end = next_end;
        }
        self.intervals.insert(start, end);
    }
}

/// The replicated table: lease per node name, and which blocks are free.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    pool: Pool,
    by_node: HashMap<String, LeaseRecord>,
    free: FreeBlocks,
    /// Node ids of removed members, whose certificates are refused.
    revoked: BTreeSet<u64>,
}

/// A table rebuilt from records that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("lease of {node} names block {block}, outside the pool ({pool})")]
    BlockOutsidePool {
        node: String,
        block: u32,
        pool: Pool,
    },
    #[error("block {block} is leased to both {first} and {second}")]
    DoubleLeased {
        block: u32,
        first: String,
        second: String,
    },
}

impl LeaseTable {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            by_node: HashMap::new(),
            free: FreeBlocks::all(pool.block_count()),
            revoked: BTreeSet::new(),
        }
    }

    /// The table with `revoked` node ids (from storage or a snapshot).
    pub fn with_revoked(mut self, revoked: impl IntoIterator<Item = u64>) -> Self {
        self.revoked.extend(revoked);
        self
    }

    /// Node ids of removed members, whose certificates every member refuses.
    pub fn revoked(&self) -> &BTreeSet<u64> {
        &self.revoked
    }

    /// Rebuilds a table from stored records, refusing any that overlap or fall outside the pool.
    pub fn from_records(
        pool: Pool,
        records: impl IntoIterator<Item = LeaseRecord>,
    ) -> Result<Self, TableError> {
        let mut table = Self::new(pool);
        let mut owner_of: HashMap<u32, String> = HashMap::new();
        for record in records {
            if u64::from(record.block) >= pool.block_count() {
                return Err(TableError::BlockOutsidePool {
                    node: record.node,
                    block: record.block,
                    pool,
                });
            }
            if !table.free.take(record.block) {
                return Err(TableError::DoubleLeased {
                    block: record.block,
                    first: owner_of.remove(&record.block).unwrap_or_default(),
                    second: record.node,
                });
            }
            owner_of.insert(record.block, record.node.clone());
            table.by_node.insert(record.node.clone(), record);
        }
        Ok(table)
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    pub fn free_blocks(&self) -> u64 {
        self.free.len()
    }

    pub fn get(&self, node: &str) -> Option<Lease> {
        self.by_node.get(node).and_then(|r| self.expand(r))
    }

    /// All leases, ordered by block.
    pub fn leases(&self) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .by_node
            .values()
            .filter_map(|r| self.expand(r))
            .collect();
        leases.sort_by_key(|l| l.record.block);
        leases
    }

    /// Who holds `block`, if anyone (linear: only used on refusals and imports).
    pub fn holder_of(&self, block: u32) -> Option<&str> {
        self.by_node
            .values()
            .find(|r| r.block == block)
            .map(|r| r.node.as_str())
    }

    pub fn records(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.by_node.values()
    }

    fn expand(&self, record: &LeaseRecord) -> Option<Lease> {
        Some(Lease {
            block: self.pool.block(record.block)?,
            record: record.clone(),
            pool: self.pool,
        })
    }

    /// Applies one command at log index `revision`. Returns the outcome and the record that
    /// changed (to persist) or the node whose record was removed.
    pub fn apply(&mut self, command: &LeaseCommand, revision: u64) -> (LeaseOutcome, Change) {
        match command {
            LeaseCommand::Acquire {
                node, host_ip, at, ..
            } => {
                if let Some(existing) = self.by_node.get_mut(node) {
                    // Same node again: same block. A new host IP (node readdressed) is recorded.
                    if host_ip.is_some() && *host_ip != existing.host_ip {
                        existing.host_ip = *host_ip;
                        existing.revision = revision;
                        let record = existing.clone();
                        return (
                            LeaseOutcome::Acquired {
                                lease: record.clone(),
                                created: false,
                            },
                            Change::Put(record),
                        );
                    }
                    return (
                        LeaseOutcome::Acquired {
                            lease: existing.clone(),
                            created: false,
                        },
                        Change::Unchanged,
                    );
                }
                let Some(block) = self.free.take_lowest() else {
                    return (
                        LeaseOutcome::PoolExhausted {
                            blocks: self.pool.block_count(),
                        },
                        Change::Unchanged,
                    );
                };
                let record = LeaseRecord {
                    node: node.clone(),
                    block,
                    host_ip: *host_ip,
                    revision,
                    acquired_at: *at,
                };
                self.by_node.insert(node.clone(), record.clone());
                (
                    LeaseOutcome::Acquired {
                        lease: record.clone(),
                        created: true,
                    },
                    Change::Put(record),
                )
            }
            LeaseCommand::Release {
                node,
                if_revision: Some(expected),
                ..
            } if self
                .by_node
                .get(node)
                .is_some_and(|r| r.revision != *expected) =>
            {
                let actual = self.by_node.get(node).map_or(0, |r| r.revision);
                (
                    LeaseOutcome::Refused {
                        reason: Refusal::RevisionMismatch {
                            owner: node.clone(),
                            expected: *expected,
                            actual,
                        },
                    },
                    Change::Unchanged,
                )
            }
            LeaseCommand::Release { node, .. } => match self.by_node.remove(node) {
                Some(record) => {
                    self.free.give_back(record.block);
                    (
                        LeaseOutcome::Released { existed: true },
                        Change::Delete(node.clone()),
                    )
                }
                None => (LeaseOutcome::Released { existed: false }, Change::Unchanged),
            },
            LeaseCommand::Reserve {
                owner, block, at, ..
            } => self.reserve(owner, *block, *at, revision),
            LeaseCommand::Claim { node, from, at, .. } => self.claim(node, from, *at, revision),
            LeaseCommand::Revoke { node_id, .. } => {
                let new = self.revoked.insert(*node_id);
                let change = if new {
                    Change::Revoked(*node_id)
                } else {
                    Change::Unchanged
                };
                let outcome = LeaseOutcome::Revoked {
                    node_id: *node_id,
                    new,
                };
                (outcome, change)
            }
        }
    }

    fn refused(reason: Refusal) -> (LeaseOutcome, Change) {
        (LeaseOutcome::Refused { reason }, Change::Unchanged)
    }

    fn reserve(
        &mut self,
        owner: &str,
        block: u32,
        at: u64,
        revision: u64,
    ) -> (LeaseOutcome, Change) {
        if u64::from(block) >= self.pool.block_count() {
            return Self::refused(Refusal::OutsidePool { block });
        }
        if let Some(existing) = self.by_node.get(owner) {
            if existing.block == block {
                return (
                    LeaseOutcome::Acquired {
                        lease: existing.clone(),
                        created: false,
                    },
                    Change::Unchanged,
                );
            }
            return Self::refused(Refusal::OwnerHoldsOther {
                owner: owner.to_string(),
                block: existing.block,
            });
        }
        if !self.free.take(block) {
            let holder = self.holder_of(block).unwrap_or_default().to_string();
            return Self::refused(Refusal::BlockTaken { block, holder });
        }
        let record = LeaseRecord {
            node: owner.to_string(),
            block,
            host_ip: None,
            revision,
            acquired_at: at,
        };
        self.by_node.insert(owner.to_string(), record.clone());
        (
            LeaseOutcome::Acquired {
                lease: record.clone(),
                created: true,
            },
            Change::Put(record),
        )
    }

    fn claim(&mut self, node: &str, from: &str, at: u64, revision: u64) -> (LeaseOutcome, Change) {
        let Some(source) = self.by_node.get(from) else {
            return Self::refused(Refusal::NoSuchLease {
                owner: from.to_string(),
            });
        };
        if let Some(held) = self.by_node.get(node) {
            return Self::refused(Refusal::OwnerHoldsOther {
                owner: node.to_string(),
                block: held.block,
            });
        }
        // The block moves without passing through the free set: nobody else can take it.
        let record = LeaseRecord {
            node: node.to_string(),
            block: source.block,
            host_ip: None,
            revision,
            acquired_at: at,
        };
        self.by_node.remove(from);
        self.by_node.insert(node.to_string(), record.clone());
        (
            LeaseOutcome::Acquired {
                lease: record.clone(),
                created: true,
            },
            Change::Move {
                from: from.to_string(),
                record,
            },
        )
    }
}

/// The storage effect of one applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Put(LeaseRecord),
    Delete(String),
    /// A lease changed owner: delete `from`'s record, store `record`.
    Move {
        from: String,
        record: LeaseRecord,
    },
    /// A node id joined the revoked set.
    Revoked(u64),
}

/// Why a node name is not acceptable as a lease key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name {name:?}: {reason} (a Kubernetes node name is a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters, each label starting and ending with a letter or digit)")]
pub struct NodeNameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks that `name` is a DNS-1123 subdomain, as Kubernetes requires of node names.
pub fn validate_node_name(name: &str) -> Result<(), NodeNameError> {
    let fail = |reason| {
        Err(NodeNameError {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > 253 {
        return fail("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return fail("empty label");
        }
        if label.len() > 63 {
            return fail("label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("only lowercase letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, bits: u8) -> Pool {
        Pool::parse(cidr, bits).unwrap_or_else(|e| panic!("{e}"))
    }

    fn acquire(node: &str) -> LeaseCommand {
        LeaseCommand::Acquire {
            node: node.into(),
            host_ip: None,
            request_id: format!("req-{node}"),
            at: 1_700_000_000_000,
        }
    }

    fn release(node: &str) -> LeaseCommand {
        LeaseCommand::Release {
            node: node.into(),
            request_id: format!("rel-{node}"),
            at: 1_700_000_000_001,
            if_revision: None,
        }
    }

    #[test]
    fn a_command_without_a_request_id_is_read() {
        let read: LeaseCommand =
            serde_json::from_str(r#"{"op":"acquire","node":"n1","hostIp":null,"at":5}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read,
            LeaseCommand::Acquire {
                node: "n1".into(),
                host_ip: None,
                request_id: String::new(),
                at: 5,
            }
        );
    }

    #[test]
    fn a_conditional_release_needs_the_current_revision() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
        t.apply(&acquire("a"), 5);
        let stale = LeaseCommand::Release {
            node: "a".into(),
            request_id: "r".into(),
            at: 1,
            if_revision: Some(4),
        };
        let (o, change) = t.apply(&stale, 6);
        assert!(
            matches!(
                o,
                LeaseOutcome::Refused {
                    reason: Refusal::RevisionMismatch {
                        expected: 4,
                        actual: 5,
                        ..
                    }
                }
            ),
            "{o:?}"
        );
        assert!(matches!(change, Change::Unchanged));
        assert!(t.get("a").is_some());
        let current = LeaseCommand::Release {
            node: "a".into(),
            request_id: "r2".into(),
            at: 2,
            if_revision: Some(5),
        };
        let (o, _) = t.apply(&current, 7);
        assert_eq!(o, LeaseOutcome::Released { existed: true });
        // A release logged by earlier versions (no ifRevision) still reads and applies.
        let old: LeaseCommand =
            serde_json::from_str(r#"{"op":"release","node":"a","requestId":"x","at":1}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            old,
            LeaseCommand::Release {
                if_revision: None,
                ..
            }
        ));
    }

    fn acquired_block(outcome: &LeaseOutcome) -> (u32, bool) {
        match outcome {
            LeaseOutcome::Acquired { lease, created } => (lease.block, *created),
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[test]
    fn acquire_is_idempotent_and_keyed_by_name() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
        let (first, change) = t.apply(&acquire("a"), 5);
        assert_eq!(acquired_block(&first), (0, true));
        assert!(matches!(change, Change::Put(_)));
        let (again, change) = t.apply(&acquire("a"), 6);
        assert_eq!(acquired_block(&again), (0, false));
        assert_eq!(change, Change::Unchanged);
        // revision and acquiredAt stay those of the acquiring entry
        let lease = t.get("a").unwrap_or_else(|| panic!("lease a"));
        assert_eq!(lease.record.revision, 5);
        assert_eq!(lease.record.acquired_at, 1_700_000_000_000);
        assert_eq!(lease.block.subnet.to_string(), "10.244.0.0/24");
        assert_eq!(t.len(), 1);
        assert_eq!(t.free_blocks(), 255);
    }

    #[test]
    fn new_host_ip_keeps_block_bumps_revision() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
        t.apply(&acquire("a"), 1);
        let cmd = LeaseCommand::Acquire {
            node: "a".into(),
            host_ip: Some(Ipv4Addr::new(10, 10, 0, 3)),
            request_id: "r2".into(),
            at: 99,
        };
        let (outcome, change) = t.apply(&cmd, 2);
        assert_eq!(acquired_block(&outcome), (0, false));
        assert!(
            matches!(change, Change::Put(ref r) if r.revision == 2 && r.acquired_at == 1_700_000_000_000)
        );
    }

    #[test]
    fn lowest_free_block_is_reused_after_release() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            let (o, _) = t.apply(&acquire(n), i as u64 + 1);
            assert_eq!(acquired_block(&o), (i as u32, true));
        }
        let (o, change) = t.apply(&release("b"), 10);
        assert_eq!(o, LeaseOutcome::Released { existed: true });
        assert_eq!(change, Change::Delete("b".into()));
        t.apply(&release("c"), 11);
        let (o, _) = t.apply(&acquire("e"), 12);
        assert_eq!(acquired_block(&o), (1, true));
        let (o, _) = t.apply(&acquire("f"), 13);
        assert_eq!(acquired_block(&o), (2, true));
        let (o, _) = t.apply(&acquire("g"), 14);
        assert_eq!(acquired_block(&o), (4, true));
        // releasing an absent node is a no-op
        let (o, change) = t.apply(&release("zzz"), 15);
        assert_eq!(o, LeaseOutcome::Released { existed: false });
        assert_eq!(change, Change::Unchanged);
    }

    #[test]
    fn exhaustion_is_typed_and_changes_nothing() {
        // /30 blocks on a /28: 4 blocks.
        let mut t = LeaseTable::new(pool("192.168.0.0/28", 2));
        for i in 0..4 {
            let (o, _) = t.apply(&acquire(&format!("n{i}")), i + 1);
            assert_eq!(acquired_block(&o), (i as u32, true));
        }
        let (o, change) = t.apply(&acquire("late"), 9);
        assert_eq!(o, LeaseOutcome::PoolExhausted { blocks: 4 });
        assert_eq!(change, Change::Unchanged);
        assert!(t.get("late").is_none());
        assert_eq!(t.free_blocks(), 0);
        // existing holders still get theirs back
        let (o, _) = t.apply(&acquire("n2"), 10);
        assert_eq!(acquired_block(&o), (2, false));
        // a release makes room again
        t.apply(&release("n1"), 11);
        let (o, _) = t.apply(&acquire("late"), 12);
        assert_eq!(acquired_block(&o), (1, true));
    }

    #[test]
    fn node_bits_zero_has_one_block() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 0));
        let (o, _) = t.apply(&acquire("only"), 1);
        assert_eq!(acquired_block(&o), (0, true));
        let (o, _) = t.apply(&acquire("second"), 2);
        assert_eq!(o, LeaseOutcome::PoolExhausted { blocks: 1 });
    }

    #[test]
    fn free_set_merges_intervals() {
        let mut f = FreeBlocks::all(10);
        for _ in 0..10 {
            f.take_lowest();
        }
        assert_eq!(f.len(), 0);
        for i in [5, 3, 4, 9, 0] {
            f.give_back(i);
        }
        assert_eq!(
            f.intervals
                .iter()
                .map(|(a, b)| (*a, *b))
                .collect::<Vec<_>>(),
            vec![(0, 1), (3, 6), (9, 10)]
        );
        assert!(f.take(4));
        assert!(!f.take(4));
        assert!(!f.take(7));
        assert_eq!(f.len(), 4);
        assert_eq!(f.take_lowest(), Some(0));
        assert_eq!(f.take_lowest(), Some(3));
        assert_eq!(f.take_lowest(), Some(5));
    }

    #[test]
    fn rebuild_refuses_overlaps() {
        let p = pool("10.244.0.0/16", 8);
        let rec = |node: &str, block| LeaseRecord {
            node: node.into(),
            block,
            host_ip: None,
            revision: 1,
            acquired_at: 0,
        };
        let t = LeaseTable::from_records(p, [rec("a", 0), rec("b", 7)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.free_blocks(), 254);
        let mut t2 = t.clone();
        let (o, _) = t2.apply(&acquire("c"), 3);
        assert_eq!(acquired_block(&o), (1, true));
        assert!(matches!(
            LeaseTable::from_records(p, [rec("a", 3), rec("b", 3)]),
            Err(TableError::DoubleLeased { block: 3, .. })
        ));
        assert!(matches!(
            LeaseTable::from_records(p, [rec("a", 256)]),
            Err(TableError::BlockOutsidePool { .. })
        ));
    }

    fn reserve(owner: &str, block: u32) -> LeaseCommand {
        LeaseCommand::Reserve {
            owner: owner.into(),
            block,
            request_id: format!("res-{owner}"),
            at: 5,
        }
    }

    fn claim(node: &str, from: &str) -> LeaseCommand {
        LeaseCommand::Claim {
            node: node.into(),
            from: from.into(),
            request_id: format!("claim-{node}"),
            at: 7,
        }
    }

    fn refusal(outcome: &LeaseOutcome) -> &Refusal {
        match outcome {
            LeaseOutcome::Refused { reason } => reason,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    #[test]
    fn reserved_blocks_are_never_handed_out() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
        let (o, change) = t.apply(&reserve("legacy:a", 0), 1);
        assert_eq!(acquired_block(&o), (0, true));
        assert!(matches!(change, Change::Put(ref r) if r.node == "legacy:a" && r.block == 0));
        t.apply(&reserve("legacy:b", 2), 2);
        // acquire skips both reserved blocks
        let (o, _) = t.apply(&acquire("n1"), 3);
        assert_eq!(acquired_block(&o), (1, true));
        let (o, _) = t.apply(&acquire("n2"), 4);
        assert_eq!(acquired_block(&o), (3, true));
        assert_eq!(t.free_blocks(), 252);
        // re-reserving the same block for the same owner is idempotent
        let (o, change) = t.apply(&reserve("legacy:a", 0), 5);
        assert_eq!(acquired_block(&o), (0, false));
        assert_eq!(change, Change::Unchanged);
        // a taken block, another block for the same owner, a block past the pool: refused
        let (o, change) = t.apply(&reserve("legacy:c", 1), 6);
        assert_eq!(
            refusal(&o),
            &Refusal::BlockTaken {
                block: 1,
                holder: "n1".into()
            }
        );
        assert_eq!(change, Change::Unchanged);
        let (o, _) = t.apply(&reserve("legacy:a", 9), 7);
        assert!(matches!(
            refusal(&o),
            Refusal::OwnerHoldsOther { block: 0, .. }
        ));
        let (o, _) = t.apply(&reserve("legacy:z", 256), 8);
        assert_eq!(refusal(&o), &Refusal::OutsidePool { block: 256 });
        assert_eq!(t.free_blocks(), 252);
        // the free set stays exact: releasing the reservation makes block 0 the lowest again
        t.apply(&release("legacy:a"), 9);
        let (o, _) = t.apply(&acquire("n3"), 10);
        assert_eq!(acquired_block(&o), (0, true));
    }

    #[test]
    fn claim_moves_a_reserved_block_to_a_node() {
        let mut t = LeaseTable::new(pool("10.244.0.0/16", 8));
        t.apply(&reserve("legacy:r", 5), 1);
        t.apply(&acquire("busy"), 2);
        let free_before = t.free_blocks();
        let (o, change) = t.apply(&claim("edge-1", "legacy:r"), 3);
        assert_eq!(acquired_block(&o), (5, true));
        match change {
            Change::Move { from, record } => {
                assert_eq!(from, "legacy:r");
                assert_eq!(
                    (record.node.as_str(), record.block, record.revision),
                    ("edge-1", 5, 3)
                );
            }
            other => panic!("expected Move, got {other:?}"),
        }
        assert!(t.get("legacy:r").is_none());
        assert_eq!(t.get("edge-1").map(|l| l.record.block), Some(5));
        assert_eq!(t.free_blocks(), free_before);
        // the source is gone now; a node with a lease cannot claim; nothing changes
        let (o, change) = t.apply(&claim("edge-2", "legacy:r"), 4);
        assert!(matches!(refusal(&o), Refusal::NoSuchLease { .. }));
        assert_eq!(change, Change::Unchanged);
        t.apply(&reserve("legacy:s", 6), 5);
        let (o, _) = t.apply(&claim("busy", "legacy:s"), 6);
        assert!(matches!(
            refusal(&o),
            Refusal::OwnerHoldsOther { block: 0, .. }
        ));
        assert_eq!(t.get("legacy:s").map(|l| l.record.block), Some(6));
        // the rebuilt table (what a restart loads) agrees
        let rebuilt = LeaseTable::from_records(t.pool(), t.records().cloned())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rebuilt.free_blocks(), t.free_blocks());
    }

    #[test]
    fn node_names() {
        for ok in ["node-1", "a", "worker.edge.example.com", "0abc"] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in ["", "Node1", "-a", "a-", "a..b", "a_b", "a b", long.as_str()] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
        let err = validate_node_name("Bad_Name").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("\"Bad_Name\""));
    }
}
