//! The sidecar's inbound side as a client reaches it: a running `meshguard proxy` (PERMISSIVE
//! mTLS, an HTTP port and a TCP port, policies with request authentication) fed the input as the
//! bytes of one connection. That covers protocol detection (TLS record or plaintext), the TLS
//! handshake parser, HTTP/1 and HTTP/2 parsing, the Host/authority checks, path normalisation,
//! JWT extraction and the decision. The proxy must end every connection (answer or close)
//! within its timeouts and keep serving the next one.
//!
//! Input: the first byte picks the port (bit 0: TCP); the rest is sent, then the write side shut.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshguard_engine::{State, Workload};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use meshguard_policy::MeshConfig;
use meshguard_proxy::{Inbound, Protocol, ProxyConfig, SvidMaterial, SvidStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    rt: tokio::runtime::Runtime,
    http: SocketAddr,
    tcp: SocketAddr,
}

fn policies() -> String {
    let jwks = include_str!("../../crates/meshguard-authn/tests/data/jwks.json")
        .replace('\n', " ")
        .replace('\'', "''");
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: backend}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: backend}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: backend}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: open, namespace: backend}}
spec: {{rules: [{{}}]}}
"
    )
}

/// An app that answers every HTTP/1 request head with 200 and echoes anything else.
async fn app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        seen.clear();
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    } else if !seen.starts_with(b"GET") && !seen.starts_with(b"POST") {
                        let _ = s.write_all(&buf[..n]).await;
                        seen.clear();
                    }
                }
            });
        }
    });
    addr
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("meshguard-fuzz-proxy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).expect("dir");
        std::fs::write(dir.join("policies/mesh.yaml"), policies()).expect("write");
        let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
        let id = SpiffeId::parse("spiffe://cluster.local/ns/backend/sa/api").expect("id");
        let svid = ca
            .issue(&id, Duration::from_secs(86_400), KeyType::EcdsaP256)
            .expect("svid");
        let store =
            SvidStore::new(SvidMaterial::from_issued(svid, ca.bundle_pem())).expect("store");
        let state = State::new(
            meshguard_engine::Files(vec![dir.join("policies")]),
            MeshConfig::default(),
            reqwest::Client::new(),
        )
        .expect("policies");
        let (http, tcp) = rt.block_on(async {
            let app = app().await;
            let mut cfg = ProxyConfig::new(Workload::parse("backend/app=api").expect("workload"));
            cfg.reload_interval = Duration::ZERO;
            cfg.detect_timeout = Duration::from_millis(100);
            cfg.connect_timeout = Duration::from_secs(1);
            cfg.idle_timeout = Duration::from_secs(2);
            let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            cfg.inbound = vec![
                Inbound {
                    name: "http".into(),
                    listen: any,
                    port: 8080,
                    app,
                    protocol: Protocol::Http,
                },
                Inbound {
                    name: "tcp".into(),
                    listen: any,
                    port: 9000,
                    app,
                    protocol: Protocol::Tcp,
                },
            ];
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _ = meshguard_proxy::run(state, store, cfg, std::future::pending(), move |b| {
                    let _ = tx.send(b.clone());
                })
                .await;
            });
            let b = rx.await.expect("proxy bound");
            (b.inbound[0], b.inbound[1])
        });
        Harness { rt, http, tcp }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, bytes)) = data.split_first() else {
        return;
    };
    let h = harness();
    let addr = if op & 1 == 0 { h.http } else { h.tcp };
    h.rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("the proxy accepts");
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let end = async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        // The proxy's own bounds (detect 100 ms, connect 1 s, idle 2 s, HTTP 30 s for a first
        // request that never completes) end every connection; 40 s means it hung.
        tokio::time::timeout(Duration::from_secs(40), end)
            .await
            .expect("the proxy ended the connection");
    });
});
