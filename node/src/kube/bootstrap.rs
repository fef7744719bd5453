//! Who creates the cluster, with `--kubernetes`: exactly one node per install. The first node
//! to create the ConfigMap `evio-cluster` (a create-if-absent: the API server answers 409
//! AlreadyExists to everyone else) bootstraps; every other node joins, and so does any node
//! whose data dir was wiped since (its node id is new, the record names the old one). A
//! bootstrapper that stopped between creating the record and bootstrapping finds its own node
//! id there on restart and bootstraps then. After bootstrapping it adds the cluster id.
//!
//! Nothing is decided without the API server's answer: errors are retried with backoff.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{KubeError, RETRY};

/// The record of this install's cluster (in the DaemonSet's namespace).
pub const RECORD: &str = "evio-cluster";
const NODE_KEY: &str = "bootstrap-node";
const NODE_ID_KEY: &str = "bootstrap-node-id";
const CLUSTER_ID_KEY: &str = "cluster-id";

/// What the record says this node does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This node (this data dir's node id) creates the cluster.
    Bootstrap,
    /// Another node (or this node before a wipe) created it: join.
    Join { bootstrapper: String },
}

fn role_of(record: &ConfigMap, node_id: u64) -> Role {
    let data = record.data.clone().unwrap_or_default();
    if data.get(NODE_ID_KEY).map(String::as_str) == Some(node_id.to_string().as_str()) {
        Role::Bootstrap
    } else {
        let node = data.get(NODE_KEY).cloned().unwrap_or_default();
        let id = data.get(NODE_ID_KEY).cloned().unwrap_or_default();
        Role::Join {
            bootstrapper: format!("{node} (node id {id})"),
        }
    }
}

async fn try_claim(api: &Api<ConfigMap>, node_name: &str, node_id: u64) -> Result<Role, KubeError> {
    // Create first, read on conflict: the API server's create is the one atomic decision.
    let mut record = ConfigMap::default();
    record.metadata.name = Some(RECORD.into());
    record.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        "evio".to_string(),
    )]));
    record.data = Some(BTreeMap::from([
        (NODE_KEY.to_string(), node_name.to_string()),
        (NODE_ID_KEY.to_string(), node_id.to_string()),
    ]));
    match api.create(&PostParams::default(), &record).await {
        Ok(_) => Ok(Role::Bootstrap),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Another node (or this one before a restart) created it: read what it says.
            let record = api.get(RECORD).await?;
            Ok(role_of(&record, node_id))
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads (or creates) the record and says whether this node bootstraps. Retries until the
/// API server answers.
pub async fn claim(client: &kube::Client, namespace: &str, node_name: &str, node_id: u64) -> Role {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut backoff = RETRY;
    loop {
        match try_claim(&api, node_name, node_id).await {
            Ok(role) => {
                tracing::info!(?role, record = %format!("{namespace}/{RECORD}"), "cluster record");
                return role;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, record = %format!("{namespace}/{RECORD}"), "cannot read or create the cluster record yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Adds the new cluster's id to the record (informational: joiners learn it from the
/// members). A failure is logged, never fatal.
pub async fn record_cluster_id(client: &kube::Client, namespace: &str, cluster_id: &str) {
    record(client, namespace, CLUSTER_ID_KEY, cluster_id).await;
}

/// Key of the cluster record holding the cluster CA certificate (PEM; public): what nodes
/// joining with `--join-from-kubernetes` trust, the Kubernetes API vouching for it.
pub const CA_KEY: &str = "ca.crt";

pub async fn record_ca(client: &kube::Client, namespace: &str, ca_pem: &str) {
    record(client, namespace, CA_KEY, ca_pem).await;
}

async fn record(client: &kube::Client, namespace: &str, key: &str, value: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "data": { key: value } });
    if let Err(e) = api
        .patch(RECORD, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, "cannot record {key} in {namespace}/{RECORD}");
    }
}

/// The cluster CA recorded by the bootstrap member, once it is there.
pub async fn recorded_ca(client: &kube::Client, namespace: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(RECORD).await {
        Ok(record) => record?.data?.get(CA_KEY).cloned(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read {namespace}/{RECORD} for the cluster CA");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recorded_node_id_bootstraps() {
        let record = ConfigMap {
            data: Some(BTreeMap::from([
                (NODE_KEY.to_string(), "edge-1".to_string()),
                (NODE_ID_KEY.to_string(), "42".to_string()),
            ])),
            ..Default::default()
        };
        assert_eq!(role_of(&record, 42), Role::Bootstrap);
        assert_eq!(
            role_of(&record, 43),
            Role::Join {
                bootstrapper: "edge-1 (node id 42)".into()
            }
        );
        assert!(matches!(
            role_of(&ConfigMap::default(), 42),
            Role::Join { .. }
        ));
    }
}
