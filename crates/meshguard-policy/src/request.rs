//! The one normalised request the engine sees. Adapters (check files, ext_authz, the proxy)
//! convert into it once; evaluation then allocates nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::path::{normalize, NormalizedPath, PathError, PathNormalization};

/// The workload that receives the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The workload (container/target) port.
    pub port: Option<u16>,
    pub ip: Option<IpAddr>,
}

/// The connection's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// Direct peer address (`ipBlocks`, `source.ip`).
    pub ip: Option<IpAddr>,
    /// Original client address (`remoteIpBlocks`, `remote.ip`); defaults to `ip`.
    pub remote_ip: Option<IpAddr>,
}

/// Why a request is refused before any policy runs, as the sidecar's Envoy refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Path(PathError),
    /// A method that is not an upper-case token (Envoy answers 400).
    Method,
    /// A header name with whitespace or other non-token characters (400).
    HeaderName,
}

/// The methods Envoy 1.40's HTTP/1 codec accepts (observed: every other token, `QUERY` and
/// `M-SEARCH` included, is answered 400 before any filter runs; CONNECT needs an authority-form
/// target). HTTP/2 carries any token.
pub const ENVOY_HTTP1_METHODS: &[&str] = &[
    "ACL",
    "BIND",
    "CHECKOUT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

impl HttpRequest {
    /// Refuses the request as Envoy's HTTP/1 codec would when its method is not one it knows.
    pub fn as_http1(mut self) -> HttpRequest {
        if self.rejection.is_none() && !ENVOY_HTTP1_METHODS.contains(&self.method.as_str()) {
            self.rejection = Some(Rejection::Method);
        }
        self
    }
}

impl Rejection {
    pub fn status(self) -> u16 {
        match self {
            Rejection::Path(p) => p.status(),
            Rejection::Method | Rejection::HeaderName => 400,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Path(p) => p.fmt(f),
            Rejection::Method => f.write_str(
                "the method is not one Envoy's HTTP/1 codec accepts (Envoy 1.40 answers 400 to FOO, QUERY or a lower-case method)",
            ),
            Rejection::HeaderName => f.write_str(
                "a header name contains whitespace or a character not allowed in a token (400)",
            ),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The HTTP part of a request; absent for a plain TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// `:authority` / Host, as sent (port included).
    pub host: String,
    /// The request target as the client sent it.
    pub raw_path: String,
    /// The normalised path without query, or why the target is refused.
    pub path: Result<NormalizedPath, PathError>,
    /// Lower-cased names; repeated headers joined with `,` (as Envoy presents them). Sorted by name.
    pub headers: Vec<(String, String)>,
    /// Every header line as received (lower-cased names, arrival order). Envoy's jwt_authn and
    /// RBAC filters see lines, not the joined view: RBAC 1.40 matches a header rule when any
    /// single line matches, and jwt_authn reads cookies line by line.
    pub lines: Vec<(String, String)>,
    /// Set when the request would be refused before authorization.
    pub rejection: Option<Rejection>,
    /// `http` or `https` as the front end learnt it (Envoy's `:scheme` rule); empty if unknown.
    pub scheme: String,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`; empty if unknown.
    pub protocol: String,
    /// The request id (`x-request-id`, Envoy's `request.http.id`); empty if none.
    pub id: String,
    /// The body, when the front end has it (Envoy `with_request_body`, the proxy's buffer).
    pub body: Option<Body>,
}

/// A request body as the front end received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// The front end cut it (`x-envoy-auth-partial-body: true`, or over its buffer bound).
    pub truncated: bool,
}

/// Envoy's original client address from X-Forwarded-For (see [`Request::derive_remote_ip`]).
pub fn envoy_remote_ip(
    peer: Option<IpAddr>,
    xff: Option<&str>,
    trusted_hops: usize,
) -> Option<IpAddr> {
    let Some(xff) = xff else { return peer };
    let entries: Vec<&str> = xff.split(',').map(str::trim).collect();
    let Some(i) = entries.len().checked_sub(1 + trusted_hops) else {
        return peer;
    };
    match entries[i].parse::<IpAddr>() {
        Ok(ip) => Some(ip.to_canonical()),
        Err(_) => peer,
    }
}

/// The joined view of header lines: sorted by name, repeated names joined with `,` in arrival
/// order. O(n log n) in the number of lines (a stable sort, then one pass), whatever a client
/// sends.
pub fn merge_lines(lines: &[(String, String)]) -> Vec<(String, String)> {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by(|&a, &b| lines[a].0.cmp(&lines[b].0));
    let mut merged: Vec<(String, String)> = Vec::with_capacity(lines.len());
    for i in order {
        let (n, v) = &lines[i];
        match merged.last_mut() {
            Some((last, joined)) if last == n => {
                joined.push(',');
                joined.push_str(v);
            }
            _ => merged.push((n.clone(), v.clone())),
        }
    }
    merged
}

impl HttpRequest {
    /// Builds the HTTP part: normalises the path with the mesh's option and merges headers.
    pub fn new(
        method: impl Into<String>,
        host: impl Into<String>,
        raw_path: impl Into<String>,
        headers: impl IntoIterator<Item = (String, String)>,
        normalization: PathNormalization,
    ) -> HttpRequest {
        let raw_path = raw_path.into();
        let path = normalize(&raw_path, normalization);
        let lines: Vec<(String, String)> = headers
            .into_iter()
            .map(|(mut n, v)| {
                n.make_ascii_lowercase();
                (n, v)
            })
            .collect();
        let merged = merge_lines(&lines);
        let method = method.into();
        let rejection = if let Err(e) = &path {
            Some(Rejection::Path(*e))
        } else if method.is_empty()
            || !method.bytes().all(is_tchar)
            || method.bytes().any(|b| b.is_ascii_lowercase())
        {
            Some(Rejection::Method)
        } else if merged.iter().any(|(n, _)| {
            n.is_empty()
                || !n
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| is_tchar(b) || (i == 0 && b == b':'))
        }) {
            Some(Rejection::HeaderName)
        } else {
            None
        };
        HttpRequest {
            method,
            host: host.into(),
            raw_path,
            path,
            headers: merged,
            lines,
            rejection,
            scheme: String::new(),
            protocol: String::new(),
            id: String::new(),
            body: None,
        }
    }

    /// Every line of one header (lower-case name), in arrival order.
    pub fn header_lines<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Adds a header line (keeping the joined view in step).
    pub fn push_header(&mut self, name: &str, value: &str) {
        self.lines
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self.headers = merge_lines(&self.lines);
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.headers[i].1.as_str())
    }

    /// The normalised path, if the target was accepted.
    pub fn normalized_path(&self) -> Option<&str> {
        self.path.as_ref().ok().map(|p| p.path.as_str())
    }
}

/// One request or connection to decide: everything any front end knows about it, filled once
/// by the adapter (ext_authz gRPC, HTTP forward-auth, the mTLS proxy, `check`, replay) so every
/// step of the pipeline sees the same input however the request arrived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub destination: Destination,
    pub source: Source,
    /// The mTLS peer's SPIFFE ID (`spiffe://...`); `None` for plaintext.
    pub peer: Option<String>,
    /// TLS SNI (`connection.sni`).
    pub sni: Option<String>,
    /// This workload's own SPIFFE ID (the proxy's SVID): what Envoy sends to an ext_authz
    /// provider as `destination.principal`. `None` where the front end does not know it.
    pub local_principal: Option<String>,
    /// The connection's sockets as the front end saw them (the downstream peer and the local
    /// listener): what Envoy sends as `source.address` and `destination.address`.
    pub peer_addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    pub http: Option<HttpRequest>,
    /// Route context: Envoy per-route `context_extensions`.
    pub context_extensions: BTreeMap<String, String>,
    /// The AuthConfig the route binds (`context_extensions.config_id`, an HTTP-mode binding, a
    /// request file's `authConfig`): run before the Istio policies.
    pub auth_config: Option<String>,
    /// Verdicts of CUSTOM (ext_authz) providers already consulted, by provider name.
    pub custom: Vec<(String, bool)>,
    /// A request principal verified before the request reached the engine: the claims of a
    /// `check` request file, a replayed decision. Request authentication is skipped when set.
    /// No adapter of outside traffic fills it.
    pub verified_jwt: Option<std::sync::Arc<JwtIdentity>>,
}

impl Request {
    /// Sets the mTLS peer; accepts `spiffe://td/ns/x/sa/y` or the bare `td/ns/x/sa/y` form.
    pub fn with_peer(mut self, principal: &str) -> Request {
        self.peer = Some(spiffe_uri(principal));
        self
    }

    /// The identity known before request authentication: the mTLS peer (and claims verified
    /// upstream, if any).
    pub fn identity(&self) -> Identity {
        Identity {
            peer: self.peer.clone(),
            jwt: self.verified_jwt.clone(),
        }
    }

    pub fn remote_ip(&self) -> Option<IpAddr> {
        self.source.remote_ip.or(self.source.ip)
    }

    /// Sets `remote.ip` as an Istio sidecar's Envoy derives it (`use_remote_address: false`,
    /// `xff_num_trusted_hops` = meshConfig numTrustedProxies), unless it is already known: the
    /// X-Forwarded-For entry `trusted_hops` places from the right; with fewer entries, or an entry
    /// that is not a bare address, the peer address. Observed with Envoy 1.40 for 0, 1 and 2 hops
    /// (tests below). Note the consequence Envoy has: with 0 hops a client's own right-most
    /// entry is believed.
    pub fn derive_remote_ip(&mut self, trusted_hops: usize) {
        if self.source.remote_ip.is_some() {
            return;
        }
        let Some(h) = &self.http else { return };
        let xff = h.header("x-forwarded-for");
        self.source.remote_ip = envoy_remote_ip(self.source.ip, xff, trusted_hops);
    }

    pub fn custom_verdict(&self, provider: &str) -> Option<bool> {
        self.custom
            .iter()
            .find(|(p, _)| p == provider)
            .map(|(_, v)| *v)
    }
}

/// The result of request authentication (a verified JWT).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JwtIdentity {
    /// `iss/sub`.
    pub principal: String,
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// The verified payload (shared: a cached token hands out the same claims without copying).
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}

impl JwtIdentity {
    /// From a verified payload; `principal` overrides `iss/sub` when the claims lack them.
    pub fn new(
        claims: impl Into<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
        principal: Option<String>,
    ) -> JwtIdentity {
        let claims = claims.into();
        let claim = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let (mut iss, mut sub) = (claim("iss"), claim("sub"));
        if let Some(p) = &principal {
            if let Some(i) = p.rfind('/') {
                iss.get_or_insert_with(|| p[..i].to_owned());
                sub.get_or_insert_with(|| p[i + 1..].to_owned());
            }
        }
        let principal = principal.unwrap_or_else(|| {
            format!(
                "{}/{}",
                iss.as_deref().unwrap_or(""),
                sub.as_deref().unwrap_or("")
            )
        });
        JwtIdentity {
            principal,
            iss,
            sub,
            claims,
        }
    }
}

/// Who is calling: the mTLS peer and the request's JWT, both optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The peer's SPIFFE ID, always with the `spiffe://` scheme. `None` for plaintext.
    pub peer: Option<String>,
    /// Shared so a cached verification hands it out without copying.
    pub jwt: Option<std::sync::Arc<JwtIdentity>>,
}

impl Identity {
    /// Accepts `spiffe://td/ns/x/sa/y` or the bare `td/ns/x/sa/y` form.
    pub fn with_peer(mut self, principal: &str) -> Identity {
        self.peer = Some(spiffe_uri(principal));
        self
    }
}

fn spiffe_uri(principal: &str) -> String {
    if principal.starts_with("spiffe://") {
        principal.to_owned()
    } else {
        format!("spiffe://{principal}")
    }
}

#[cfg(test)]
mod xff_tests {
    use super::envoy_remote_ip;

    /// Envoy 1.40, HCM use_remote_address false, RBAC DENY remote_ip 203.0.113.0/24, a request from
    /// 127.0.0.1 with each X-Forwarded-For (403 means remote.ip was in the blocked network).
    #[test]
    fn remote_ip_as_envoy_derives_it() {
        let peer = Some("127.0.0.1".parse().unwrap());
        let blocked = |hops: usize, xff: Option<&str>| {
            envoy_remote_ip(peer, xff, hops)
                .is_some_and(|ip| ip.to_string().starts_with("203.0.113."))
        };
        let cases: &[(Option<&str>, [bool; 3])] = &[
            (None, [false, false, false]),
            (Some("203.0.113.5"), [true, false, false]),
            (Some("203.0.113.5, 10.0.0.1"), [false, true, false]),
            (Some("10.0.0.1, 203.0.113.5"), [true, false, false]),
            (
                Some("203.0.113.5, 10.0.0.1, 10.0.0.2"),
                [false, false, true],
            ),
            (
                Some("10.0.0.9, 203.0.113.5, 10.0.0.1"),
                [false, true, false],
            ),
            (Some("garbage"), [false, false, false]),
            (Some("203.0.113.5:80"), [false, false, false]),
            (Some("10.0.0.1, garbage"), [false, false, false]),
        ];
        for (xff, want) in cases {
            for (hops, w) in want.iter().enumerate() {
                assert_eq!(blocked(hops, *xff), *w, "xff {xff:?} hops {hops}");
            }
        }
    }
}
