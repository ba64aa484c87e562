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
async fn trusted_proxy_headers_describe_the_original_request() {
    let dir = policy_dir("http");
    let srv = start(&dir, Duration::ZERO).await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    let wl = ("x-meshguard-workload", "production/app=backend");
    // nginx auth_request style.
    let r = get(
        &format!("{base}/auth"),
        &[
            wl,
            ("x-original-uri", "/api/v1/users?page=2"),
            ("x-original-method", "GET"),
            ("x-forwarded-client-cert", XFCC),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    // Traefik/Caddy style, with a path bypass attempt that normalises onto the denied path.
    let r = get(
        &format!("{base}/"),
        &[
            wl,
            ("x-forwarded-uri", "/api/v1/../admin"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-client-cert", XFCC),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.expect("body"), "RBAC: access denied");
    // No mesh identity: plaintext into a STRICT namespace.
    let r = get(
        &format!("{base}/auth"),
        &[wl, ("x-original-uri", "/api/v1/users")],
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
            ("authorization", &forged),
        ],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_cannot_pick_identity_path_or_workload() {
    let dir = policy_dir("untrusted");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.trusted_proxies = vec!["192.0.2.0/24".parse().expect("cidr")];
        c.workload = Some(meshguard_server::Workload::parse("demo/app=shop").expect("workload"));
        c.http_path_prefix = "/ext-authz".to_owned();
    })
    .await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    // The claimed identity, path and workload are ignored: the static workload (demo/shop) and
    // the request's own path decide, and demo/shop needs a JWT.
    let r = get(
        &format!("{base}/ext-authz/cart"),
        &[
            ("x-meshguard-workload", "production/app=backend"),
            ("x-forwarded-client-cert", XFCC),
            ("x-original-uri", "/api/v1/users"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    // Envoy HTTP ext_authz style: the original request line behind the prefix.
    let bearer = format!("Bearer {}", token("RS256"));
    let r = get(
        &format!("{base}/ext-authz/cart"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status(), 200);
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
