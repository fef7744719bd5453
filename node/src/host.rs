//! What several commands read from this host: its node name, the cluster token file, and the
//! file in the data dir where a running `evio-node run` records its API address.

use std::path::Path;

use anyhow::{bail, Context};

/// The file `evio-node run` records its API address in, for config-gen to find it.
pub const API_ADDRESS_FILE: &str = "api-address";

/// This host's name, lowercased as Kubernetes registers node names.
pub fn hostname() -> anyhow::Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname from /proc/sys/kernel/hostname (pass --node-name)")?;
    Ok(raw.trim().to_ascii_lowercase())
}

/// `--node-name` when given, else the hostname; validated as a node name.
pub fn node_name(flag: Option<String>) -> anyhow::Result<String> {
    let name = match flag {
        Some(name) => name,
        None => hostname()?,
    };
    evio_raft::validate_node_name(&name).context("pass a valid --node-name")?;
    Ok(name)
}

/// Reads a token file; whitespace around the secret is ignored, an empty secret refused.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the cluster token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("the cluster token file {} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap_or_else(|e| panic!("{e}"));
        let err = read_token(&empty).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let token = dir.path().join("token");
        std::fs::write(&token, " s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_token(&token).unwrap_or_else(|e| panic!("{e}")),
            "s3cret"
        );
    }
}
