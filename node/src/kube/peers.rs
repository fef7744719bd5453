//! `--join-from-kubernetes`: the members to join through are the `evio.io/api-address`
//! annotations of the other Nodes.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use super::{KubeError, API_ADDRESS_ANNOTATION};

/// The API addresses annotated on every Node but `self_name`, sorted and deduplicated.
pub async fn annotated_peers(
    client: &kube::Client,
    self_name: &str,
) -> Result<Vec<String>, KubeError> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(peer_addresses(&nodes.items, self_name))
}

fn peer_addresses(nodes: &[Node], self_name: &str) -> Vec<String> {
    let mut peers: Vec<String> = nodes
        .iter()
        .filter(|node| node.metadata.name.as_deref() != Some(self_name))
        .filter_map(|node| {
            node.metadata
                .annotations
                .as_ref()?
                .get(API_ADDRESS_ANNOTATION)
        })
        .map(|addr| addr.trim().to_string())
        .filter(|addr| {
            // Only IP:port: a bad or hostile annotation is skipped (never dialled, never
            // aborts the join); the token only goes where the CA check passes anyway.
            let valid = addr.parse::<std::net::SocketAddr>().is_ok();
            if !valid {
                tracing::warn!(addr = %addr, "join: skipping an {API_ADDRESS_ANNOTATION} annotation that is not IP:port");
            }
            valid
        })
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// `explicit` (from --join) followed by the annotated peers not already in it. A failed
/// listing is logged and leaves the explicit list: the join loop retries anyway.
pub async fn join_candidates(
    explicit: &[String],
    client: Option<&kube::Client>,
    self_name: &str,
) -> Vec<String> {
    let mut candidates = explicit.to_vec();
    if let Some(client) = client {
        match annotated_peers(client, self_name).await {
            Ok(found) => {
                for addr in found {
                    if !candidates.contains(&addr) {
                        candidates.push(addr);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "join: cannot list Nodes for peers"),
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str, addr: Option<&str>) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.annotations =
            addr.map(|a| BTreeMap::from([(API_ADDRESS_ANNOTATION.to_string(), a.to_string())]));
        node
    }

    #[test]
    fn peers_skip_self_and_unannotated_nodes() {
        let nodes = [
            node("a", Some("10.0.0.1:7700")),
            node("me", Some("10.0.0.9:7700")),
            node("b", None),
            node("c", Some(" 10.0.0.3:7700 ")),
            node("d", Some("10.0.0.1:7700")),
            node("e", Some("")),
            // Not IP:port: skipped, never dialled.
            node("f", Some("evil.example:7700")),
            node("g", Some("10.0.0.7")),
            node("h", Some("10.0.0.8:99999")),
        ];
        assert_eq!(
            peer_addresses(&nodes, "me"),
            vec!["10.0.0.1:7700".to_string(), "10.0.0.3:7700".to_string()]
        );
    }
}
