//! Envoy ext_authz v3 through the real protocol: a tonic client over TCP on loopback against a
//! running `serve`, covering allow, deny, 401, headers added and removed, fail-closed requests,
//! gRPC health, and a reload under concurrent load with no failed call.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use tonic::transport::Channel;

fn sock(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn check(
    ns: &str,
    labels: &str,
    principal: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    let mut ext = HashMap::new();
    if !ns.is_empty() {
        ext.insert("namespace".to_owned(), ns.to_owned());
        ext.insert("labels".to_owned(), labels.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: sock("10.0.0.1", 40000),
                principal: principal.to_owned(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: sock("10.0.0.2", 8080),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "req-1".to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "svc.test".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

const FRONTEND: &str = "spiffe://cluster.local/ns/production/sa/frontend";

async fn client(r: &Running) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{}", r.bound.grpc.expect("grpc")))
        .await
        .expect("connect")
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_401_and_header_mutations() {
    let dir = policy_dir("grpc");
    let srv = start(&dir, Duration::ZERO).await;
    let mut c = client(&srv).await;

    let ok = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users?page=2",
            &[],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&ok), 0);
    assert!(matches!(
        ok.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    let md = ok.dynamic_metadata.expect("metadata");
    assert!(md.fields.contains_key("policy"));

    let denied = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/../admin",
            &[],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&denied), 7);
    match denied.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.map(|s| s.code), Some(403));
            assert_eq!(d.body, "RBAC: access denied");
        }
        other => panic!("{other:?}"),
    }

    // Plaintext to a STRICT namespace is denied.
    let plain = c
        .check(check(
            "production",
            "app=backend",
            "",
            "GET",
            "/api/v1/users",
            &[],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&plain), 7);

    // A valid JWT: allowed, the role claim added as a header, the token header removed.
    let bearer = format!("Bearer {}", token("RS256"));
    let r = c
        .check(check(
            "demo",
            "app=shop",
            "",
            "GET",
            "/cart",
            &[("authorization", &bearer)],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r), 0, "{r:?}");
    match r.http_response {
        Some(HttpResponse::OkResponse(okr)) => {
            let added: Vec<(String, String)> = okr
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            assert_eq!(added, vec![("x-role".to_owned(), "admin".to_owned())]);
            assert_eq!(okr.headers_to_remove, vec!["authorization".to_owned()]);
        }
        other => panic!("{other:?}"),
    }

    // A forged token: 401 with WWW-Authenticate.
    let forged = format!("Bearer {}", token("tampered_payload"));
    let r = c
        .check(check(
            "demo",
            "app=shop",
            "",
            "GET",
            "/cart",
            &[("authorization", &forged)],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r), 16);
    match r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.map(|s| s.code), Some(401));
            let w = d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "www-authenticate")
                .expect("www-authenticate");
            assert!(w.value.contains("invalid_token"), "{}", w.value);
        }
        other => panic!("{other:?}"),
    }
    // The same, with Envoy's `encode_raw_headers` (headers arrive in `header_map`).
    let mut raw = check("demo", "app=shop", "", "GET", "/cart", &[]);
    if let Some(h) = raw
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.header_map = Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
            headers: vec![envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "authorization".to_owned(),
                raw_value: forged.clone().into_bytes(),
                ..Default::default()
            }],
        });
    }
    let r = c.check(raw).await.expect("rpc").into_inner();
    assert_eq!(code(&r), 16, "a forged token in header_map is still a 401");
    // No token: 403 from the ALLOW policy, not 401.
    let r = c
        .check(check("demo", "app=shop", "", "GET", "/cart", &[]))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r), 7);

    // No way to tell the workload: denied, fail closed.
    let r = c
        .check(check("", "", FRONTEND, "GET", "/", &[]))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r), 7);
    let empty = c
        .check(CheckRequest { attributes: None })
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&empty), 7);

    // gRPC health.
    let ch = Channel::from_shared(format!("http://{}", srv.bound.grpc.expect("grpc")))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let resp = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".to_owned(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_call_and_refuses_a_bad_set() {
    let dir = policy_dir("reload");
    let srv = start(&dir, Duration::from_millis(50)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut c = client(&srv).await;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut n, mut bad) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c
                    .check(check(
                        "production",
                        "app=backend",
                        FRONTEND,
                        "GET",
                        "/api/v1/users",
                        &[],
                    ))
                    .await
                {
                    Ok(r) if code(r.get_ref()) == 0 => {}
                    Ok(r) => bad.push(format!("denied: {:?}", r.into_inner().status)),
                    Err(e) => bad.push(format!("rpc failed: {e}")),
                }
                n += 1;
            }
            (n, bad)
        }));
    }
    let extra = dir.join("extra.yaml");
    for i in 0..6 {
        std::fs::write(
            &extra,
            format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: audit-{i}, namespace: production}}\nspec:\n  action: AUDIT\n  rules:\n  - to:\n    - operation: {{methods: [\"DELETE\"]}}\n"),
        )
        .expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A broken update is refused; the previous set keeps serving and /readyz says why.
    std::fs::write(&extra, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: production}\nspec:\n  action: DENNY\n").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (n, bad) = w.await.expect("worker");
        assert!(
            bad.is_empty(),
            "calls failed or were denied during reloads: {bad:?}"
        );
        total += n;
    }
    assert!(total > 100, "only {total} calls");
    let g = srv.state.current().id;
    assert!(g >= 3, "reloads happened (generation {g})");
    let admin = srv.bound.admin.expect("admin");
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .expect("readyz");
    // Still ready: the last good set serves; degraded says why.
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.expect("body");
    assert!(
        body.contains("degraded") && body.contains("DENNY"),
        "{body}"
    );
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("meshguard_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("meshguard_last_reload_success 0"));
    // Fixing the file clears the degraded state.
    std::fs::remove_file(&extra).expect("rm");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let body = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .expect("healthz")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "ok\n");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Fail-opens of the most common Istio deployment (issue 11): istiod's envoyExtAuthzGrpc
/// provider sends no destination labels, so a request that names only a namespace (or only a
/// destination principal) must not be decided as a workload that no selector policy selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_malformed_workload_labels_deny() {
    let dir = policy_dir("labels");
    let srv = start(&dir, Duration::ZERO).await;
    let mut c = client(&srv).await;
    // Known labels: decided by the policies (frontend-to-backend allows this GET).
    let ok = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users",
            &[],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&ok), 0);
    // Malformed labels are refused, never read as fewer labels.
    for bad in ["app", "app=backend,version", "=x", "app=back end"] {
        let r = c
            .check(check(
                "production",
                bad,
                FRONTEND,
                "GET",
                "/api/v1/users",
                &[],
            ))
            .await
            .expect("rpc")
            .into_inner();
        assert_ne!(code(&r), 0, "labels `{bad}` must deny");
    }
    // A malformed namespace too.
    let r = c
        .check(check("Prod!", "app=backend", FRONTEND, "GET", "/", &[]))
        .await
        .expect("rpc")
        .into_inner();
    assert_ne!(code(&r), 0);
    // Only a destination principal, no labels anywhere (Envoy as istiod configures it).
    let mut req = check("", "", FRONTEND, "GET", "/api/v1/users", &[]);
    if let Some(d) = req.attributes.as_mut().and_then(|a| a.destination.as_mut()) {
        d.principal = "spiffe://cluster.local/ns/production/sa/backend".to_owned();
    }
    let r = c.check(req).await.expect("rpc").into_inner();
    assert_ne!(code(&r), 0, "unknown labels must deny");
    let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("denied response expected");
    };
    assert_eq!(d.status.map(|s| s.code), Some(403));
    srv.stop().await;
}

/// An oversized CheckRequest is refused (Envoy then denies), logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_check_requests_are_refused_and_counted() {
    let dir = policy_dir("too-large");
    let srv = start_with(&dir, Duration::ZERO, |c| c.max_grpc_message_bytes = 4096).await;
    let mut c = client(&srv).await;
    let big = "x".repeat(8192);
    let r = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users",
            &[("x-big", &big)],
        ))
        .await;
    let e = r.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
    // A normal request on the same server still works.
    let ok = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users",
            &[],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&ok), 0);
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        srv.bound.admin.expect("admin")
    ))
    .await
    .expect("metrics")
    .text()
    .await
    .expect("text");
    assert!(
        metrics.contains("meshguard_grpc_messages_too_large_total 1"),
        "{metrics}"
    );
    srv.stop().await;
}

/// Issue 12: a CheckRequest with ~100k distinct headers cost seconds of CPU on a worker. Beyond
/// the header bound it is denied before any per-header work, and the server stays responsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_requests_with_too_many_headers_are_denied() {
    let dir = policy_dir("many-headers");
    let srv = start(&dir, Duration::ZERO).await;
    let mut c = client(&srv).await;
    let names: Vec<(String, String)> = (0..meshguard_server::grpc::MAX_CHECK_HEADERS + 1)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users",
            &refs,
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r), 7, "denied: {r:?}");
    // At the bound it is decided as usual.
    let r = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users",
            &refs[..meshguard_server::grpc::MAX_CHECK_HEADERS],
        ))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r), 0, "allowed at the bound");
    srv.stop().await;
}

/// Issue 12: the gRPC listener had no connection cap and held silent clients forever. Clients
/// that send nothing are closed after the header-read timeout; beyond the cap new connections
/// are closed at once; once the slots free up, Envoy's calls are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_capped_and_silent_clients_closed() {
    use tokio::io::AsyncReadExt;
    let dir = policy_dir("grpc-cap");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.max_connections = 16;
        c.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = srv.bound.grpc.expect("grpc");
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The 17th is closed at once, without waiting for the timeout.
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(300), extra.read(&mut b))
        .await
        .expect("closed at once, not after the timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The silent ones are closed after the header-read timeout.
    for s in &mut held {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("a silent gRPC client was not closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = client(&srv).await;
    let ok = c
        .check(check(
            "production",
            "app=backend",
            FRONTEND,
            "GET",
            "/api/v1/users",
            &[],
        ))
        .await
        .expect("served again")
        .into_inner();
    assert_eq!(code(&ok), 0);
    srv.stop().await;
}
