//! Asking a running `serve` over the real ext_authz gRPC API, as Envoy asks it: one request
//! description ([`Call`]), the CheckRequest it becomes, and the verdict read back.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

use super::Running;

/// `(name, value)` of Envoy header options.
pub fn pairs(hs: &[HeaderValueOption]) -> Vec<(String, String)> {
    hs.iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

/// One request as Envoy describes it; `Call::default()` is `GET shop.test/` from the workload
/// `other/app=none` with no AuthConfig named.
pub struct Call {
    /// Envoy per-route context extension `config_id` (empty: none).
    pub config_id: &'static str,
    pub host: &'static str,
    pub workload: (&'static str, &'static str),
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: &'static str,
}

impl Default for Call {
    fn default() -> Self {
        Call {
            config_id: "",
            host: "shop.test",
            workload: ("other", "app=none"),
            method: "GET",
            path: "/".into(),
            headers: Vec::new(),
            body: "",
        }
    }
}

pub fn hs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn check(c: &Call) -> CheckRequest {
    let mut ext = HashMap::new();
    ext.insert("namespace".to_owned(), c.workload.0.to_owned());
    ext.insert("labels".to_owned(), c.workload.1.to_owned());
    if !c.config_id.is_empty() {
        ext.insert("config_id".to_owned(), c.config_id.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "r1".into(),
                    method: c.method.into(),
                    path: c.path.clone(),
                    host: c.host.into(),
                    headers: c.headers.iter().cloned().collect(),
                    body: c.body.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

/// (status, headers sent upstream or to the client, body)
pub fn verdict(r: &CheckResponse) -> (u16, Vec<(String, String)>, String) {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => (200, pairs(&ok.headers), String::new()),
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().map(|s| s.code as u16).unwrap_or(0),
            pairs(&d.headers),
            d.body.clone(),
        ),
        _ => (0, Vec::new(), String::new()),
    }
}

/// The whole CheckResponse for a request.
pub async fn call_raw(r: &Running, c: Call) -> CheckResponse {
    let mut client =
        AuthorizationClient::connect(format!("http://{}", r.bound.grpc.expect("grpc")))
            .await
            .expect("connect");
    client.check(check(&c)).await.expect("check").into_inner()
}

/// (status, headers sent upstream or to the client, body) for a request.
pub async fn call(r: &Running, c: Call) -> (u16, Vec<(String, String)>, String) {
    verdict(&call_raw(r, c).await)
}

pub fn has(h: &[(String, String)], k: &str, v: &str) -> bool {
    h.iter().any(|(a, b)| a == k && b == v)
}
