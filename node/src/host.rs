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

/// The shortest cluster token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;

/// Reads a token file; whitespace around the secret is ignored. A file readable by group or
/// others, or a secret shorter than [`MIN_TOKEN_BYTES`], is refused saying how to fix it.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading the cluster token file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the cluster token file {} is readable by group or others (mode {:o}): chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the cluster token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("the cluster token file {} is empty", path.display());
    }
    if token.len() < MIN_TOKEN_BYTES {
        bail!(
            "the cluster token in {} is {} bytes, shorter than {MIN_TOKEN_BYTES}: make a new one with \
             (umask 077; head -c 32 /dev/urandom | base64 > {})",
            path.display(),
            token.len(),
            path.display()
        );
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_private(path: &Path, text: &str) {
        evio_raft::data_dir::write_atomic(path, text.as_bytes(), 0o600)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Token hygiene: empty, too short, or readable by others is refused saying how to fix it.
    #[test]
    fn bad_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let empty = dir.path().join("empty");
        write_private(&empty, "  \n");
        let err = read_token(&empty).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let short = dir.path().join("short");
        write_private(&short, "s3cret");
        let err = read_token(&short).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("head -c 32 /dev/urandom"), "{err}");
        let open = dir.path().join("open");
        std::fs::write(&open, "o".repeat(40)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = read_token(&open).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let token = dir.path().join("token");
        let secret = "s".repeat(MIN_TOKEN_BYTES);
        write_private(&token, &format!(" {secret}\n"));
        assert_eq!(read_token(&token).unwrap_or_else(|e| panic!("{e}")), secret);
    }
}
