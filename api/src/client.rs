//! A typed client for the evio HTTP API, used by the CLI and the tests.

use std::net::Ipv4Addr;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::types::{
    AcquireBody, ClaimBody, ClusterJson, Consistency, ErrorBody, ErrorCode, LeaseJson, NodeJson,
    NodePodsJson, ReserveBody,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach the evio API at {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url}: HTTP {status} {code}: {message}")]
    Api {
        url: String,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("{url}: unexpected response (HTTP {status}): {detail}")]
    Decode {
        url: String,
        status: u16,
        detail: String,
    },
}

impl ClientError {
    /// The API's error code (e.g. `pool_exhausted`), when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// What a failed send or read of `url` becomes.
fn transport(url: &str) -> impl FnOnce(reqwest::Error) -> ClientError + '_ {
    move |source| ClientError::Transport {
        url: url.to_string(),
        source,
    }
}

impl Client {
    /// `base` is the API root, e.g. `http://127.0.0.1:7700`.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let parsed = reqwest::Url::parse(base).map_err(|e| ClientError::InvalidUrl {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(ClientError::InvalidUrl {
                url: base.to_string(),
                reason: "scheme must be http or https".into(),
            });
        }
        evio_raft::tls::ensure_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(transport(base))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
        })
    }

    /// Speaks TLS with `config` (the cluster CA, and a client certificate for writes): see
    /// `evio_raft::tls`.
    pub fn with_tls(mut self, config: evio_raft::tls::ClientConfig) -> Result<Self, ClientError> {
        self.http =
            evio_raft::tls::http_client(config, Some(Duration::from_secs(30))).map_err(|e| {
                ClientError::InvalidUrl {
                    url: self.base.clone(),
                    reason: format!("TLS client: {e}"),
                }
            })?;
        Ok(self)
    }

    /// Sends the cluster token (needed for lease changes, and for reads where closed).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(transport(url))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api {
                url: url.to_string(),
                status: status.as_u16(),
                code: body.code,
                message: body.error,
            },
            Err(_) => ClientError::Decode {
                url: url.to_string(),
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes).into_owned(),
            },
        })
    }

    async fn json<T: DeserializeOwned>(
        response: reqwest::Response,
        url: &str,
    ) -> Result<T, ClientError> {
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport(url))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            status,
            detail: e.to_string(),
        })
    }

    pub async fn list_leases(
        &self,
        consistency: Consistency,
    ) -> Result<Vec<LeaseJson>, ClientError> {
        let url = self.url(&format!("/v1/leases?consistency={}", consistency.as_str()));
        let response = self.send(self.http.get(&url), &url).await?;
        Self::json(response, &url).await
    }

    /// The node's lease, or `None` when it holds none.
    pub async fn get_lease(
        &self,
        node: &str,
        consistency: Consistency,
    ) -> Result<Option<LeaseJson>, ClientError> {
        let url = self.url(&format!(
            "/v1/leases/{node}?consistency={}",
            consistency.as_str()
        ));
        match self.send(self.http.get(&url), &url).await {
            Ok(response) => Self::json(response, &url).await.map(Some),
            Err(ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Acquires (or returns) the node's lease; `true` when it was newly created.
    pub async fn acquire(
        &self,
        node: &str,
        host_ip: Option<Ipv4Addr>,
    ) -> Result<(LeaseJson, bool), ClientError> {
        let url = self.url(&format!("/v1/leases/{node}"));
        let response = self
            .send(self.http.put(&url).json(&AcquireBody { host_ip }), &url)
            .await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((Self::json(response, &url).await?, created))
    }

    pub async fn release(&self, node: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/leases/{node}"));
        self.send(self.http.delete(&url), &url).await.map(|_| ())
    }

    /// Releases `node`'s lease only if it is still at `revision` (409 `revision_mismatch`
    /// otherwise).
    pub async fn release_if(&self, node: &str, revision: u64) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/leases/{node}?revision={revision}"));
        self.send(self.http.delete(&url), &url).await.map(|_| ())
    }

    /// Holds `subnet` for `owner` (an imported `legacy:...` range); `true` when newly reserved.
    pub async fn reserve(
        &self,
        owner: &str,
        subnet: impl Into<ipnetwork::IpNetwork>,
    ) -> Result<(LeaseJson, bool), ClientError> {
        let url = self.url("/v1/reservations");
        let body = ReserveBody {
            owner: owner.to_string(),
            subnet: subnet.into(),
        };
        let response = self.send(self.http.post(&url).json(&body), &url).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((Self::json(response, &url).await?, created))
    }

    /// Gives the reserved range `from` to `node`.
    pub async fn claim(&self, node: &str, from: &str) -> Result<LeaseJson, ClientError> {
        let url = self.url(&format!("/v1/leases/{node}/claim"));
        let body = ClaimBody {
            from: from.to_string(),
        };
        let response = self.send(self.http.post(&url).json(&body), &url).await?;
        Self::json(response, &url).await
    }

    /// Asks this member (forwarded to the leader) to admit a node.
    pub async fn join(
        &self,
        request: &evio_raft::JoinRequest,
    ) -> Result<evio_raft::JoinResponse, ClientError> {
        let url = self.url("/v1/cluster/join");
        let response = self.send(self.http.post(&url).json(request), &url).await?;
        Self::json(response, &url).await
    }

    /// Removes member `id` for good: out of the membership, its certificate revoked on every
    /// member.
    pub async fn remove_member(&self, id: u64) -> Result<evio_raft::RemoveResponse, ClientError> {
        let url = self.url(&format!("/v1/cluster/members/{id}"));
        let response = self.send(self.http.delete(&url), &url).await?;
        Self::json(response, &url).await
    }

    /// Trades the cluster token and a certificate request for this node's certificate.
    pub async fn certificate(
        &self,
        request: &crate::types::CertificateRequest,
    ) -> Result<crate::types::CertificateResponse, ClientError> {
        let url = self.url("/v1/cluster/certificate");
        let response = self.send(self.http.post(&url).json(request), &url).await?;
        Self::json(response, &url).await
    }

    pub async fn cluster(&self) -> Result<ClusterJson, ClientError> {
        self.get_json("/v1/cluster").await
    }

    /// This member's node: lease, CNI socket, etcd mirror, Kubernetes integration.
    pub async fn node(&self) -> Result<NodeJson, ClientError> {
        self.get_json("/v1/node").await
    }

    /// The pods attached through this member's CNI socket.
    pub async fn node_pods(&self) -> Result<NodePodsJson, ClientError> {
        self.get_json("/v1/node/pods").await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = self.send(self.http.get(&url), &url).await?;
        Self::json(response, &url).await
    }
}
