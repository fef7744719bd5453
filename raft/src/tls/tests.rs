//! Unit tests of the PKI: issuing, hashes, bad input, renewal.

use std::time::{Duration, SystemTime};

use super::*;
use crate::types::NodeId;

fn member(authority: &Authority, id: NodeId, name: &str) -> Credentials {
    let (key, csr) = new_key_and_request(id, name).unwrap_or_else(|e| panic!("{e}"));
    let cert = authority
        .sign_request(&csr, id, name, Duration::from_secs(3600))
        .unwrap_or_else(|e| panic!("{e}"));
    Credentials::from_pem(authority.cert_pem(), &cert, &key).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn issued_certificates_name_the_node_and_chain_to_the_ca() {
    let ca = Authority::generate("c1").unwrap_or_else(|e| panic!("{e}"));
    let creds = member(&ca, 42, "edge-1");
    assert_eq!(
        creds.identity,
        PeerIdentity {
            node_id: 42,
            name: Some("edge-1".into())
        }
    );
    assert_eq!(creds.chain.len(), 2, "leaf and CA");
    assert_eq!(ca_hash(&creds.chain[1]), ca.hash());
    assert!(creds.server_config(&Revocations::default()).is_ok());
    assert!(creds.client_config().is_ok());
    let left = creds
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(left > Duration::from_secs(3000) && left <= Duration::from_secs(3600));
}

#[test]
fn ca_hashes_are_validated() {
    let ca = Authority::generate("c1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        parse_ca_hash(&ca.hash().to_uppercase().replace("SHA256", "sha256")).ok(),
        Some(ca.hash())
    );
    for bad in ["", "sha256:", "md5:abcd", "sha256:zz", &ca.hash()[..40]] {
        assert!(parse_ca_hash(bad).is_err(), "{bad}");
    }
}

#[test]
fn garbage_requests_and_keys_are_refused() {
    let ca = Authority::generate("c1").unwrap_or_else(|e| panic!("{e}"));
    assert!(ca
        .sign_request("not a csr", 1, "n", Duration::from_secs(60))
        .is_err());
    let without_key = Authority::from_pem(ca.cert_pem(), None).unwrap_or_else(|e| panic!("{e}"));
    let (_, csr) = new_key_and_request(1, "n").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        without_key.sign_request(&csr, 1, "n", Duration::from_secs(60)),
        Err(TlsError::NoCaKey)
    ));
    assert!(Credentials::from_pem(ca.cert_pem(), "junk", "junk").is_err());
}

#[test]
fn managed_renewal_swaps_in_a_new_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let context = TlsContext::new(Source::Managed {
        dir: dir.path().join(TLS_DIR),
        lifetime: Duration::from_secs(3),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(context.http(), Err(TlsError::NotReady)));
    context
        .create_authority("c1", 7, "edge-7")
        .unwrap_or_else(|e| panic!("{e}"));
    let first = context.credentials().unwrap_or_else(|e| panic!("{e}"));
    assert!(!context.renew_if_due().unwrap_or_else(|e| panic!("{e}")));
    std::thread::sleep(Duration::from_millis(2100));
    assert!(context.renew_if_due().unwrap_or_else(|e| panic!("{e}")));
    let second = context.credentials().unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(first.chain[0], second.chain[0]);
    assert_eq!(second.identity.node_id, 7);
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    for file in [CA_KEY_FILE, NODE_KEY_FILE] {
        let mode = std::fs::metadata(dir.path().join(TLS_DIR).join(file))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600, "{file}");
    }
}
