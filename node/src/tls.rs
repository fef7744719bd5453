//! The daemon's and CLI's side of mutual TLS (the PKI itself is `evio_raft::tls`): which
//! certificates a member uses, the certificate exchange of a joining node, renewal, and the
//! TLS client the CLI builds from a member's data dir or from files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use evio_api::tls::{self, Credentials, Source, TlsContext, Trust};
use evio_api::types::CertificateRequest;
use evio_api::Client;
use serde::{Deserialize, Serialize};

/// How a member speaks to the others.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// `--insecure-plaintext`: HTTP and the shared token, for debugging only.
    Plaintext,
    /// The cluster's own CA in `<data-dir>/tls/`; a joining node trusts the cluster by
    /// `join_trust` when it has no certificate yet.
    Managed {
        lifetime: Duration,
        join_trust: Option<JoinTrust>,
    },
    /// Operator-supplied CA certificate, node certificate and key (no CA key anywhere).
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// What a joining node checks the cluster's CA against before it sends the token.
#[derive(Debug, Clone)]
pub enum JoinTrust {
    /// `--ca-hash sha256:...`
    Hash(String),
    /// `--ca-file PATH` (read when joining: it may be written later, e.g. from a Secret).
    CaFile(PathBuf),
    /// The CA certificate itself (PEM), e.g. from the Kubernetes cluster record.
    CaPem(String),
}

/// The TLS flags of `run`, validated.
pub fn mode(
    insecure_plaintext: bool,
    ca_hash: Option<&str>,
    files: &TlsFileArgs,
    cert_lifetime: Option<&str>,
) -> anyhow::Result<TlsMode> {
    let (ca_file, cert_file, key_file) = (
        files.ca_file.as_deref(),
        files.cert_file.as_deref(),
        files.key_file.as_deref(),
    );
    if insecure_plaintext {
        if ca_hash.is_some() || ca_file.is_some() || cert_file.is_some() || key_file.is_some() {
            bail!("--insecure-plaintext cannot be combined with --ca-hash, --ca-file, --cert-file or --key-file");
        }
        return Ok(TlsMode::Plaintext);
    }
    match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            let ca = ca_file.context(
                "--cert-file and --key-file need --ca-file (the CA that issued every member's certificate)",
            )?;
            return Ok(TlsMode::Files {
                ca: ca.to_path_buf(),
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        (Some(_), None) => bail!("--cert-file needs --key-file"),
        (None, Some(_)) => bail!("--key-file needs --cert-file"),
        (None, None) => {}
    }
    let lifetime = match cert_lifetime {
        Some(text) => {
            let lifetime = humantime::parse_duration(text).with_context(|| {
                format!("--cert-lifetime {text:?}: expected a duration like 30d or 12h")
            })?;
            if lifetime < Duration::from_secs(3) {
                bail!("--cert-lifetime {text}: at least 3s (renewal starts when a third is left)");
            }
            lifetime
        }
        None => tls::DEFAULT_CERT_LIFETIME,
    };
    let join_trust = match (ca_hash, ca_file) {
        (Some(_), Some(_)) => bail!("pass either --ca-hash or --ca-file, not both"),
        (Some(hash), None) => Some(JoinTrust::Hash(
            tls::parse_ca_hash(hash).context("--ca-hash")?,
        )),
        (None, Some(file)) => Some(JoinTrust::CaFile(file.to_path_buf())),
        (None, None) => None,
    };
    Ok(TlsMode::Managed {
        lifetime,
        join_trust,
    })
}

/// The member's TLS context (`None` in plaintext), loading what the data dir or files hold.
pub fn context(mode: &TlsMode, data_dir: &Path) -> anyhow::Result<Option<Arc<TlsContext>>> {
    let source = match mode {
        TlsMode::Plaintext => {
            tracing::warn!(
                "INSECURE: --insecure-plaintext: members speak plain HTTP, the cluster token and \
                 every Raft RPC cross the network in cleartext, and anyone holding the token \
                 can speak for any member. For debugging only."
            );
            return Ok(None);
        }
        TlsMode::Managed { lifetime, .. } => Source::Managed {
            dir: data_dir.join(tls::TLS_DIR),
            lifetime: *lifetime,
        },
        TlsMode::Files { ca, cert, key } => Source::Files {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
    };
    let context = TlsContext::new(source).context("loading this member's TLS certificates")?;
    Ok(Some(context))
}

/// Bootstrap: the new cluster's CA and this member's certificate (managed mode, once).
pub fn create_authority(
    tls: &TlsContext,
    cluster: &str,
    node_id: u64,
    name: &str,
) -> anyhow::Result<()> {
    if !matches!(tls.source(), Source::Managed { .. }) || tls.has_files() {
        return Ok(());
    }
    tls.create_authority(cluster, node_id, name)
        .context("creating the cluster CA")?;
    log_ca_hash(tls);
    Ok(())
}

/// What joining nodes pass as `--ca-hash`.
pub fn log_ca_hash(tls: &TlsContext) {
    match tls.credentials() {
        Ok(credentials) => {
            if let Some(ca) = credentials.ca.first() {
                let hash = tls::ca_hash(ca);
                tracing::info!(ca_hash = %hash, "cluster CA: joining nodes pass --ca-hash {hash}");
            }
        }
        Err(e) => tracing::debug!(error = %e, "no CA to name yet"),
    }
}

/// Why a certificate exchange failed: retrying elsewhere may help, or nothing will.
pub enum ExchangeError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

/// A joining node without a certificate: makes a key, and trades the token and a request
/// for a certificate at `peer` — after checking `peer` chains to the cluster CA, so the
/// token never reaches an impostor.
pub async fn obtain_certificate(
    tls: &TlsContext,
    trust: Option<&JoinTrust>,
    peer: &str,
    token: &str,
    node_id: u64,
    name: &str,
) -> Result<(), ExchangeError> {
    let fatal = |e: anyhow::Error| ExchangeError::Fatal(e);
    let trust = match trust {
        None => {
            return Err(fatal(anyhow::anyhow!(
                "this node has no certificate yet: pass --ca-hash sha256:... (`evio-node \
                 cluster ca-hash` on a member, or the bootstrap member's log, prints it) or \
                 --ca-file with the cluster CA, so the join can check it talks to the real \
                 cluster before sending the token"
            )))
        }
        Some(JoinTrust::Hash(hash)) => Trust::CaHash(hash.clone()),
        Some(JoinTrust::CaPem(pem)) => Trust::ca_pem(pem)
            .context("the recorded cluster CA")
            .map_err(fatal)?,
        Some(JoinTrust::CaFile(path)) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading --ca-file {}", path.display()))
                .map_err(ExchangeError::Retry)?;
            Trust::ca_pem(&pem)
                .with_context(|| format!("--ca-file {}", path.display()))
                .map_err(fatal)?
        }
    };
    let config = tls::anonymous_client_config(trust).map_err(|e| fatal(e.into()))?;
    let client = Client::new(&format!("https://{peer}"))
        .and_then(|c| c.with_tls(config))
        .map_err(|e| fatal(e.into()))?
        .with_token(Some(token.to_string()));
    let (key, csr) = tls::new_key_and_request(node_id, name).map_err(|e| fatal(e.into()))?;
    let issued = client
        .certificate(&CertificateRequest {
            node_id,
            name: name.to_string(),
            csr,
        })
        .await
        .map_err(|e| match e.status() {
            Some(400 | 401 | 403) => fatal(
                anyhow::Error::new(e)
                    .context(format!("{peer} refused this node's certificate request")),
            ),
            _ => ExchangeError::Retry(e.into()),
        })?;
    tls.store_managed(
        &issued.ca,
        issued.ca_key.as_deref(),
        &issued.certificate,
        &key,
    )
    .map_err(|e| fatal(anyhow::Error::new(e).context(format!("the certificate {peer} issued"))))?;
    tracing::info!(peer, "got this node's certificate from the cluster");
    Ok(())
}

/// A client of a member's API: TLS with `tls`'s certificate, else plaintext with `token`.
pub fn member_client(
    addr: &str,
    tls: Option<&TlsContext>,
    token: Option<&str>,
) -> anyhow::Result<Client> {
    Ok(match tls {
        Some(tls) => Client::new(&format!("https://{addr}"))?
            .with_tls(tls.credentials()?.client_config()?)?,
        None => Client::new(&format!("http://{addr}"))?.with_token(token.map(str::to_string)),
    })
}

/// Renews (managed) or re-reads (files) this member's certificate before it expires,
/// swapping it in without a restart, until `stop`.
pub async fn keep_renewed(tls: Arc<TlsContext>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tls.renew_interval()) => {}
            _ = stop.cancelled() => return,
        }
        if !tls.has_files() {
            continue;
        }
        match tls.renew_if_due() {
            Ok(true) => {
                let until = tls
                    .credentials()
                    .map(|c| humantime::format_rfc3339_seconds(c.not_after).to_string())
                    .unwrap_or_default();
                tracing::info!(valid_until = %until, "renewed this member's certificate");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "renewing this member's certificate failed; retrying")
            }
        }
    }
}

/// `--ca-file`, `--cert-file`, `--key-file`: the TLS flags of `run` and of every client of a
/// member (`leases`, `cluster`, `status`, `config-gen`, `import-etcd`).
#[derive(clap::Args, Serialize, Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct TlsFileArgs {
    /// The cluster CA certificate (PEM). Clients trust members by it (default: the data
    /// dir's); `run` trusts the cluster it joins by it (instead of --ca-hash), or takes it as
    /// the CA of operator-supplied certificates (with --cert-file and --key-file).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// A certificate issued by the cluster CA (PEM, naming URI evio://node/<id>), instead of
    /// the one in the data dir (`run`: re-read to renew; without it the cluster runs its own
    /// CA in <data-dir>/tls/).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// The key of --cert-file (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

/// What a client presents: a certificate (`Member`), only the CA to check servers by
/// (`CaOnly`: reads), or nothing (plaintext, `dev`).
pub enum ClientTls {
    Member(Box<Credentials>),
    CaOnly(Trust),
    Plaintext,
}

impl TlsFileArgs {
    /// The client's TLS: these files, else this node's certificate in `data_dir` when
    /// there is one.
    pub fn client_tls(&self, data_dir: &Path) -> anyhow::Result<ClientTls> {
        let [ca, _, cert, key] = tls::managed_paths(&data_dir.join(tls::TLS_DIR));
        let (ca, cert, key) = match (&self.ca_file, &self.cert_file, &self.key_file) {
            (Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
            (Some(ca), None, None) => {
                let pem = std::fs::read_to_string(ca)
                    .with_context(|| format!("reading --ca-file {}", ca.display()))?;
                let trust =
                    Trust::ca_pem(&pem).with_context(|| format!("--ca-file {}", ca.display()))?;
                return Ok(ClientTls::CaOnly(trust));
            }
            (None, None, None) if cert.exists() => (ca, cert, key),
            (None, None, None) => return Ok(ClientTls::Plaintext),
            _ => bail!("--cert-file and --key-file go together, with --ca-file"),
        };
        let credentials = Credentials::load(&ca, &cert, &key).with_context(|| {
            format!(
                "reading this node's TLS certificate ({}, {})",
                cert.display(),
                key.display()
            )
        })?;
        Ok(ClientTls::Member(Box::new(credentials)))
    }

    /// A client of the member API root `api` (default `https://127.0.0.1:7700` with TLS,
    /// `http://127.0.0.1:7700` without), presenting what [`Self::client_tls`] finds.
    pub fn client(
        &self,
        data_dir: &Path,
        api: Option<&str>,
        token: Option<String>,
    ) -> anyhow::Result<Client> {
        let tls = self.client_tls(data_dir)?;
        let scheme = match tls {
            ClientTls::Plaintext => "http",
            _ => "https",
        };
        let api = api.map_or_else(|| format!("{scheme}://127.0.0.1:7700"), str::to_string);
        let client = Client::new(&api)?.with_token(token);
        Ok(match tls {
            _ if !api.starts_with("https://") => client,
            ClientTls::Member(credentials) => client.with_tls(credentials.client_config()?)?,
            ClientTls::CaOnly(trust) => client.with_tls(tls::anonymous_client_config(trust)?)?,
            ClientTls::Plaintext => bail!(
                "--api {api}: no cluster CA to check it by: pass --ca-file (and --cert-file \
                 with --key-file to change leases), or --data-dir of a member"
            ),
        })
    }

    /// A client of the member at `addr` (host:port), https when there is TLS to speak.
    pub fn client_at(
        &self,
        data_dir: &Path,
        addr: &str,
        token: Option<String>,
    ) -> anyhow::Result<Client> {
        let scheme = match self.client_tls(data_dir)? {
            ClientTls::Plaintext => "http",
            _ => "https",
        };
        self.client(data_dir, Some(&format!("{scheme}://{addr}")), token)
    }

    /// Says what a client lacks when a member refused it for want of TLS or a certificate;
    /// `None` for other errors.
    pub fn missing(&self, data_dir: &Path, error: &evio_api::ClientError) -> Option<String> {
        let [_, _, cert, _] = tls::managed_paths(&data_dir.join(tls::TLS_DIR));
        let why = match error.code()? {
            evio_api::ErrorCode::TlsRequired => "the member speaks TLS",
            evio_api::ErrorCode::CertificateRequired => "the member needs a client certificate",
            _ => return None,
        };
        let have = match (&self.cert_file, cert.exists()) {
            (Some(file), _) => format!("--cert-file {} was refused", file.display()),
            (None, true) => format!("{} was refused", cert.display()),
            (None, false) => format!(
                "this node has no certificate: {} does not exist (evio-node run writes it when \
                 the node joins) and no --cert-file was given",
                cert.display()
            ),
        };
        Some(format!(
            "{why} and {have}: run this on a member (its --data-dir), or pass --ca-file, \
             --cert-file and --key-file (a certificate issued by the cluster CA)"
        ))
    }
}

/// What to do about a client error caused by this node's certificate being revoked (the TLS
/// alert a member answers a removed member's certificate with); `None` for anything else.
pub fn revoked_hint(error: &anyhow::Error) -> Option<&'static str> {
    format!("{error:#}")
        .contains("CertificateRevoked")
        .then_some(
            "the member refused this node's certificate as revoked: the node was removed from the \
         cluster (evio-node cluster remove); to bring it back, wipe its data dir and let it \
         join again as a new node",
        )
}

/// `sha256:...` of the CA in `ca_file`, else of the data dir's.
pub fn ca_hash(data_dir: &Path, ca_file: Option<&Path>) -> anyhow::Result<String> {
    let path = ca_file.map_or_else(
        || data_dir.join(tls::TLS_DIR).join(tls::CA_CERT_FILE),
        Path::to_path_buf,
    );
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the cluster CA {}", path.display()))?;
    let certs = tls::certs_from_pem(&pem, &path.display().to_string())?;
    Ok(tls::ca_hash(&certs[0]))
}
