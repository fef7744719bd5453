//! `evio-node run --cni-conf-dir`: this node's CNI conflist kept in step with its lease for as
//! long as the daemon runs (`config-gen` writes it once, before).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use evio_cni::NetConf;
use evio_raft::Replica;
use tokio_util::sync::CancellationToken;

use crate::daemon::backoff::{sleep_or_stop, Backoff};

/// Retrying the lease through the API: 250 ms doubling to 10 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));

/// Keeps `<dir>/10-evio.conflist` in step with this node's lease while `evio-node run` is
/// up (`--cni-conf-dir`): gets the lease through the API once the node is a member, then
/// rewrites the file whenever the local replica's lease for the node changes (a claim, or a
/// re-acquire after an operator released it).
pub async fn keep_current(
    replica: Arc<Replica>,
    advertise: String,
    token: String,
    dir: PathBuf,
    conf: NetConf,
    stop: CancellationToken,
) {
    let mut metrics = replica.watch_applied();
    let node = replica.node().name.clone();
    let mut written: Option<u32> = None;
    let mut backoff = RETRY;
    loop {
        let local = replica.local().read().table.get(&node);
        match local {
            Some(lease) if written != Some(lease.record.block) => {
                match evio_cni::write_conflist(&dir, &conf, &lease) {
                    Ok(rewritten) => {
                        tracing::info!(subnet = %lease.block.subnet, rewritten, dir = %dir.display(), "conflist current");
                        written = Some(lease.record.block);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot write the conflist"),
                }
            }
            Some(_) => {}
            None if replica.is_ready() => {
                let tls = replica.peers().tls().map(|t| t.as_ref());
                let acquired = match crate::tls::member_client(&advertise, tls, Some(&token)) {
                    Ok(client) => client
                        .acquire(&node, None)
                        .await
                        .map(|_| ())
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match acquired {
                    // The write reaches this replica shortly; the loop rewrites then.
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot get this node's lease yet");
                        if sleep_or_stop(delay, &stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            None => {}
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
