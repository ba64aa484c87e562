//! Where the proxy's SVID comes from: PEM files (polled for rotation) or the SPIFFE Workload API
//! (a FetchX509SVID stream whose pushes are rotations).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshguard_identity::agent::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshguard_identity::agent::pb::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use meshguard_identity::SpiffeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Endpoint;

use crate::tls::{spiffe_id_of, SvidMaterial, SvidStore};
use crate::ProxyError;

/// SVID, key and bundle files (PEM), as `meshguard ca issue` writes them.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

fn read(p: &Path) -> Result<Vec<u8>, ProxyError> {
    std::fs::read(p).map_err(|e| ProxyError::Identity(format!("{}: {e}", p.display())))
}

impl SvidFiles {
    pub fn load(&self) -> Result<SvidMaterial, ProxyError> {
        let bad = |p: &Path, e: String| ProxyError::Identity(format!("{}: {e}", p.display()));
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&self.cert)?)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&self.cert, e.to_string()))?;
        let bundle: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&self.bundle)?)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&self.bundle, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .map_err(|e| bad(&self.key, e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad(&self.cert, "no certificate".into()))?;
        let id = spiffe_id_of(leaf).map_err(|e| bad(&self.cert, e.to_string()))?;
        Ok(SvidMaterial {
            id,
            chain,
            key: Arc::new(key),
            bundle,
        })
    }

    fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        [&self.cert, &self.key, &self.bundle]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Re-reads the files when they change (checked every `every`) and installs the new SVID;
    /// a set that does not load is refused and the current SVID stays.
    pub async fn watch(self, store: Arc<SvidStore>, every: Duration) {
        let mut seen = self.stamp();
        loop {
            tokio::time::sleep(every).await;
            let now = self.stamp();
            if now == seen {
                continue;
            }
            // Give a writer of three files a moment to finish before reading them.
            tokio::time::sleep(every.min(Duration::from_millis(200))).await;
            seen = self.stamp();
            match self.load().and_then(|m| store.update(m)) {
                Ok(()) => {
                    tracing::info!(id = %store.id(), "SVID files changed; new handshakes use the new certificate")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SVID files changed but cannot be used; keeping the current SVID")
                }
            }
        }
    }
}

/// The SPIFFE Workload API as the proxy's identity source.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    /// The agent's socket path.
    pub socket: PathBuf,
    /// Which SVID to use when the agent returns several (default: the first).
    pub spiffe_id: Option<SpiffeId>,
}

/// A Workload API request with the header the standard requires.
fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle`).
fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes)
            .map_err(|e| format!("a certificate in the response does not parse: {e}"))?;
        let used = bytes.len() - rest.len();
        out.push(CertificateDer::from(bytes[..used].to_vec()));
        bytes = rest;
    }
    Ok(out)
}

impl WorkloadApi {
    fn pick(&self, resp: &X509svidResponse) -> Result<SvidMaterial, ProxyError> {
        self.pick_id(resp, self.spiffe_id.as_ref())
    }

    fn pick_id(
        &self,
        resp: &X509svidResponse,
        want: Option<&SpiffeId>,
    ) -> Result<SvidMaterial, ProxyError> {
        let svid = match want {
            Some(want) => resp.svids.iter().find(|s| s.spiffe_id == want.to_string()),
            None => resp.svids.first(),
        }
        .ok_or_else(|| {
            ProxyError::Identity(match want {
                Some(w) => format!("the agent did not issue {w} to this process"),
                None => "the agent returned no SVID".into(),
            })
        })?;
        let id = SpiffeId::parse_workload(&svid.spiffe_id)
            .map_err(|e| ProxyError::Identity(format!("agent sent a bad SPIFFE ID: {e}")))?;
        Ok(SvidMaterial {
            id,
            chain: split_der(&svid.x509_svid).map_err(ProxyError::Identity)?,
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                svid.x509_svid_key.clone(),
            ))),
            bundle: split_der(&svid.bundle).map_err(ProxyError::Identity)?,
        })
    }

    async fn client(
        &self,
    ) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>, ProxyError> {
        let sock = self.socket.clone();
        let ch = Endpoint::try_from("http://localhost")
            .map_err(|e| ProxyError::Identity(e.to_string()))?
            .connect_with_connector(tower::service_fn(move |_| {
                let s = sock.clone();
                async move { tokio::net::UnixStream::connect(s).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| {
                ProxyError::Identity(format!(
                    "cannot reach the Workload API at {}: {e}",
                    self.socket.display()
                ))
            })?;
        Ok(SpiffeWorkloadApiClient::new(ch))
    }

    async fn stream(&self) -> Result<tonic::Streaming<X509svidResponse>, ProxyError> {
        let mut client = self.client().await?;
        let s = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .map_err(|e| ProxyError::Identity(format!("FetchX509SVID: {}", e.message())))?;
        Ok(s.into_inner())
    }

    /// Every X.509-SVID the agent gives this caller: (SPIFFE ID, expiry in Unix seconds).
    pub async fn fetch_x509(&self) -> Result<Vec<(String, u64)>, ProxyError> {
        let mut s = self.stream().await?;
        let msg = s
            .message()
            .await
            .map_err(|e| ProxyError::Identity(format!("FetchX509SVID: {}", e.message())))?
            .ok_or_else(|| ProxyError::Identity("the agent closed the stream".into()))?;
        msg.svids
            .iter()
            .map(|svid| {
                let chain = split_der(&svid.x509_svid).map_err(ProxyError::Identity)?;
                let leaf = chain
                    .first()
                    .ok_or_else(|| ProxyError::Identity("an SVID without a certificate".into()))?;
                let expiry = x509_parser::parse_x509_certificate(leaf.as_ref())
                    .map(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0))
                    .map_err(|e| {
                        ProxyError::Identity(format!("an SVID that does not parse: {e}"))
                    })?;
                Ok((svid.spiffe_id.clone(), expiry))
            })
            .collect()
    }

    /// JWT-SVIDs for `audience`: (SPIFFE ID, token).
    pub async fn fetch_jwt(
        &self,
        audience: &[String],
    ) -> Result<Vec<(String, String)>, ProxyError> {
        let mut client = self.client().await?;
        let r = client
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: self
                    .spiffe_id
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
            }))
            .await
            .map_err(|e| ProxyError::Identity(format!("FetchJWTSVID: {}", e.message())))?;
        Ok(r.into_inner()
            .svids
            .into_iter()
            .map(|s| (s.spiffe_id, s.svid))
            .collect())
    }

    /// Whether an agent answers on the socket at all: any gRPC answer (a refusal included)
    /// means it is up; `Err` says why not.
    pub async fn healthcheck(&self) -> Result<String, ProxyError> {
        let mut client = self.client().await?;
        match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(s) => match s.into_inner().message().await {
                Ok(Some(m)) => Ok(format!(
                    "serving; this caller has {} X.509-SVID(s)",
                    m.svids.len()
                )),
                Ok(None) => Ok("serving".to_owned()),
                Err(e) => Ok(format!("serving; this caller is refused: {}", e.message())),
            },
            Err(e) if e.code() == tonic::Code::Unavailable => Err(ProxyError::Identity(format!(
                "the agent at {} does not answer: {}",
                self.socket.display(),
                e.message()
            ))),
            Err(e) => Ok(format!("serving; this caller is refused: {}", e.message())),
        }
    }

    /// Connects and waits for the first SVID.
    pub async fn first(
        &self,
    ) -> Result<(SvidMaterial, tonic::Streaming<X509svidResponse>), ProxyError> {
        let mut s = self.stream().await?;
        let msg = s
            .message()
            .await
            .map_err(|e| ProxyError::Identity(format!("FetchX509SVID: {}", e.message())))?
            .ok_or_else(|| ProxyError::Identity("the agent closed the stream".into()))?;
        Ok((self.pick(&msg)?, s))
    }

    /// Installs every pushed SVID; reconnects with backoff when the stream ends. The current SVID
    /// keeps serving in between (until it expires).
    pub async fn follow(
        self,
        store: Arc<SvidStore>,
        mut stream: tonic::Streaming<X509svidResponse>,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        backoff = Duration::from_millis(200);
                        // Follow the identity the proxy started with, wherever the agent
                        // lists it.
                        let me = store.id();
                        match self.pick_id(&msg, Some(&me)).and_then(|m| store.update(m)) {
                            Ok(()) => {
                                tracing::info!(id = %store.id(), "new SVID from the Workload API")
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "unusable SVID from the Workload API; keeping the current one")
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "Workload API stream ended");
                        break;
                    }
                }
            }
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match self.stream().await {
                    Ok(s) => {
                        stream = s;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "reconnecting to the Workload API"),
                }
            }
        }
    }
}
