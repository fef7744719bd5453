//! Which node names a lease may have.

/// Why a node name is not acceptable as a lease key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name {name:?}: {reason} (a Kubernetes node name is a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters, each label starting and ending with a letter or digit)")]
pub struct NodeNameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks that `name` is a DNS-1123 subdomain, as Kubernetes requires of node names.
pub fn validate_node_name(name: &str) -> Result<(), NodeNameError> {
    let fail = |reason| {
        Err(NodeNameError {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > 253 {
        return fail("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return fail("empty label");
        }
        if label.len() > 63 {
            return fail("label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("only lowercase letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label starts or ends with '-'");
        }
    }
    Ok(())
}
