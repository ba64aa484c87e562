//! A request refused before any filter (plaintext under STRICT mTLS, as Envoy's listener refuses
//! it) never reaches the AuthConfig bound to its route: a pass-through delegate with side
//! effects must not see it. The same request over mTLS does reach the delegate.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use meshguard_engine::{DecisionLog, Embedded, Engine, Settings, Sink, State};
use meshguard_policy::request::{Destination, HttpRequest};
use meshguard_policy::{MeshConfig, PathNormalization, Request};

/// An HTTP delegate on a loopback port the test picks: answers 200 and counts requests.
fn delegate() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().map_while(Result::ok) {
            s.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, seen)
}

fn policies(delegate: &str) -> Embedded {
    let text = format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-all, namespace: shop}}
spec: {{action: ALLOW, rules: [{{}}]}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: delegate, namespace: gloo-system}}
spec:
  configs:
  - name: side-effects
    passThroughAuth:
      http: {{url: 'http://{delegate}/auth', connectionTimeout: 2s}}
"
    );
    Embedded(vec![("early.yaml".to_owned(), text)])
}

fn request(peer: Option<&str>) -> Request {
    let mut r = Request {
        destination: Destination {
            namespace: "shop".into(),
            ..Default::default()
        },
        http: Some(HttpRequest::new(
            "GET",
            "shop.test",
            "/orders",
            Vec::new(),
            PathNormalization::Base,
        )),
        auth_config: Some("gloo-system.delegate".into()),
        ..Default::default()
    };
    if let Some(p) = peer {
        r = r.with_peer(p);
    }
    r
}

#[tokio::test]
async fn a_bound_auth_config_does_not_run_for_requests_refused_before_filters() {
    let (addr, seen) = delegate();
    let state = State::new(
        policies(&addr),
        MeshConfig::default(),
        reqwest::Client::new(),
    )
    .expect("policies load");
    let log = DecisionLog::start(Sink::Off, state.clone()).expect("log");
    let engine = Engine::new(state, log, Settings::default());

    let d = engine.decide("test", &request(None)).await;
    assert!(!d.allowed, "{}", d.reason);
    assert_eq!(d.status, 403, "{}", d.reason);
    assert_eq!(d.auth_config, None, "no AuthConfig ran: {}", d.reason);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the delegate saw a refused request"
    );

    let d = engine
        .decide(
            "test",
            &request(Some("spiffe://cluster.local/ns/web/sa/web")),
        )
        .await;
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.auth_config.as_deref(), Some("gloo-system.delegate"));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}
