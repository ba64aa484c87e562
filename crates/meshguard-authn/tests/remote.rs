//! Remote JWKS against a real HTTP server on 127.0.0.1: fetch, key rotation, rate-limited
//! re-fetch on an unknown kid, last good keys during an outage, and an endpoint that hangs,
//! fails, sends garbage or too much (the request is decided within the timeout and refused).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use meshguard_authn::remote::FetchSettings;
use meshguard_authn::{Authenticator, AuthnOutcome, AuthnSettings, TokenError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
enum Mode {
    Serve(String),
    Hang,
    Status(u16),
    Huge,
}

struct JwksServer {
    base: String,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(mode: Mode) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mode = Arc::new(Mutex::new(mode));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, h, b) = (mode.clone(), hits.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (m, h, b) = (m.clone(), h.clone(), b.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&got)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let (status, body) = if line.contains("/.well-known/openid-configuration") {
                        (
                            200,
                            format!(
                                "{{\"issuer\":\"https://issuer.test\",\"jwks_uri\":\"{b}/jwks\"}}"
                            ),
                        )
                    } else {
                        h.fetch_add(1, Ordering::SeqCst);
                        let mode = m.lock().expect("lock").clone();
                        match mode {
                            Mode::Serve(body) => (200, body),
                            Mode::Status(s) => (s, "error".to_owned()),
                            Mode::Huge => (
                                200,
                                format!("{{\"keys\":[\"{}\"]}}", "x".repeat(2 * 1024 * 1024)),
                            ),
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                        }
                    };
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer { base, mode, hits }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().expect("lock") = m;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn remote_set(uri: Option<&str>, timeout: &str) -> meshguard_policy::PolicySet {
    let uri_line = uri
        .map(|u| format!("    jwksUri: {u}\n"))
        .unwrap_or_default();
    policy_set(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: remote, namespace: prod}}
spec:
  jwtRules:
  - issuer: https://issuer.test
{uri_line}    timeout: {timeout}
"
    ))
}

fn auth_with(set: &meshguard_policy::PolicySet, fetch: FetchSettings) -> Authenticator {
    Authenticator::new(
        set,
        reqwest::Client::new(),
        AuthnSettings {
            fetch,
            ..AuthnSettings::default()
        },
    )
}

fn only_ec_jwks() -> String {
    let mut v: serde_json::Value = serde_json::from_str(&read("jwks.json")).expect("jwks");
    if let Some(keys) = v["keys"].as_array_mut() {
        keys.retain(|k| k["kid"] == "ec256-1");
    }
    v.to_string()
}

fn is_ok(o: &AuthnOutcome) -> bool {
    matches!(o, AuthnOutcome::Authenticated(_))
}

fn error(o: &AuthnOutcome) -> TokenError {
    match o {
        AuthnOutcome::Rejected(r) => {
            assert_eq!(r.status, 401);
            r.error.clone()
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn rotation_is_picked_up_on_an_unknown_kid() {
    let srv = JwksServer::start(Mode::Serve(only_ec_jwks())).await;
    let set = remote_set(Some(&format!("{}/jwks", srv.base)), "2s");
    let fetch = FetchSettings {
        refresh: Duration::from_secs(3600),
        unknown_kid_min_interval: Duration::ZERO,
        retry_after_failure: Duration::ZERO,
    };
    let a = auth_with(&set, fetch);
    assert!(is_ok(&bearer(&set, &a, &token("ES256")).await));
    assert_eq!(srv.hits(), 1);
    // The issuer rotates in an RSA key; a token signed with it names a kid we have not seen.
    srv.set(Mode::Serve(read("jwks.json")));
    assert!(is_ok(&bearer(&set, &a, &token("RS256")).await));
    assert_eq!(srv.hits(), 2, "one re-fetch for the unknown kid");
    // Cached now: no more fetches.
    assert!(is_ok(&bearer(&set, &a, &token("RS256")).await));
    assert_eq!(srv.hits(), 2);
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let srv = JwksServer::start(Mode::Serve(only_ec_jwks())).await;
    let set = remote_set(Some(&format!("{}/jwks", srv.base)), "2s");
    let fetch = FetchSettings {
        refresh: Duration::from_secs(3600),
        unknown_kid_min_interval: Duration::from_secs(3600),
        retry_after_failure: Duration::ZERO,
    };
    let a = auth_with(&set, fetch);
    assert_eq!(
        error(&bearer(&set, &a, &token("unknown_kid")).await),
        TokenError::NoMatchingKey
    );
    for _ in 0..5 {
        assert_eq!(
            error(&bearer(&set, &a, &token("unknown_kid")).await),
            TokenError::NoMatchingKey
        );
    }
    assert_eq!(
        srv.hits(),
        1,
        "a flood of unknown kids does not become a flood of fetches"
    );
}

#[tokio::test]
async fn last_good_keys_survive_an_outage_and_removed_keys_stop_working() {
    let srv = JwksServer::start(Mode::Serve(read("jwks.json"))).await;
    let set = remote_set(Some(&format!("{}/jwks", srv.base)), "2s");
    // Refresh on every use, to exercise the paths quickly.
    let fetch = FetchSettings {
        refresh: Duration::ZERO,
        unknown_kid_min_interval: Duration::ZERO,
        retry_after_failure: Duration::ZERO,
    };
    let a = auth_with(&set, fetch);
    assert!(is_ok(&bearer(&set, &a, &token("RS256")).await));
    srv.set(Mode::Status(503));
    assert!(
        is_ok(&bearer(&set, &a, &token("RS256")).await),
        "endpoint down: last good keys serve"
    );
    assert!(is_ok(&bearer(&set, &a, &token("PS384")).await));
    // Background refreshes ran (and failed) while the last good keys kept serving.
    for _ in 0..50 {
        if srv.hits() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = bearer(&set, &a, &token("RS256")).await;
    }
    assert!(srv.hits() >= 2);
    assert!(
        is_ok(&bearer(&set, &a, &token("RS256")).await),
        "still served during the outage"
    );
    // The issuer removes the RSA key: once a refresh has seen that, the cached RS256 token must
    // stop verifying.
    srv.set(Mode::Serve(only_ec_jwks()));
    let mut refused = false;
    for _ in 0..50 {
        match bearer(&set, &a, &token("RS256")).await {
            AuthnOutcome::Rejected(r) => {
                assert_eq!(r.error, TokenError::NoMatchingKey);
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(refused, "a removed key kept vouching for a cached token");
    assert!(is_ok(&bearer(&set, &a, &token("ES256")).await));
}

#[tokio::test]
async fn a_hanging_endpoint_is_decided_within_the_timeout() {
    let srv = JwksServer::start(Mode::Hang).await;
    let set = remote_set(Some(&format!("{}/jwks", srv.base)), "1s");
    let a = auth_with(&set, FetchSettings::default());
    let start = Instant::now();
    let e = error(&bearer(&set, &a, &token("RS256")).await);
    let took = start.elapsed();
    assert!(
        matches!(e, TokenError::JwksUnavailable(ref m) if m.contains("timed out")),
        "{e:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "decided after {took:?}, the JWKS timeout is 1s"
    );
}

#[tokio::test]
async fn garbage_errors_and_oversized_bodies_are_refused() {
    for mode in [
        Mode::Serve("<html>not json</html>".to_owned()),
        Mode::Status(500),
        Mode::Huge,
        Mode::Serve("{\"keys\":[]}".to_owned()),
    ] {
        let srv = JwksServer::start(mode).await;
        let set = remote_set(Some(&format!("{}/jwks", srv.base)), "2s");
        let a = auth_with(&set, FetchSettings::default());
        assert!(matches!(
            error(&bearer(&set, &a, &token("RS256")).await),
            TokenError::JwksUnavailable(_)
        ));
        // Requests without a token are still decided (no principal), not failed.
        assert!(matches!(
            run(&set, &a, "GET", "/", &[]).await,
            AuthnOutcome::NoToken
        ));
    }
}

#[tokio::test]
async fn keys_never_fetched_means_refused() {
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let set = remote_set(Some(&format!("http://127.0.0.1:{port}/jwks")), "1s");
    let a = auth_with(&set, FetchSettings::default());
    assert!(matches!(
        error(&bearer(&set, &a, &token("RS256")).await),
        TokenError::JwksUnavailable(_)
    ));
    let errs = a.prefetch().await;
    assert_eq!(errs.len(), 1);
}

#[tokio::test]
async fn oidc_discovery_when_no_jwks_is_given() {
    let srv = JwksServer::start(Mode::Serve(read("jwks.json"))).await;
    // Issuer is the server itself here; the RequestAuthentication has neither jwks nor jwksUri.
    let set = policy_set(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: oidc, namespace: prod}}
spec:
  jwtRules:
  - issuer: {}
",
        srv.base
    ));
    let a = auth_with(&set, FetchSettings::default());
    assert!(a.prefetch().await.is_empty());
    assert_eq!(srv.hits(), 1);
}
