//! HTTP authorization mode, for nginx `auth_request`, Traefik `forwardAuth`, Caddy
//! `forward_auth` and Envoy's HTTP ext_authz.
//!
//! The original request is described by:
//! - headers from a trusted proxy (the peer address is in `--trusted-proxies`):
//!   `X-Original-Method` / `X-Forwarded-Method`, `X-Original-URI` / `X-Forwarded-Uri`,
//!   `X-Forwarded-Host` (else `Host`), `X-Forwarded-Client-Cert` (`URI=spiffe://...`, the caller's
//!   mesh identity), `X-Forwarded-For` (first address: the client) and `X-Meshguard-Workload`
//!   (`namespace/app=name,...`, the destination workload);
//! - otherwise the request itself (Envoy HTTP ext_authz copies the original method and path,
//!   behind an optional `--http-path-prefix`), and the static `--workload`.
//!
//! Headers from an untrusted peer that try to describe another request are ignored, so a client
//! that can reach meshguard directly cannot pick its own identity or path.
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

use crate::decide::{decide, log_entry, Outcome, Shared};
use crate::dlog::DecisionLog;
use crate::state::Workload;

#[derive(Clone)]
pub struct HttpMode {
    pub state: Shared,
    pub log: DecisionLog,
    pub workload: Option<Workload>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Envoy HTTP ext_authz `path_prefix`, stripped from the path.
    pub path_prefix: String,
    /// Longest time a decision may take; past it the request is denied (fail closed).
    pub timeout: std::time::Duration,
}

/// Headers that describe the original request; never treated as request headers for policies.
const META_HEADERS: &[&str] = &[
    "x-original-method",
    "x-original-uri",
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
        let trusted = self.trusted(peer.ip());
        let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let from_proxy =
            trusted && (h("x-original-uri").is_some() || h("x-forwarded-uri").is_some());
        let (method, uri) = if from_proxy {
            (
                h("x-original-method")
                    .or(h("x-forwarded-method"))
                    .unwrap_or("GET")
                    .to_owned(),
                h("x-original-uri")
                    .or(h("x-forwarded-uri"))
                    .unwrap_or("/")
                    .to_owned(),
            )
        } else {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let stripped = pq
                .strip_prefix(self.path_prefix.as_str())
                .filter(|_| !self.path_prefix.is_empty())
                .unwrap_or(pq);
            let stripped = if stripped.starts_with('/') {
                stripped.to_owned()
            } else {
                format!("/{stripped}")
            };
            (req.method().as_str().to_owned(), stripped)
        };
        let host = if trusted {
            h("x-forwarded-host").or(h("host"))
        } else {
            h("host")
        }
        .unwrap_or("")
        .to_owned();
        let workload = match (trusted, h("x-meshguard-workload")) {
            (true, Some(w)) => Workload::parse(w)?,
            _ => self
                .workload
                .clone()
                .ok_or("cannot tell which workload this request is for: start meshguard with --workload, or have a trusted proxy send X-Meshguard-Workload")?,
        };
        let client_ip = if trusted {
            h("x-forwarded-for")
                .and_then(|x| x.split(',').next())
                .and_then(|ip| ip.trim().parse().ok())
                .unwrap_or(peer.ip())
        } else {
            peer.ip()
        };
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
                ip: Some(client_ip),
                remote_ip: None,
            },
            sni: None,
            http: Some(HttpRequest::new(method, host, uri, headers, mesh)),
            custom: Vec::new(),
        };
        let mut id = Identity::default();
        if trusted {
            if let Some(p) = h("x-forwarded-client-cert").and_then(xfcc_uri) {
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
            Err(e) => {
                self.state
                    .metrics
                    .internal_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "denying a request that cannot be decided");
                (
                    Outcome::internal(format!("denied (fail closed): {e}"), g.id),
                    Request::default(),
                    Identity::default(),
                )
            }
        };
        self.state.metrics.record_decision(
            "http",
            outcome.allowed,
            outcome.status,
            outcome.policy.as_deref(),
            started.elapsed(),
        );
        self.log
            .write(log_entry("http", &req_id, &request, &id, &outcome, started));
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
