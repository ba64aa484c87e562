//! Gloo `passThroughAuth`: a step delegated to another authorization service.
//!
//! - `grpc`: an Envoy ext_authz v3 server. It receives the request as a CheckRequest (the
//!   AuthConfig choice, `config_id`/`auth_config`, is not forwarded), the chain state under `filter_metadata["solo.auth.passthrough"]` and `config` under
//!   `filter_metadata["solo.auth.passthrough.config"]`; an OK answer allows and its headers and
//!   `dynamic_metadata["solo.auth.passthrough"]` (new state) are taken over.
//! - `http`: a POST to `url` with the allowed request headers (and a JSON body with state, body
//!   and config when asked); 200 allows, anything else denies with that status.
//!
//! A delegate that cannot be reached, times out or answers 5xx denies (503), unless
//! `failureModeAllow` is set.
//!
//! Loops: every delegated request carries [`HOPS_HEADER`] with the number of pass-through hops
//! so far (the incoming value plus one). A step whose request already made [`MAX_HOPS`] hops
//! refuses to delegate again (508 Loop Detected), so meshguard instances that delegate to each
//! other, directly or through a CUSTOM policy on the delegate, stop after a few hops instead of
//! recursing until timeouts. Not an `unavailable` case: `failureModeAllow` does not apply.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Metadata, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as ReqAttr,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PValue};
use meshguard_policy::extauth::{PassThroughAuth, PassThroughTarget};
use serde_json::{json, Map, Value};

use super::{StepInput, StepOutcome};

const MAX_RESPONSE: usize = 64 * 1024;

/// Request header counting pass-through hops (set on every delegated request).
pub const HOPS_HEADER: &str = "x-meshguard-passthrough-hops";
/// The most pass-through hops one request may make.
pub const MAX_HOPS: u32 = 4;

/// A delegate's 508 is a loop cut further down: it stays an error, so `!step` in a booleanExpr
/// cannot turn the loop into a pass.
fn loop_refused(o: StepOutcome) -> StepOutcome {
    if o.status == 508 && !o.allowed {
        StepOutcome { error: true, ..o }
    } else {
        o
    }
}

/// Hops the request made before reaching this step (a value that is not a number counts 0:
/// only meshguard's own increments matter for stopping a loop).
fn hops(input: &StepInput<'_>) -> u32 {
    input
        .header(HOPS_HEADER)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
}

enum Target {
    Grpc(tonic::transport::Channel),
    Http(reqwest::Client),
}

pub struct PassThroughStep {
    cfg: PassThroughAuth,
    target: Target,
}

/// A JSON value as a protobuf `Value` (numbers become doubles, as in protojson).
pub fn to_proto(v: &Value) -> PValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    PValue { kind: Some(kind) }
}

fn to_struct(o: &Map<String, Value>) -> Struct {
    Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
    }
}

fn from_proto(v: &PValue) -> Value {
    match &v.kind {
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_proto).collect()),
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s)),
        _ => Value::Null,
    }
}

fn from_struct(s: &Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto(v)))
        .collect()
}

fn sock(a: Option<std::net::SocketAddr>) -> Option<Address> {
    a.map(|a| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    })
}

impl PassThroughStep {
    pub fn build(
        cfg: &PassThroughAuth,
        client: &reqwest::Client,
    ) -> Result<PassThroughStep, String> {
        let target = match &cfg.target {
            PassThroughTarget::Grpc { address } => {
                let ep = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| format!("grpc.address `{address}`: {e}"))?
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout);
                Target::Grpc(ep.connect_lazy())
            }
            PassThroughTarget::Http { .. } => Target::Http(client.clone()),
        };
        Ok(PassThroughStep {
            cfg: cfg.clone(),
            target,
        })
    }

    fn unavailable(&self, why: String) -> StepOutcome {
        if self.cfg.failure_mode_allow {
            StepOutcome::allow(format!("{why} (failureModeAllow)"))
        } else {
            StepOutcome::failed(503, why)
        }
    }

    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let hops = hops(input);
        if hops >= MAX_HOPS {
            return StepOutcome::failed(
                508,
                format!(
                    "passThroughAuth loop: the request already went through {hops} pass-through hops ({HOPS_HEADER}); not delegating again"
                ),
            );
        }
        match &self.target {
            Target::Grpc(ch) => self.grpc(ch.clone(), input).await,
            Target::Http(c) => self.http(c, input).await,
        }
    }

    async fn grpc(&self, ch: tonic::transport::Channel, input: &mut StepInput<'_>) -> StepOutcome {
        let mut filter_metadata = HashMap::new();
        if !input.state.is_empty() {
            filter_metadata.insert("solo.auth.passthrough".to_owned(), to_struct(input.state));
        }
        if let Some(Value::Object(c)) = &self.cfg.config {
            filter_metadata.insert("solo.auth.passthrough.config".to_owned(), to_struct(c));
        }
        let http = input.req.http.as_ref().map(|h| HttpRequest {
            id: h.id.clone(),
            method: h.method.clone(),
            path: h.raw_path.clone(),
            host: h.host.clone(),
            scheme: h.scheme.clone(),
            protocol: h.protocol.clone(),
            headers: h
                .headers
                .iter()
                .filter(|(k, _)| k != HOPS_HEADER)
                .cloned()
                .chain([(HOPS_HEADER.to_owned(), (hops(input) + 1).to_string())])
                .collect(),
            body: h
                .body
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.bytes).into_owned())
                .unwrap_or_default(),
            ..Default::default()
        });
        let context_extensions = input
            .req
            .context_extensions
            .iter()
            .filter(|(k, _)| k.as_str() != "config_id" && k.as_str() != "auth_config")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: sock(input.req.peer_addr),
                    principal: input.id.peer.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                destination: Some(Peer {
                    address: sock(input.req.local_addr),
                    ..Default::default()
                }),
                request: Some(ReqAttr {
                    http,
                    ..Default::default()
                }),
                context_extensions,
                metadata_context: Some(Metadata {
                    filter_metadata,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let resp = match AuthorizationClient::new(ch).check(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                return self.unavailable(format!(
                    "passThroughAuth gRPC delegate failed: {}",
                    e.message()
                ))
            }
        };
        let code = resp.status.as_ref().map(|s| s.code).unwrap_or(2);
        let header_pairs =
            |hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
                hs.iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
                    .collect::<Vec<_>>()
            };
        if code == 0 {
            let mut o = StepOutcome::allow("the gRPC delegate allowed");
            if let Some(HttpResponse::OkResponse(ok)) = &resp.http_response {
                o.headers_to_add = header_pairs(&ok.headers);
                o.headers_to_remove = ok.headers_to_remove.clone();
                o.response_headers = header_pairs(&ok.response_headers_to_add);
            }
            if let Some(Kind::StructValue(st)) = resp
                .dynamic_metadata
                .as_ref()
                .and_then(|m| m.fields.get("solo.auth.passthrough"))
                .and_then(|v| v.kind.clone())
            {
                for (k, v) in from_struct(&st) {
                    input.state.insert(k, v);
                }
            }
            return o;
        }
        let mut o = StepOutcome::deny(403, format!("the gRPC delegate denied (code {code})"));
        if let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response {
            if let Some(s) = d.status.as_ref().and_then(|s| u16::try_from(s.code).ok()) {
                if (100..=599).contains(&s) && s != 0 {
                    o.status = s;
                }
            }
            o.response_headers = header_pairs(&d.headers);
            o.body = d.body.clone();
        } else if code == 16 {
            o.status = 401;
        }
        loop_refused(o)
    }

    async fn http(&self, client: &reqwest::Client, input: &mut StepInput<'_>) -> StepOutcome {
        let PassThroughTarget::Http {
            url,
            allowed_headers,
            headers_to_add,
            pass_state,
            pass_body,
            allowed_upstream_headers,
            allowed_client_headers_on_denied,
            read_state,
        } = &self.cfg.target
        else {
            return StepOutcome::deny(403, "misconfigured passThroughAuth");
        };
        let mut req = client.post(url).timeout(self.cfg.timeout);
        req = req.header(HOPS_HEADER, (hops(input) + 1).to_string());
        for h in allowed_headers
            .iter()
            .filter(|h| !h.eq_ignore_ascii_case(HOPS_HEADER))
        {
            if let Some(v) = input.header(h) {
                req = req.header(h.as_str(), v);
            }
        }
        for (k, v) in headers_to_add
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(HOPS_HEADER))
        {
            req = req.header(k.as_str(), v.as_str());
        }
        if *pass_state || *pass_body || self.cfg.config.is_some() {
            let mut body = Map::new();
            if *pass_state {
                body.insert("state".into(), Value::Object(input.state.clone()));
            }
            if *pass_body {
                if let Some(b) = input.req.http.as_ref().and_then(|h| h.body.as_ref()) {
                    body.insert(
                        "body".into(),
                        Value::String(String::from_utf8_lossy(&b.bytes).into_owned()),
                    );
                }
            }
            if let Some(c) = &self.cfg.config {
                body.insert("config".into(), c.clone());
            }
            req = req
                .header("content-type", "application/json")
                .body(Value::Object(body).to_string());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return self.unavailable(format!("passThroughAuth HTTP delegate unreachable: {e}"))
            }
        };
        let status = resp.status().as_u16();
        // 508 is a meshguard delegate refusing a pass-through loop: a denial, never an outage
        // that failureModeAllow could turn into a pass.
        if status >= 500 && status != 508 {
            return self.unavailable(format!("passThroughAuth HTTP delegate answered {status}"));
        }
        let pick = |names: &[String]| {
            resp.headers()
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n == k.as_str()))
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.as_str().to_owned(), v.to_owned()))
                })
                .collect::<Vec<_>>()
        };
        if status != 200 {
            // A redirect (to a login page) is a denial that sends the browser there; any other
            // non-200 below 400 is refused as 403 rather than passed on as a success code.
            let redirect = (300..400).contains(&status);
            let mut o = StepOutcome::deny(
                if redirect || status >= 400 {
                    status
                } else {
                    403
                },
                format!("the HTTP delegate answered {status}"),
            );
            o.response_headers = pick(allowed_client_headers_on_denied);
            if redirect {
                o.response_headers.extend(pick(&["location".to_owned()]));
            }
            return loop_refused(o);
        }
        let mut o = StepOutcome::allow("the HTTP delegate answered 200");
        o.headers_to_add = pick(allowed_upstream_headers);
        if *read_state {
            let body = match resp.bytes().await {
                Ok(b) if b.len() <= MAX_RESPONSE => b,
                _ => return StepOutcome::deny(403, "the HTTP delegate's state could not be read"),
            };
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(mut m)) => match m.remove("state") {
                    Some(Value::Object(st)) => *input.state = st,
                    Some(Value::Null) | None => {}
                    Some(_) => {
                        return StepOutcome::deny(
                            403,
                            "the HTTP delegate's `state` is not an object",
                        )
                    }
                },
                _ => {
                    return StepOutcome::deny(
                        403,
                        "the HTTP delegate's answer is not a JSON object",
                    )
                }
            }
        }
        o
    }
}
