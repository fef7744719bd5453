//! `evio-node import-etcd`: ranges the original Evio tool wrote under `/evpn/` become
//! reserved leases (owner `legacy:<rangeStart>-<rangeEnd>`), so evio never hands them to
//! another node. An operator then gives each to its node with `evio-node leases claim`.
//!
//! Re-running is idempotent (a range already reserved for the same owner is reported as
//! such). A key that is not a range, a range outside the pool or off its block layout, and a
//! range leased to someone else are reported and not imported; the command then exits
//! non-zero after importing everything else.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use evio_api::{Client, ClientError, ErrorCode, LeaseJson};
use evio_node::etcd_gateway::{Gateway, RangeShape};
use evio_raft::legacy::{OriginalRange, ORIGINAL_PREFIX};
use evio_raft::Pool;

use crate::cli::MemberArgs;
use crate::etcd::{original_range, EtcdArgs, LEASES_PREFIX};

#[derive(clap::Args)]
pub struct ImportEtcdArgs {
    /// etcd endpoints (http://HOST:PORT or https://..., comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The key prefix the original tool wrote under.
    #[arg(long, default_value = ORIGINAL_PREFIX)]
    prefix: String,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    member: MemberArgs,
}

/// What happened to one key.
enum Outcome {
    Imported(String),
    AlreadyImported(String),
    Ignored(String),
    Skipped(String),
}

pub async fn run(args: ImportEtcdArgs) -> anyhow::Result<()> {
    let settings = args.etcd.settings(args.endpoints.clone())?;
    let api = args.member.client()?;
    let cluster = api.cluster().await.context("reading the evio pool")?;
    let pool = Pool::new(cluster.pod_cidr, cluster.node_bits)?;

    let etcd = settings.connect().await?;
    let response = etcd
        .range_prefix(&args.prefix, RangeShape::KeysOnly)
        .await?;
    let mirrored = mirrored_keys(&etcd, &args.prefix).await?;
    let mut outcomes = Vec::new();
    for kv in &response.kvs {
        let key = kv.key_str();
        if key.starts_with(&format!("{}evio-lock/", args.prefix)) {
            // The original tool's global lock, not a range.
            outcomes.push(Outcome::Ignored(format!("{key}: the original tool's lock")));
            continue;
        }
        if let Some(owner) = mirrored.get(&key) {
            // evio's own mirror wrote it: the block is already a lease.
            outcomes.push(Outcome::AlreadyImported(format!(
                "{key}: mirrored by evio for {owner}"
            )));
            continue;
        }
        outcomes.push(import_one(&api, &pool, &key, &args.prefix).await?);
    }
    let mut skipped = 0;
    for outcome in &outcomes {
        match outcome {
            Outcome::Imported(line) => println!("imported  {line}"),
            Outcome::AlreadyImported(line) => println!("present   {line}"),
            Outcome::Ignored(line) => println!("ignored   {line}"),
            Outcome::Skipped(line) => {
                skipped += 1;
                println!("SKIPPED   {line}");
            }
        }
    }
    if skipped > 0 {
        bail!(
            "{skipped} of {} keys under {} were not imported (see above)",
            outcomes.len(),
            args.prefix
        );
    }
    Ok(())
}

/// The original-layout keys evio's mirror wrote (under `prefix`), each with its lease owner.
async fn mirrored_keys(etcd: &Gateway, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let own = etcd
        .range_prefix(LEASES_PREFIX, RangeShape::KeysAndValues)
        .await?;
    Ok(own
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<LeaseJson>(&kv.value).ok())
        .filter_map(|lease| Some((original_range(&lease)?.key(prefix), lease.node)))
        .collect())
}

async fn import_one(api: &Client, pool: &Pool, key: &str, prefix: &str) -> anyhow::Result<Outcome> {
    let range = match OriginalRange::parse_key(key, prefix) {
        Ok(range) => range,
        Err(e) => return Ok(Outcome::Skipped(e.to_string())),
    };
    let block = match range.block_in(pool) {
        Ok(index) => pool.block(index),
        Err(e) => return Ok(Outcome::Skipped(format!("{key}: {e}"))),
    };
    let Some(block) = block else {
        return Ok(Outcome::Skipped(format!("{key}: outside the pool {pool}")));
    };
    let owner = range.owner();
    match api.reserve(&owner, block.subnet).await {
        Ok((_, true)) => Ok(Outcome::Imported(format!(
            "{key} -> {} as {owner}",
            block.subnet
        ))),
        Ok((_, false)) => Ok(Outcome::AlreadyImported(format!(
            "{key} -> {} as {owner}",
            block.subnet
        ))),
        Err(
            e @ ClientError::Api {
                code:
                    ErrorCode::OutsidePool
                    | ErrorCode::InvalidNodeName
                    | ErrorCode::NotFound
                    | ErrorCode::BlockTaken
                    | ErrorCode::HoldsOtherLease,
                ..
            },
        ) => {
            // Conflicts (taken by another owner, outside the pool) are per key: report them.
            Ok(Outcome::Skipped(format!("{key}: {e}")))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reserving {key}"))),
    }
}
