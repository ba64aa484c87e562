//! CUSTOM policies whose provider is a meshConfig `envoyExtAuthzGrpc` or `envoyExtAuthzHttp`
//! service: the call Envoy's ext_authz filter makes, made for real, with the settings istiod
//! gives that filter (pilot/pkg/security/authz/builder/extauthz.go).
//!
//! - gRPC: the request as an ext_authz v3 `CheckRequest` (`meshguard-envoy`'s codec): source
//!   and destination addresses and principals, the request time, the HTTP request with its
//!   headers (pseudo-headers included and Host only as `:authority`, as Envoy sends them), `size`
//!   (the Content-Length, or -1) and, with `includeRequestBodyInCheck`, the body (`body`, or
//!   `raw_body` with `packAsBytes`) and `x-envoy-auth-partial-body`. OK allows with the answer's
//!   header mutations; any other status denies with its denied response (403 by default).
//! - HTTP (HTTP/1.1, a plain hyper client: no redirects followed, no headers of its own): the
//!   original method, `pathPrefix` + the original path, Host, Authorization, Content-Length,
//!   the headers `includeRequestHeadersInCheck` matches and the fixed
//!   `includeAdditionalHeadersInCheck` ones, the body and `x-envoy-auth-partial-body` when asked
//!   for. 200 allows: headers matching `headersToUpstreamOnAllow` go to the app, those matching
//!   `headersToDownstreamOnAllow` to the client, `x-envoy-auth-headers-to-remove` names headers
//!   to drop. Any other status below 500 denies with that status, the body and the headers
//!   `headersToDownstreamOnDeny` allows (all but Host when it is empty).
//!
//! `crates/meshguard/tests/custom_ext_authz.rs` sends the same requests through Envoy 1.40
//! configured as istiod configures it and requires the same check requests and answers.
//! - Errors (unreachable, `timeout` passed, a gRPC call error, HTTP 5xx) deny with
//!   `statusOnError` (403), or allow with `failOpen`. A body over `maxRequestBytes` without
//!   `allowPartialMessage` is 413, whatever `failOpen` says (Envoy checks it first).

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshguard_envoy as envoy;
use meshguard_policy::mesh::{any_matches, ExtAuthzKind, ExtAuthzProvider, HttpService};
use meshguard_policy::Request;
use serde_json::{Map, Value};

/// The most of an HTTP provider's denial body passed on to the client.
const MAX_DENIED_BODY: usize = 64 * 1024;

/// Response headers a proxy never copies from an authorization answer to another message.
const NOT_COPIED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// What a provider answered, in the terms the pipeline applies.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub allowed: bool,
    /// A denial's status (200 when allowed).
    pub status: u16,
    /// Why, for the decision log (never a credential).
    pub reason: String,
    /// Allowed: headers for the app (replacing the client's of the same name).
    pub headers_to_add: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    pub query_params_to_remove: Vec<String>,
    /// Headers for the client: a denial's, or on success the ones to add to the app's answer.
    pub response_headers: Vec<(String, String)>,
    /// A denial's body.
    pub body: String,
    pub dynamic_metadata: Map<String, Value>,
}

impl Outcome {
    fn deny(status: u16, reason: String) -> Outcome {
        Outcome {
            allowed: false,
            status,
            reason,
            ..Outcome::default()
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

enum Transport {
    Grpc(envoy::Client),
    Http(Box<HttpClient>),
    /// The provider's address cannot be used: every call fails closed with this reason.
    Broken(String),
}

/// One provider, ready to call.
pub struct Provider {
    pub cfg: ExtAuthzProvider,
    transport: Transport,
}

/// Every ext_authz provider of the mesh config, built once per policy generation (the channels
/// connect lazily, on the first call).
#[derive(Default)]
pub struct Providers {
    by_name: HashMap<String, Provider>,
}

impl Providers {
    pub fn build(mesh: &meshguard_policy::MeshConfig) -> Providers {
        let mut by_name = HashMap::new();
        if mesh.ext_authz.is_empty() {
            return Providers { by_name };
        }
        // One HTTP client for the HTTP providers (connections pooled per provider address).
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http: HttpClient = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        for p in &mesh.ext_authz {
            let transport = match &p.kind {
                ExtAuthzKind::Grpc => match envoy::Client::lazy(&p.authority(), p.timeout) {
                    Ok(c) => Transport::Grpc(c),
                    Err(e) => Transport::Broken(e.to_string()),
                },
                ExtAuthzKind::Http(_) => Transport::Http(Box::new(http.clone())),
            };
            by_name.insert(
                p.name.clone(),
                Provider {
                    cfg: p.clone(),
                    transport,
                },
            );
        }
        Providers { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// How much of a request body the CUSTOM provider of a workload wants (Envoy buffers it before
/// the check): `None` when its provider is not an ext_authz service with
/// `includeRequestBodyInCheck`. Front ends that stream bodies (the proxy) buffer this much.
pub fn body_limit(
    g: &crate::state::Generation,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<u32> {
    if g.remote.is_empty() {
        return None;
    }
    g.set
        .custom_providers(namespace, labels)
        .into_iter()
        .filter_map(|name| g.remote.get(name))
        .filter_map(|p| p.cfg.body.as_ref().map(|b| b.max_request_bytes))
        .max()
}

impl Provider {
    /// An error talking to the provider: `failOpen` allows, otherwise `statusOnError`.
    fn error(&self, why: String) -> Outcome {
        tracing::warn!(provider = %self.cfg.name, error = %why, fail_open = self.cfg.fail_open, "ext_authz provider call failed");
        if self.cfg.fail_open {
            Outcome {
                allowed: true,
                status: 200,
                reason: format!(
                    "ext_authz provider `{}` failed ({why}); allowed by failOpen",
                    self.cfg.name
                ),
                ..Outcome::default()
            }
        } else {
            Outcome::deny(
                self.cfg.status_on_error,
                format!(
                    "denied (fail closed): ext_authz provider `{}` failed: {why}",
                    self.cfg.name
                ),
            )
        }
    }

    /// Asks the provider about one request (or, with no HTTP part, one TCP connection).
    pub async fn check(&self, req: &Request) -> Outcome {
        if let (Some(b), Some((_, partial))) = (&self.cfg.body, self.body(req)) {
            if partial && !b.allow_partial_message {
                // Envoy's local reply: 413 with the status text as the body.
                return Outcome {
                    body: "Payload Too Large".into(),
                    ..Outcome::deny(
                    413,
                    format!(
                        "the request body is larger than includeRequestBodyInCheck.maxRequestBytes ({}) of ext_authz provider `{}` and allowPartialMessage is off",
                        b.max_request_bytes, self.cfg.name
                    ),
                )
                };
            }
        }
        match &self.transport {
            Transport::Broken(why) => Outcome::deny(
                self.cfg.status_on_error,
                format!(
                    "denied (fail closed): ext_authz provider `{}` is not usable: {why}",
                    self.cfg.name
                ),
            ),
            Transport::Grpc(c) => self.grpc(c, req).await,
            Transport::Http(c) => match &self.cfg.kind {
                ExtAuthzKind::Http(s) => self.http(c, s, req).await,
                ExtAuthzKind::Grpc => self.error("misconfigured provider".into()),
            },
        }
    }

    /// The body Envoy would buffer for the check: at most `maxRequestBytes`, and whether it was
    /// cut. `None` when the provider does not ask for bodies or the request has none (or an
    /// empty one).
    fn body<'r>(&self, req: &'r Request) -> Option<(&'r [u8], bool)> {
        let b = self.cfg.body.as_ref()?;
        let body = req
            .http
            .as_ref()?
            .body
            .as_ref()
            .filter(|b| !b.bytes.is_empty())?;
        let max = usize::try_from(b.max_request_bytes).unwrap_or(usize::MAX);
        let cut = body.bytes.len() > max;
        let bytes = if cut {
            &body.bytes[..max]
        } else {
            &body.bytes[..]
        };
        Some((bytes, cut || body.truncated))
    }

    async fn grpc(&self, client: &envoy::Client, req: &Request) -> Outcome {
        let mut cr = match (req.local_addr, req.destination.port) {
            // Envoy's destination address is the connection's original destination: the
            // workload port, not the port a proxy listener happens to be bound to.
            (Some(a), Some(port)) if a.port() != port => {
                let mut r = req.clone();
                r.local_addr = Some(std::net::SocketAddr::new(a.ip(), port));
                envoy::to_check_request(&r)
            }
            _ => envoy::to_check_request(req),
        };
        let body = self.body(req);
        if let Some(r) = cr.attributes.as_mut().and_then(|a| a.request.as_mut()) {
            // When Envoy started the check.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            r.time = Some(envoy_types::pb::google::protobuf::Timestamp {
                seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
            });
        }
        if let Some(h) = cr
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            // Envoy's CheckRequest carries the pseudo-headers in `headers` too, and Host only
            // as `:authority`.
            if let Some(r) = req.http.as_ref() {
                h.headers.remove("host");
                h.headers.insert(":method".into(), r.method.clone());
                h.headers.insert(":path".into(), r.raw_path.clone());
                h.headers.insert(":authority".into(), r.host.clone());
                if !r.scheme.is_empty() {
                    h.headers.insert(":scheme".into(), r.scheme.clone());
                }
            }
            // `size`: the request's Content-Length, -1 when it has none (Envoy).
            h.size = h
                .headers
                .get("content-length")
                .and_then(|l| l.trim().parse::<i64>().ok())
                .unwrap_or(-1);
            h.body.clear();
            h.raw_body.clear();
            // No body (a GET): Envoy buffers nothing and adds no partial-body header.
            if let Some((bytes, partial)) = body {
                if self.cfg.body.as_ref().is_some_and(|b| b.pack_as_bytes) {
                    h.raw_body = bytes.to_vec();
                } else {
                    h.body = String::from_utf8_lossy(bytes).into_owned();
                }
                h.headers
                    .insert("x-envoy-auth-partial-body".into(), partial.to_string());
            }
        }
        let (mut answer, named_status) = match client.check(cr).await {
            Ok(r) => {
                // Envoy takes a denial's status from the denied response only; without one it
                // is 403, whatever the gRPC code (UNAUTHENTICATED too, seen with Envoy 1.40).
                let named = matches!(
                    &r.http_response,
                    Some(envoy_types::ext_authz::v3::pb::HttpResponse::DeniedResponse(d))
                        if d.status.as_ref().is_some_and(|s| (100..=599).contains(&s.code))
                );
                (envoy::from_check_response(&r), named)
            }
            Err(e) => return self.error(format!("gRPC Check failed: {e}")),
        };
        if !answer.allowed && !named_status {
            answer.status = 403;
        }
        let name = &self.cfg.name;
        if answer.allowed {
            return Outcome {
                allowed: true,
                status: 200,
                reason: format!("allowed by ext_authz provider `{name}`"),
                headers_to_add: answer.headers_to_add,
                headers_to_remove: answer.headers_to_remove,
                query_params_to_remove: answer.query_params_to_remove,
                response_headers: answer.response_headers,
                body: String::new(),
                dynamic_metadata: answer.dynamic_metadata,
            };
        }
        let why = if answer.message.is_empty() {
            String::new()
        } else {
            format!(": {}", answer.message)
        };
        Outcome {
            allowed: false,
            status: answer.status,
            reason: format!(
                "denied by ext_authz provider `{name}` ({}){why}",
                answer.status
            ),
            response_headers: answer.response_headers,
            body: answer.body,
            dynamic_metadata: answer.dynamic_metadata,
            ..Outcome::default()
        }
    }

    async fn http(&self, client: &HttpClient, s: &HttpService, req: &Request) -> Outcome {
        let Some(h) = req.http.as_ref() else {
            // istiod adds HTTP providers to HTTP filter chains only; the policy layer drops
            // their CUSTOM rules on TCP, so this is a connection with nothing to send.
            return self.error("an HTTP ext_authz provider cannot check a TCP connection".into());
        };
        let url = format!(
            "http://{}{}{}",
            self.cfg.authority(),
            s.path_prefix,
            h.raw_path
        );
        // Always sent (Envoy's default matchers): Host, Method, Path, Content-Length and
        // Authorization; then the headers includeRequestHeadersInCheck matches.
        let mut sent: Vec<(String, String)> = Vec::new();
        sent.push(("host".into(), h.host.clone()));
        for (k, v) in &h.headers {
            let k = k.to_ascii_lowercase();
            if k == "host" || k == "content-length" || NOT_COPIED.contains(&k.as_str()) {
                continue;
            }
            if k == "authorization" || any_matches(&s.include_request_headers, &k) {
                sent.push((k, v.clone()));
            }
        }
        // The fixed headers replace client headers of the same name.
        for (k, v) in &s.additional_headers {
            sent.retain(|(x, _)| x != k);
            sent.push((k.clone(), v.clone()));
        }
        let body = self.body(req);
        if let Some((_, partial)) = body {
            // Envoy adds it whenever it buffered a body, whatever the header lists say.
            sent.retain(|(x, _)| x != "x-envoy-auth-partial-body");
            sent.push(("x-envoy-auth-partial-body".into(), partial.to_string()));
        }
        let mut b = hyper::Request::builder()
            .method(h.method.as_str())
            .uri(&url);
        for (k, v) in &sent {
            b = b.header(k.as_str(), v.as_str());
        }
        let payload = body.map_or_else(Bytes::new, |(bytes, _)| Bytes::copy_from_slice(bytes));
        if payload.is_empty() {
            // Content-Length: 0 and no body, as Envoy sends the check request.
            b = b.header("content-length", "0");
        }
        let check = match b.body(Full::new(payload)) {
            Ok(r) => r,
            Err(e) => return self.error(format!("the check request cannot be built: {e}")),
        };
        let call = async {
            let resp = client.request(check).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            // Only a denial's body is passed on; an allow's is not read past the headers.
            let text = if parts.status == hyper::StatusCode::OK {
                String::new()
            } else {
                read_capped(body, MAX_DENIED_BODY).await
            };
            Ok::<_, String>((parts, text))
        };
        let (parts, denial_body) = match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return self.error(format!("HTTP check failed: {e}")),
            Err(_) => {
                return self.error(format!("HTTP check timed out after {:?}", self.cfg.timeout))
            }
        };
        let status = parts.status.as_u16();
        let name = &self.cfg.name;
        if status >= 500 {
            return self.error(format!("the HTTP check answered {status}"));
        }
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_owned(), v.to_owned()))
            })
            .collect();
        if status == 200 {
            let pick = |list: &[meshguard_policy::mesh::HeaderPattern]| {
                headers
                    .iter()
                    .filter(|(k, _)| any_matches(list, k))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let headers_to_remove = headers
                .iter()
                .filter(|(k, _)| k == "x-envoy-auth-headers-to-remove")
                .flat_map(|(_, v)| v.split(','))
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty() && !n.starts_with(':') && n != "host")
                .collect();
            return Outcome {
                allowed: true,
                status: 200,
                reason: format!("allowed by ext_authz provider `{name}` (HTTP 200)"),
                headers_to_add: pick(&s.headers_to_upstream_on_allow)
                    .into_iter()
                    .filter(|(k, _)| k != "x-envoy-auth-headers-to-remove")
                    .collect(),
                headers_to_remove,
                response_headers: pick(&s.headers_to_downstream_on_allow),
                ..Outcome::default()
            };
        }
        // A denial: the status, the body and the headers the client may see. Envoy adds Path,
        // Status, Content-Length, WWW-Authenticate and Location to a non-empty list.
        let response_headers = if s.headers_to_downstream_on_deny.is_empty() {
            headers
        } else {
            headers
                .into_iter()
                .filter(|(k, _)| {
                    k == "www-authenticate"
                        || k == "location"
                        || any_matches(&s.headers_to_downstream_on_deny, k)
                })
                .collect()
        };
        Outcome {
            allowed: false,
            status,
            reason: format!("denied by ext_authz provider `{name}` (HTTP {status})"),
            response_headers,
            body: denial_body,
            ..Outcome::default()
        }
    }
}

/// Up to `max` bytes of a response body, as text; what cannot be read is left out.
async fn read_capped(mut body: hyper::body::Incoming, max: usize) -> String {
    let mut out = Vec::new();
    while out.len() < max {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(c) = f.data_ref() {
                    let room = max - out.len();
                    out.extend_from_slice(&c[..c.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
