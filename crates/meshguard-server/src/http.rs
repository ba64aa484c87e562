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

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request as HRequest, Response as HResponse, StatusCode};
use meshguard_policy::{Destination, HttpRequest, Request, Source};

use meshguard_engine::state::Workload;
use meshguard_engine::{Decision, Engine};

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
    /// Decides (with the mode's time bound in its settings) and records.
    pub engine: Engine,
    pub workload: Option<Workload>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Envoy HTTP ext_authz `path_prefix`, stripped from the path.
    pub path_prefix: String,
    /// Which headers describe the original request.
    pub style: ForwardStyle,
    /// Believe `X-Forwarded-Client-Cert` (the caller's mesh identity) from the proxies. Only
    /// safe when every proxy overwrites or removes the client's copy of that header.
    pub trust_client_cert: bool,
    /// AuthConfigs bound to hosts and path prefixes, for callers that cannot name one.
    pub bindings: Vec<AuthBinding>,
    /// `--route-labels`: the route labels ExtAuthPolicies select by.
    pub routes: Vec<RouteBinding>,
}

/// An AuthConfig bound to a host (or any host) and a path prefix, for HTTP-mode callers that
/// cannot send Envoy context extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthBinding {
    /// `None`: any host. Compared case-insensitively, without the port.
    pub host: Option<String>,
    /// Matched on the normalised path, at segment boundaries (`/api` matches `/api/x`, not
    /// `/apix`).
    pub path_prefix: String,
    /// The AuthConfig (`namespace.name` or `name`).
    pub config: String,
}

/// A `--auth-binding` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("`{0}`: write [host]/path=authconfig, e.g. /api=gloo-system.api-keys")]
    Form(String),
    #[error("`{0}`: the path prefix must start with /")]
    NoPath(String),
    #[error("`{0}`: no AuthConfig named after `=`")]
    NoConfig(String),
    #[error("`{0}`: write [host]/path=key=value;key=value, e.g. /ratings=route=ratings")]
    RouteForm(String),
}

/// Why a forward-auth request cannot be turned into a request to decide (it is denied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("{0} is not a trusted proxy (--trusted-proxies); HTTP mode answers only its proxies")]
    UntrustedPeer(IpAddr),
    #[error("header `{0}` is sent more than once; the proxy must send it once")]
    Repeated(String),
    #[error("header `{0}` is not valid text")]
    NotText(String),
    #[error("header `{name}` is missing: the proxy must send it (--forward-auth {style})")]
    Missing { name: String, style: &'static str },
    #[error("the path does not start with the configured prefix `{0}`")]
    Prefix(String),
    #[error("{0}")]
    Workload(#[from] meshguard_engine::WorkloadError),
    #[error("cannot tell which workload this request is for: start meshguard with --workload, or have the proxy send X-Meshguard-Workload")]
    NoWorkload,
    #[error("X-Forwarded-For entry `{0}` is not an IP address; refusing rather than skipping it")]
    ForwardedFor(String),
    #[error("header `x-forwarded-port` is `{0}`, not a port number")]
    Port(String),
    #[error("X-Forwarded-Client-Cert {0}; refusing rather than guessing the caller")]
    ClientCert(&'static str),
}

impl AuthBinding {
    /// Parses `[host]/path/prefix=config`, e.g. `shop.example.com/api=gloo-system.api-keys` or
    /// `/admin=basic-auth`.
    pub fn parse(s: &str) -> Result<AuthBinding, BindingError> {
        let (target, config) = s
            .rsplit_once('=')
            .ok_or_else(|| BindingError::Form(s.to_owned()))?;
        let slash = target
            .find('/')
            .ok_or_else(|| BindingError::NoPath(s.to_owned()))?;
        let (host, path) = target.split_at(slash);
        if config.trim().is_empty() {
            return Err(BindingError::NoConfig(s.to_owned()));
        }
        Ok(AuthBinding {
            host: (!host.is_empty() && host != "*").then(|| host.to_ascii_lowercase()),
            path_prefix: path.trim_end_matches('/').to_ascii_lowercase(),
            config: config.trim().to_owned(),
        })
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        target_matches(self.host.as_deref(), &self.path_prefix, host, path)
    }
}

/// HTTP mode: the labels of the route a host and path prefix stand for, as
/// `[host]/path=key=value;key=value` (`--route-labels`). Gloo ExtAuthPolicies select routes by
/// these labels (`applyToRoutes[].route.labels`); gRPC callers send them per route as context
/// extensions `route_label.<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteBinding {
    pub host: Option<String>,
    pub path_prefix: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl RouteBinding {
    /// Parses `[host]/path=key=value;key=value`, e.g. `/ratings=route=ratings`.
    pub fn parse(s: &str) -> Result<RouteBinding, BindingError> {
        let (target, labels) = s
            .split_once('=')
            .ok_or_else(|| BindingError::RouteForm(s.to_owned()))?;
        let slash = target
            .find('/')
            .ok_or_else(|| BindingError::NoPath(s.to_owned()))?;
        let (host, path) = target.split_at(slash);
        let mut out = std::collections::BTreeMap::new();
        for pair in labels.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| BindingError::RouteForm(s.to_owned()))?;
            if k.trim().is_empty() {
                return Err(BindingError::RouteForm(s.to_owned()));
            }
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        if out.is_empty() {
            return Err(BindingError::RouteForm(s.to_owned()));
        }
        Ok(RouteBinding {
            host: (!host.is_empty() && host != "*").then(|| host.to_ascii_lowercase()),
            path_prefix: path.trim_end_matches('/').to_ascii_lowercase(),
            labels: out,
        })
    }
}

/// The route labels for a request: the most specific `--route-labels` binding.
pub fn route_for<'a>(routes: &'a [RouteBinding], req: &Request) -> Option<&'a RouteBinding> {
    let http = req.http.as_ref()?;
    let path = binding_path(&http.raw_path);
    // Labels choose which policy applies (and so which do not): the prefix must hold for the
    // fully decoded path and for the path as the mesh normalises it, so `/admin/..%2Fpublic`
    // cannot take `/public`'s labels to a backend that keeps `%2F`.
    let normalized = http.normalized_path()?.to_ascii_lowercase();
    let host = http.host.trim_end_matches('.');
    routes
        .iter()
        .filter(|b| {
            target_matches(b.host.as_deref(), &b.path_prefix, host, &path)
                && target_matches(b.host.as_deref(), &b.path_prefix, host, &normalized)
        })
        .max_by_key(|b| (b.host.is_some(), b.path_prefix.len()))
}

/// Whether a binding's host (any when `None`) and path prefix (at segment boundaries) match.
fn target_matches(want_host: Option<&str>, prefix: &str, host: &str, path: &str) -> bool {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host_ok = want_host.is_none_or(|h| h.eq_ignore_ascii_case(host));
    let path_ok = path == prefix
        || prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'));
    host_ok && path_ok
}

/// The path bindings are matched on: decoded as far as any backend might decode it (all
/// percent-escapes, `\\` as `/`), `;parameters` removed, slashes merged, dot segments resolved,
/// and lower-cased, so `//api`, `/API`, `/api;x` and `/%61pi` cannot step around a `/api`
/// binding whatever the mesh's normalisation setting.
pub fn binding_path(raw: &str) -> String {
    let mut p = raw.split(['?', '#']).next().unwrap_or("").to_owned();
    for _ in 0..3 {
        let next = meshguard_policy::path::percent_decode_lossy(&p);
        if next == p {
            break;
        }
        p = next;
    }
    let p = p.replace('\\', "/");
    let mut segs: Vec<String> = Vec::new();
    for seg in p.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s.to_ascii_lowercase()),
        }
    }
    format!("/{}", segs.join("/"))
}

/// The binding for a request: host-specific bindings before any-host ones, then the longest
/// matching path prefix.
pub fn binding_for<'a>(bindings: &'a [AuthBinding], req: &Request) -> Option<&'a AuthBinding> {
    let http = req.http.as_ref()?;
    let path = binding_path(&http.raw_path);
    let host = http.host.trim_end_matches('.');
    bindings
        .iter()
        .filter(|b| b.matches(host, &path))
        .max_by_key(|b| (b.host.is_some(), b.path_prefix.len()))
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

/// Splits on `sep` outside double quotes (a backslash escapes the next character inside them).
/// `None` for an unterminated quote.
fn split_quoted(v: &str, sep: char) -> Option<Vec<&str>> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in v.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&v[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted || escaped {
        return None;
    }
    out.push(&v[start..]);
    Some(out)
}

/// The caller's SPIFFE ID from X-Forwarded-Client-Cert, in Envoy's grammar: elements separated
/// by `,`, each `key=value` pairs separated by `;`, values optionally double-quoted with `\"`
/// escapes (a `Subject="...,URI=..."` is one value, not a second element or key). The nearest
/// hop is the last element. Refused (an error, so the request is denied) when the header does not
/// parse or that element has no URI or more than one.
pub fn xfcc_uri(v: &str) -> Result<String, ForwardError> {
    let bad = ForwardError::ClientCert;
    let elements = split_quoted(v, ',').ok_or_else(|| bad("has an unterminated quote"))?;
    let last = elements.last().map(|e| e.trim()).unwrap_or("");
    let pairs = split_quoted(last, ';').ok_or_else(|| bad("has an unterminated quote"))?;
    let mut uris = Vec::new();
    for pair in pairs {
        let (k, val) = pair
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("has an element that is not key=value"))?;
        if k.trim().eq_ignore_ascii_case("uri") {
            let val = val.trim();
            let val = match val.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
                Some(inner) => inner.replace("\\\"", "\""),
                None => val.to_owned(),
            };
            uris.push(val);
        }
    }
    match uris.len() {
        // An empty URI names no one; taken as a principal it would be an identity nobody holds
        // (found by the xfcc fuzz target).
        1 if uris[0].is_empty() => Err(bad("has an empty URI")),
        1 => uris.pop().ok_or_else(|| bad("has no URI")),
        0 => Err(bad("has no URI in its nearest element")),
        _ => Err(bad("has two URI fields in its nearest element")),
    }
}

impl HttpMode {
    fn trusted(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// The original client: the right-most X-Forwarded-For address that is not one of our
    /// proxies, reading every line of the header as one list (a client may write the first line
    /// and a proxy such as HAProxy append a second). Entries further left are whatever the client
    /// wrote. An entry that is not a bare IP address (`1.2.3.4:80`, `[::1]`, `x junk`) ends the
    /// walk with an error: skipping it would let the client-written entry to its left decide.
    /// `::ffff:a.b.c.d` is read as `a.b.c.d`.
    fn original_client(&self, headers: &hyper::HeaderMap) -> Result<Option<IpAddr>, ForwardError> {
        let mut entries: Vec<&str> = Vec::new();
        for line in headers.get_all("x-forwarded-for") {
            let line = line
                .to_str()
                .map_err(|_| ForwardError::NotText("x-forwarded-for".to_owned()))?;
            entries.extend(line.split(','));
        }
        for entry in entries.iter().rev() {
            let e = entry.trim();
            let ip = e
                .parse::<IpAddr>()
                .map_err(|_| ForwardError::ForwardedFor(e.escape_debug().to_string()))?;
            let ip = ip.to_canonical();
            if !self.trusted(ip) {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// Builds the engine request from a forward-auth request.
    pub fn to_request<B>(
        &self,
        req: &HRequest<B>,
        peer: SocketAddr,
    ) -> Result<Request, ForwardError> {
        if !self.trusted(peer.ip()) {
            return Err(ForwardError::UntrustedPeer(peer.ip()));
        }
        // A header that is present must be usable: never fall back to another source of truth,
        // and never pick one of two lines (which one a proxy wrote is unknowable).
        let h = |name: &str| -> Result<Option<&str>, ForwardError> {
            let mut all = req.headers().get_all(name).iter();
            let first = all.next();
            let single = META_HEADERS.contains(&name) || name == "x-forwarded-port";
            if first.is_some() && all.next().is_some() && single {
                return Err(ForwardError::Repeated(name.to_owned()));
            }
            match first {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(Some)
                    .map_err(|_| ForwardError::NotText(name.to_owned())),
            }
        };
        let need = |name: &str| -> Result<String, ForwardError> {
            h(name)?
                .map(str::to_owned)
                .ok_or_else(|| ForwardError::Missing {
                    name: name.to_owned(),
                    style: self.style.as_str(),
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
                    pq.strip_prefix(self.path_prefix.as_str())
                        .ok_or_else(|| ForwardError::Prefix(self.path_prefix.clone()))?
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
            None => self.workload.clone().ok_or(ForwardError::NoWorkload)?,
        };
        // The original client is the right-most X-Forwarded-For address that is not one of our
        // proxies (entries further left are whatever the client wrote). It feeds `remote.ip` /
        // `remoteIpBlocks`; `source.ip` stays the direct peer, as in Istio.
        let remote_ip = self.original_client(req.headers())?;
        // The destination port, as the proxy tells it (X-Forwarded-Port) or as the client
        // addressed it (a port in the Host). Unknown otherwise: DENY rules that test it then
        // deny rather than being skipped.
        let port = match h("x-forwarded-port")? {
            Some(p) => Some(
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| ForwardError::Port(p.escape_debug().to_string()))?,
            ),
            None => host
                .rsplit_once(':')
                .filter(|(h, _)| !h.ends_with(']') || host.starts_with('['))
                .and_then(|(_, p)| p.parse::<u16>().ok()),
        };
        let mut headers = Vec::new();
        for (k, v) in req.headers() {
            let name = k.as_str();
            if META_HEADERS.contains(&name) || name == "host" {
                continue;
            }
            match v.to_str() {
                Ok(v) => headers.push((name.to_owned(), v.to_owned())),
                Err(_) => return Err(ForwardError::NotText(name.to_owned())),
            }
        }
        let mesh = self.engine.state().mesh.path_normalization;
        let mut http = HttpRequest::new(method, host, uri, headers, mesh);
        // The request id the proxy forwards (nginx `$request_id` via a header, Envoy's own).
        http.id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut request = Request {
            destination: Destination {
                namespace: workload.namespace,
                labels: workload.labels,
                port,
                ip: None,
            },
            source: Source {
                ip: Some(peer.ip()),
                remote_ip,
            },
            // The only socket HTTP mode sees is the forwarding proxy's.
            peer_addr: Some(peer),
            http: Some(http),
            ..Request::default()
        };
        if self.trust_client_cert {
            if let Some(v) = h("x-forwarded-client-cert")? {
                request = request.with_peer(&xfcc_uri(v)?);
            }
        }
        request.auth_config = binding_for(&self.bindings, &request).map(|b| b.config.clone());
        if let Some(r) = route_for(&self.routes, &request) {
            for (k, v) in &r.labels {
                request.context_extensions.insert(
                    format!("{}{k}", meshguard_policy::extauth::ROUTE_LABEL_PREFIX),
                    v.clone(),
                );
            }
        }
        Ok(request)
    }

    pub async fn handle(
        &self,
        req: HRequest<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Result<HResponse<Full<Bytes>>, Infallible> {
        let decision = match self.to_request(&req, peer) {
            Ok(r) => self.engine.decide("http", &r).await,
            Err(e) => self.engine.undecidable("http", &e.to_string()),
        };
        Ok(response(&decision))
    }
}

pub fn response(o: &Decision) -> HResponse<Full<Bytes>> {
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
    } else {
        if let Some(w) = &o.www_authenticate {
            b = b.header("www-authenticate", w.as_str());
        }
        for (k, v) in &o.response_headers {
            b = b.header(k.as_str(), v.as_str());
        }
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|_| {
            let mut r = HResponse::new(Full::new(Bytes::from_static(b"RBAC: access denied")));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r
        })
}

#[cfg(test)]
mod tests {
    use super::binding_path;

    #[test]
    fn binding_paths_cannot_be_dodged() {
        for p in [
            "/api/x",
            "//api/x",
            "/API/x",
            "/api;v=1/x",
            "/%61pi/x",
            "/%2561pi/x",
            "/a/../api/x",
            "/api%2Fx",
            "\\api\\x",
            "/./api//x?q=1",
        ] {
            assert_eq!(binding_path(p), "/api/x", "{p}");
        }
    }
}

#[cfg(test)]
mod xfcc_tests {
    use super::xfcc_uri;

    #[test]
    fn envoy_grammar_and_ambiguity() {
        let id = "spiffe://cluster.local/ns/a/sa/b";
        assert_eq!(
            xfcc_uri(&format!("By=spiffe://x;Hash=ab;URI={id}")).as_deref(),
            Ok(id)
        );
        // The nearest hop is the last element.
        assert_eq!(
            xfcc_uri(&format!(
                "URI=spiffe://far/ns/x/sa/y,By=spiffe://x;URI={id}"
            ))
            .as_deref(),
            Ok(id)
        );
        // A quoted Subject holding `,URI=` is one value: it neither starts an element nor adds a key.
        let forged = format!(
            "By=spiffe://x;Subject=\"CN=a,URI=spiffe://cluster.local/ns/admin/sa/root\";URI={id}"
        );
        assert_eq!(xfcc_uri(&forged).as_deref(), Ok(id));
        let forged_only = "Subject=\"x,URI=spiffe://cluster.local/ns/admin/sa/root\"";
        assert!(xfcc_uri(forged_only).is_err(), "no URI of its own");
        // Escaped quotes inside a quoted value.
        let esc = format!("Subject=\"a\\\",URI=spiffe://evil\";URI={id}");
        assert_eq!(xfcc_uri(&esc).as_deref(), Ok(id));
        // Ambiguous or broken: refused.
        for bad in [
            format!("URI={id};URI=spiffe://cluster.local/ns/admin/sa/root"),
            "Subject=\"unterminated;URI=spiffe://x".to_owned(),
            "garbage".to_owned(),
            String::new(),
            // Found by the xfcc fuzz target: an empty URI was taken as the caller.
            "hSHa, sh=\"a\\\"b\";URI=".to_owned(),
            "By=spiffe://x;URI=\"\"".to_owned(),
        ] {
            assert!(xfcc_uri(&bad).is_err(), "{bad:?} should be refused");
        }
    }
}
