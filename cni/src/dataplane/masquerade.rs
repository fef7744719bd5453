//! Masquerade for pods leaving the pod network: one nftables rule per node subnet (not a chain
//! per pod, so nothing leaks when a DEL comes after the netns is gone), following the lease:
//! each ADD lists the chain (over netlink, in-process: `nftables`) and changes it (with `nft`)
//! only when it is not as the lease says.
//! IPv4 rules live in table `ip evio`, IPv6 ones (optional, `isIPv6Masq`) in `ip6 evio`.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use super::nftables;

pub const TABLE: &str = "evio";
const CHAIN: &str = "postrouting";

#[derive(Debug, thiserror::Error)]
#[error("nftables: {0}")]
pub struct MasqueradeError(pub String);

/// `nft` on the async path: killed when `deadline` passes.
async fn nft_until(
    args: &[&str],
    stdin: Option<&str>,
    deadline: tokio::time::Instant,
) -> Result<String, MasqueradeError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| MasqueradeError(format!("running nft: {e}")))?;
    let stdin = stdin.map(str::to_string);
    let run = async move {
        if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| MasqueradeError(format!("writing to nft: {e}")))?;
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| MasqueradeError(format!("waiting for nft: {e}")))
    };
    let out = tokio::time::timeout_at(deadline, run).await.map_err(|_| {
        MasqueradeError("nft did not finish before the request's deadline".into())
    })??;
    if !out.status.success() {
        return Err(MasqueradeError(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nftables family (and match keyword) of `net`'s address family.
fn family(net: IpNetwork) -> &'static str {
    match net {
        IpNetwork::V4(_) => "ip",
        IpNetwork::V6(_) => "ip6",
    }
}

/// The comment that marks the rule of one node subnet.
fn marker(node_subnet: IpNetwork) -> String {
    format!("evio-masq {node_subnet}")
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, MasqueradeError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| MasqueradeError(format!("running nft: {e}")))?;
    if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| MasqueradeError(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| MasqueradeError(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(MasqueradeError(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Keeps the rules in line with the node's lease: a table, chain or rule removed from outside
/// is put back by the next ADD, and the rule of another subnet of the same pod CIDR — a lease
/// this node no longer holds — is removed.
#[derive(Default)]
pub struct Masquerade {
    /// Changes are made one at a time (two ADDs must not both add the missing rule).
    changing: tokio::sync::Mutex<()>,
}

/// evio's rules in the chain of `node_subnet`'s family: (subnet the marker names, handle).
/// `None` when the chain holds no rule (or there is no chain). Read over netlink; `nft` lists
/// it when that fails.
async fn marked(
    node_subnet: IpNetwork,
    deadline: tokio::time::Instant,
) -> Option<Vec<(IpNetwork, u64)>> {
    match nftables::list_chain(node_subnet.ip(), TABLE, CHAIN) {
        Ok(rules) if rules.is_empty() => None,
        Ok(rules) => Some(
            rules
                .iter()
                .filter_map(|r| Some((marked_subnet(r.comment.as_deref()?)?, r.handle)))
                .collect(),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "listing the masquerade chain with nft instead");
            let fam = family(node_subnet);
            let args = ["-a", "list", "chain", fam, TABLE, CHAIN];
            let listing = nft_until(&args, None, deadline).await.ok()?;
            Some(marked_rules(&listing))
        }
    }
}

impl Masquerade {
    /// Ensures traffic from `node_subnet` to anywhere outside `pod_cidr` is masqueraded, and
    /// no other subnet of `pod_cidr` is.
    pub async fn ensure(
        &self,
        node_subnet: IpNetwork,
        pod_cidr: IpNetwork,
        deadline: tokio::time::Instant,
    ) -> Result<(), MasqueradeError> {
        let listing = marked(node_subnet, deadline).await;
        if changes(listing.as_deref(), node_subnet, pod_cidr).is_empty() {
            return Ok(());
        }
        let _changing = self.changing.lock().await;
        // Another evio process removing its last rule may drop the table between our steps
        // (`remove`); the whole sequence is idempotent, so run it again.
        let mut attempt = 0;
        loop {
            let listing = marked(node_subnet, deadline).await;
            let script = changes(listing.as_deref(), node_subnet, pod_cidr);
            if script.is_empty() {
                return Ok(());
            }
            match nft_until(&["-f", "-"], Some(&script), deadline).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 2 => return Err(e),
                Err(_) => attempt += 1,
            }
        }
    }
}

/// The subnet a rule's comment names, if it is evio's marker.
fn marked_subnet(comment: &str) -> Option<IpNetwork> {
    comment.strip_prefix("evio-masq ")?.parse().ok()
}

/// The subnet each marked rule names, and its handle, from `nft -a list` output.
fn marked_rules(listing: &str) -> Vec<(IpNetwork, u64)> {
    let rules = listing.lines().filter_map(|line| {
        let comment = line.split("comment \"").nth(1)?.split('"').next()?;
        let handle = line.rsplit("# handle ").next()?.trim().parse().ok()?;
        Some((marked_subnet(comment)?, handle))
    });
    rules.collect()
}

/// The nft script that brings the chain in line (empty when it is): table and chain when
/// missing (`listing` None), the rule of `node_subnet` when missing, deletions of the rules of
/// the pod CIDR's other subnets.
fn changes(
    listing: Option<&[(IpNetwork, u64)]>,
    node_subnet: IpNetwork,
    pod_cidr: IpNetwork,
) -> String {
    let fam = family(node_subnet);
    let mut script = String::new();
    let Some(listing) = listing else {
        script.push_str(&format!(
            "add table {fam} {TABLE}\nadd chain {fam} {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
        ));
        script.push_str(&add_rule(node_subnet, pod_cidr));
        return script;
    };
    let mut present = false;
    for &(subnet, handle) in listing {
        if subnet == node_subnet {
            present = true;
        } else if subnet.prefix() >= pod_cidr.prefix() && pod_cidr.contains(subnet.network()) {
            tracing::info!(%subnet, current = %node_subnet, "masquerade: removing the rule of a subnet this node no longer holds");
            script.push_str(&format!(
                "delete rule {fam} {TABLE} {CHAIN} handle {handle}\n"
            ));
        }
    }
    if !present {
        script.push_str(&add_rule(node_subnet, pod_cidr));
    }
    script
}

fn add_rule(node_subnet: IpNetwork, pod_cidr: IpNetwork) -> String {
    let fam = family(node_subnet);
    format!(
        "add rule {fam} {TABLE} {CHAIN} {fam} saddr {node_subnet} {fam} daddr != {pod_cidr} masquerade comment \"{}\"\n",
        marker(node_subnet)
    )
}

/// Removes the rule of `node_subnet` (e.g. when its lease is released), and evio's table once
/// it holds no rule. Absent is fine.
pub fn remove(node_subnet: impl Into<IpNetwork>) -> Result<(), MasqueradeError> {
    let node_subnet = node_subnet.into();
    let fam = family(node_subnet);
    let Ok(listing) = nft(&["-a", "list", "chain", fam, TABLE, CHAIN], None) else {
        return Ok(()); // no table, no rule
    };
    for (subnet, handle) in marked_rules(&listing) {
        if subnet == node_subnet {
            let handle = handle.to_string();
            nft(
                &["delete", "rule", fam, TABLE, CHAIN, "handle", &handle],
                None,
            )?;
        }
    }
    let rest = nft(&["list", "chain", fam, TABLE, CHAIN], None)?;
    if !rest.contains("masquerade") {
        nft(&["delete", "table", fam, TABLE], None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn brings_the_chain_in_line_with_the_lease() {
        let (current, cidr) = (net("10.5.4.0/24"), net("10.5.0.0/16"));
        let listing = "table ip evio {\n\tchain postrouting { # handle 1\n\
            \t\tip saddr 10.5.3.0/24 ip daddr != 10.5.0.0/16 masquerade comment \"evio-masq 10.5.3.0/24\" # handle 7\n\
            \t\tip saddr 10.9.3.0/24 ip daddr != 10.9.0.0/16 masquerade comment \"evio-masq 10.9.3.0/24\" # handle 8\n\t}\n}\n";
        assert_eq!(
            marked_rules(listing),
            [(net("10.5.3.0/24"), 7), (net("10.9.3.0/24"), 8)]
        );
        let script = changes(Some(&marked_rules(listing)), current, cidr);
        assert!(
            script.contains("delete rule ip evio postrouting handle 7"),
            "{script}"
        );
        assert!(
            !script.contains("handle 8"),
            "another pod CIDR's rule: {script}"
        );
        assert!(script.contains("ip saddr 10.5.4.0/24"), "{script}");
        let settled = listing.replace("10.5.3.0/24", "10.5.4.0/24");
        assert_eq!(changes(Some(&marked_rules(&settled)), current, cidr), "");
        assert!(changes(None, current, cidr).starts_with("add table ip evio"));
    }

    #[test]
    fn ipv6_rules_go_to_the_ip6_table() {
        let (current, cidr) = (net("fd00:5:0:4::/64"), net("fd00:5::/56"));
        let script = changes(None, current, cidr);
        assert!(script.starts_with("add table ip6 evio"), "{script}");
        assert!(
            script.contains("ip6 saddr fd00:5:0:4::/64 ip6 daddr != fd00:5::/56 masquerade"),
            "{script}"
        );
        let listing = "table ip6 evio {\n\tchain postrouting { # handle 1\n\
            \t\tip6 saddr fd00:5:0:3::/64 ip6 daddr != fd00:5::/56 masquerade comment \"evio-masq fd00:5:0:3::/64\" # handle 4\n\t}\n}\n";
        let script = changes(Some(&marked_rules(listing)), current, cidr);
        assert!(
            script.contains("delete rule ip6 evio postrouting handle 4"),
            "{script}"
        );
    }
}
