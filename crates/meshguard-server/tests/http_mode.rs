//! HTTP forward-auth mode: nginx/Traefik/Caddy-style headers from a trusted proxy, Envoy HTTP
//! ext_authz style requests with a path prefix, and untrusted peers that try to describe another
//! request. Also the admin /config dump (secrets redacted).

mod common;

use std::time::Duration;

use common::*;

const XFCC: &str = "By=spiffe://cluster.local/ns/production/sa/backend;URI=spiffe://cluster.local/ns/production/sa/frontend";

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_style_headers_describe_the_original_request() {
    let dir = policy_dir("http");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.trust_forwarded_client_cert = true
    })
    .await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    let wl = ("x-meshguard-workload", "production/app=backend");
    let xfcc = ("x-forwarded-client-cert", XFCC);
    let r = get(
        &format!("{base}/auth"),
        &[
            wl,
            ("x-original-uri", "/api/v1/users?page=2"),
            ("x-original-method", "GET"),
            xfcc,
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    // A path bypass attempt that normalises onto the denied path.
    let r = get(
        &format!("{base}/auth"),
        &[
            wl,
            ("x-original-uri", "/api/v1/../admin"),
            ("x-original-method", "GET"),
            xfcc,
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.expect("body"), "RBAC: access denied");
    // The method comes from the proxy too: DELETE is not allowed by frontend-to-backend.
    let r = get(
        &format!("{base}/auth"),
        &[
            wl,
            ("x-original-uri", "/api/v1/users"),
            ("x-original-method", "DELETE"),
            xfcc,
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    // Missing required headers deny instead of falling back to the subrequest's own line, or to
    // the X-Forwarded-* headers a client could have written.
    let r = get(&format!("{base}/api/v1/users"), &[wl, xfcc]).await;
    assert_eq!(r.status(), 403);
    let r = get(
        &format!("{base}/auth"),
        &[
            wl,
            ("x-forwarded-uri", "/api/v1/users"),
            ("x-forwarded-method", "GET"),
            xfcc,
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = get(
        &format!("{base}/auth"),
        &[wl, ("x-original-uri", "/api/v1/users"), xfcc],
    )
    .await;
    assert_eq!(
        r.status(),
        403,
        "no X-Original-Method: not assumed to be GET"
    );
    // No mesh identity: plaintext into a STRICT namespace.
    let r = get(
        &format!("{base}/auth"),
        &[
            wl,
            ("x-original-uri", "/api/v1/users"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    // JWT: valid token -> 200 with the claim header and the removal list; forged -> 401.
    let shop = ("x-meshguard-workload", "demo/app=shop");
    let bearer = format!("Bearer {}", token("ES256"));
    let r = get(
        &format!("{base}/auth"),
        &[
            shop,
            ("x-original-uri", "/cart"),
            ("x-original-method", "GET"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("x-role").and_then(|v| v.to_str().ok()),
        Some("admin")
    );
    assert_eq!(
        r.headers()
            .get("x-envoy-auth-headers-to-remove")
            .and_then(|v| v.to_str().ok()),
        Some("authorization")
    );
    let forged = format!("Bearer {}", token("other_key_same_kid"));
    let r = get(
        &format!("{base}/auth"),
        &[
            shop,
            ("x-original-uri", "/cart"),
            ("x-original-method", "GET"),
            ("authorization", &forged),
        ],
    )
    .await;
    assert_eq!(r.status(), 401);
    let w = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        w.starts_with("Bearer realm=") && w.contains("invalid_token"),
        "{w}"
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_style_and_client_cert_trust_is_opt_in() {
    let dir = policy_dir("forwarded");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.forward_auth = meshguard_server::http::ForwardStyle::Forwarded
    })
    .await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    let wl = ("x-meshguard-workload", "production/app=backend");
    // Traefik/Caddy headers; the client-cert header is ignored without the opt-in, so this is
    // plaintext to a STRICT namespace.
    let r = get(
        &format!("{base}/"),
        &[
            wl,
            ("x-forwarded-uri", "/api/v1/users"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-client-cert", XFCC),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    // X-Original-* (which Traefik does not set, so a client could) is not read in this style.
    let r = get(
        &format!("{base}/"),
        &[
            ("x-meshguard-workload", "demo/app=shop"),
            ("x-original-uri", "/cart"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    let bearer = format!("Bearer {}", token("RS256"));
    let r = get(
        &format!("{base}/"),
        &[
            ("x-meshguard-workload", "demo/app=shop"),
            ("x-forwarded-uri", "/cart"),
            ("x-forwarded-method", "GET"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_are_refused_and_envoy_style_uses_the_request_line() {
    let dir = policy_dir("untrusted");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.trusted_proxies = vec!["192.0.2.0/24".parse().expect("cidr")];
        c.workload = Some(meshguard_server::Workload::parse("demo/app=shop").expect("workload"));
    })
    .await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    let bearer = format!("Bearer {}", token("RS256"));
    // 127.0.0.1 is not a trusted proxy here: refused whatever it sends.
    let r = get(
        &format!("{base}/auth"),
        &[
            ("x-original-uri", "/cart"),
            ("x-original-method", "GET"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    srv.stop().await;

    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.workload = Some(meshguard_server::Workload::parse("demo/app=shop").expect("workload"));
        c.http_path_prefix = "/ext-authz".to_owned();
        c.forward_auth = meshguard_server::http::ForwardStyle::Envoy;
    })
    .await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    // Envoy HTTP ext_authz style: the original request line behind the prefix.
    let r = get(
        &format!("{base}/ext-authz/cart"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = get(&format!("{base}/ext-authz/cart"), &[]).await;
    assert_eq!(
        r.status(),
        403,
        "no token: the ALLOW policy needs a request principal"
    );
    let r = get(&format!("{base}/other/cart"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), 403, "outside the prefix");
    // /config: the active set, inline JWKS redacted.
    let admin = srv.bound.admin.expect("admin");
    let cfg: serde_json::Value = get(&format!("http://{admin}/config"), &[])
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cfg["generation"], 1);
    let text = cfg.to_string();
    assert!(
        text.contains("<redacted>") && !text.contains("\"kty\""),
        "{text}"
    );
    assert_eq!(
        get(&format!("http://{admin}/healthz"), &[]).await.status(),
        200
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
