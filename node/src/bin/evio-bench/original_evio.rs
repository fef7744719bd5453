//! The original Evio lease algorithm, re-implemented over etcd as the anchor (see
//! shared/reference/original-evio.md): open a session (a 60 s etcd lease, like Go's
//! `concurrency.NewSession`), take the global lock `/evpn/evio-lock/`, walk the candidate ranges
//! in order — skipping the first block, as the original did — with one put-if-absent
//! transaction per range until one succeeds, unlock, close the session.

use anyhow::{anyhow, Context, Result};
use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp};
use evio_raft::Pool;

pub const KEY_PREFIX: &str = "/evpn/";
const LOCK_NAME: &str = "/evpn/evio-lock/";
const SESSION_TTL_SECS: i64 = 60;

/// `/evpn/<rangeStart>,<rangeEnd>,<gateway>/<podCIDR prefix>` for every block of the pool, in
/// order (block 0 included; the walk leaves it out).
pub fn range_keys(pool: &Pool) -> Vec<String> {
    (0..pool.block_count())
        .filter_map(|i| pool.block(u32::try_from(i).ok()?))
        .map(|b| {
            format!(
                "{KEY_PREFIX}{},{},{}/{}",
                b.range_start,
                b.range_end,
                b.gateway,
                pool.pod_cidr().prefix()
            )
        })
        .collect()
}

#[derive(Clone)]
pub struct OriginalEvio {
    client: Client,
    candidates: std::sync::Arc<Vec<String>>,
}

impl OriginalEvio {
    pub fn new(client: Client, pool: &Pool) -> Self {
        let candidates = range_keys(pool).into_iter().skip(1).collect();
        OriginalEvio {
            client,
            candidates: std::sync::Arc::new(candidates),
        }
    }

    /// One config-gen run: reserves the first free range and returns its key.
    pub async fn acquire(&mut self) -> Result<String> {
        let session = self
            .client
            .lease_grant(SESSION_TTL_SECS, None)
            .await
            .context("session lease")?
            .id();
        let lock = self
            .client
            .lock(LOCK_NAME, Some(LockOptions::new().with_lease(session)))
            .await
            .context("lock /evpn/evio-lock/")?;
        let mut selected = None;
        for key in self.candidates.iter() {
            let txn = Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), "ok", None)]);
            if self
                .client
                .txn(txn)
                .await
                .context("put-if-absent")?
                .succeeded()
            {
                selected = Some(key.clone());
                break;
            }
        }
        self.client
            .unlock(lock.key())
            .await
            .context("unlock /evpn/evio-lock/")?;
        self.client
            .lease_revoke(session)
            .await
            .context("close the session")?;
        selected.ok_or_else(|| anyhow!("no free range left"))
    }

    /// Deletes every range key (between benchmark phases).
    pub async fn clear(&mut self) -> Result<()> {
        self.client
            .delete(
                KEY_PREFIX,
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .context("delete /evpn/")?;
        Ok(())
    }
}

/// Writes `keys` with value `ok` in transactions of 128 puts (etcd's default --max-txn-ops).
pub async fn put_all(client: &mut Client, keys: &[String]) -> Result<()> {
    for chunk in keys.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|k| TxnOp::put(k.as_str(), "ok", None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .context("bulk put")?;
    }
    Ok(())
}
