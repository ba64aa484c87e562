//! Shared fixtures: policy sets with RequestAuthentication, and an authenticate helper.
#![allow(dead_code)]

use std::collections::BTreeMap;

use meshguard_authn::{Authenticator, AuthnOutcome, AuthnRequest, AuthnSettings};
use meshguard_policy::load::Loaded;
use meshguard_policy::{MeshConfig, PolicySet};
use serde_json::Value;

pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{DATA}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn tokens() -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(&read("tokens.json")).expect("tokens.json");
    v["tokens"].as_object().expect("tokens").clone()
}

pub fn token(name: &str) -> String {
    tokens()[name]
        .as_str()
        .unwrap_or_else(|| panic!("no token {name}"))
        .to_owned()
}

/// Indents a JSON document so it can sit in a YAML single-quoted scalar.
pub fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''").replace('\n', " "))
}

pub fn policy_set(yaml: &str) -> PolicySet {
    let mut l = Loaded::default();
    l.add_text(yaml, "test.yaml");
    assert!(!l.has_errors(), "{:?}", l.errors().collect::<Vec<_>>());
    PolicySet::compile(l.resources, MeshConfig::default()).expect("compile")
}

pub fn authenticator(set: &PolicySet) -> Authenticator {
    Authenticator::new(set, reqwest::Client::new(), AuthnSettings::default())
}

pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), "api".to_owned())])
}

pub async fn run(
    set: &PolicySet,
    a: &Authenticator,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> AuthnOutcome {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
        .collect();
    let labels = labels();
    a.authenticate(
        set,
        &AuthnRequest {
            method,
            host: "api.test",
            path,
            headers: &headers,
            namespace: "prod",
            labels: &labels,
        },
    )
    .await
}

pub async fn bearer(set: &PolicySet, a: &Authenticator, token: &str) -> AuthnOutcome {
    let h = format!("Bearer {token}");
    run(set, a, "GET", "/", &[("authorization", h.as_str())]).await
}

/// A RequestAuthentication for the PyJWT test issuer with inline keys.
pub fn pyjwt_set(extra_rule_yaml: &str) -> PolicySet {
    let mut jwks: Value = serde_json::from_str(&read("jwks.json")).expect("jwks");
    let hs: Value = serde_json::from_str(&read("jwks-hs.json")).expect("jwks-hs");
    if let (Some(k), Some(h)) = (jwks["keys"].as_array_mut(), hs["keys"].as_array()) {
        k.extend(h.iter().cloned());
    }
    policy_set(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: prod}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwks: {}
{extra_rule_yaml}",
        yaml_quote(&jwks.to_string())
    ))
}
