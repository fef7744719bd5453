//! Keeps this node's Node object annotated with its pod subnet and evio's API address
//! (JSON merge patch on `/api/v1/nodes/NAME`). Re-applied whenever the local replica's lease
//! for this node changes, and every few minutes in case someone removed it; failures are
//! retried with backoff and never block the daemon.

use std::sync::Arc;
use std::time::Duration;

use evio_raft::Replica;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use tokio_util::sync::CancellationToken;

use crate::daemon::backoff::sleep_or_stop;

use super::{
    KubeError, KubeStatus, API_ADDRESS_ANNOTATION, POD_SUBNETS_ANNOTATION, POD_SUBNET_ANNOTATION,
    RETRY,
};

/// Re-applied this often even when nothing changed (annotations edited by hand come back).
const RESYNC: Duration = Duration::from_secs(300);

/// What the annotations should say now: the subnet (None: no lease, annotation removed), every
/// family's subnet (comma-separated, IPv4 first, as `Node.spec.podCIDRs` lists them) and the
/// API address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub pod_subnet: Option<String>,
    pub pod_subnets: Option<String>,
    pub api_address: String,
}

impl Desired {
    /// The merge patch: `null` removes the subnet annotation of a node without a lease.
    pub fn patch(&self) -> Value {
        json!({"metadata": {"annotations": {
            POD_SUBNET_ANNOTATION: self.pod_subnet,
            POD_SUBNETS_ANNOTATION: self.pod_subnets,
            API_ADDRESS_ANNOTATION: self.api_address,
        }}})
    }
}

fn desired(replica: &Replica, node_name: &str, api_address: &str) -> Desired {
    let lease = replica.local().read().table.get(node_name);
    let pod_subnet = lease.as_ref().map(|lease| lease.block.subnet.to_string());
    let pod_subnets = lease.map(|lease| {
        lease
            .subnets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    Desired {
        pod_subnet,
        pod_subnets,
        api_address: api_address.to_string(),
    }
}

async fn apply(client: &kube::Client, node_name: &str, want: &Desired) -> Result<(), KubeError> {
    Api::<Node>::all(client.clone())
        .patch(
            node_name,
            &PatchParams::default(),
            &Patch::Merge(want.patch()),
        )
        .await?;
    Ok(())
}

/// Runs until `stop` turns true (or Raft stops).
pub async fn run(
    client: kube::Client,
    replica: Arc<Replica>,
    node_name: String,
    api_address: String,
    status: KubeStatus,
    stop: CancellationToken,
) {
    let mut raft_metrics = replica.watch_applied();
    let mut applied: Option<Desired> = None;
    let mut backoff = RETRY;
    loop {
        let want = desired(&replica, &node_name, &api_address);
        if applied.as_ref() != Some(&want) {
            status.update(|s| s.annotated = false);
            match apply(&client, &node_name, &want).await {
                Ok(()) => {
                    tracing::info!(node = %node_name, pod_subnet = ?want.pod_subnet, api_address = %want.api_address, "annotated the Node");
                    status.update(|s| {
                        s.annotated = true;
                        s.annotated_subnet = want.pod_subnet.clone();
                        s.annotated_at =
                            Some(evio_api::types::rfc3339(std::time::SystemTime::now()));
                    });
                    applied = Some(want);
                    backoff.reset();
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(node = %node_name, error = %e, retry_in = ?delay, "cannot annotate the Node");
                    status.failed("annotating the Node", &e);
                    if sleep_or_stop(delay, &stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // Raft metrics change whenever something is applied: the lease may have changed.
        tokio::select! {
            changed = raft_metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => applied = None,
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_both_annotations_and_removes_a_lost_subnet() {
        let with = Desired {
            pod_subnet: Some("10.244.3.0/24".into()),
            pod_subnets: Some("10.244.3.0/24,fd00:10:244:3::/64".into()),
            api_address: "10.10.0.3:7700".into(),
        };
        assert_eq!(
            with.patch(),
            json!({"metadata": {"annotations": {
                "evio.io/pod-subnet": "10.244.3.0/24",
                "evio.io/pod-subnets": "10.244.3.0/24,fd00:10:244:3::/64",
                "evio.io/api-address": "10.10.0.3:7700"}}})
        );
        let without = Desired {
            pod_subnet: None,
            pod_subnets: None,
            ..with
        };
        let annotations = &without.patch()["metadata"]["annotations"];
        assert_eq!(annotations["evio.io/pod-subnet"], Value::Null);
        assert_eq!(annotations["evio.io/pod-subnets"], Value::Null);
    }
}
