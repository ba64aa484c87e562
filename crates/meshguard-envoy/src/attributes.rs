//! `AttributeContext` <-> [`Request`]: what Envoy says about a request, decoded once; and a
//! request encoded as Envoy's ext_authz filter would send it, for delegating it.
//!
//! The destination workload (whose policies apply) is taken, in this order, from:
//! 1. `context_extensions` set per route in Envoy: `namespace` and optional `labels`
//!    (`app=backend,version=v1`); labels default to `destination.labels` from Envoy's node
//!    metadata;
//! 2. the static workload of a per-workload deployment (`--workload`);
//! 3. the namespace in the destination principal (`spiffe://td/ns/<ns>/...`) with
//!    `destination.labels`.
//!
//! A request where none of these is known is refused (the caller denies: fail closed).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest as HttpAttr, Peer, Request as ReqAttr,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use meshguard_policy::workload::{check_namespace, parse_label_list, Workload, WorkloadError};
use meshguard_policy::{Body, Destination, HttpRequest, MeshConfig, Request, Source};

/// Header lines one CheckRequest may carry. Envoy refuses requests with more than 100 headers by
/// default (`max_headers_count` of the HTTP connection manager) and allows raising it; beyond
/// this bound the request is refused before any per-header work is done.
pub const MAX_CHECK_HEADERS: usize = 4096;

/// Why a CheckRequest cannot become a request (the caller denies, with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("CheckRequest has no attributes")]
    NoAttributes,
    #[error("context_extensions `namespace`: {0}")]
    Namespace(WorkloadError),
    #[error("context_extensions `labels`: {0}")]
    Labels(WorkloadError),
    #[error("the CheckRequest names the workload's namespace but not its labels, so selector policies could not be matched: pass them as route context_extensions `labels` (app=backend,version=v1), as Envoy node metadata labels with the ext_authz filter's bootstrap_metadata_labels_key, or start meshguard with --workload")]
    NoLabels,
    #[error("cannot tell which workload this request is for: set context_extensions `namespace` (and `labels`) on the route, start meshguard with --workload, or send the destination principal")]
    NoWorkload,
    #[error(
        "the CheckRequest carries {0} headers, more than the {MAX_CHECK_HEADERS} meshguard accepts"
    )]
    TooManyHeaders(usize),
    #[error("header `{0}` is not valid UTF-8")]
    NotUtf8(String),
}

fn socket(addr: Option<&Address>) -> (Option<IpAddr>, Option<u16>) {
    match addr.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
                _ => None,
            };
            (s.address.parse().ok(), port)
        }
        _ => (None, None),
    }
}

fn address_of(a: Option<SocketAddr>) -> Option<Address> {
    a.map(|a| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    })
}

fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("spiffe://").unwrap_or(principal);
    let mut parts = rest.split('/');
    while let Some(p) = parts.next() {
        if p == "ns" {
            return parts.next().filter(|n| !n.is_empty());
        }
    }
    None
}

/// Decodes a CheckRequest into the engine's request, once: destination workload, sockets, peer
/// principal, SNI, route context (`context_extensions`, the AuthConfig a route names with
/// `config_id` or `auth_config`), and the HTTP request with its id, protocol, scheme and body.
/// Takes the request by value: header names and values move into the engine's request instead
/// of being copied.
pub fn request_from_check(
    cr: CheckRequest,
    workload: Option<&Workload>,
    mesh: &MeshConfig,
) -> Result<Request, CodecError> {
    let attrs = cr.attributes.ok_or(CodecError::NoAttributes)?;
    let src = attrs.source.as_ref();
    let dst = attrs.destination.as_ref();
    let (src_ip, src_port) = socket(src.and_then(|p| p.address.as_ref()));
    let (dst_ip, dst_port) = socket(dst.and_then(|p| p.address.as_ref()));
    let dst_labels: BTreeMap<String, String> = dst
        .map(|d| {
            d.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let ext = &attrs.context_extensions;
    // Labels must be known, never assumed empty: with none, no selector policy applies and
    // Istio's default would allow the request (istiod's envoyExtAuthzGrpc provider sends no
    // destination labels unless the deployment adds bootstrap_metadata_labels_key).
    let (namespace, labels) = if let Some(ns) = ext.get("namespace").filter(|n| !n.is_empty()) {
        check_namespace(ns).map_err(CodecError::Namespace)?;
        let labels = match ext.get("labels") {
            Some(l) => parse_label_list(l).map_err(CodecError::Labels)?,
            None if !dst_labels.is_empty() => dst_labels,
            None => return Err(CodecError::NoLabels),
        };
        (ns.clone(), labels)
    } else if let Some(w) = workload {
        (w.namespace.clone(), w.labels.clone())
    } else if let Some(ns) = dst.and_then(|d| namespace_of(&d.principal)) {
        if dst_labels.is_empty() {
            return Err(CodecError::NoLabels);
        }
        (ns.to_owned(), dst_labels)
    } else {
        return Err(CodecError::NoWorkload);
    };
    let port = ext.get("port").and_then(|p| p.parse().ok()).or(dst_port);
    let auth_config = ext
        .get("config_id")
        .or_else(|| ext.get("auth_config"))
        .filter(|v| !v.is_empty())
        .cloned();
    let peer = src
        .map(|s| s.principal.as_str())
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    let mut req = Request {
        destination: Destination {
            namespace,
            labels,
            port,
            ip: dst_ip,
        },
        source: Source {
            ip: src_ip,
            remote_ip: None,
        },
        sni: attrs.tls_session.map(|t| t.sni).filter(|s| !s.is_empty()),
        peer_addr: src_ip.zip(src_port).map(|(i, p)| SocketAddr::new(i, p)),
        local_addr: dst_ip.zip(dst_port).map(|(i, p)| SocketAddr::new(i, p)),
        context_extensions: attrs.context_extensions.into_iter().collect(),
        // The AuthConfig the route names (Gloo's `config_id`, `<namespace>.<name>`).
        auth_config,
        ..Request::default()
    };
    if let Some(h) = attrs.request.and_then(|r| r.http) {
        req.http = Some(http_from(h, mesh)?);
    }
    if let Some(p) = peer {
        req = req.with_peer(&p);
    }
    Ok(req)
}

fn http_from(h: HttpAttr, mesh: &MeshConfig) -> Result<HttpRequest, CodecError> {
    let lines = h.headers.len() + h.header_map.as_ref().map_or(0, |m| m.headers.len());
    if lines > MAX_CHECK_HEADERS {
        return Err(CodecError::TooManyHeaders(lines));
    }
    let host = if h.host.is_empty() {
        h.headers.get(":authority").cloned().unwrap_or_default()
    } else {
        h.host
    };
    let id = if h.id.is_empty() {
        h.headers.get("x-request-id").cloned().unwrap_or_default()
    } else {
        h.id
    };
    let truncated = h
        .headers
        .get("x-envoy-auth-partial-body")
        .is_some_and(|v| v == "true");
    // With `encode_raw_headers`, Envoy sends `header_map` (one entry per header line, raw
    // bytes) instead of the merged `headers` map.
    let mut raw: Vec<(String, String)> = Vec::new();
    if let Some(map) = h.header_map {
        for hv in map.headers {
            if hv.key.starts_with(':') || h.headers.contains_key(&hv.key) {
                continue;
            }
            let value = if hv.raw_value.is_empty() {
                hv.value
            } else {
                String::from_utf8(hv.raw_value).map_err(|_| CodecError::NotUtf8(hv.key.clone()))?
            };
            raw.push((hv.key, value));
        }
    }
    let mut headers: Vec<(String, String)> = h
        .headers
        .into_iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .collect();
    headers.extend(raw);
    let mut http = HttpRequest::new(h.method, host, h.path, headers, mesh.path_normalization);
    http.id = id;
    http.protocol = h.protocol;
    http.scheme = h.scheme;
    let bytes = if !h.raw_body.is_empty() {
        Some(h.raw_body)
    } else if !h.body.is_empty() {
        Some(h.body.into_bytes())
    } else {
        None
    };
    http.body = bytes.map(|bytes| Body { bytes, truncated });
    Ok(http)
}

/// Encodes a request as Envoy's ext_authz filter sends it: source (address, principal),
/// destination address, the HTTP request (id, method, path as sent, host, scheme, protocol, the
/// joined headers, the body) and the route's `context_extensions`.
pub fn to_check_request(req: &Request) -> CheckRequest {
    let http = req.http.as_ref().map(|h| HttpAttr {
        id: h.id.clone(),
        method: h.method.clone(),
        path: h.raw_path.clone(),
        host: h.host.clone(),
        scheme: h.scheme.clone(),
        protocol: h.protocol.clone(),
        headers: h.headers.iter().cloned().collect::<HashMap<_, _>>(),
        body: h
            .body
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b.bytes).into_owned())
            .unwrap_or_default(),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: address_of(req.peer_addr),
                principal: req.peer.clone().unwrap_or_default(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: address_of(req.local_addr),
                principal: req.local_principal.clone().unwrap_or_default(),
                ..Default::default()
            }),
            request: Some(ReqAttr {
                http,
                ..Default::default()
            }),
            context_extensions: req
                .context_extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// Sets `metadata_context.filter_metadata[namespace]` (Gloo pass-through passes its chain
/// state and config there).
pub fn set_filter_metadata(
    cr: &mut CheckRequest,
    namespace: &str,
    value: &serde_json::Map<String, serde_json::Value>,
) {
    if let Some(attrs) = cr.attributes.as_mut() {
        attrs
            .metadata_context
            .get_or_insert_with(Default::default)
            .filter_metadata
            .insert(namespace.to_owned(), crate::value::to_struct(value));
    }
}

/// Sets one request header (lower-case name) of an encoded request.
pub fn set_header(cr: &mut CheckRequest, name: &str, value: String) {
    if let Some(h) = cr
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.headers.insert(name.to_owned(), value);
    }
}

/// Drops route context entries that must not travel to another server.
pub fn drop_context_extensions(cr: &mut CheckRequest, names: &[&str]) {
    if let Some(a) = cr.attributes.as_mut() {
        a.context_extensions
            .retain(|k, _| !names.contains(&k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_from_principal() {
        assert_eq!(
            namespace_of("spiffe://cluster.local/ns/prod/sa/web"),
            Some("prod")
        );
        assert_eq!(namespace_of("cluster.local/ns/prod/sa/web"), Some("prod"));
        assert_eq!(namespace_of("spiffe://cluster.local/x"), None);
    }

    /// What a delegate receives decodes to the request that was sent (the codec is one piece
    /// read and written the same way).
    #[test]
    fn a_request_survives_encoding_and_decoding() {
        let mut http = HttpRequest::new(
            "POST",
            "shop.test",
            "/a/../b?x=1",
            [("x-k".to_owned(), "v".to_owned())],
            meshguard_policy::PathNormalization::Base,
        );
        http.id = "r-1".into();
        http.scheme = "https".into();
        http.protocol = "HTTP/2".into();
        http.body = Some(Body {
            bytes: b"{}".to_vec(),
            truncated: false,
        });
        let req = Request {
            destination: Destination {
                namespace: "shop".into(),
                labels: BTreeMap::from([("app".into(), "web".into())]),
                port: Some(8080),
                ip: "10.0.0.2".parse().ok(),
            },
            peer_addr: "10.0.0.1:5000".parse().ok(),
            local_addr: "10.0.0.2:8080".parse().ok(),
            http: Some(http),
            context_extensions: BTreeMap::from([
                ("namespace".into(), "shop".into()),
                ("labels".into(), "app=web".into()),
            ]),
            ..Request::default()
        }
        .with_peer("cluster.local/ns/a/sa/b");
        let back = request_from_check(to_check_request(&req), None, &MeshConfig::default())
            .expect("decodes");
        let mut want = req.clone();
        want.source.ip = "10.0.0.1".parse().ok();
        assert_eq!(back, want);
    }
}
