//! Issue 12, the admin side of hostile conditions, kept as tests: Secret contents never appear in
//! refusals shown on `/readyz` and `/config`; a decision log on a full disk loses lines visibly
//! while decisions continue; a reload that does not finish shows on `/readyz` and `/metrics`.

mod common;

use std::time::Duration;

use common::*;
use meshguard_server::dlog::Sink;

const ALLOW_ALL: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: edge}
spec: {rules: [{}]}
";

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("meshguard-admin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("open.yaml"), ALLOW_ALL).expect("write");
    d
}

async fn get(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{admin}{path}"))
        .await
        .expect("admin answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn forward_auth(http: std::net::SocketAddr) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{http}/auth"))
        .header("x-original-uri", "/")
        .header("x-original-method", "GET")
        .header("x-meshguard-workload", "edge/app=gw")
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A numeric Secret value used to be echoed ("write \"918273645\" in quotes") in the refused
/// reload shown on /readyz and /config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_appear_in_refusals() {
    let d = dir("secret");
    let srv = start(&d, Duration::ZERO).await;
    let admin = srv.bound.admin.expect("admin");
    std::fs::write(
        d.join("keys.yaml"),
        "apiVersion: v1
kind: Secret
metadata: {name: apikey, namespace: gloo-system}
type: extauth.solo.io/apikey
stringData:
  api-key: 918273645
  user: 3.14159265
data:
  other: 271828182
",
    )
    .expect("write");
    let e = srv.state.reload("test").await.expect_err("refused");
    let (status, readyz) = get(admin, "/readyz").await;
    let (_, config) = get(admin, "/config").await;
    // Still ready on the last good set, and degraded says why (so one bad file does not take
    // every replica out of the load balancer).
    assert_eq!(status, 200, "{readyz}");
    assert!(
        readyz.contains("degraded: the last policy reload was refused"),
        "{readyz}"
    );
    let (status, healthz) = get(admin, "/healthz").await;
    assert_eq!(status, 200, "{healthz}");
    assert!(healthz.starts_with("ok (degraded)"), "{healthz}");
    let seen = format!("{e}\n{readyz}\n{config}\n{healthz}");
    assert!(
        seen.contains("stringData.api-key") && seen.contains("keys.yaml"),
        "the refusal names the file and field: {seen}"
    );
    for secret in ["918273645", "3.14159265", "271828182"] {
        assert!(
            !seen.contains(secret),
            "Secret value {secret} shown: {seen}"
        );
    }
    srv.stop().await;
}

/// A decision log on a full disk (/dev/full answers every write with ENOSPC) used to drop lines
/// silently with the dropped counter at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_decision_lines_visibly() {
    let d = dir("full");
    let srv = start_with(&d, Duration::ZERO, |c| {
        c.decision_log = Sink::File("/dev/full".into())
    })
    .await;
    let (http, admin) = (
        srv.bound.http.expect("http"),
        srv.bound.admin.expect("admin"),
    );
    for _ in 0..20 {
        assert_eq!(forward_auth(http).await, 200, "decisions continue");
    }
    let mut lost = 0u64;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = get(admin, "/metrics").await.1;
        lost = metrics
            .lines()
            .find_map(|l| l.strip_prefix("meshguard_decision_log_lost_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if lost == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lost, 20, "every lost line is counted: {metrics}");
    assert!(
        metrics.contains("meshguard_decision_log_write_ok 0"),
        "{metrics}"
    );
    let (status, readyz) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "decisions continue, so still ready: {readyz}");
    assert!(
        readyz.contains("decision log: cannot write") && readyz.contains("20 line(s) lost"),
        "{readyz}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&get(admin, "/config").await.1).expect("json");
    assert_eq!(config["decision_log"]["lost_lines"], 20);
    assert!(
        config["decision_log"]["write_error"].is_string(),
        "{config}"
    );
    srv.stop().await;
}

/// A reload that cannot finish (here: a JWKS endpoint that accepts and never answers, fetched
/// before the new set serves) used to leave /readyz saying ready. Past the stall bound it says
/// which reload is stuck, and recovers when the reload ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_does_not_finish_shows_on_readyz() {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jwks = hang.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let d = dir("stall");
    let srv = start(&d, Duration::ZERO).await;
    srv.state.set_reload_stall_after(Duration::from_millis(300));
    let admin = srv.bound.admin.expect("admin");
    std::fs::write(
        d.join("jwt.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: edge}}
spec:
  jwtRules:
  - issuer: https://idp.test
    jwksUri: http://{jwks}/keys
    timeout: 4s
"
        ),
    )
    .expect("write");
    let st = srv.state.clone();
    let reload = tokio::spawn(async move { st.reload("test").await });
    let mut stalled = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) = get(admin, "/readyz").await;
        if status == 503 {
            stalled = Some(body);
            break;
        }
    }
    let body = stalled.expect("/readyz reports the stuck reload");
    assert!(
        body.contains("has been running for") && body.contains("trigger: test"),
        "{body}"
    );
    let metrics = get(admin, "/metrics").await.1;
    let running: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshguard_policy_reload_running_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(running > 0.0, "{metrics}");
    // The reload ends (the fetch times out; tokens for that issuer are refused until it
    // succeeds) and the server is ready again.
    reload.await.expect("join").expect("reload applies");
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    srv.stop().await;
}

/// A reload used to start every remote key set from scratch, so with the JWKS endpoint down a
/// reload (every file change) made valid tokens fail until the endpoint came back. Keys fetched
/// by the previous set are carried over for the same jwksUri, issuer and timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_fetched_keys_while_the_jwks_endpoint_is_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = std::fs::read_to_string(format!("{AUTHN_DATA}/jwks.json")).expect("jwks");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jwks = l.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let d = dir("carry");
    let jwt = |n: u32| {
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: edge, annotations: {{revision: \"{n}\"}}}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwksUri: http://{jwks}/keys
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: need-jwt, namespace: edge}}
spec:
  action: DENY
  rules: [{{from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]}}]
"
        )
    };
    std::fs::write(d.join("jwt.yaml"), jwt(0)).expect("write");
    let srv = start(&d, Duration::ZERO).await;
    let http = srv.bound.http.expect("http");
    let with_token = || async {
        reqwest::Client::new()
            .get(format!("http://{http}/auth"))
            .header("x-original-uri", "/")
            .header("x-original-method", "GET")
            .header("x-meshguard-workload", "edge/app=gw")
            .header("authorization", format!("Bearer {}", token("RS256")))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(
        with_token().await,
        200,
        "keys fetched while the endpoint is up"
    );
    server.abort();
    let _ = server.await;
    for n in 1..=3 {
        std::fs::write(d.join("jwt.yaml"), jwt(n)).expect("write");
        srv.state.reload("test").await.expect("reload applies");
        assert_eq!(
            with_token().await,
            200,
            "after reload {n} with the JWKS endpoint down, the token still verifies"
        );
    }
    srv.stop().await;
}
