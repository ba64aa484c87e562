//! Gloo Platform `ExtAuthPolicy` (security.policy.gloo.solo.io/v2), the seed's two shapes as
//! written in `examples/gloo-platform/`:
//! - an ExtAuthPolicy applies to the ratings route and references the Rego policy in the
//!   allow-get-users ConfigMap;
//! - API key auth that compares the api-key and x-user-email headers with the apikey Secret,
//!   configured together with OPA.
//!
//! Through real Envoy 1.40 in front of `meshguard serve` (route labels as per-route
//! `context_extensions` `route_label.<key>`), through serve's HTTP mode (`--route-labels`), with
//! `check`, and `lint` on validation mistakes and Gloo's one-policy-per-route conflicts.

mod cmd;
mod envoy;
mod snippets;

use std::path::Path;

use envoy::{Echoed, Envoy};
use serde_json::json;

const API_KEY: &str = "N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy";
const EMAIL: &str = "user12345@email.com";

fn examples() -> std::path::PathBuf {
    Path::new(envoy::ROOT).join("examples/gloo-platform")
}

fn bootstrap(listen: u16, echo: u16, grpc: u16) -> String {
    // Gloo route labels reach ext_authz as per-route context extensions `route_label.<key>`.
    let listeners = envoy::ext_authz_listeners(
        listen,
        vec![
            envoy::app_route("/ratings", &[("route_label.route", "ratings")]),
            envoy::app_route("/reviews", &[("route_label.route", "reviews")]),
            envoy::app_route("/", &[]),
        ],
        json!({
            "grpc_service": {"envoy_grpc": {"cluster_name": "meshguard"}, "timeout": "5s"},
            "transport_api_version": "V3",
            "failure_mode_allow": false}),
    );
    envoy::static_bootstrap(
        listeners,
        vec![
            envoy::cluster("app", echo, false),
            envoy::cluster("meshguard", grpc, true),
        ],
    )
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!(
        "{method} {path} HTTP/1.1\r\nhost: ratings.bookinfo.svc.cluster.local\r\nconnection: close\r\n"
    );
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

fn call(port: u16, raw: &str) -> (u16, Option<Echoed>) {
    let r = envoy::send(port, raw).expect("response");
    let echoed = (r.status == 200).then(|| Echoed::parse(&r.body)).flatten();
    (r.status, echoed)
}

#[test]
fn envoy_routes_select_ext_auth_policies_by_label() {
    let Some(envoy_bin) = envoy::envoy_bin() else {
        return;
    };
    let dir = envoy::temp_dir("gloo-platform");
    let echo = envoy::echo_app();
    let (_serve, grpc) = envoy::start_serve(
        &dir,
        "gloo",
        &[
            "--workload",
            "bookinfo/app=ratings",
            "--policies",
            examples().to_str().expect("utf8"),
        ],
    );
    let port = envoy::free_port();
    let _envoy = Envoy::start(&envoy_bin, &dir, "gloo", &bootstrap(port, echo, grpc));

    // The ratings route: the allow-get-users Rego decides.
    let (s, e) = call(port, &request("GET", "/ratings/2", &[]));
    assert_eq!((s, e.is_some()), (200, true), "GET /ratings/2 is allowed");
    let (s, e) = call(port, &request("DELETE", "/ratings/2", &[]));
    assert_eq!((s, e.is_none()), (403, true), "DELETE /ratings/2 is not");
    let (s, _) = call(port, &request("DELETE", "/ratings/3", &[]));
    assert_eq!(s, 200, "DELETE /ratings/3 is");
    let (s, _) = call(port, &request("GET", "/ratings/4", &[]));
    assert_eq!(s, 403, "GET /ratings/4 is not");

    // The reviews route: API key + the stored email, compared by the Rego step.
    let (s, e) = call(port, &request("GET", "/reviews/1", &[]));
    assert_eq!((s, e.is_none()), (401, true), "no API key: 401");
    let (s, _) = call(
        port,
        &request(
            "GET",
            "/reviews/1",
            &[("api-key", "wrong"), ("x-user-email", EMAIL)],
        ),
    );
    assert_eq!(s, 401, "a wrong API key: 401");
    let (s, _) = call(
        port,
        &request(
            "GET",
            "/reviews/1",
            &[
                ("api-key", API_KEY),
                ("x-user-email", "someone@else.example"),
            ],
        ),
    );
    assert_eq!(s, 403, "the right key with another user's email");
    let (s, e) = call(
        port,
        &request(
            "GET",
            "/reviews/1",
            &[("api-key", API_KEY), ("x-user-email", EMAIL)],
        ),
    );
    assert_eq!(s, 200, "the right key and its email");
    let e = e.expect("reached the app");
    assert!(
        e.headers
            .iter()
            .any(|(k, v)| k == "x-user-id" && v == "user-id-12345"),
        "the app learns the key's user: {:?}",
        e.headers
    );

    // A route no ExtAuthPolicy selects gets no ext auth: the workload has no ALLOW policy, so
    // serve's default deny answers (a Rego allow on another route does not leak here).
    let (s, _) = call(port, &request("GET", "/ratings-other/2", &[]));
    assert_eq!(
        s, 403,
        "an unlabelled route is not allowed by the ratings policy"
    );
}

/// The README's `gloo-platform` commands, as written: lint is clean, and serve's HTTP mode
/// selects the policies by the `--route-labels` bindings.
#[test]
fn readme_commands_run_as_written() {
    let lines = snippets::commands(&snippets::block("gloo-platform"), "meshguard");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let o = std::process::Command::new(envoy::meshguard())
        .args(&lines[0])
        .current_dir(envoy::ROOT)
        .output()
        .expect("lint");
    assert!(
        o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("0 error(s), 0 warning(s)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(lines[1][0], "serve");
    let mut c = std::process::Command::new(envoy::meshguard());
    c.args(&lines[1])
        .current_dir(envoy::ROOT)
        .env("MESHGUARD_GRPC_LISTEN", "off")
        .env("MESHGUARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_ADMIN_LISTEN", "off")
        .env("MESHGUARD_DECISION_LOG", "off");
    let s = cmd::serve_command(c);
    let ask = |method: &str, uri: &str, extra: &[(&str, &str)]| {
        let mut h = vec![
            ("X-Original-Method", method),
            ("X-Original-URI", uri),
            ("X-Meshguard-Workload", "bookinfo/app=ratings"),
        ];
        h.extend_from_slice(extra);
        cmd::http_get(&s.http, "/auth", &h).0
    };
    assert_eq!(ask("GET", "/ratings/2", &[]), 200);
    assert_eq!(ask("DELETE", "/ratings/2", &[]), 403);
    assert_eq!(ask("GET", "/reviews/1", &[]), 401);
    assert_eq!(
        ask(
            "GET",
            "/reviews/1",
            &[("api-key", API_KEY), ("x-user-email", EMAIL)]
        ),
        200
    );
    // Neither binding: no ExtAuthPolicy applies, and default deny answers.
    assert_eq!(ask("GET", "/details/2", &[]), 403);
}

#[test]
fn check_decides_with_ext_auth_policies() {
    let dir = envoy::temp_dir("gloo-check");
    let req = dir.join("r.yaml");
    let check = |body: &str| {
        std::fs::write(&req, body).expect("write");
        let out = std::process::Command::new(envoy::meshguard())
            .args(["check", "--output", "json", "--policies"])
            .arg(examples())
            .arg("--request")
            .arg(&req)
            .output()
            .expect("check");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v
    };
    let v = check(
        "destination: {namespace: bookinfo, labels: {app: ratings}}\nrouteLabels: {route: ratings}\nrequest: {method: GET, path: /ratings/2}\n",
    );
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        v["auth_config"], "ExtAuthPolicy/bookinfo.ratings-opa",
        "{v}"
    );
    let v = check(
        "destination: {namespace: bookinfo, labels: {app: ratings}}\nrouteLabels: {route: ratings}\nrequest: {method: POST, path: /ratings/2}\n",
    );
    assert_eq!(v["allowed"], false, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("data.test.allow"),
        "{v}"
    );
}

/// Attack: a team's ExtAuthPolicy that selects everything (no lists) and allows everyone (an
/// API key step would be required, but `jwt: {}` style permissive chains exist too) must not
/// reach into another namespace: there it would count as an explicit allow under default deny,
/// or displace that namespace's own policy by being older.
#[test]
fn a_policy_stays_in_its_namespace() {
    let dir = envoy::temp_dir("gloo-scope");
    std::fs::write(
        dir.join("p.yaml"),
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: yes, namespace: evil}
data:
  policy.rego: |
    package yes
    default allow = true
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: allow-all, namespace: evil, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  config:
    glooAuth:
      configs:
      - opaAuth: {modules: [{name: yes}], query: "data.yes.allow == true"}
"#,
    )
    .expect("write");
    let req = dir.join("r.yaml");
    let decide = |ns: &str| {
        std::fs::write(
            &req,
            format!("destination: {{namespace: {ns}, labels: {{app: ratings}}}}\nrouteLabels: {{route: ratings}}\nrequest: {{method: GET, path: /ratings/2}}\n"),
        )
        .expect("write");
        let out = std::process::Command::new(envoy::meshguard())
            .args(["check", "--output", "json", "--policies"])
            .arg(dir.join("p.yaml"))
            .arg("--request")
            .arg(&req)
            .output()
            .expect("check");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v
    };
    let own = decide("evil");
    assert_eq!(own["allowed"], true, "its own namespace: {own}");
    let other = decide("bookinfo");
    assert_eq!(
        other["allowed"], false,
        "another namespace: default deny, {other}"
    );
    assert!(other["auth_config"].is_null(), "{other}");
}

/// Writes `yaml` and lints it; (exit code, stdout).
fn lint(tag: &str, yaml: &str) -> (i32, String) {
    let dir = envoy::temp_dir(tag);
    let f = dir.join("p.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = std::process::Command::new(envoy::meshguard())
        .arg("lint")
        .arg(&f)
        .output()
        .expect("lint");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn lint_refuses_mistakes_with_file_line_and_field() {
    let (code, out) = lint(
        "gloo-lint-bad",
        r#"apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: bad, namespace: bookinfo}
spec:
  applyToRoutes:
  - route:
      lables: {route: ratings}
  applyToDestinations:
  - selector: {labels: {app: ratings}}
    port: {name: http}
  config:
    disable: true
"#,
    );
    assert_eq!(code, 1, "{out}");
    for want in [
        "p.yaml:7:7: error: spec.applyToRoutes[0].route.lables: unknown field `lables` (did you mean `labels`?)",
        "p.yaml:10:11: error: spec.applyToDestinations[0].port.name: meshguard sees port numbers",
        "p.yaml:12:14: error: spec.config.disable: Gloo refuses `disable`",
        "[ExtAuthPolicy bookinfo/bad]",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn one_policy_per_route_the_oldest_wins() {
    let two = r#"apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: newer, namespace: bookinfo, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  applyToRoutes:
  - route: {labels: {route: ratings}}
  config:
    glooAuth:
      configs:
      - apiKeyAuth:
          k8sSecretApikeyStorage: {labelSelector: {extauth: apikey}}
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: older, namespace: bookinfo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  applyToRoutes:
  - route: {labels: {route: ratings, tier: gold}}
  config:
    glooAuth:
      configs:
      - basicAuth:
          apr:
            users:
              user: {salt: TYiryv0/, hashedPassword: 8BvzLUO9IfGPGGsPnAgSu1}
"#;
    let (code, out) = lint("gloo-lint-conflict", two);
    assert_eq!(code, 0, "a conflict is a warning: {out}");
    assert!(
        out.contains("ExtAuthPolicy bookinfo/newer")
            && out.contains("the oldest (bookinfo/older, created 2026-01-01T00:00:00Z)"),
        "{out}"
    );

    // Deciding: a route labelled route=ratings,tier=gold is selected by both; the older
    // (basic auth) applies. A route with only route=ratings is selected by the newer alone.
    let dir = envoy::temp_dir("gloo-oldest");
    let pol = dir.join("p.yaml");
    std::fs::write(&pol, two).expect("write");
    let req = dir.join("r.yaml");
    let decide = |labels: &str| {
        std::fs::write(
            &req,
            format!("destination: {{namespace: bookinfo, labels: {{app: ratings}}}}\nrouteLabels: {labels}\nrequest: {{method: GET, path: /ratings/1}}\n"),
        )
        .expect("write");
        let out = std::process::Command::new(envoy::meshguard())
            .args(["check", "--output", "json", "--policies"])
            .arg(&pol)
            .arg("--request")
            .arg(&req)
            .output()
            .expect("check");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v
    };
    let v = decide("{route: ratings, tier: gold}");
    assert_eq!(v["auth_config"], "ExtAuthPolicy/bookinfo.older", "{v}");
    assert_eq!(v["status"], 401, "{v}");
    let v = decide("{route: ratings}");
    assert_eq!(v["auth_config"], "ExtAuthPolicy/bookinfo.newer", "{v}");
}

/// `config.customAuth`: serve (HTTP mode) delegates the route to the meshConfig
/// `envoyExtAuthzGrpc` provider that `config.server.name` names, a second `meshguard serve`,
/// with the policy's `contextExtensions` in the CheckRequest: here `config_id`, which makes the
/// provider run its API-key AuthConfig. A provider that is down denies (fail closed).
#[test]
fn custom_auth_delegates_with_context_extensions() {
    let extauth = Path::new(envoy::ROOT).join("examples/extauth/api-keys.yaml");
    let provider = cmd::serve([
        "--grpc-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--http-listen".as_ref(),
        "off".as_ref(),
        "--admin-listen".as_ref(),
        "off".as_ref(),
        "--decision-log".as_ref(),
        "off".as_ref(),
        "--workload".as_ref(),
        "bookinfo/app=reviews".as_ref(),
        "--policies".as_ref(),
        extauth.as_os_str(),
    ]);
    let grpc_port = provider.grpc.rsplit(':').next().unwrap_or("");
    let dir = envoy::temp_dir("gloo-custom");
    let down = envoy::free_port();
    std::fs::write(
        dir.join("mesh.yaml"),
        format!(
            "extensionProviders:
- name: ext-auth-server
  envoyExtAuthzGrpc: {{service: 127.0.0.1, port: {grpc_port}, timeout: 5s}}
- name: down-server
  envoyExtAuthzGrpc: {{service: 127.0.0.1, port: {down}, timeout: 2s}}
"
        ),
    )
    .expect("mesh");
    std::fs::write(
        dir.join("p.yaml"),
        "apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: reviews-custom, namespace: bookinfo}
spec:
  applyToRoutes:
  - route: {labels: {route: reviews}}
  config:
    server: {name: ext-auth-server, namespace: bookinfo}
    customAuth:
      contextExtensions: {config_id: gloo-system.api-keys}
---
apiVersion: security.policy.gloo.solo.io/v2
kind: ExtAuthPolicy
metadata: {name: details-down, namespace: bookinfo}
spec:
  applyToRoutes:
  - route: {labels: {route: details}}
  config:
    server: {name: down-server}
    customAuth: {}
",
    )
    .expect("policy");
    let s = cmd::serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin-listen".as_ref(),
        "off".as_ref(),
        "--decision-log".as_ref(),
        "off".as_ref(),
        "--route-labels".as_ref(),
        "/reviews=route=reviews,/details=route=details".as_ref(),
        "--mesh-config".as_ref(),
        dir.join("mesh.yaml").as_os_str(),
        "--policies".as_ref(),
        dir.join("p.yaml").as_os_str(),
    ]);
    let ask = |uri: &str, extra: &[(&str, &str)]| {
        let mut h = vec![
            ("X-Original-Method", "GET"),
            ("X-Original-URI", uri),
            ("X-Meshguard-Workload", "bookinfo/app=reviews"),
        ];
        h.extend_from_slice(extra);
        cmd::http_get(&s.http, "/auth", &h).0
    };
    assert_eq!(
        ask("/reviews/1", &[]),
        401,
        "the provider's API-key step ran"
    );
    assert_eq!(ask("/reviews/1", &[("api-key", "wrong")]), 401);
    assert_eq!(ask("/reviews/1", &[("api-key", API_KEY)]), 200);
    assert_eq!(
        ask("/details/1", &[("api-key", API_KEY)]),
        403,
        "down: fail closed"
    );
}
