//! Real Envoy 1.40 in front of `meshguard serve` as its ext_authz gRPC server, end to end:
//! - Gloo's way of choosing an AuthConfig: per-route `context_extensions` `config_id`
//!   (the API-key and OPA-Envoy examples of `examples/extauth`, run as written);
//! - `with_request_body` (the OPA-Envoy policy reads the JSON body) and `encode_raw_headers`
//!   (header lines arrive one by one);
//! - allowed requests reach the upstream app with the headers meshguard adds, denied ones never
//!   reach it;
//! - a policy change is applied to the next request on an already open connection;
//! - meshguard killed: Envoy (failure_mode_allow false) denies;
//! - and Envoy's HTTP ext_authz filter as istiod's `envoyExtAuthzHttp` provider generates it, in
//!   front of serve's HTTP mode.

mod envoy;
mod snippets;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use envoy::{Echoed, Envoy};
use serde_json::json;

const API_KEY: &str = "N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy";

fn route(prefix: &str, config_id: Option<&str>) -> serde_json::Value {
    match config_id {
        Some(id) => envoy::app_route(prefix, &[("config_id", id)]),
        None => envoy::app_route(prefix, &[]),
    }
}

fn bootstrap(listen: u16, echo: u16, grpc: u16) -> String {
    let listeners = envoy::ext_authz_listeners(
        listen,
        vec![
            route("/api", Some("gloo-system.api-keys")),
            route("/post", Some("gloo-system.orders-opa")),
            route("/", None),
        ],
        json!({
            "grpc_service": {"envoy_grpc": {"cluster_name": "meshguard"}, "timeout": "5s"},
            "transport_api_version": "V3",
            "failure_mode_allow": false,
            "include_peer_certificate": true,
            "encode_raw_headers": true,
            "with_request_body": {"max_request_bytes": 8192, "allow_partial_message": true}}),
    );
    envoy::static_bootstrap(
        listeners,
        vec![
            envoy::cluster("app", echo, false),
            envoy::cluster("meshguard", grpc, true),
        ],
    )
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str, close: bool) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\nhost: shop.example\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        s.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    if close {
        s.push_str("connection: close\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s
}

/// Status, and what the app received if the request reached it.
fn call(port: u16, raw: &str) -> (u16, Option<Echoed>) {
    let r = envoy::send(port, raw).expect("response");
    let echoed = (r.status == 200).then(|| Echoed::parse(&r.body)).flatten();
    (r.status, echoed)
}

fn admin_jwt(python: &Path, role: &str) -> String {
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../meshguard-authn/tests/data/rsa-1.pem");
    let out = Command::new(python)
        .arg("-c")
        .arg(format!(
            "import jwt,time,sys; print(jwt.encode({{'iss':'https://issuer.test','aud':'api.test','sub':'u1','role':'{role}','exp':int(time.time())+600}}, open(sys.argv[1]).read(), 'RS256', headers={{'kid':'rsa-1'}}))"
        ))
        .arg(key)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn envoy_in_front_of_serve() {
    let Some(envoy_bin) = envoy::envoy_bin() else {
        return;
    };
    let Some(python) = envoy::python() else {
        return;
    };
    let dir = envoy::temp_dir("extauthz");
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol).expect("mkdir");
    let examples = Path::new(envoy::ROOT).join("examples/extauth");
    for f in ["api-keys.yaml", "opa-envoy.yaml"] {
        std::fs::copy(examples.join(f), pol.join(f)).expect("copy example");
    }
    let echo = envoy::echo_app();
    let (mut serve, grpc) = envoy::start_serve(
        &dir,
        "e2e",
        &[
            "--reload-interval",
            "100ms",
            "--workload",
            "shop/app=web",
            "--policies",
            pol.to_str().expect("utf8"),
        ],
    );
    let port = envoy::free_port();
    let _envoy = Envoy::start(&envoy_bin, &dir, "e2e", &bootstrap(port, echo, grpc));

    // API keys (Gloo apiKeyAuth chosen by the route's config_id).
    let (s, e) = call(port, &request("GET", "/api/orders", &[], "", true));
    assert_eq!((s, e.is_none()), (401, true), "no key: 401, not forwarded");
    let (s, e) = call(
        port,
        &request("GET", "/api/orders", &[("api-key", "wrong")], "", true),
    );
    assert_eq!((s, e.is_none()), (401, true), "wrong key");
    let (s, e) = call(
        port,
        &request("GET", "/api/orders", &[("api-key", API_KEY)], "", true),
    );
    assert_eq!(s, 200, "valid key");
    let e = e.expect("reached the app");
    assert_eq!(
        e.all("x-user-email"),
        vec!["infra@example.com"],
        "header from the key's Secret"
    );

    // OPA-Envoy policy reading the JWT, the method, the path and the JSON body.
    let admin_token = admin_jwt(&python, "admin");
    let bearer = format!("Bearer {admin_token}");
    let good = r#"{"item":"book","quantity":2}"#;
    let (s, e) = call(
        port,
        &request("POST", "/post", &[("authorization", &bearer)], good, true),
    );
    assert_eq!(s, 200, "admin, POST /post, valid body");
    assert_eq!(e.map(|e| e.method), Some("POST".to_owned()));
    let bad = r#"{"item":"book","quantity":0}"#;
    let (s, e) = call(
        port,
        &request("POST", "/post", &[("authorization", &bearer)], bad, true),
    );
    assert_eq!((s, e.is_none()), (403, true), "schema violation");
    let user = format!("Bearer {}", admin_jwt(&python, "user"));
    let (s, _) = call(
        port,
        &request("POST", "/post", &[("authorization", &user)], good, true),
    );
    assert_eq!(s, 403, "role user");

    // A policy change reaches the next request on a connection that stays open.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let first =
        envoy::exchange(&mut conn, &request("GET", "/open", &[], "", false)).expect("first");
    assert_eq!(first.status, 200, "no policy yet: allowed");
    std::fs::write(
        pol.join("deny-open.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-open, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/open]}}]}]
",
    )
    .expect("write policy");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 200;
    while Instant::now() < deadline {
        let r = envoy::exchange(&mut conn, &request("GET", "/open", &[], "", false))
            .expect("on the open connection");
        status = r.status;
        if status == 403 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status, 403,
        "the reloaded DENY applies on the open connection"
    );

    // meshguard gone: Envoy (failure_mode_allow: false) denies, nothing reaches the app.
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let (s, e) = call(port, &request("GET", "/anything", &[], "", true));
    assert!(e.is_none() && s >= 403, "meshguard down must deny, got {s}");
}

/// Envoy's HTTP ext_authz filter as istiod's `envoyExtAuthzHttp` provider generates it
/// (builder testdata custom-http-provider-out2.yaml: http_service with path_prefix /check,
/// allowed_headers from includeRequestHeadersInCheck, allowed_upstream_headers from
/// headersToUpstreamOnAllow, failure_mode_allow from failOpen) in front of meshguard serve's HTTP
/// mode (`--forward-auth envoy --http-path-prefix /check`).
fn http_bootstrap(listen: u16, echo: u16, authz: u16) -> String {
    let listeners = envoy::ext_authz_listeners(
        listen,
        vec![route("/", None)],
        json!({
        "transport_api_version": "V3",
        "failure_mode_allow": false,
        "status_on_error": {"code": "Forbidden"},
        "http_service": {
            "server_uri": {"uri": "http://meshguard.test", "cluster": "meshguard", "timeout": "10s"},
            "path_prefix": "/check",
            "authorization_request": {"allowed_headers": {"patterns": [
                {"exact": "x-role", "ignore_case": true}]}},
            "authorization_response": {"allowed_upstream_headers": {"patterns": [
                {"exact": "x-sub", "ignore_case": true}]}}
        }}),
    );
    envoy::static_bootstrap(
        listeners,
        vec![
            envoy::cluster("app", echo, false),
            envoy::cluster("meshguard", authz, false),
        ],
    )
}

#[test]
fn envoy_http_ext_authz_in_front_of_serve() {
    let Some(envoy_bin) = envoy::envoy_bin() else {
        return;
    };
    let Some(python) = envoy::python() else {
        return;
    };
    let dir = envoy::temp_dir("extauthz-http");
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol).expect("mkdir");
    let jwks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../meshguard-authn/tests/data/jwks.json"),
        )
        .expect("jwks"),
    )
    .expect("json");
    std::fs::write(
        pol.join("shop.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: shop}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: ['/admin*']}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: [https://issuer.test/*]}}}}]
    when: [{{key: 'request.headers[x-role]', values: [admin]}}]
"
        ),
    )
    .expect("policy");
    let echo = envoy::echo_app();
    let (mut k, _, http_port) = envoy::start_serve_ports(
        &dir,
        "http",
        &[
            "--workload",
            "shop/app=web",
            "--forward-auth",
            "envoy",
            "--http-path-prefix",
            "/check",
            "--policies",
            pol.to_str().expect("utf8"),
        ],
    );
    let port = envoy::free_port();
    let _envoy = Envoy::start(
        &envoy_bin,
        &dir,
        "http",
        &http_bootstrap(port, echo, http_port),
    );
    let bearer = format!("Bearer {}", admin_jwt(&python, "admin"));
    let admin_role = ("x-role", "admin");

    let (s, e) = call(
        port,
        &request(
            "GET",
            "/orders",
            &[("authorization", &bearer), admin_role],
            "",
            true,
        ),
    );
    assert_eq!(s, 200, "JWT and x-role admin");
    let e = e.expect("reached the app");
    assert_eq!(e.all("x-sub"), vec!["u1"], "claim header allowed upstream");
    assert!(
        e.all("authorization").is_empty(),
        "the token is removed (forwardOriginalToken false)"
    );
    let (s, e) = call(
        port,
        &request(
            "GET",
            "/orders",
            &[("authorization", &bearer), ("x-role", "user")],
            "",
            true,
        ),
    );
    assert_eq!((s, e.is_none()), (403, true), "x-role user");
    let (s, e) = call(port, &request("GET", "/orders", &[admin_role], "", true));
    assert_eq!(
        (s, e.is_none()),
        (403, true),
        "no token: no request principal"
    );
    let (s, e) = call(
        port,
        &request(
            "GET",
            "/orders",
            &[("authorization", "Bearer  garbage"), admin_role],
            "",
            true,
        ),
    );
    assert_eq!(
        (s, e.is_none()),
        (401, true),
        "a malformed token after two spaces is verified and refused"
    );
    for path in ["/admin", "/x/../admin", "/admin/users"] {
        let (s, e) = call(
            port,
            &request(
                "GET",
                path,
                &[("authorization", &bearer), admin_role],
                "",
                true,
            ),
        );
        assert_eq!((s, e.is_none()), (403, true), "{path} is denied");
    }
    let _ = k.0.kill();
    let _ = k.0.wait();
    let (s, e) = call(
        port,
        &request(
            "GET",
            "/orders",
            &[("authorization", &bearer), admin_role],
            "",
            true,
        ),
    );
    assert!(
        e.is_none() && s == 403,
        "meshguard down: status_on_error Forbidden, got {s}"
    );
}

/// The README's per-route `context_extensions` block (namespace, labels, port), as written, in a
/// real Envoy route in front of serve: the workload and port it names are the ones policies
/// match; a route without it is denied (its workload cannot be told).
#[test]
fn readme_route_context_extensions_name_the_workload() {
    let Some(envoy_bin) = envoy::envoy_bin() else {
        return;
    };
    let dir = envoy::temp_dir("readme-labels");
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol).expect("mkdir");
    std::fs::write(
        pol.join("httpbin.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-get, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - to: [{operation: {ports: [\"8080\"], paths: [/get]}}]
  - to: [{operation: {ports: [\"9999\"], paths: [/other-port]}}]
",
    )
    .expect("policy");
    let echo = envoy::echo_app();
    let (_serve, grpc) =
        envoy::start_serve(&dir, "labels", &["--policies", pol.to_str().expect("utf8")]);
    let block = snippets::block("envoy-route-labels");
    let docs = meshguard_policy::yaml::parse_documents(&block).expect("the README block is YAML");
    let per_route = docs.first().expect("one document").to_json();
    let port = envoy::free_port();
    let mut config: serde_json::Value =
        serde_json::from_str(&bootstrap(port, echo, grpc).replace("ADMIN_PORT", "\"ADMIN_PORT\""))
            .expect("bootstrap JSON");
    let routes = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
    *routes = json!([
        {"match": {"prefix": "/unlabelled"}, "route": {"cluster": "app", "timeout": "5s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "5s"},
         "typed_per_filter_config": per_route},
    ]);
    let config = config.to_string().replace("\"ADMIN_PORT\"", "ADMIN_PORT");
    let _envoy = Envoy::start(&envoy_bin, &dir, "labels", &config);
    let (s, e) = call(port, &request("GET", "/get", &[], "", true));
    assert_eq!(
        (s, e.is_some()),
        (200, true),
        "foo/app=httpbin on port 8080"
    );
    let (s, _) = call(port, &request("GET", "/other-port", &[], "", true));
    assert_eq!(s, 403, "the rule for port 9999 does not match port 8080");
    let (s, _) = call(port, &request("GET", "/anything", &[], "", true));
    assert_eq!(s, 403, "no rule allows it");
    let (s, _) = call(port, &request("GET", "/unlabelled", &[], "", true));
    assert_eq!(
        s, 403,
        "a route without the extensions names no workload: denied"
    );
}
