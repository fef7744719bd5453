//! Joining a cluster: ask the listed (or annotated) peers to admit this node, then wait for
//! the membership to arrive.

use std::time::Duration;

use anyhow::bail;
use evio_api::ClientError;
use evio_raft::{JoinRequest, JoinResponse, Replica};

use super::settings::Settings;
use crate::daemon::backoff::Backoff;

/// Retrying the peers: 250 ms doubling to 10 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));

/// Asks the listed peers, in turn and with backoff, to admit this node; returns once it is a
/// member. Refusals that retrying cannot fix (wrong pool, name in use, bad token) end it.
pub(super) async fn join(
    replica: &Replica,
    settings: &Settings,
    kube_client: Option<&kube::Client>,
) -> anyhow::Result<()> {
    let request = JoinRequest {
        node_id: replica.node_id(),
        name: settings.node_name.clone(),
        addr: replica.node().addr.clone(),
        pod_cidr: settings.pool.pod_cidr_list(),
        node_bits: settings.pool.node_bits(),
    };
    let mut backoff = RETRY;
    loop {
        let retry_in = backoff.next_delay();
        let peers = if settings.join_from_kubernetes {
            crate::kube::peers::join_candidates(&settings.join, kube_client, &settings.node_name)
                .await
        } else {
            settings.join.clone()
        };
        if peers.is_empty() {
            tracing::warn!(retry_in = ?retry_in, "join: no member to try yet (no --join given and no other Node carries an evio.io/api-address annotation)");
        }
        for peer in &peers {
            let tls = replica.peers().tls().map(|t| t.as_ref());
            if let (Some(tls), crate::tls::TlsMode::Managed { join_trust, .. }) =
                (tls, &settings.tls)
            {
                if !tls.has_files() {
                    // With the Kubernetes record, the CA the bootstrap member recorded there.
                    let from_record = settings.kubernetes || settings.join_from_kubernetes;
                    let recorded = match (join_trust, kube_client) {
                        (None, Some(client)) if from_record => {
                            crate::kube::bootstrap::recorded_ca(client, &settings.kube_namespace)
                                .await
                                .map(crate::tls::JoinTrust::CaPem)
                        }
                        _ => None,
                    };
                    if join_trust.is_none() && from_record && recorded.is_none() {
                        tracing::warn!(retry_in = ?retry_in, "join: the cluster CA is not in the cluster record yet");
                        break;
                    }
                    let exchange = crate::tls::obtain_certificate(
                        tls,
                        join_trust.as_ref().or(recorded.as_ref()),
                        peer,
                        &settings.token,
                        replica.node_id(),
                        &settings.node_name,
                    )
                    .await;
                    match exchange {
                        Ok(()) => {}
                        Err(crate::tls::ExchangeError::Fatal(e)) => return Err(e),
                        Err(crate::tls::ExchangeError::Retry(e)) => {
                            tracing::warn!(peer, error = %format!("{e:#}"), retry_in = ?retry_in, "join: cannot join through this peer yet");
                            continue;
                        }
                    }
                }
            }
            let client = crate::tls::member_client(peer, tls, Some(&settings.token))?;
            match client.join(&request).await {
                Ok(JoinResponse {
                    cluster_id,
                    leader_id,
                }) => {
                    if let Some(ours) = replica.cluster_id() {
                        if ours != cluster_id {
                            bail!("data dir {} belongs to cluster {ours}, but {peer} is in cluster {cluster_id}; use an empty data dir to join it", settings.data_dir.display());
                        }
                    } else {
                        replica.set_cluster_id(&cluster_id)?;
                    }
                    tracing::info!(peer, cluster = %cluster_id, leader_id, "admitted; waiting for the membership to arrive");
                    wait_for_membership(replica).await?;
                    return Ok(());
                }
                Err(
                    e @ ClientError::Api {
                        status: 401 | 403 | 409,
                        ..
                    },
                ) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("joining through {peer} was refused")));
                }
                Err(e) => {
                    tracing::warn!(peer, error = %e, retry_in = ?retry_in, "join: cannot join through this peer yet")
                }
            }
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// A joining member gives up only when it has made no progress for this long.
const JOIN_STALL: Duration = Duration::from_secs(60);

/// Waits until the membership that admits this node reaches it, for as long as the leader
/// makes progress with it: snapshot bytes arriving (a big table comes in chunks before it is
/// installed at once), the applied or log index moving. A fixed limit failed joins of big
/// tables that were progressing fine.
async fn wait_for_membership(replica: &Replica) -> anyhow::Result<()> {
    let mut metrics = replica.watch_metrics();
    let progress = |m: &evio_raft::types::RaftMetrics| {
        (
            replica.snapshot_bytes_received(),
            m.last_applied.map(|id| id.index),
            m.last_log_index,
        )
    };
    let mut last = progress(&metrics.borrow());
    let mut last_change = tokio::time::Instant::now();
    let mut last_report = last_change;
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.membership_config.membership().get_node(&m.id).is_some() {
                return Ok(());
            }
            let now = progress(&m);
            if now != last {
                last = now;
                last_change = tokio::time::Instant::now();
            } else if last_change.elapsed() > JOIN_STALL {
                bail!(
                    "admitted, but the membership did not reach this node: no progress for {} s (snapshot bytes received {}, applied index {:?})",
                    JOIN_STALL.as_secs(),
                    last.0,
                    last.1
                );
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = tokio::time::Instant::now();
                tracing::info!(
                    snapshot_bytes = last.0,
                    applied = ?last.1,
                    "joining: catching up with the cluster"
                );
            }
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    bail!("admitted, but Raft stopped before the membership reached this node");
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
