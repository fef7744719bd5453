//! Where a lease is decided: the deterministic lease table that every Raft member applies.
//!
//! Commands carry everything the decision needs (node name, host IP, request id, timestamp);
//! applying them never reads the clock, so every replica reaches the same state.
//!
//! Over 500 lines on purpose: every command's decision (acquire, release, reserve, claim,
//! revoke) reads and changes the same table and free-block index, and one file shows that
//! they keep its invariants together; name checks, the free-block index and the tests are
//! already in `lease/`.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::pool::{Block, Pool};

mod free_blocks;
mod name;
use free_blocks::FreeBlocks;
pub use name::{validate_node_name, NodeNameError};

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

impl LeaseCommand {
    /// [`LeaseCommand::Acquire`] of a block for `node`, proposed at `at` (Unix ms).
    pub fn acquire(node: &str, host_ip: Option<Ipv4Addr>, request_id: String, at: u64) -> Self {
        LeaseCommand::Acquire {
            node: node.to_string(),
            host_ip,
            request_id,
            at,
        }
    }

    /// [`LeaseCommand::Release`] of `node`'s block (only while at `if_revision`, when given).
    pub fn release(node: &str, if_revision: Option<u64>, request_id: String, at: u64) -> Self {
        LeaseCommand::Release {
            node: node.to_string(),
            request_id,
            at,
            if_revision,
        }
    }
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

/// A record in the table, found by its node name: the name is stored once, in the record
/// (a map from name to record held every name twice, ~5 MiB at 65,536 leases).
#[derive(Debug, Clone)]
struct ByNode(LeaseRecord);

impl PartialEq for ByNode {
    fn eq(&self, other: &Self) -> bool {
        self.0.node == other.0.node
    }
}

impl Eq for ByNode {}

impl Hash for ByNode {
    // As `str` hashes: lookups by `&str` (through `Borrow`) must find the record.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.node.as_str().hash(state);
    }
}

impl Borrow<str> for ByNode {
    fn borrow(&self) -> &str {
        &self.0.node
    }
}

/// The replicated table: lease per node name, and which blocks are free.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    pool: Pool,
    by_node: HashSet<ByNode>,
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
            by_node: HashSet::new(),
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
            table.by_node.replace(ByNode(record));
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
        self.record(node).and_then(|r| self.expand(r))
    }

    fn record(&self, node: &str) -> Option<&LeaseRecord> {
        self.by_node.get(node).map(|r| &r.0)
    }

    /// All leases, ordered by block.
    pub fn leases(&self) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self.records().filter_map(|r| self.expand(r)).collect();
        leases.sort_by_key(|l| l.record.block);
        leases
    }

    /// Who holds `block`, if anyone (linear: only used on refusals and imports).
    pub fn holder_of(&self, block: u32) -> Option<&str> {
        self.records()
            .find(|r| r.block == block)
            .map(|r| r.node.as_str())
    }

    pub fn records(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.by_node.iter().map(|r| &r.0)
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
                if let Some(existing) = self.record(node) {
                    // Same node again: same block. A new host IP (node readdressed) is recorded.
                    if host_ip.is_some() && *host_ip != existing.host_ip {
                        let record = LeaseRecord {
                            host_ip: *host_ip,
                            revision,
                            ..existing.clone()
                        };
                        self.by_node.replace(ByNode(record.clone()));
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
                self.by_node.replace(ByNode(record.clone()));
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
            } if self.record(node).is_some_and(|r| r.revision != *expected) => {
                let actual = self.record(node).map_or(0, |r| r.revision);
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
            LeaseCommand::Release { node, .. } => match self.by_node.take(node.as_str()) {
                Some(ByNode(record)) => {
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
        if let Some(existing) = self.record(owner) {
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
        self.by_node.replace(ByNode(record.clone()));
        (
            LeaseOutcome::Acquired {
                lease: record.clone(),
                created: true,
            },
            Change::Put(record),
        )
    }

    fn claim(&mut self, node: &str, from: &str, at: u64, revision: u64) -> (LeaseOutcome, Change) {
        let Some(source) = self.record(from) else {
            return Self::refused(Refusal::NoSuchLease {
                owner: from.to_string(),
            });
        };
        if let Some(held) = self.record(node) {
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
        self.by_node.replace(ByNode(record.clone()));
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

#[cfg(test)]
mod tests;
