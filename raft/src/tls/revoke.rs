//! Revocation: the node ids of members removed from the cluster (replicated in the Raft
//! state machine) and the client-certificate verifier that refuses them, so a removed
//! member's certificate opens nothing anywhere — Raft RPC, writes, joins — from then on.
//!
//! Revoked by node id, not by serial: a managed member holds the CA key and could renew its
//! own certificate, but never under an id the cluster has revoked. A node back with a wiped
//! data dir is a new id and joins as usual.

use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName};

use super::identity::peer_identity;
use crate::types::NodeId;

type Check = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

/// Which node ids are revoked: a handle the replica fills with a look-up into its applied
/// state; none are until then.
#[derive(Clone, Default)]
pub struct Revocations(Arc<RwLock<Option<Check>>>);

impl Revocations {
    /// Answers from `check` from now on.
    pub fn set(&self, check: impl Fn(NodeId) -> bool + Send + Sync + 'static) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(check));
    }

    pub fn is_revoked(&self, id: NodeId) -> bool {
        let check = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        check.is_some_and(|check| check(id))
    }
}

/// The member's client-certificate verifier (chain to the CA, certificate optional) plus
/// the revoked set.
#[derive(Debug)]
pub(super) struct RevokingVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) revocations: Revocations,
    /// The inner verifier's: its signature checks are rustls's with these algorithms.
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revocations")
    }
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(identity) = peer_identity(end_entity) {
            if self.revocations.is_revoked(identity.node_id) {
                tracing::warn!(
                    node_id = identity.node_id,
                    name = identity.name.as_deref().unwrap_or(""),
                    "refused the certificate of node {}: revoked (the member was removed from the cluster)",
                    identity.node_id
                );
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(verified)
    }

    signature_checks!();
}
