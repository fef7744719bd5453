//! etcd's v3 API through its JSON gateway (grpc-gateway, served on every etcd client URL under
//! `/v3/` since etcd 3.4): HTTP/1.1 POSTs of JSON with base64 keys and values, over rustls
//! (ring, as kube's client already uses) with an optional CA and client certificate.
//!
//! Chosen over the gRPC `etcd-client` crate because that crate's build script needs `protoc`:
//! with this module, building evio needs nothing but Rust (docs/decisions/etcd-json-gateway.md).
//! evio needs a handful of unary calls (range, txn, auth, lease, lock, status), which the
//! gateway serves as they are; it is also what the benchmarks' etcd anchor talks through.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An answer larger than this is refused (65,536 leases mirrored take about 30 MiB).
const MAX_ANSWER: usize = 256 << 20;

type Http =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("etcd TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("etcd endpoint {endpoint:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Endpoint { endpoint: String },
    #[error("etcd at {endpoint}: {source}")]
    Request {
        endpoint: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("etcd at {endpoint}: reading the answer to {path}: {reason}")]
    Body {
        endpoint: String,
        path: &'static str,
        reason: String,
    },
    #[error("etcd at {endpoint}: {path} answered HTTP {status}: {message}")]
    Refused {
        endpoint: String,
        path: &'static str,
        status: u16,
        message: String,
    },
    #[error("etcd at {endpoint}: unexpected answer to {path}: {source}")]
    Decode {
        endpoint: String,
        path: &'static str,
        source: serde_json::Error,
    },
    #[error("encoding the request to {path}: {source}")]
    Encode {
        path: &'static str,
        source: serde_json::Error,
    },
    #[error("etcd at {endpoint}: no answer to {path} within {timeout:?}")]
    Timeout {
        endpoint: String,
        path: &'static str,
        timeout: Duration,
    },
}

impl GatewayError {
    /// True when another endpoint may do better (the request never got an answer).
    fn unreachable(&self) -> bool {
        matches!(self, Self::Request { .. } | Self::Timeout { .. })
    }
}

/// PEM files for TLS: the CA that signed etcd's certificate (else the system's roots) and an
/// optional client certificate with its key.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles<'a> {
    pub ca: Option<&'a Path>,
    pub identity: Option<(&'a Path, &'a Path)>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|source| GatewayError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, reason: impl ToString) -> GatewayError {
    GatewayError::Pem {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, GatewayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let mut roots = rustls::RootCertStore::empty();
    match files.ca {
        Some(ca) => {
            for cert in certificates("etcd CA file", ca)? {
                roots.add(cert)?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as every TLS client does.
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            tracing::debug!(added, "etcd: system CA certificates");
        }
    }
    let builder = builder.with_root_certificates(roots);
    Ok(match files.identity {
        Some((cert, key)) => {
            let chain = certificates("etcd cert file", cert)?;
            let pem = read("etcd key file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| pem_error("etcd key file", key, e))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A client of one etcd cluster: requests go to the endpoint that answered last, and move on
/// to the next one when it does not answer.
pub struct Gateway {
    http: Http,
    endpoints: Vec<String>,
    current: AtomicUsize,
    timeout: Duration,
    token: Option<String>,
}

impl Gateway {
    /// A client of `endpoints` (`http://` or `https://` URLs) whose every request gives up
    /// after `timeout`. Contacts nothing yet.
    pub fn new(
        endpoints: &[String],
        tls: &TlsFiles,
        timeout: Duration,
    ) -> Result<Gateway, GatewayError> {
        let mut cleaned = Vec::new();
        for endpoint in endpoints {
            let ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !ok || endpoint.parse::<hyper::Uri>().is_err() {
                return Err(GatewayError::Endpoint {
                    endpoint: endpoint.clone(),
                });
            }
            cleaned.push(endpoint.trim_end_matches('/').to_string());
        }
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
        Ok(Gateway {
            http,
            endpoints: cleaned,
            current: AtomicUsize::new(0),
            timeout,
            token: None,
        })
    }

    /// Logs in (`/v3/auth/authenticate`); later requests carry the token etcd gave.
    pub async fn authenticate(&mut self, name: &str, password: &str) -> Result<(), GatewayError> {
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let body = serde_json::json!({ "name": name, "password": password });
        let answer: Token = self.call("/v3/auth/authenticate", &body).await?;
        self.token = Some(answer.token);
        Ok(())
    }

    /// POSTs `body` to `path` (e.g. `/v3/kv/range`) and decodes the answer; tries each
    /// endpoint once, starting with the one that answered last.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &'static str,
        body: &Q,
    ) -> Result<A, GatewayError> {
        let body = Bytes::from(
            serde_json::to_vec(body).map_err(|source| GatewayError::Encode { path, source })?,
        );
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.endpoints.len() {
            let index = (start + i) % self.endpoints.len();
            match self.post(&self.endpoints[index], path, body.clone()).await {
                Ok(answer) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) if e.unreachable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(GatewayError::Endpoint {
            endpoint: String::new(),
        }))
    }

    async fn post<A: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &'static str,
        body: Bytes,
    ) -> Result<A, GatewayError> {
        let mut request = hyper::Request::post(format!("{endpoint}{path}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, token.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| GatewayError::Endpoint {
                endpoint: endpoint.to_string(),
            })?;
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|source| GatewayError::Request {
                        endpoint: endpoint.to_string(),
                        source,
                    })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| GatewayError::Body {
                    endpoint: endpoint.to_string(),
                    path,
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, GatewayError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| GatewayError::Timeout {
                endpoint: endpoint.to_string(),
                path,
                timeout: self.timeout,
            })??;
        if !status.is_success() {
            #[derive(Deserialize, Default)]
            struct Failure {
                #[serde(default)]
                message: String,
                #[serde(default)]
                error: String,
            }
            let failure: Failure = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = [failure.message, failure.error]
                .into_iter()
                .find(|m| !m.is_empty())
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(GatewayError::Refused {
                endpoint: endpoint.to_string(),
                path,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| GatewayError::Decode {
            endpoint: endpoint.to_string(),
            path,
            source,
        })
    }

    /// The keys (with values unless `keys_only`) under `prefix`, or only their count.
    pub async fn range_prefix(
        &self,
        prefix: &str,
        shape: RangeShape,
    ) -> Result<RangeAnswer, GatewayError> {
        let body = serde_json::json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "keys_only": shape == RangeShape::KeysOnly,
            "count_only": shape == RangeShape::CountOnly,
        });
        self.call("/v3/kv/range", &body).await
    }

    /// One transaction: `success` when every comparison holds, else `failure`. Returns
    /// whether the comparisons held.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<bool, GatewayError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            succeeded: bool,
        }
        let body = serde_json::json!({
            "compare": compare.iter().map(Compare::json).collect::<Vec<_>>(),
            "success": success.iter().map(Op::json).collect::<Vec<_>>(),
            "failure": failure.iter().map(Op::json).collect::<Vec<_>>(),
        });
        let answer: Answer = self.call("/v3/kv/txn", &body).await?;
        Ok(answer.succeeded)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeShape {
    KeysAndValues,
    KeysOnly,
    CountOnly,
}

#[derive(Debug, Default, Deserialize)]
pub struct RangeAnswer {
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    #[serde(default, deserialize_with = "int64")]
    pub count: u64,
}

#[derive(Debug, Deserialize)]
pub struct KeyValue {
    #[serde(deserialize_with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "base64_bytes")]
    pub value: Vec<u8>,
}

impl KeyValue {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// A transaction's condition.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's value is greater than this one (a missing key never is).
    ValueGreater(String, String),
    /// The key's version (0: absent) equals this one.
    VersionEquals(String, u64),
}

impl Compare {
    fn json(&self) -> serde_json::Value {
        match self {
            Compare::ValueGreater(key, value) => serde_json::json!({
                "target": "VALUE", "result": "GREATER",
                "key": b64(key.as_bytes()), "value": b64(value.as_bytes()),
            }),
            Compare::VersionEquals(key, version) => serde_json::json!({
                "target": "VERSION", "result": "EQUAL",
                "key": b64(key.as_bytes()), "version": version.to_string(),
            }),
        }
    }
}

/// A transaction's write.
#[derive(Debug, Clone)]
pub enum Op {
    Put(String, String),
    Delete(String),
    DeletePrefix(String),
}

impl Op {
    fn json(&self) -> serde_json::Value {
        match self {
            Op::Put(key, value) => serde_json::json!({ "request_put": {
                "key": b64(key.as_bytes()), "value": b64(value.as_bytes()),
            }}),
            Op::Delete(key) => serde_json::json!({ "request_delete_range": {
                "key": b64(key.as_bytes()),
            }}),
            Op::DeletePrefix(prefix) => serde_json::json!({ "request_delete_range": {
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&prefix_end(prefix.as_bytes())),
            }}),
        }
    }
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the range holding every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Bytes fields arrive base64-encoded.
fn base64_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    B64.decode(text).map_err(serde::de::Error::custom)
}

/// 64-bit integers arrive as JSON strings (proto3's JSON mapping); numbers are taken too.
pub fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(u64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests;
