//! The CA service of `meshguard ca serve --kubernetes`: X.509-SVIDs for Kubernetes service
//! accounts, as istiod issues workload certificates. A client (an agent or a proxy in a pod)
//! sends a certificate request with its projected service-account token; the service asks the
//! API server who the token belongs to (TokenReview, with the audience the service requires),
//! and signs `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` for the request's key.
//! The client's key never leaves it; the CA key stays with the service.
//!
//! `POST /v1/svid` with `Authorization: Bearer <token>` and `{"csr": "<PKCS#10 PEM>"}` answers
//! `{"spiffe_id", "cert_chain_pem", "bundle_pem", "expires_at"}`; 401 without a token, 403 for a
//! token the API server does not accept (wrong audience, expired, deleted service account, or
//! not a service account), 400 for a bad request, 503 when the API server cannot be asked.
//! `GET /v1/bundle` answers the trust bundle (PEM). Served over TLS with a certificate from the
//! CA itself, so clients need only the trust bundle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;
use meshguard_identity::ca::Ca;
use meshguard_identity::spiffe_id::SpiffeId;

/// Largest request body accepted (a CSR is well under 2 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Most connections served at once; more wait in the kernel's accept queue, so a flood cannot
/// exhaust memory or file descriptors.
pub const MAX_CONNECTIONS: usize = 512;
/// Most TokenReviews in flight at once: a burst of requests does not become a burst on the API
/// server (the rest wait their turn).
pub const MAX_REVIEWS: usize = 32;

/// Who a token belongs to, as the API server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the API server does not accept this token{}", .0.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Rejected(Option<String>),
    #[error("the token is not a service account's (user `{0}`)")]
    NotAServiceAccount(String),
    #[error("the token is not for audience `{0}`")]
    Audience(String),
    #[error("cannot ask the API server: {0}")]
    Unavailable(String),
}

/// Checks tokens with the API server's TokenReview.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audience: String,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl TokenReviewer {
    pub fn new(client: Client, audience: &str) -> TokenReviewer {
        TokenReviewer {
            client,
            audience: audience.to_owned(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_REVIEWS)),
        }
    }

    /// The service account a token authenticates, for this service's audience.
    pub async fn review(&self, token: &str) -> Result<ServiceAccount, ReviewError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Rejected(
                status.error.filter(|e| !e.is_empty()),
            ));
        }
        // The API server answers with the audiences the token is valid for among those asked.
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == &self.audience)
        {
            return Err(ReviewError::Audience(self.audience.clone()));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        let rest = user
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(|| ReviewError::NotAServiceAccount(user.clone()))?;
        match rest.split_once(':') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
                Ok(ServiceAccount {
                    namespace: ns.to_owned(),
                    name: sa.to_owned(),
                })
            }
            _ => Err(ReviewError::NotAServiceAccount(user.clone())),
        }
    }
}

/// What the service needs to answer.
pub struct CaService {
    pub ca: Ca,
    pub reviewer: TokenReviewer,
    pub ttl: Duration,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": msg }))
}

impl CaService {
    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/bundle") => {
                let mut r = Response::new(Full::new(Bytes::from(self.ca.bundle_pem().to_owned())));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/x-pem-file"),
                );
                r
            }
            (&Method::POST, "/v1/svid") => self.issue(req).await,
            (_, "/v1/svid" | "/v1/bundle") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not found: POST /v1/svid, GET /v1/bundle",
            ),
        }
    }

    async fn issue<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let Some(token) = token else {
            return error(
                StatusCode::UNAUTHORIZED,
                "send the projected service-account token as Authorization: Bearer <token>",
            );
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        };
        let csr = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["csr"].as_str().map(str::to_owned));
        let Some(csr) = csr else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected JSON {\"csr\": \"<PKCS#10 PEM>\"}",
            );
        };
        let sa = match self.reviewer.review(&token).await {
            Ok(sa) => sa,
            Err(e @ ReviewError::Unavailable(_)) => {
                tracing::error!(error = %e, "CA service: token review failed; refusing");
                return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            }
            Err(e) => {
                tracing::warn!(error = %e, "CA service: caller refused");
                return error(StatusCode::FORBIDDEN, &e.to_string());
            }
        };
        let id = format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.ca.trust_domain, sa.namespace, sa.name
        );
        let id = match SpiffeId::parse(&id) {
            Ok(id) => id,
            Err(e) => return error(StatusCode::FORBIDDEN, &format!("{id}: {e}")),
        };
        match self.ca.sign_csr(&csr, &id, self.ttl) {
            Ok(chain) => {
                let expires = time::OffsetDateTime::now_utc() + self.ttl;
                tracing::info!(spiffe_id = %id, "CA service: X.509-SVID issued");
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "spiffe_id": id.to_string(),
                        "cert_chain_pem": chain,
                        "bundle_pem": self.ca.bundle_pem(),
                        "expires_at": expires.unix_timestamp(),
                    }),
                )
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }
}

/// Serves the CA service over TLS on `listener` until `shutdown` resolves. The serving
/// certificate is issued by the CA for `names` (DNS names or IPs clients connect to).
pub async fn serve(
    service: Arc<CaService>,
    listener: tokio::net::TcpListener,
    names: &[String],
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let server_id = SpiffeId::parse(&format!(
        "spiffe://{}/meshguard/ca",
        service.ca.trust_domain
    ))
    .map_err(|e| e.to_string())?;
    let svid = service
        .ca
        .issue_with_dns(
            &server_id,
            names,
            Duration::from_secs(24 * 3600),
            meshguard_identity::ca::KeyType::EcdsaP256,
        )
        .map_err(|e| e.to_string())?;
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> = svid
        .chain_der
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        svid.key_der.clone(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            _ = &mut shutdown => return Ok(()),
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "CA service: accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "CA service: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "CA service: connection ended with an error");
            }
        });
    }
}
