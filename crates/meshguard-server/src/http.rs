//! HTTP authorization mode, for nginx `auth_request`, Traefik `forwardAuth`, Caddy
//! `forward_auth` and Envoy's HTTP ext_authz.
//!
//! Only peers in `--trusted-proxies` are answered (everyone else gets 403), and the original
//! request is read from exactly one set of headers, chosen with `--forward-auth`:
//! - `nginx`: `X-Original-Method` and `X-Original-URI` (both required), `X-Original-Host`;
//! - `forwarded` (Traefik, Caddy): `X-Forwarded-Method` and `X-Forwarded-Uri` (required),
//!   `X-Forwarded-Host`;
//! - `envoy`: the request line itself, behind `--http-path-prefix`.
//!
//! A required header that is missing or not text denies the request; there is no fallback to a
//! header the client could have written. `X-Meshguard-Workload` (`namespace/app=name,...`) names
//! the destination workload (else `--workload`); `X-Forwarded-For` gives the original client
//! (`remote.ip`), read right to left past the trusted proxies; `X-Forwarded-Client-Cert`
//! (`URI=spiffe://...`) is the caller's mesh identity only with `--trust-forwarded-client-cert`.
//! The proxy must set or clear every one of these headers so a client cannot supply its own.
//!
//! Answers: 200 allows (headers to add are response headers; headers to remove are listed in
//! `x-envoy-auth-headers-to-remove`), 401/403 deny with a short body and `WWW-Authenticate`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request as HRequest, Response as HResponse, StatusCode};
use meshguard_policy::{Destination, HttpRequest, Identity, Request, Source};

use crate::decide::{decide, record, undecidable, Outcome, Shared};
use crate::dlog::DecisionLog;
use crate::state::Workload;

/// How the proxy in front describes the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardStyle {
    /// nginx `auth_request`: `X-Original-Method`, `X-Original-URI` (required), `X-Original-Host`.
    Nginx,
    /// Traefik `forwardAuth`, Caddy `forward_auth`: `X-Forwarded-Method`, `X-Forwarded-Uri`
    /// (required), `X-Forwarded-Host`.
    Forwarded,
    /// Envoy HTTP ext_authz: the request line itself, behind the path prefix.
    Envoy,
}

impl ForwardStyle {
    pub fn parse(s: &str) -> Option<ForwardStyle> {
        match s {
            "nginx" => Some(ForwardStyle::Nginx),
            "forwarded" | "traefik" | "caddy" => Some(ForwardStyle::Forwarded),
            "envoy" => Some(ForwardStyle::Envoy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ForwardStyle::Nginx => "nginx",
            ForwardStyle::Forwarded => "forwarded",
            ForwardStyle::Envoy => "envoy",
        }
    }
}

#[derive(Clone)]
pub struct HttpMode {
    pub state: Shared,
    pub log: DecisionLog,
    pub workload: Option<Workload>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Envoy HTTP ext_authz `path_prefix`, stripped from the path.
    pub path_prefix: String,
    /// Which headers describe the original request.
    pub style: ForwardStyle,
    /// Believe `X-Forwarded-Client-Cert` (the caller's mesh identity) from the proxies. Only
    /// safe when every proxy overwrites or removes the client's copy of that header.
    pub trust_client_cert: bool,
    /// Longest time a decision may take; past it the request is denied (fail closed).
    pub timeout: std::time::Duration,
}

/// Headers that describe the original request; never treated as request headers for policies.
const META_HEADERS: &[&str] = &[
    "x-original-method",
    "x-original-uri",
    "x-original-host",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-meshguard-workload",
    "x-forwarded-client-cert",
];

fn xfcc_uri(v: &str) -> Option<String> {
    // Envoy's format: `By=...;Hash=...;URI=spiffe://...`; several certs are comma-separated, the
    // last one is the nearest hop.
    let last = v.rsplit(',').next()?;
    last.split(';').find_map(|kv| {
        kv.trim()
            .strip_prefix("URI=")
            .map(|u| u.trim_matches('"').to_owned())
    })
}

impl HttpMode {
    fn trusted(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// Builds the engine request from a forward-auth request.
    pub fn to_request(
        &self,
        req: &HRequest<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Result<(Request, Identity), String> {
        if !self.trusted(peer.ip()) {
            return Err(format!(
                "{} is not a trusted proxy (--trusted-proxies); HTTP mode answers only its proxies",
                peer.ip()
            ));
        }
        // A header that is present must be usable: never fall back to another source of truth.
        let h = |name: &str| -> Result<Option<&str>, String> {
            match req.headers().get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(Some)
                    .map_err(|_| format!("header `{name}` is not valid text")),
            }
        };
        let need = |name: &str| -> Result<String, String> {
            h(name)?.map(str::to_owned).ok_or_else(|| {
                format!(
                    "header `{name}` is missing: the proxy must send it (--forward-auth {})",
                    self.style.as_str()
                )
            })
        };
        let (method, uri, host) = match self.style {
            ForwardStyle::Nginx => (
                need("x-original-method")?,
                need("x-original-uri")?,
                h("x-original-host")?
                    .or(h("host")?)
                    .unwrap_or("")
                    .to_owned(),
            ),
            ForwardStyle::Forwarded => (
                need("x-forwarded-method")?,
                need("x-forwarded-uri")?,
                h("x-forwarded-host")?
                    .or(h("host")?)
                    .unwrap_or("")
                    .to_owned(),
            ),
            ForwardStyle::Envoy => {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let stripped = if self.path_prefix.is_empty() {
                    pq
                } else {
                    pq.strip_prefix(self.path_prefix.as_str()).ok_or_else(|| {
                        format!(
                            "the path does not start with the configured prefix `{}`",
                            self.path_prefix
                        )
                    })?
                };
                let stripped = if stripped.starts_with('/') {
                    stripped.to_owned()
                } else {
                    format!("/{stripped}")
                };
                (
                    req.method().as_str().to_owned(),
                    stripped,
                    h("host")?.unwrap_or("").to_owned(),
                )
            }
        };
        let workload = match h("x-meshguard-workload")? {
            Some(w) => Workload::parse(w)?,
            None => self.workload.clone().ok_or(
                "cannot tell which workload this request is for: start meshguard with --workload, or have the proxy send X-Meshguard-Workload",
            )?,
        };
        // The original client is the right-most X-Forwarded-For address that is not one of our
        // proxies (entries further left are whatever the client wrote). It feeds `remote.ip` /
        // `remoteIpBlocks`; `source.ip` stays the direct peer, as in Istio.
        let remote_ip = h("x-forwarded-for")?.and_then(|xff| {
            xff.rsplit(',')
                .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
                .find(|ip| !self.trusted(*ip))
        });
        let mut headers = Vec::new();
        for (k, v) in req.headers() {
            let name = k.as_str();
            if META_HEADERS.contains(&name) || name == "host" {
                continue;
            }
            match v.to_str() {
                Ok(v) => headers.push((name.to_owned(), v.to_owned())),
                Err(_) => return Err(format!("header `{name}` is not valid text")),
            }
        }
        let mesh = self.state.mesh.path_normalization;
        let request = Request {
            destination: Destination {
                namespace: workload.namespace,
                labels: workload.labels,
                port: None,
                ip: None,
            },
            source: Source {
                ip: Some(peer.ip()),
                remote_ip,
            },
            sni: None,
            http: Some(HttpRequest::new(method, host, uri, headers, mesh)),
            custom: Vec::new(),
        };
        let mut id = Identity::default();
        if self.trust_client_cert {
            if let Some(p) = h("x-forwarded-client-cert")?.and_then(xfcc_uri) {
                id = id.with_peer(&p);
            }
        }
        Ok((request, id))
    }

    pub async fn handle(
        &self,
        req: HRequest<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Result<HResponse<Full<Bytes>>, Infallible> {
        let started = Instant::now();
        let g = self.state.current();
        let req_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (outcome, request, id) = match self.to_request(&req, peer) {
            Ok((r, id)) => {
                match tokio::time::timeout(self.timeout, decide(&g, &r, id.clone())).await {
                    Ok(o) => (o, r, id),
                    Err(_) => {
                        self.state
                            .metrics
                            .internal_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(timeout = ?self.timeout, "decision timed out; denying");
                        (
                            Outcome::internal("denied (fail closed): the decision timed out", g.id),
                            r,
                            id,
                        )
                    }
                }
            }
            Err(e) => undecidable(&self.state, &e, g.id),
        };
        record(
            &self.state,
            &self.log,
            "http",
            &req_id,
            &request,
            &id,
            &outcome,
            started,
        );
        Ok(response(&outcome))
    }
}

pub fn response(o: &Outcome) -> HResponse<Full<Bytes>> {
    let status = StatusCode::from_u16(o.status).unwrap_or(StatusCode::FORBIDDEN);
    let body = if o.allowed { "" } else { o.body() };
    let mut b = HResponse::builder()
        .status(status)
        .header("content-type", "text/plain");
    if o.allowed {
        for (k, v) in &o.headers_to_add {
            b = b.header(k.as_str(), v.as_str());
        }
        if !o.headers_to_remove.is_empty() {
            b = b.header(
                "x-envoy-auth-headers-to-remove",
                o.headers_to_remove.join(", "),
            );
        }
    } else if let Some(w) = &o.www_authenticate {
        b = b.header("www-authenticate", w.as_str());
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| {
            let mut r = HResponse::new(Full::new(Bytes::from_static(b"RBAC: access denied")));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r
        })
}
