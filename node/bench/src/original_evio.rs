//! The original Evio lease algorithm, re-implemented over etcd as the anchor (see
//! shared/reference/original-evio.md): open a session (a 60 s etcd lease, like Go's
//! `concurrency.NewSession`), take the global lock `/evpn/evio-lock/`, walk the candidate ranges
//! in order — skipping the first block, as the original did — with one put-if-absent
//! transaction per range until one succeeds, unlock, close the session.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use evio_node::etcd_gateway::{b64, int64, Compare, Gateway, Op};
use evio_raft::Pool;
use serde::Deserialize;
use serde_json::{json, Value};

pub const KEY_PREFIX: &str = "/evpn/";
const LOCK_NAME: &str = "/evpn/evio-lock/";
const SESSION_TTL_SECS: u64 = 60;

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
    client: Arc<Gateway>,
    candidates: Arc<Vec<String>>,
}

impl OriginalEvio {
    pub fn new(client: Gateway, pool: &Pool) -> Self {
        let candidates = range_keys(pool).into_iter().skip(1).collect();
        OriginalEvio {
            client: Arc::new(client),
            candidates: Arc::new(candidates),
        }
    }

    /// One config-gen run: reserves the first free range and returns its key.
    pub async fn acquire(&mut self) -> Result<String> {
        #[derive(Deserialize)]
        struct Granted {
            #[serde(rename = "ID", deserialize_with = "int64")]
            id: u64,
        }
        #[derive(Deserialize)]
        struct Locked {
            key: String,
        }
        let session: Granted = self
            .client
            .call("/v3/lease/grant", &json!({ "TTL": SESSION_TTL_SECS }))
            .await
            .context("session lease")?;
        let lock: Locked = self
            .client
            .call(
                "/v3/lock/lock",
                &json!({ "name": b64(LOCK_NAME.as_bytes()), "lease": session.id.to_string() }),
            )
            .await
            .context("lock /evpn/evio-lock/")?;
        let mut selected = None;
        for key in self.candidates.iter() {
            let absent = [Compare::VersionEquals(key.clone(), 0)];
            let put = [Op::Put(key.clone(), "ok".into())];
            if self
                .client
                .txn(&absent, &put, &[])
                .await
                .context("put-if-absent")?
            {
                selected = Some(key.clone());
                break;
            }
        }
        let _: Value = self
            .client
            .call("/v3/lock/unlock", &json!({ "key": lock.key }))
            .await
            .context("unlock /evpn/evio-lock/")?;
        let _: Value = self
            .client
            .call("/v3/lease/revoke", &json!({ "ID": session.id.to_string() }))
            .await
            .context("close the session")?;
        selected.ok_or_else(|| anyhow!("no free range left"))
    }

    /// Deletes every range key (between benchmark phases).
    pub async fn clear(&mut self) -> Result<()> {
        self.client
            .txn(&[], &[Op::DeletePrefix(KEY_PREFIX.into())], &[])
            .await
            .context("delete /evpn/")?;
        Ok(())
    }
}

/// Writes `keys` with value `ok` in transactions of 128 puts (etcd's default --max-txn-ops).
pub async fn put_all(client: &Gateway, keys: &[String]) -> Result<()> {
    for chunk in keys.chunks(128) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|k| Op::Put(k.clone(), "ok".into()))
            .collect();
        client.txn(&[], &ops, &[]).await.context("bulk put")?;
    }
    Ok(())
}
