//! Policy files: YAML of every kind meshguard loads (AuthorizationPolicy, PeerAuthentication,
//! RequestAuthentication, AuthConfig, ExtAuthPolicy, Secret, ConfigMap), validated, compiled,
//! the AuthConfig chains built (Rego modules compiled), and one request decided with the result.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshguard_policy::load::{parse_request, Loaded};
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::{Identity, MeshConfig, PathNormalization, PolicySet, Request};

fn request() -> &'static (Request, Identity) {
    static R: OnceLock<(Request, Identity)> = OnceLock::new();
    R.get_or_init(|| {
        let doc = "destination: {namespace: production, labels: {app: api}, port: 8080}
source: {principal: spiffe://cluster.local/ns/production/sa/frontend, ip: 10.0.0.1}
request: {method: GET, host: api.company.com, path: /v1/orders, headers: {x-role: admin}}
routeLabels: {route: ratings}
";
        let nodes = parse_documents(doc).expect("fixed request parses");
        parse_request(&nodes[0], PathNormalization::Base).expect("fixed request is valid")
    })
}

fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(reqwest::Client::new)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut l = Loaded::default();
    l.add_text(text, "fuzz.yaml");
    for d in &l.diagnostics {
        // Every diagnostic renders (file:line:col: severity: field: message).
        let _ = d.to_string();
    }
    if l.has_errors() {
        return;
    }
    let Ok(set) = PolicySet::compile(l.resources, MeshConfig::default()) else {
        return;
    };
    let _ = meshguard_authn::extauth::Chains::build(&set, client());
    let (req, id) = request();
    let _ = set.evaluate(req, id);
    // Which ExtAuthPolicy selects the request (route labels, destination, the oldest wins).
    let _ = set.ext_auth_policy_for(req);
});
