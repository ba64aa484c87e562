//! Envoy ext_authz v3 over gRPC: `envoy.service.auth.v3.Authorization/Check`.
//!
//! The destination workload (whose policies apply) is taken, in this order, from:
//! 1. `context_extensions` set per route in Envoy: `namespace` and optional `labels`
//!    (`app=backend,version=v1`); labels default to `destination.labels` from Envoy's node metadata;
//! 2. the static `--workload` of a per-workload deployment;
//! 3. the namespace in the destination principal (`spiffe://td/ns/<ns>/...`) with
//!    `destination.labels`.
//!
//! A request where none of these is known is denied (fail closed).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{address, Address};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;
use meshguard_policy::{Destination, HttpRequest, Request, Source};
use tonic::{Response, Status};

use meshguard_engine::state::Workload;
use meshguard_engine::{Decision, Engine};

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

pub struct CheckService {
    pub engine: Engine,
    pub workload: Option<Workload>,
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

/// `app=backend,version=v1` from a route's `context_extensions`: every entry must be
/// `key=value` (a malformed value is refused, never read as fewer labels).
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    meshguard_engine::state::parse_label_list(s)
        .map_err(|e| format!("context_extensions `labels`: {e}"))
}

/// How to tell meshguard a workload's labels, for the reasons of refused requests.
/// Header lines one CheckRequest may carry. Envoy refuses requests with more than 100 headers by
/// default (`max_headers_count` of the HTTP connection manager) and allows raising it; beyond
/// this bound the request is denied before any per-header work is done.
pub const MAX_CHECK_HEADERS: usize = 4096;

const LABELS_HOWTO: &str = "the CheckRequest names the workload's namespace but not its labels, so selector policies could not be matched: pass them as route context_extensions `labels` (app=backend,version=v1), as Envoy node metadata labels with the ext_authz filter's bootstrap_metadata_labels_key, or start meshguard with --workload";

/// Converts a CheckRequest into the engine's request, once.
pub fn to_request(
    cr: &CheckRequest,
    workload: Option<&Workload>,
    mesh: &meshguard_policy::MeshConfig,
) -> Result<Request, String> {
    let attrs = cr
        .attributes
        .as_ref()
        .ok_or("CheckRequest has no attributes")?;
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
        meshguard_engine::state::check_namespace(ns)
            .map_err(|e| format!("context_extensions `namespace`: {e}"))?;
        let labels = match ext.get("labels") {
            Some(l) => parse_labels(l)?,
            None if !dst_labels.is_empty() => dst_labels,
            None => return Err(LABELS_HOWTO.to_owned()),
        };
        (ns.clone(), labels)
    } else if let Some(w) = workload {
        (w.namespace.clone(), w.labels.clone())
    } else if let Some(ns) = dst.and_then(|d| namespace_of(&d.principal)) {
        if dst_labels.is_empty() {
            return Err(LABELS_HOWTO.to_owned());
        }
        (ns.to_owned(), dst_labels)
    } else {
        return Err("cannot tell which workload this request is for: set context_extensions `namespace` (and `labels`) on the route, start meshguard with --workload, or send the destination principal".to_owned());
    };
    let port = ext.get("port").and_then(|p| p.parse().ok()).or(dst_port);
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
        sni: attrs
            .tls_session
            .as_ref()
            .map(|t| t.sni.clone())
            .filter(|s| !s.is_empty()),
        peer_addr: src_ip
            .zip(src_port)
            .map(|(i, p)| std::net::SocketAddr::new(i, p)),
        local_addr: dst_ip
            .zip(dst_port)
            .map(|(i, p)| std::net::SocketAddr::new(i, p)),
        context_extensions: ext.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        // The AuthConfig the route names (Gloo's `config_id`, `<namespace>.<name>`).
        auth_config: ext
            .get("config_id")
            .or_else(|| ext.get("auth_config"))
            .filter(|v| !v.is_empty())
            .cloned(),
        ..Request::default()
    };
    if let Some(h) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) {
        let lines = h.headers.len() + h.header_map.as_ref().map_or(0, |m| m.headers.len());
        if lines > MAX_CHECK_HEADERS {
            return Err(format!(
                "the CheckRequest carries {lines} headers, more than the {MAX_CHECK_HEADERS} meshguard accepts"
            ));
        }
        let host = if h.host.is_empty() {
            h.headers.get(":authority").cloned().unwrap_or_default()
        } else {
            h.host.clone()
        };
        // With `encode_raw_headers`, Envoy sends `header_map` (one entry per header line, raw
        // bytes) instead of the merged `headers` map.
        let mut headers: Vec<(String, String)> = h
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(map) = &h.header_map {
            for hv in &map.headers {
                if hv.key.starts_with(':') || h.headers.contains_key(&hv.key) {
                    continue;
                }
                let value = if hv.raw_value.is_empty() {
                    hv.value.clone()
                } else {
                    String::from_utf8(hv.raw_value.clone())
                        .map_err(|_| format!("header `{}` is not valid UTF-8", hv.key))?
                };
                headers.push((hv.key.clone(), value));
            }
        }
        let mut http = HttpRequest::new(
            h.method.clone(),
            host,
            h.path.clone(),
            headers,
            mesh.path_normalization,
        );
        http.id = if h.id.is_empty() {
            h.headers.get("x-request-id").cloned().unwrap_or_default()
        } else {
            h.id.clone()
        };
        http.protocol = h.protocol.clone();
        http.scheme = h.scheme.clone();
        let bytes = if !h.raw_body.is_empty() {
            Some(h.raw_body.clone())
        } else if !h.body.is_empty() {
            Some(h.body.clone().into_bytes())
        } else {
            None
        };
        http.body = bytes.map(|bytes| meshguard_policy::Body {
            bytes,
            truncated: h
                .headers
                .get("x-envoy-auth-partial-body")
                .is_some_and(|v| v == "true"),
        });
        req.http = Some(http);
    }
    if let Some(p) = src.map(|s| s.principal.as_str()).filter(|p| !p.is_empty()) {
        req = req.with_peer(p);
    }
    Ok(req)
}

fn string_value(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn metadata(o: &Decision) -> Struct {
    // An OPA-Envoy decision's `dynamic_metadata` goes out as opa-envoy-plugin sends it, but
    // never under meshguard's own keys (written below, some only when set): access logs and
    // metadata matchers trust them.
    const OWN: [&str; 6] = [
        "allowed",
        "reason",
        "policy",
        "rule",
        "request_principal",
        "generation",
    ];
    let mut fields: HashMap<String, Value> = o
        .dynamic_metadata
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.clone(),
                meshguard_authn::extauth::passthrough::to_proto(v),
            )
        })
        .collect();
    fields.insert(
        "allowed".to_owned(),
        Value {
            kind: Some(Kind::BoolValue(o.allowed)),
        },
    );
    fields.insert("reason".to_owned(), string_value(o.reason.clone()));
    if let Some(p) = &o.policy {
        fields.insert("policy".to_owned(), string_value(p.clone()));
    }
    if let Some(r) = o.rule {
        fields.insert(
            "rule".to_owned(),
            Value {
                kind: Some(Kind::NumberValue(r as f64)),
            },
        );
    }
    if let Some(p) = &o.request_principal {
        fields.insert("request_principal".to_owned(), string_value(p.clone()));
    }
    fields.insert(
        "generation".to_owned(),
        Value {
            kind: Some(Kind::NumberValue(o.generation as f64)),
        },
    );
    Struct { fields }
}

/// Headers for the upstream request: the first value of a name replaces what the client sent,
/// later values of the same name are added beside it (one line per verified token, as Envoy's
/// jwt_authn writes them).
#[allow(deprecated)]
fn request_headers(add: &[(String, String)]) -> Vec<HeaderValueOption> {
    add.iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let mut h = header(k, v);
            if add[..i].iter().any(|(x, _)| x.eq_ignore_ascii_case(k)) {
                // Envoy's ext_authz client reads the deprecated `append` flag (default false
                // there) to choose between setting and appending.
                h.append = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
                h.append_action = HeaderAppendAction::AppendIfExistsOrAdd as i32;
            }
            h
        })
        .collect()
}

fn header(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.to_owned(),
            value: v.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The CheckResponse for an outcome.
pub fn to_response(o: &Decision) -> CheckResponse {
    if o.allowed {
        return CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: request_headers(&o.headers_to_add),
                headers_to_remove: o.headers_to_remove.clone(),
                query_parameters_to_remove: o.query_params_to_remove.clone(),
                response_headers_to_add: o
                    .response_headers
                    .iter()
                    .map(|(k, v)| header(k, v))
                    .collect(),
                ..Default::default()
            })),
            dynamic_metadata: Some(metadata(o)),
        };
    }
    let mut headers = Vec::new();
    if let Some(w) = &o.www_authenticate {
        headers.push(header("www-authenticate", w));
    }
    headers.extend(o.response_headers.iter().map(|(k, v)| header(k, v)));
    CheckResponse {
        status: Some(rpc::Status {
            code: if o.status == 401 {
                UNAUTHENTICATED
            } else {
                PERMISSION_DENIED
            },
            message: o.reason.clone(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(o.status),
            }),
            headers,
            body: o.body().to_owned(),
        })),
        dynamic_metadata: Some(metadata(o)),
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let cr = request.into_inner();
        let mesh = &self.engine.state().mesh;
        let decision = match to_request(&cr, self.workload.as_ref(), mesh) {
            Ok(req) => self.engine.decide("grpc", &req).await,
            Err(e) => self.engine.undecidable("grpc", &e),
        };
        Ok(Response::new(to_response(&decision)))
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
}
