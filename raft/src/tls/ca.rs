//! The cluster CA: creating it, and issuing member certificates (at bootstrap, for a
//! joining node's request, at renewal).

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;

use super::identity::{ca_hash, certs_from_pem};
use super::{TlsError, CA_LIFETIME, NODE_URI_PREFIX};
use crate::types::NodeId;

/// The cluster CA: its certificate, and its key when this member may sign.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: Option<KeyPair>,
}

impl Authority {
    /// A new CA for a new cluster.
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("evio cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key: Some(key),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: Option<&str>) -> Result<Self, TlsError> {
        let cert_der = certs_from_pem(cert_pem, "CA certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoPem {
                what: "CA certificate".into(),
                kind: "certificate",
            })?;
        let key = key_pem.map(KeyPair::from_pem).transpose()?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA key in PEM, when this member holds it.
    pub fn key_pem(&self) -> Option<String> {
        self.key.as_ref().map(KeyPair::serialize_pem)
    }

    pub fn hash(&self) -> String {
        ca_hash(&self.cert_der)
    }

    /// A member certificate (PEM, followed by the CA's) for `public_key`, naming `node_id`
    /// and `name`, valid from an hour ago (clock skew) for `lifetime`.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        node_id: NodeId,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let key = self.key.as_ref().ok_or(TlsError::NoCaKey)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::URI(format!("{NODE_URI_PREFIX}{node_id}").try_into()?),
            SanType::DnsName(name.try_into()?),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + lifetime;
        let cert = params.signed_by(public_key, &issuer)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }

    /// Signs a joining node's certificate request. Only the request's public key is used
    /// (its signature proves the node holds the key); the names come from the join.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        node_id: NodeId,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.issue(&csr.public_key, node_id, name, lifetime)
    }
}

/// A certificate request for a new key: what a joining node sends with its join.
pub fn new_key_and_request(node_id: NodeId, name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(format!("{NODE_URI_PREFIX}{node_id}").try_into()?),
        SanType::DnsName(name.try_into()?),
    ];
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}
