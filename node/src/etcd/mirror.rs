//! The etcd mirror: while this member is the Raft leader, etcd holds every lease in the
//! original Evio layout (`/evpn/<rangeStart>,<rangeEnd>,<gateway>/<prefix>` = `ok`) plus
//! `/evio/leases/<owner>` = the lease JSON.
//!
//! It runs in its own task and only reads the local replica, so etcd being down, slow or
//! refusing the credentials never holds up a lease grant. Each session (on becoming leader,
//! and after any etcd error, with backoff) starts with a full reconcile: missing keys are
//! written, and stale `/evio/leases/` keys are deleted together with the `/evpn/` key each of
//! them recorded. `/evpn/` keys evio never wrote (the original tool's, e.g. its lock) are left
//! alone: `evio-node import-etcd` turns those into reserved leases. After that, every applied
//! change is mirrored as a diff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use evio_api::{EtcdMirrorJson, EtcdMirrorStatus, LeaseJson};
use evio_node::etcd_gateway::{Compare, Gateway, Op, RangeShape};
use evio_raft::legacy::ORIGINAL_PREFIX;
use evio_raft::Replica;
use tokio_util::sync::CancellationToken;

use crate::daemon::backoff::{sleep_or_stop, Backoff};
use crate::daemon::leader::while_leader;

use super::{lease_keys, original_range, EtcdError, EtcdSettings, LEASES_PREFIX};

/// The Raft term of the last leader that wrote to etcd (zero-padded, so it compares as text).
pub const TERM_KEY: &str = "/evio/mirror/term";
/// At most this many operations per etcd transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Retrying etcd: 250 ms doubling to 5 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
/// How often an idle session checks that etcd is still there (and reconnects if not).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Changes arriving this close together are mirrored as one transaction.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

pub struct EtcdMirror {
    settings: EtcdSettings,
    replica: Arc<Replica>,
    status: EtcdMirrorStatus,
}

/// What the mirror believes etcd holds: key -> value, as of `revision`.
type KeyMap = BTreeMap<String, String>;

/// Why a session ended without an etcd error.
enum SessionEnd {
    NotLeader,
    /// A leader of a later term wrote etcd: this member is deposed but may not know yet.
    Fenced,
    Stopped,
}

impl EtcdMirror {
    pub fn new(settings: EtcdSettings, replica: Arc<Replica>) -> Self {
        let status = Arc::new(std::sync::RwLock::new(EtcdMirrorJson {
            endpoints: settings.endpoints.clone(),
            ..Default::default()
        }));
        Self {
            settings,
            replica,
            status,
        }
    }

    /// The shared status the API shows in `/v1/cluster` and `/metrics`.
    pub fn status(&self) -> EtcdMirrorStatus {
        self.status.clone()
    }

    fn update(&self, change: impl FnOnce(&mut EtcdMirrorJson)) {
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        change(&mut status);
    }

    fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// Mirrors while this member leads, until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        while_leader(&self.replica, &stop, |leading| self.lead(leading)).await;
        self.update(|s| s.active = false);
    }

    /// One term as leader: sessions (each a full reconcile, then diffs) until `leading` is
    /// cancelled, retried with backoff after etcd errors.
    async fn lead(&self, leading: CancellationToken) {
        let mut backoff = RETRY;
        loop {
            let was_active = self.status.read().is_ok_and(|s| s.active);
            self.update(|s| s.active = true);
            if !was_active {
                tracing::info!(endpoints = %self.settings.shown_endpoints(), "leader: mirroring leases to etcd");
            }
            match self.session(&leading).await {
                Ok(SessionEnd::Stopped) => break,
                Ok(SessionEnd::Fenced) => {
                    // Raft will tell this member soon; until then, stay out of etcd.
                    self.update(|s| s.active = false);
                    if sleep_or_stop(MAX_BACKOFF, &leading).await {
                        break;
                    }
                }
                Ok(SessionEnd::NotLeader) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    // One line per attempt: with the backoff that is once per backoff period.
                    tracing::warn!(error = %e, retry_in = ?delay, "etcd mirror: etcd unavailable");
                    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                    self.update(|s| {
                        s.healthy = false;
                        s.errors += 1;
                        s.last_error = Some(e.to_string());
                        s.last_error_at = Some(at.to_string());
                    });
                    if sleep_or_stop(delay, &leading).await {
                        break;
                    }
                }
            }
        }
        if !self.is_leader() {
            tracing::info!("no longer leader: etcd mirror paused");
        }
        self.update(|s| s.active = false);
    }

    /// The keys the local replica says etcd should hold, and the applied index they are of.
    fn desired(&self) -> (KeyMap, u64) {
        // Copy under the lock, render outside it: the state machine's writer (every lease
        // grant) waits for this lock.
        let (table, revision) = {
            let applied = self.replica.local().read();
            (
                applied.table.clone(),
                applied.last_applied.map_or(0, |id| id.index),
            )
        };
        let keys = table.leases().iter().flat_map(lease_keys).collect();
        (keys, revision)
    }

    async fn session(&self, stop: &CancellationToken) -> Result<SessionEnd, EtcdError> {
        let client = self.settings.connect().await?;
        let Some(mut known) = self.reconcile(&client).await? else {
            return Ok(SessionEnd::Fenced);
        };
        let mut metrics = self.replica.watch_metrics();
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return Ok(SessionEnd::Stopped);
                    }
                }
                _ = tokio::time::sleep(PROBE_EVERY) => {
                    // Idle: make sure etcd is still there, so a restart is noticed and
                    // reconciled even when no lease changes.
                    client.range_prefix(LEASES_PREFIX, RangeShape::CountOnly).await?;
                }
                _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
            }
            if !self.is_leader() {
                return Ok(SessionEnd::NotLeader);
            }
            let mirrored = self.status.read().map(|s| s.mirrored_revision).unwrap_or(0);
            let applied = self
                .replica
                .local()
                .read()
                .last_applied
                .map_or(0, |id| id.index);
            if applied <= mirrored {
                continue;
            }
            tokio::time::sleep(BATCH_WINDOW).await;
            let (desired, revision) = self.desired();
            let (puts, deletes) = diff(&known, &desired, None);
            if !self.apply(&client, &puts, &deletes).await? {
                return Ok(SessionEnd::Fenced);
            }
            known = desired;
            let keys = known.len() as u64;
            self.update(|s| {
                s.mirrored_revision = revision;
                s.keys = keys;
                s.last_sync_at = Some(evio_api::types::rfc3339(std::time::SystemTime::now()));
            });
        }
    }

    /// Makes etcd hold exactly the replica's keys (under evio's own prefix); returns them, or
    /// `None` when a leader of a later term has written to etcd since (this one is deposed).
    async fn reconcile(&self, client: &Gateway) -> Result<Option<KeyMap>, EtcdError> {
        let mut present = KeyMap::new();
        let own = client
            .range_prefix(LEASES_PREFIX, RangeShape::KeysAndValues)
            .await?;
        // The /evpn/ key each evio record stands for: deleted with a stale record.
        let mut recorded_original = BTreeMap::new();
        for kv in &own.kvs {
            let (key, value) = (kv.key_str(), kv.value_str());
            let range = serde_json::from_str::<LeaseJson>(&value)
                .ok()
                .and_then(|lease| original_range(&lease));
            if let Some(range) = range {
                recorded_original.insert(range.key(ORIGINAL_PREFIX), key.clone());
            }
            present.insert(key, value);
        }
        let originals = client
            .range_prefix(ORIGINAL_PREFIX, RangeShape::KeysOnly)
            .await?;
        for kv in &originals.kvs {
            // Keys only: the original layout's value is always `ok`.
            present.insert(kv.key_str(), "ok".into());
        }
        let (desired, revision) = self.desired();
        let removable: BTreeSet<String> = present
            .keys()
            .filter(|k| k.starts_with(LEASES_PREFIX) || recorded_original.contains_key(*k))
            .cloned()
            .collect();
        let foreign = present
            .keys()
            .filter(|k| !removable.contains(*k) && !desired.contains_key(*k))
            .count();
        let (puts, deletes) = diff(&present, &desired, Some(&removable));
        if !self.apply(client, &puts, &deletes).await? {
            return Ok(None);
        }
        let keys = desired.len() as u64;
        tracing::info!(
            written = puts.len(),
            deleted = deletes.len(),
            keys,
            foreign_original_keys = foreign,
            revision,
            "etcd mirror reconciled"
        );
        self.update(|s| {
            s.healthy = true;
            s.mirrored_revision = revision;
            s.keys = keys;
            s.last_sync_at = Some(evio_api::types::rfc3339(std::time::SystemTime::now()));
        });
        Ok(Some(desired))
    }

    /// Writes `puts` and `deletes` in transactions fenced by the Raft term: each one only
    /// goes through while no leader of a later term has written [`TERM_KEY`], so a deposed
    /// leader that still reaches etcd cannot undo its successor's work. Returns false when
    /// fenced off.
    async fn apply(
        &self,
        client: &Gateway,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<bool, EtcdError> {
        let term = format!("{:020}", self.replica.metrics().current_term);
        let ops: Vec<Op> = deletes
            .iter()
            .map(|k| Op::Delete(k.clone()))
            .chain(puts.iter().map(|(k, v)| Op::Put(k.clone(), v.clone())))
            .collect();
        let chunks: Vec<&[Op]> = if ops.is_empty() {
            // Still claims the term, so an older leader is fenced off from now on.
            vec![&[]]
        } else {
            ops.chunks(OPS_PER_TXN).collect()
        };
        for chunk in chunks {
            let mut writes = chunk.to_vec();
            writes.push(Op::Put(TERM_KEY.into(), term.clone()));
            let fence = [Compare::ValueGreater(TERM_KEY.into(), term.clone())];
            if client.txn(&fence, &[], &writes).await? {
                tracing::warn!(
                    term,
                    "etcd mirror: a later leader wrote etcd; this member stops mirroring"
                );
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Puts for keys missing or different in `present`; deletes for keys in `present` that are
/// not desired and evio's to delete: those in `removable`, or all of them when `present` is
/// the mirror's own record of what it wrote (`None`).
fn diff(
    present: &KeyMap,
    desired: &KeyMap,
    removable: Option<&BTreeSet<String>>,
) -> (Vec<(String, String)>, Vec<String>) {
    let puts = desired
        .iter()
        .filter(|(k, v)| present.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes = present
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .filter(|k| removable.is_none_or(|r| r.contains(*k)))
        .cloned()
        .collect();
    (puts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> KeyMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn diff_writes_missing_and_deletes_only_removable() {
        let present = map(&[
            ("/evpn/a", "ok"),
            ("/evpn/legacy", "ok"),
            ("/evio/leases/x", "1"),
        ]);
        let desired = map(&[("/evpn/b", "ok"), ("/evio/leases/y", "2")]);
        let removable: BTreeSet<String> = ["/evpn/a".to_string(), "/evio/leases/x".to_string()]
            .into_iter()
            .collect();
        let (puts, deletes) = diff(&present, &desired, Some(&removable));
        assert_eq!(puts.len(), 2);
        assert_eq!(
            deletes,
            vec!["/evio/leases/x".to_string(), "/evpn/a".to_string()]
        );
        // a changed value is rewritten
        let (puts, deletes) = diff(&map(&[("/evio/leases/y", "1")]), &desired, None);
        assert!(puts.contains(&("/evio/leases/y".to_string(), "2".to_string())));
        assert!(deletes.is_empty());
    }
}
