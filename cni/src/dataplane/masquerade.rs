//! Masquerade for pods leaving the pod network: one nftables rule per node subnet, installed
//! once (not a chain per pod, so nothing leaks when a DEL comes after the netns is gone).
//! `nft` runs only when a subnet's rule is missing, never per pod once it exists.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;

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

/// The comment that marks the rule of one node subnet.
fn marker(node_subnet: Ipv4Network) -> String {
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

/// Remembers which subnets already have their rule, so the pod path skips `nft`.
#[derive(Default)]
pub struct Masquerade {
    installed: tokio::sync::Mutex<HashSet<Ipv4Network>>,
}

impl Masquerade {
    /// Ensures traffic from `node_subnet` to anywhere outside `pod_cidr` is masqueraded.
    pub async fn ensure(
        &self,
        node_subnet: Ipv4Network,
        pod_cidr: Ipv4Network,
        deadline: tokio::time::Instant,
    ) -> Result<(), MasqueradeError> {
        let mut installed = self.installed.lock().await;
        if installed.contains(&node_subnet) {
            return Ok(());
        }
        // Another evio process removing its last rule may drop the table between our steps
        // (`remove`); the whole sequence is idempotent, so run it again.
        let mut attempt = 0;
        while let Err(e) = install(node_subnet, pod_cidr, deadline).await {
            attempt += 1;
            if attempt == 3 {
                return Err(e);
            }
        }
        installed.insert(node_subnet);
        Ok(())
    }
}

/// Table, chain and (unless present) the rule of `node_subnet`.
async fn install(
    node_subnet: Ipv4Network,
    pod_cidr: Ipv4Network,
    deadline: tokio::time::Instant,
) -> Result<(), MasqueradeError> {
    // `add table/chain` are no-ops when they exist; the rule is added only if missing.
    nft_until(
        &["-f", "-"],
        Some(&format!(
            "add table ip {TABLE}\nadd chain ip {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
        )),
        deadline,
    )
    .await?;
    let listing = nft_until(&["list", "chain", "ip", TABLE, CHAIN], None, deadline).await?;
    if !listing.contains(&format!("\"{}\"", marker(node_subnet))) {
        nft_until(
            &["-f", "-"],
            Some(&format!(
                "add rule ip {TABLE} {CHAIN} ip saddr {node_subnet} ip daddr != {pod_cidr} masquerade comment \"{}\"\n",
                marker(node_subnet)
            )),
            deadline,
        )
        .await?;
    }
    Ok(())
}

/// Removes the rule of `node_subnet` (e.g. when its lease is released), and evio's table once
/// it holds no rule. Absent is fine.
pub fn remove(node_subnet: Ipv4Network) -> Result<(), MasqueradeError> {
    let Ok(listing) = nft(&["-a", "list", "chain", "ip", TABLE, CHAIN], None) else {
        return Ok(()); // no table, no rule
    };
    let wanted = format!("\"{}\"", marker(node_subnet));
    for line in listing.lines().filter(|l| l.contains(&wanted)) {
        if let Some(handle) = line
            .rsplit("# handle ")
            .next()
            .map(str::trim)
            .filter(|h| h.parse::<u64>().is_ok())
        {
            nft(
                &["delete", "rule", "ip", TABLE, CHAIN, "handle", handle],
                None,
            )?;
        }
    }
    let rest = nft(&["list", "chain", "ip", TABLE, CHAIN], None)?;
    if !rest.contains("masquerade") {
        nft(&["delete", "table", "ip", TABLE], None)?;
    }
    Ok(())
}
