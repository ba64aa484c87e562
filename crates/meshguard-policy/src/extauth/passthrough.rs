//! Gloo `passThroughAuth`: the decision is delegated to another ext_authz gRPC server or to an
//! HTTP service.

use super::duration_field;
use crate::diag::Ctx;
use crate::fields::{check_fields, get_bool, get_map, get_str, get_str_list, join, string_map};
use crate::yaml::Node;

/// Where `passThroughAuth` delegates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassThroughTarget {
    /// Another Envoy ext_authz v3 gRPC server (`host:port`).
    Grpc { address: String },
    /// An HTTP service: POST, 200 allows.
    Http {
        url: String,
        allowed_headers: Vec<String>,
        headers_to_add: Vec<(String, String)>,
        pass_state: bool,
        pass_body: bool,
        allowed_upstream_headers: Vec<String>,
        allowed_client_headers_on_denied: Vec<String>,
        read_state: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PassThroughAuth {
    pub target: PassThroughTarget,
    pub timeout: std::time::Duration,
    /// `config` (a Struct) handed to the delegate.
    pub config: Option<serde_json::Value>,
    /// Allow when the delegate cannot be reached, times out or answers 5xx.
    pub failure_mode_allow: bool,
}

impl Eq for PassThroughAuth {}

/// A YAML value as JSON (for `config` Structs).
fn to_json(n: &Node) -> serde_json::Value {
    use crate::yaml::NodeKind as K;
    match &n.kind {
        K::Null => serde_json::Value::Null,
        K::Bool(b) => (*b).into(),
        K::Int(i) => (*i).into(),
        K::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        K::Str(s) => s.clone().into(),
        K::Seq(items) => items.iter().map(to_json).collect(),
        K::Map(m) => m
            .iter()
            .map(|(k, v)| (k.text.clone(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn lower_list(ctx: &mut Ctx<'_>, n: &Node, key: &str, p: &str) -> Vec<String> {
    get_str_list(ctx, n, key, p)
        .map(|l| l.into_iter().map(|x| x.0.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

pub(super) fn parse_pass_through(ctx: &mut Ctx<'_>, n: &Node, p: &str) -> Option<PassThroughAuth> {
    check_fields(ctx, n, p, &["grpc", "http", "config", "failureModeAllow"]);
    let (target, timeout) = match (n.get("grpc"), n.get("http")) {
        (Some(g), None) => {
            let gp = join(p, "grpc");
            check_fields(
                ctx,
                g,
                &gp,
                &["address", "connectionTimeout", "tlsConfig", "retryPolicy"],
            );
            if g.get("tlsConfig").is_some() {
                ctx.err(g, &join(&gp, "tlsConfig"), "TLS to the delegate is not supported yet; refusing rather than sending plaintext");
            }
            let Some((address, _, _)) = get_str(ctx, g, "address", &gp) else {
                ctx.err(
                    g,
                    &join(&gp, "address"),
                    "missing `address` (host:port of an ext_authz gRPC server)",
                );
                return None;
            };
            let t = duration_field(ctx, g, "connectionTimeout", &gp)
                .unwrap_or(std::time::Duration::from_secs(5));
            (PassThroughTarget::Grpc { address }, t)
        }
        (None, Some(h)) => {
            let hp = join(p, "http");
            check_fields(
                ctx,
                h,
                &hp,
                &[
                    "url",
                    "request",
                    "response",
                    "connectionTimeout",
                    "tlsConfig",
                ],
            );
            let Some((url, line, col)) = get_str(ctx, h, "url", &hp) else {
                ctx.err(h, &join(&hp, "url"), "missing `url`");
                return None;
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                ctx.err_at(
                    line,
                    col,
                    &join(&hp, "url"),
                    "must be an http:// or https:// URL",
                );
            }
            let t = duration_field(ctx, h, "connectionTimeout", &hp)
                .unwrap_or(std::time::Duration::from_secs(5));
            let (mut allowed_headers, mut headers_to_add, mut pass_state, mut pass_body) =
                (Vec::new(), Vec::new(), false, false);
            if let Some(r) = get_map(ctx, h, "request", &hp) {
                let rp = join(&hp, "request");
                check_fields(
                    ctx,
                    r,
                    &rp,
                    &[
                        "allowedHeaders",
                        "headersToAdd",
                        "passThroughState",
                        "passThroughFilterMetadata",
                        "passThroughBody",
                    ],
                );
                allowed_headers = lower_list(ctx, r, "allowedHeaders", &rp);
                if let Some(m) = r.get("headersToAdd") {
                    headers_to_add = string_map(ctx, m, &join(&rp, "headersToAdd"))
                        .into_iter()
                        .collect();
                }
                pass_state = get_bool(ctx, r, "passThroughState", &rp).unwrap_or(false);
                pass_body = get_bool(ctx, r, "passThroughBody", &rp).unwrap_or(false);
            }
            let (mut up, mut denied, mut read_state) = (Vec::new(), Vec::new(), false);
            if let Some(r) = get_map(ctx, h, "response", &hp) {
                let rp = join(&hp, "response");
                check_fields(
                    ctx,
                    r,
                    &rp,
                    &[
                        "allowedUpstreamHeaders",
                        "allowedUpstreamHeadersToOverwrite",
                        "allowedClientHeadersOnDenied",
                        "readStateFromResponse",
                    ],
                );
                up = lower_list(ctx, r, "allowedUpstreamHeaders", &rp);
                up.extend(lower_list(ctx, r, "allowedUpstreamHeadersToOverwrite", &rp));
                denied = lower_list(ctx, r, "allowedClientHeadersOnDenied", &rp);
                read_state = get_bool(ctx, r, "readStateFromResponse", &rp).unwrap_or(false);
            }
            (
                PassThroughTarget::Http {
                    url,
                    allowed_headers,
                    headers_to_add,
                    pass_state,
                    pass_body,
                    allowed_upstream_headers: up,
                    allowed_client_headers_on_denied: denied,
                    read_state,
                },
                t,
            )
        }
        _ => {
            ctx.err(n, p, "exactly one of `grpc` or `http`");
            return None;
        }
    };
    Some(PassThroughAuth {
        target,
        timeout,
        config: n.get("config").map(to_json),
        failure_mode_allow: get_bool(ctx, n, "failureModeAllow", p).unwrap_or(false),
    })
}
