//! A member's data directory: its identity (random node id, the pool it serves) and its
//! sled database. A data dir is never silently re-initialised: a missing identity next to an
//! existing database, a corrupt identity, or another pool are all refused.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use evio_lease_model::write_atomic;

use crate::pool::Pool;
use crate::types::NodeId;

const IDENTITY_FILE: &str = "identity.json";
const DB_DIR: &str = "db";
/// 2: the state machine keeps the lease table as one base value plus changed keys
/// (`store::state_machine`). A binary that reads only format 1 would see just the changed
/// keys of such a database, so the format is raised when a newer binary opens the data dir:
/// an older binary then refuses it ("unknown format 2") instead of serving a partial table.
const FORMAT: u32 = 2;
/// Formats this binary opens: 1 is upgraded in place to [`FORMAT`].
const READABLE_FORMATS: std::ops::RangeInclusive<u32> = 1..=FORMAT;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub format: u32,
    pub node_id: NodeId,
    pub pod_cidr: String,
    pub node_bits: u8,
    /// The cluster this member belongs to: set when it bootstraps one or joins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {path} belongs to node id {stored}, but this member's certificate names node id {wanted}; use the certificate issued for it, or an empty data dir")]
    NodeIdMismatch {
        path: PathBuf,
        stored: NodeId,
        wanted: NodeId,
    },
    #[error("data dir {path} holds a database but no {IDENTITY_FILE}; refusing to re-initialise it (restore the file or use an empty data dir)")]
    MissingIdentity { path: PathBuf },
    #[error("data dir {path}: {IDENTITY_FILE} is unreadable: {reason}")]
    CorruptIdentity { path: PathBuf, reason: String },
    #[error("data dir {path} was created for podCIDR {stored_cidr} nodeBits {stored_bits} ({stored_families}), but this start asks for podCIDR {asked_cidr} nodeBits {asked_bits} ({asked_families}); use the original values or a new data dir")]
    PoolMismatch {
        path: PathBuf,
        stored_cidr: String,
        stored_bits: u8,
        stored_families: String,
        asked_cidr: String,
        asked_bits: u8,
        asked_families: String,
    },
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    identity: Identity,
    created: bool,
}

impl DataDir {
    /// Opens `root` for `pool`, creating it with a fresh random node id when it is new.
    pub fn open(root: &Path, pool: Pool) -> Result<Self, DataDirError> {
        Self::open_as(root, pool, None)
    }

    /// Like [`Self::open`]; with `node_id` (what an operator-issued certificate names), a new
    /// data dir takes that id and an existing one must have it.
    pub fn open_as(root: &Path, pool: Pool, node_id: Option<NodeId>) -> Result<Self, DataDirError> {
        let opened = Self::open_inner(root, pool, node_id)?;
        match node_id {
            Some(wanted) if wanted != opened.identity.node_id => {
                Err(DataDirError::NodeIdMismatch {
                    path: root.to_path_buf(),
                    stored: opened.identity.node_id,
                    wanted,
                })
            }
            _ => Ok(opened),
        }
    }

    fn open_inner(root: &Path, pool: Pool, node_id: Option<NodeId>) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io {
            path: root.to_path_buf(),
            source,
        };
        fs::create_dir_all(root).map_err(io)?;
        let identity_path = root.join(IDENTITY_FILE);
        match fs::read(&identity_path) {
            Ok(bytes) => {
                let identity: Identity =
                    serde_json::from_slice(&bytes).map_err(|e| DataDirError::CorruptIdentity {
                        path: root.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                if !READABLE_FORMATS.contains(&identity.format) {
                    return Err(DataDirError::CorruptIdentity {
                        path: root.to_path_buf(),
                        reason: format!(
                            "unknown format {} (this evio reads formats {}-{}: was the data dir written by a newer evio?)",
                            identity.format,
                            READABLE_FORMATS.start(),
                            READABLE_FORMATS.end()
                        ),
                    });
                }
                let stored = Pool::parse(&identity.pod_cidr, identity.node_bits).map_err(|e| {
                    DataDirError::CorruptIdentity {
                        path: root.to_path_buf(),
                        reason: e.to_string(),
                    }
                })?;
                if stored != pool {
                    return Err(DataDirError::PoolMismatch {
                        path: root.to_path_buf(),
                        stored_cidr: stored.pod_cidr_list(),
                        stored_bits: stored.node_bits(),
                        stored_families: stored.family_names(),
                        asked_cidr: pool.pod_cidr_list(),
                        asked_bits: pool.node_bits(),
                        asked_families: pool.family_names(),
                    });
                }
                let mut opened = Self {
                    root: root.to_path_buf(),
                    identity,
                    created: false,
                };
                if opened.identity.format != FORMAT {
                    let mut upgraded = opened.identity.clone();
                    upgraded.format = FORMAT;
                    opened.write_identity(upgraded)?;
                }
                Ok(opened)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if root.join(DB_DIR).exists() {
                    return Err(DataDirError::MissingIdentity {
                        path: root.to_path_buf(),
                    });
                }
                let identity = Identity {
                    format: FORMAT,
                    // 53 bits so ids survive JSON consumers that use doubles; zero is
                    // reserved so an id is never confused with "unset".
                    node_id: node_id.unwrap_or_else(|| (rand::random::<u64>() >> 11).max(1)),
                    pod_cidr: pool.pod_cidr_list(),
                    node_bits: pool.node_bits(),
                    cluster_id: None,
                };
                let bytes = serde_json::to_vec_pretty(&identity).map_err(|e| io(e.into()))?;
                write_atomic(&identity_path, &bytes, 0o600).map_err(io)?;
                Ok(Self {
                    root: root.to_path_buf(),
                    identity,
                    created: true,
                })
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.identity.node_id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_DIR)
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.identity.cluster_id.as_deref()
    }

    /// Records (durably) the cluster this member now belongs to.
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> Result<(), DataDirError> {
        let mut identity = self.identity.clone();
        identity.cluster_id = Some(cluster_id.to_string());
        self.write_identity(identity)
    }

    /// Replaces the identity file durably, then the copy in memory.
    fn write_identity(&mut self, identity: Identity) -> Result<(), DataDirError> {
        let io = |source| DataDirError::Io {
            path: self.root.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&identity).map_err(|e| io(e.into()))?;
        write_atomic(&self.root.join(IDENTITY_FILE), &bytes, 0o600).map_err(io)?;
        self.identity = identity;
        Ok(())
    }

    /// True when this call created the data dir's identity.
    pub fn created(&self) -> bool {
        self.created
    }
}

/// A fresh random secret, hex-encoded (cluster ids, generated tokens).
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, bits: u8) -> Pool {
        Pool::parse(cidr, bits).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn same_id_on_reopen_and_pool_mismatch_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = pool("10.244.0.0/16", 8);
        let first = DataDir::open(dir.path(), p).unwrap_or_else(|e| panic!("{e}"));
        assert!(first.created());
        let again = DataDir::open(dir.path(), p).unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.created());
        assert_eq!(first.node_id(), again.node_id());

        let err = DataDir::open(dir.path(), pool("10.0.0.0/8", 12))
            .map(|_| ())
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("10.244.0.0/16") && msg.contains("nodeBits 8"),
            "{msg}"
        );
        assert!(
            msg.contains("10.0.0.0/8") && msg.contains("nodeBits 12"),
            "{msg}"
        );
    }

    /// A format-1 data dir (before the base-plus-changes table) opens and is raised to the
    /// current format, so an older binary refuses it afterwards; a newer format is refused.
    #[test]
    fn format_one_is_upgraded_and_an_unknown_format_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = pool("10.244.0.0/16", 8);
        let id = DataDir::open(dir.path(), p)
            .unwrap_or_else(|e| panic!("{e}"))
            .node_id();
        let path = dir.path().join(IDENTITY_FILE);
        let rewrite = |format: u32| {
            let mut identity: Identity =
                serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{e}")))
                    .unwrap_or_else(|e| panic!("{e}"));
            identity.format = format;
            fs::write(
                &path,
                serde_json::to_vec(&identity).unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        };
        rewrite(1);
        let opened = DataDir::open(dir.path(), p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(opened.node_id(), id);
        let stored: Identity =
            serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored.format, FORMAT);

        rewrite(FORMAT + 1);
        let msg = DataDir::open(dir.path(), p)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("unknown format {}", FORMAT + 1)),
            "{msg}"
        );
    }

    #[test]
    fn a_changed_family_set_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v4 = pool("10.244.0.0/16", 8);
        let dual = pool("10.244.0.0/16,fd00:10:244::/56", 8);
        let v6 = pool("fd00:10:244::/56", 8);
        let id = DataDir::open(dir.path(), dual).map(|d| d.node_id()).ok();
        assert!(id.is_some());
        assert_eq!(
            DataDir::open(dir.path(), dual).map(|d| d.node_id()).ok(),
            id,
            "a dual-stack data dir reopens"
        );
        for other in [v4, v6] {
            let msg = DataDir::open(dir.path(), other)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("10.244.0.0/16,fd00:10:244::/56") && msg.contains("(IPv4+IPv6)"),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("({})", other.family_names())),
                "{msg}"
            );
        }
    }

    #[test]
    fn fresh_dirs_get_distinct_ids() {
        let p = pool("10.244.0.0/16", 8);
        let a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ida = DataDir::open(a.path(), p).map(|d| d.node_id());
        let idb = DataDir::open(b.path(), p).map(|d| d.node_id());
        assert_ne!(ida.ok(), idb.ok());
    }

    #[test]
    fn corrupt_or_missing_identity_is_refused() {
        let p = pool("10.244.0.0/16", 8);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        fs::create_dir_all(dir.path().join(DB_DIR)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            DataDir::open(dir.path(), p),
            Err(DataDirError::MissingIdentity { .. })
        ));
        fs::write(dir.path().join(IDENTITY_FILE), b"{not json").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            DataDir::open(dir.path(), p),
            Err(DataDirError::CorruptIdentity { .. })
        ));
    }
}
