//! Two apps, two proxies, on loopback ports the test picks: a client app talks plaintext to its
//! proxy's outbound listener, which originates mTLS to the server proxy's inbound listener in
//! front of the server app. SVIDs come from a real CA (`meshguard-identity`); policies are
//! Istio YAML in a directory the test owns and rewrites to show reloads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshguard_engine::{State, Workload};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use meshguard_policy::MeshConfig;
use meshguard_proxy::{Bound, Inbound, Outbound, Protocol, ProxyConfig, SvidMaterial, SvidStore};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const AUTHN_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../meshguard-authn/tests/data");

fn token(name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{AUTHN_DATA}/tokens.json")).expect("tokens"),
    )
    .expect("json");
    v["tokens"][name].as_str().expect("token").to_owned()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse_workload(s).expect("spiffe id")
}

fn material(ca: &Ca, who: &str, ttl: Duration) -> SvidMaterial {
    let svid = ca.issue(&id(who), ttl, KeyType::EcdsaP256).expect("issue");
    SvidMaterial::from_issued(svid, ca.bundle_pem())
}

const SERVER: &str = "spiffe://cluster.local/ns/backend/sa/api";
const WEB: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/frontend/sa/other";

fn policies(mode: &str) -> String {
    // `STRICT_EXCEPT_8080`: STRICT for the namespace, PERMISSIVE on workload port 8080 only.
    let (mode, port_level) = match mode {
        "STRICT_EXCEPT_8080" => (
            "STRICT",
            "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-ports, namespace: backend}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
",
        ),
        m => (m, ""),
    };
    let jwks = std::fs::read_to_string(format!("{AUTHN_DATA}/jwks.json"))
        .expect("jwks")
        .replace('\n', " ")
        .replace('\'', "''");
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: backend}}
spec:
  mtls: {{mode: {mode}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: backend}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwks: '{jwks}'
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api, namespace: backend}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/frontend/sa/web]}}}}]
  - to: [{{operation: {{paths: [/public/*]}}}}]
  - from: [{{source: {{requestPrincipals: [\"https://issuer.test/*\"]}}}}]
    to: [{{operation: {{paths: [/jwt/*]}}}}]
{port_level}"
    )
}

/// An HTTP app answering with what it received (path, XFCC), counting requests.
async fn http_app(hits: Arc<AtomicUsize>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = serde_json::json!({
                        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
                        "xfcc": req.headers().get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()),
                        "proto": req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
                        "jwt_sub": req.headers().get("x-jwt-sub").and_then(|v| v.to_str().ok()),
                        "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                        "seen": req.headers().iter()
                            .filter(|(k, _)| k.as_str().starts_with("x-seen-"))
                            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                            .collect::<std::collections::BTreeMap<_, _>>(),
                    })
                    .to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP echo app.
async fn echo_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn start_proxy(state: Arc<State>, store: Arc<SvidStore>, cfg: ProxyConfig) -> Bound {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        meshguard_proxy::run(state, store, cfg, std::future::pending(), move |b| {
            let _ = tx.send(b.clone());
        })
        .await
        .expect("proxy runs");
    });
    rx.await.expect("bound")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// One HTTP/1.1 request on a fresh connection; `None` when the connection is closed or reset
/// without an answer.
fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: api.backend\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Some((status, body))
}

/// Sends `raw` (a whole request) and returns the status, `None` when closed without answer.
fn http_raw(addr: SocketAddr, raw: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_owned(),
    ))
}

/// Writes `msg` and reads the echo; `None` if the connection is closed instead.
fn echo(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(msg).ok()?;
    let mut buf = vec![0u8; msg.len()];
    let mut got = 0;
    while got < msg.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    Some(buf)
}

struct Mesh {
    dir: PathBuf,
    ca: Ca,
    server_state: Arc<State>,
    server_store: Arc<SvidStore>,
    server: Bound,
    hits: Arc<AtomicUsize>,
}

impl Mesh {
    async fn new(tag: &str) -> Mesh {
        let dir =
            std::env::temp_dir().join(format!("meshguard-proxy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).expect("dir");
        std::fs::write(dir.join("policies/mesh.yaml"), policies("STRICT")).expect("write");
        let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
        let hits = Arc::new(AtomicUsize::new(0));
        let app = http_app(hits.clone()).await;
        let tcp_app = echo_app().await;
        let server_state = State::new(
            meshguard_engine::Files(vec![dir.join("policies")]),
            MeshConfig::default(),
            reqwest::Client::new(),
        )
        .expect("policies load");
        let server_store =
            SvidStore::new(material(&ca, SERVER, Duration::from_secs(3600))).expect("store");
        let mut cfg = ProxyConfig::new(Workload::parse("backend/app=api").expect("workload"));
        cfg.reload_interval = Duration::ZERO;
        cfg.detect_timeout = Duration::from_millis(500);
        cfg.inbound = vec![
            Inbound {
                name: "http".into(),
                listen: loopback(),
                port: 8080,
                app,
                protocol: Protocol::Http,
            },
            Inbound {
                name: "tcp".into(),
                listen: loopback(),
                port: 9000,
                app: tcp_app,
                protocol: Protocol::Tcp,
            },
        ];
        let server = start_proxy(server_state.clone(), server_store.clone(), cfg).await;
        Mesh {
            dir,
            ca,
            server_state,
            server_store,
            server,
            hits,
        }
    }

    /// A client proxy for `who` with outbound listeners to the server's HTTP and TCP inbound,
    /// expecting `expect` as the server's identity.
    async fn client(&self, who: &str, expect: &str) -> (Arc<SvidStore>, Bound) {
        let store =
            SvidStore::new(material(&self.ca, who, Duration::from_secs(3600))).expect("store");
        // The client side decides nothing itself; an empty policy set is enough.
        let empty = self
            .dir
            .join(format!("client-{}", who.rsplit('/').next().unwrap_or("x")));
        std::fs::create_dir_all(&empty).expect("dir");
        std::fs::write(
            empty.join("none.yaml"),
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: frontend}\nspec: {mtls: {mode: PERMISSIVE}}\n",
        )
        .expect("write");
        let state = State::new(
            meshguard_engine::Files(vec![empty]),
            MeshConfig::default(),
            reqwest::Client::new(),
        )
        .expect("client policies");
        let mut cfg = ProxyConfig::new(Workload::parse("frontend/app=web").expect("workload"));
        cfg.reload_interval = Duration::ZERO;
        cfg.outbound = vec![
            Outbound {
                name: "api-http".into(),
                listen: loopback(),
                upstream: self.server.inbound[0],
                spiffe_id: id(expect),
            },
            Outbound {
                name: "api-tcp".into(),
                listen: loopback(),
                upstream: self.server.inbound[1],
                spiffe_id: id(expect),
            },
        ];
        let bound = start_proxy(state, store.clone(), cfg).await;
        (store, bound)
    }

    async fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.join("policies/mesh.yaml"), policies(mode)).expect("write");
        self.server_state.reload("test").await.expect("reload");
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_denied_and_identity_forwarded() {
    let mesh = Mesh::new("main").await;
    let (web_store, web) = mesh.client(WEB, SERVER).await;
    let (_, other) = mesh.client(OTHER, SERVER).await;

    // Allowed: web may call anything; the app sees the peer in XFCC (Envoy's format), and a
    // client-written XFCC never gets through.
    let (w, spoof) = (
        web.outbound[0],
        "By=x;URI=spiffe://cluster.local/ns/admin/sa/root",
    );
    let (status, body) =
        blocking(move || http(w, "/orders", &[("x-forwarded-client-cert", spoof)]))
            .await
            .expect("answer");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("app json");
    assert_eq!(
        v["xfcc"],
        format!("By={SERVER};Hash={};URI={WEB}", web_store.leaf_sha256())
    );
    assert_eq!(v["proto"], "https");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 1);

    // Wrong principal: 403 from the server proxy; the app never sees the request.
    let o = other.outbound[0];
    let (status, body) = blocking(move || http(o, "/orders", &[]))
        .await
        .expect("answer");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    // A path rule the other principal does match, and the traversal that would escape it.
    let (status, _) = blocking(move || http(o, "/public/info", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    for attack in [
        "/public/../orders",
        "/public/%2e%2e/orders",
        "/PUBLIC/info",
        "/public/%2E%2E/orders",
    ] {
        let (status, _) = blocking(move || http(o, attack, &[]))
            .await
            .expect("answer");
        assert_eq!(status, 403, "{attack} must not reach /orders");
    }
    // Without slash merging (Istio's BASE), `//..` only removes the empty segment: the request
    // stays under /public and the app receives exactly that.
    let (status, body) = blocking(move || http(o, "/public//../orders", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["path"], "/public/orders");
    // What the app receives is the path that was authorised (normalised).
    let (_, body) = blocking(move || http(o, "/public/./a/../info", &[]))
        .await
        .expect("answer");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["path"], "/public/info");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 4);

    // Request authentication in the proxy: a valid JWT opens /jwt/*, a forged one is 401.
    let bearer = format!("Bearer {}", token("RS256"));
    let (status, _) = blocking(move || http(o, "/jwt/x", &[("authorization", &bearer)]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    let forged = format!("Bearer {}", token("tampered_payload"));
    let (status, _) = blocking(move || http(o, "/jwt/x", &[("authorization", &forged)]))
        .await
        .expect("answer");
    assert_eq!(status, 401);
    let (status, _) = blocking(move || http(o, "/jwt/x", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 403, "no token, no request principal");

    // TCP: web's connection echoes; other's is closed at connect (L4 decision).
    let t = web.outbound[1];
    let got = blocking(move || {
        let mut s = TcpStream::connect(t).expect("connect");
        echo(&mut s, b"hello")
    })
    .await;
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    let t = other.outbound[1];
    let got = blocking(move || {
        let mut s = TcpStream::connect(t).expect("connect");
        echo(&mut s, b"hello")
    })
    .await;
    assert_eq!(got, None, "denied TCP connection must be closed");

    // Outbound checks the upstream: expecting another identity, the client proxy refuses.
    let (_, wrong) = mesh
        .client(WEB, "spiffe://cluster.local/ns/backend/sa/impostor")
        .await;
    let w = wrong.outbound[0];
    // The app gets a 503 that says why, not a reset (as Envoy answers an upstream failure).
    let (status, body) = blocking(move || http(w, "/orders", &[]))
        .await
        .expect("an answer, not a reset");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("expected spiffe://cluster.local/ns/backend/sa/impostor"),
        "{body}"
    );
    // A TCP app (no request line) is closed as before.
    let got = blocking(move || {
        let mut s = TcpStream::connect(w).expect("connect");
        echo(&mut s, b"hello")
    })
    .await;
    assert_eq!(got, None);
    let _ = &mesh.server_store;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_permissive_and_reload() {
    let mesh = Mesh::new("modes").await;
    let inbound = mesh.server.inbound[0];
    // STRICT: plaintext is refused, even for a path anyone may call.
    assert_eq!(
        blocking(move || http(inbound, "/public/x", &[])).await,
        None
    );
    let tcp = mesh.server.inbound[1];
    let got = blocking(move || {
        let mut s = TcpStream::connect(tcp).expect("connect");
        echo(&mut s, b"plain")
    })
    .await;
    assert_eq!(got, None);

    // PERMISSIVE (a policy change, no restart): plaintext is accepted and decided without a
    // peer identity; mTLS still works on the same port.
    mesh.set_mode("PERMISSIVE").await;
    let (status, body) = blocking(move || http(inbound, "/public/x", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["xfcc"], serde_json::Value::Null, "no peer, no XFCC");
    assert_eq!(v["proto"], "http");
    let (status, _) = blocking(move || http(inbound, "/orders", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 403, "plaintext has no principal");
    let (_, web) = mesh.client(WEB, SERVER).await;
    let w = web.outbound[0];
    let (status, _) = blocking(move || http(w, "/orders", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    // mTLS readiness: who reached the PERMISSIVE port in plaintext (STRICT would refuse them)
    // and who over mTLS.
    let m = mesh.server_state.metrics.render(&[]);
    assert!(
        m.contains("meshguard_permissive_connections_total{port=\"8080\",transport=\"plaintext\",source=\"127.0.0.1\"} 2"),
        "{m}"
    );
    assert!(
        m.contains(&format!("meshguard_permissive_connections_total{{port=\"8080\",transport=\"mtls\",source=\"{WEB}\"}} 1")),
        "{m}"
    );

    // portLevelMtls: STRICT for the workload but PERMISSIVE on workload port 8080 (the HTTP
    // listener); the TCP listener (port 9000) stays STRICT.
    mesh.set_mode("STRICT_EXCEPT_8080").await;
    let (status, _) = blocking(move || http(inbound, "/public/x", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    let got = blocking(move || {
        let mut s = TcpStream::connect(tcp).expect("connect");
        echo(&mut s, b"plain")
    })
    .await;
    assert_eq!(got, None);

    // DISABLE: plaintext only; an mTLS client's handshake bytes reach no TLS server.
    mesh.set_mode("DISABLE").await;
    let (status, _) = blocking(move || http(inbound, "/public/x", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    // The client proxy's handshake fails; its app is told so with a 503.
    let (status, body) = blocking(move || http(w, "/orders", &[]))
        .await
        .expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("mTLS to the upstream proxy"), "{body}");
}

/// A TLS client presenting an arbitrary certificate, not checking the server: for attacks.
mod raw {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyServer;
    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// The same without any client certificate.
    pub async fn get_without_cert(addr: SocketAddr) -> Option<String> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
        exchange(addr, cfg).await
    }

    /// Connects with `chain`/`key`, sends a GET, returns what came back (None: refused).
    pub async fn get(
        addr: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Option<String> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(chain, key)
        .expect("client cert");
        exchange(addr, cfg).await
    }

    async fn exchange(addr: SocketAddr, cfg: rustls::ClientConfig) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("api.backend").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .ok()?;
        tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        (!text.is_empty()).then_some(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_expired_and_self_signed_peers_are_refused() {
    let mesh = Mesh::new("attacks").await;
    let inbound = mesh.server.inbound[0];
    // Control: a valid SVID through the same raw client gets an answer.
    let good = material(&mesh.ca, WEB, Duration::from_secs(3600));
    let got = raw::get(inbound, good.chain.clone(), good.key.as_ref().clone_key()).await;
    assert!(got.is_some_and(|t| t.starts_with("HTTP/1.1 200")));

    // Another trust domain's CA, even with a path the policy allows for anyone.
    let other_ca = Ca::init(
        &mesh.dir.join("other-ca"),
        "evil.example",
        KeyType::EcdsaP256,
    )
    .expect("ca");
    let foreign = material(
        &other_ca,
        "spiffe://evil.example/ns/frontend/sa/web",
        Duration::from_secs(3600),
    );
    assert_eq!(
        raw::get(inbound, foreign.chain, foreign.key.as_ref().clone_key()).await,
        None
    );
    // Counted on /metrics: connections, the refused handshake, the SVID's expiry.
    let m = mesh.server_state.metrics.render(&[]);
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    assert!(value("meshguard_proxy_connections_total{direction=\"inbound\"}") >= 2.0);
    assert!(value("meshguard_proxy_handshake_failures_total{direction=\"inbound\"}") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let expiry = value("meshguard_svid_expiry_timestamp_seconds");
    assert!(expiry > now && expiry <= now + 3700.0, "{expiry} vs {now}");
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_open_fds") > 0.0);

    // A self-signed certificate claiming web's SPIFFE ID.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(WEB.try_into().expect("uri"))];
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = p.self_signed(&key).expect("self-signed");
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    assert_eq!(
        raw::get(inbound, vec![cert.der().clone()], key_der).await,
        None
    );

    // An SVID from our own CA that has expired (1 s lifetime).
    let expired = material(&mesh.ca, WEB, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        raw::get(inbound, expired.chain, expired.key.as_ref().clone_key()).await,
        None
    );

    // A certificate of our CA with no SPIFFE ID is not an SVID: the issuing API cannot make
    // one, so take the CA certificate itself (a CA, not a leaf) with its key.
    let ca_chain: Vec<CertificateDer<'static>> = meshguard_identity::ca::pem_to_der(
        &std::fs::read_to_string(mesh.dir.join("ca/ca.crt")).expect("ca.crt"),
    )
    .into_iter()
    .map(CertificateDer::from)
    .collect();
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(mesh.dir.join("ca/ca.key")).expect("key"),
    )
    .expect("ca key");
    let ca_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca_key.serialize_der()));
    assert_eq!(raw::get(inbound, ca_chain, ca_key).await, None);
    assert_eq!(
        mesh.hits.load(Ordering::SeqCst),
        1,
        "only the control request reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_open_connections_and_new_handshakes_use_the_new_svid() {
    let mesh = Mesh::new("rotate").await;
    let (web_store, web) = mesh.client(WEB, SERVER).await;
    let t = web.outbound[1];
    let mut conn = blocking(move || TcpStream::connect(t).expect("connect")).await;
    let (c2, first) = blocking(move || {
        let r = echo(&mut conn, b"before");
        (conn, r)
    })
    .await;
    assert_eq!(first.as_deref(), Some(&b"before"[..]));
    let old_hash = web_store.leaf_sha256();

    // Both sides rotate.
    web_store
        .update(material(&mesh.ca, WEB, Duration::from_secs(3600)))
        .expect("client rotation");
    mesh.server_store
        .update(material(&mesh.ca, SERVER, Duration::from_secs(3600)))
        .expect("server rotation");
    assert_ne!(web_store.leaf_sha256(), old_hash);

    // The open connection keeps working.
    let mut conn = c2;
    let after = blocking(move || echo(&mut conn, b"after")).await;
    assert_eq!(after.as_deref(), Some(&b"after"[..]));

    // A new connection's handshake presents the new client certificate.
    let w = web.outbound[0];
    let (status, body) = blocking(move || http(w, "/orders", &[]))
        .await
        .expect("answer");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["xfcc"],
        format!("By={SERVER};Hash={};URI={WEB}", web_store.leaf_sha256())
    );

    // A rotation to another trust domain's SVID is refused; the current one stays.
    let other_ca = Ca::init(&mesh.dir.join("td2"), "other.td", KeyType::EcdsaP256).expect("ca");
    assert!(web_store
        .update(material(
            &other_ca,
            "spiffe://other.td/ns/frontend/sa/web",
            Duration::from_secs(60)
        ))
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_no_policy_selects_is_denied_by_default() {
    let mesh = Mesh::new("default-deny").await;
    let hits = Arc::new(AtomicUsize::new(0));
    let app = http_app(hits.clone()).await;
    let store = SvidStore::new(material(
        &mesh.ca,
        "spiffe://cluster.local/ns/backend/sa/plain",
        Duration::from_secs(3600),
    ))
    .expect("store");
    let inbound = |protocol| Inbound {
        name: "http".into(),
        listen: loopback(),
        port: 8080,
        app,
        protocol,
    };
    let mut cfg = ProxyConfig::new(Workload::parse("backend/app=unprotected").expect("workload"));
    cfg.inbound = vec![inbound(Protocol::Http)];
    cfg.reload_interval = Duration::ZERO;
    let strict = start_proxy(mesh.server_state.clone(), store.clone(), cfg.clone()).await;
    cfg.default_deny = false;
    let istio = start_proxy(mesh.server_state.clone(), store, cfg).await;
    mesh.set_mode("PERMISSIVE").await;
    let (a, b) = (strict.inbound[0], istio.inbound[0]);
    let (status, _) = blocking(move || http(a, "/", &[])).await.expect("answer");
    assert_eq!(status, 403, "default deny");
    let (status, _) = blocking(move || http(b, "/", &[])).await.expect("answer");
    assert_eq!(
        status, 200,
        "defaultDeny: false is Istio's allow-by-default"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_from_the_workload_api_follows_rotations() {
    use meshguard_identity::agent::{Agent, Entry, Selector};
    use meshguard_proxy::source::WorkloadApi;
    let dir = std::env::temp_dir().join(format!("meshguard-proxy-wlapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .expect("uid");
    let agent = Agent::new(
        ca,
        vec![Entry {
            spiffe_id: id(WEB),
            selectors: vec![Selector::Uid(uid)],
        }],
        Duration::from_secs(3600),
    )
    .expect("agent");
    let sock = dir.join("agent.sock");
    let (a, s) = (agent.clone(), sock.clone());
    tokio::spawn(async move { a.serve_uds(&s, std::future::pending()).await });
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let api = WorkloadApi {
        socket: sock,
        spiffe_id: None,
    };
    let (first, stream) = api.first().await.expect("first SVID");
    assert_eq!(first.id, id(WEB));
    let store = SvidStore::new(first).expect("store");
    let mut updates = store.subscribe();
    let before = store.leaf_sha256();
    tokio::spawn(api.follow(store.clone(), stream));
    agent.rotate_all();
    tokio::time::timeout(Duration::from_secs(5), updates.changed())
        .await
        .expect("rotation pushed")
        .expect("store alive");
    assert_ne!(store.leaf_sha256(), before);
    assert_eq!(store.id(), id(WEB));

    // Asking for an identity the agent does not give this process is an error, not a fallback.
    let wrong = WorkloadApi {
        socket: dir.join("agent.sock"),
        spiffe_id: Some(id(OTHER)),
    };
    assert!(wrong.first().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_on_one_connection_are_decided_one_by_one() {
    let mesh = Mesh::new("h2").await;
    let (_, other) = mesh.client(OTHER, SERVER).await;
    // h2c with prior knowledge from the app to its proxy; the bytes travel inside mTLS.
    let tcp = tokio::net::TcpStream::connect(other.outbound[0])
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake through both proxies");
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for path in [
        "/public/info",
        "/orders",
        "/public/../orders",
        "/public/again",
    ] {
        let req = hyper::Request::builder()
            .uri(format!("http://api.backend{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 403, 403, 200]);
    assert_eq!(
        mesh.hits.load(Ordering::SeqCst),
        2,
        "denied requests never reach the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_identity_headers_cannot_be_smuggled() {
    let mesh = Mesh::new("smuggle").await;
    let (_, web) = mesh.client(WEB, SERVER).await;
    let w = web.outbound[0];
    let cases = [
        // The decided host must be the forwarded host.
        "GET http://public.example/orders HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        "GET /orders HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        // A control character in a header value (Envoy's codec refuses it too; UTF-8 text is
        // forwarded, as Envoy does).
        "GET /orders HTTP/1.1\r\nHost: a\r\nx-role: adm\u{1}in\r\nConnection: close\r\n\r\n",
        // CONNECT would become an unchecked byte stream. (WebSocket upgrades are decided like
        // any request and then pumped: tests/proxy_protocols.rs in the meshguard crate.)
        "CONNECT admin.internal:22 HTTP/1.1\r\nHost: admin.internal:22\r\nConnection: close\r\n\r\n",
    ];
    let hits_before = mesh.hits.load(Ordering::SeqCst);
    for raw in cases {
        let got = blocking(move || http_raw(w, raw)).await.map(|r| r.0);
        assert!(matches!(got, Some(400 | 405 | 501)), "{raw:?} -> {got:?}");
    }
    assert_eq!(
        mesh.hits.load(Ordering::SeqCst),
        hits_before,
        "none reached the app"
    );
    // Absolute form with a matching Host is fine; the app sees that host.
    let (status, body) = blocking(move || {
        http_raw(w, "GET http://api.backend/orders HTTP/1.1\r\nHost: api.backend\r\nConnection: close\r\n\r\n")
    })
    .await
    .expect("answer");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["host"], "api.backend");

    // A header request authentication writes (outputClaimToHeaders) cannot be sent by the
    // client: without a token it is removed, with one it carries the verified claim.
    let (_, body) = blocking(move || http(w, "/orders", &[("x-jwt-sub", "admin")]))
        .await
        .expect("answer");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["jwt_sub"], serde_json::Value::Null);
    let bearer = format!("Bearer {}", token("RS256"));
    let (_, body) = blocking(move || {
        http(
            w,
            "/orders",
            &[("x-jwt-sub", "admin"), ("authorization", &bearer)],
        )
    })
    .await
    .expect("answer");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_ne!(v["jwt_sub"], "admin");
    assert!(v["jwt_sub"].is_string());
}

/// A leaf signed by our CA's key but shaped by the attacker (rcgen), to reach the SPIFFE checks
/// behind chain validation.
fn forged_leaf(
    mesh: &Mesh,
    uris: &[&str],
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_pem = std::fs::read_to_string(mesh.dir.join("ca/ca.crt")).expect("ca.crt");
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(mesh.dir.join("ca/ca.key")).expect("key"),
    )
    .expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().expect("uri")))
        .collect();
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &issuer).expect("sign");
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_valid_leaves_without_one_spiffe_id_of_our_domain_are_refused() {
    let mesh = Mesh::new("spiffe-checks").await;
    let inbound = mesh.server.inbound[0];
    // Control: the forging helper makes acceptable SVIDs when the SAN is right.
    let (chain, key) = forged_leaf(&mesh, &[WEB]);
    let got = raw::get(inbound, chain, key).await;
    assert!(
        got.is_some_and(|t| t.starts_with("HTTP/1.1 200")),
        "control"
    );
    for uris in [
        &["spiffe://other.td/ns/frontend/sa/web"][..],
        &[WEB, "spiffe://cluster.local/ns/admin/sa/root"][..],
        &[][..],
        &["https://cluster.local/ns/frontend/sa/web"][..],
        &["spiffe://cluster.local"][..],
    ] {
        let (chain, key) = forged_leaf(&mesh, uris);
        assert_eq!(raw::get(inbound, chain, key).await, None, "{uris:?}");
    }
    // No client certificate at all.
    assert_eq!(raw::get_without_cert(inbound).await, None);
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 1);
}

/// One proxy for `backend/app=api` (no client side) over `policies`, with an SVID from a fresh
/// CA and the listeners `inbound`; `tweak` adjusts the rest of the configuration.
async fn lone_proxy(
    tag: &str,
    policies: &str,
    inbound: Vec<Inbound>,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (PathBuf, Bound) {
    let dir = std::env::temp_dir().join(format!("meshguard-proxy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).expect("dir");
    std::fs::write(dir.join("policies/policies.yaml"), policies).expect("write");
    let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
    let state = State::new(
        meshguard_engine::Files(vec![dir.join("policies")]),
        MeshConfig::default(),
        reqwest::Client::new(),
    )
    .expect("policies load");
    let store = SvidStore::new(material(&ca, SERVER, Duration::from_secs(3600))).expect("store");
    let mut cfg = ProxyConfig::new(Workload::parse("backend/app=api").expect("workload"));
    cfg.reload_interval = Duration::ZERO;
    cfg.inbound = inbound;
    tweak(&mut cfg);
    let bound = start_proxy(state, store, cfg).await;
    (dir, bound)
}

/// Whether the server closes `s` within `within` (a read returns EOF or a reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let _ = s.set_read_timeout(Some(within));
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Issue 12: 16,384 connections that sent nothing filled a PERMISSIVE listener and grew memory
/// from 18 MB to 514 MB. A silent client on an HTTP port is closed after the detect timeout,
/// an HTTP connection with no request in flight and a TCP connection with no bytes moving after
/// the idle timeout; the slots they held serve new clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let inbound = vec![
        Inbound {
            name: "http".into(),
            listen: loopback(),
            port: 8080,
            app: http_app(Arc::new(AtomicUsize::new(0))).await,
            protocol: Protocol::Http,
        },
        Inbound {
            name: "tcp".into(),
            listen: loopback(),
            port: 9000,
            app: echo_app().await,
            protocol: Protocol::Tcp,
        },
    ];
    let (dir, bound) = lone_proxy(
        "idle",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: backend}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: backend}
spec: {rules: [{}]}
",
        inbound,
        |cfg| {
            cfg.detect_timeout = Duration::from_millis(300);
            cfg.idle_timeout = Duration::from_secs(1);
            cfg.max_connections = 32;
        },
    )
    .await;
    let (http_port, tcp_port) = (bound.inbound[0], bound.inbound[1]);

    blocking(move || {
        // Every slot taken by a client that says nothing: all are closed after the detect timeout.
        let mut silent: Vec<TcpStream> = (0..32)
            .map(|_| TcpStream::connect(http_port).expect("connect"))
            .collect();
        for s in &mut silent {
            assert!(
                closed_within(s, Duration::from_secs(5)),
                "a silent client on the HTTP port was not closed"
            );
        }
        // The slots are free again.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(http(http_port, "/x", &[]).map(|r| r.0), Some(200));

        // HTTP keep-alive: after an answer, a connection with no request in flight is closed.
        let mut s = TcpStream::connect(http_port).expect("connect");
        s.write_all(b"GET /a HTTP/1.1\r\nHost: api.backend\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 12];
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.read_exact(&mut buf).expect("answer");
        assert_eq!(&buf, b"HTTP/1.1 200");
        assert!(
            closed_within(&mut s, Duration::from_secs(8)),
            "an idle keep-alive connection was kept open"
        );

        // TCP: a server-first port treats silence as plaintext, so a silent client is served,
        // then closed once no byte has moved for the idle timeout...
        let mut quiet = TcpStream::connect(tcp_port).expect("connect");
        assert_eq!(
            echo(&mut quiet, b"hello").as_deref(),
            Some(&b"hello"[..]),
            "plaintext TCP is served under PERMISSIVE"
        );
        assert!(
            closed_within(&mut quiet, Duration::from_secs(8)),
            "an idle TCP connection was kept open"
        );
        // ...while one that keeps talking stays open well past it.
        let mut chatty = TcpStream::connect(tcp_port).expect("connect");
        for i in 0..8 {
            std::thread::sleep(Duration::from_millis(400));
            let msg = format!("ping {i}");
            assert_eq!(
                echo(&mut chatty, msg.as_bytes()).as_deref(),
                Some(msg.as_bytes()),
                "a busy TCP connection was closed after {} ms",
                400 * (i + 1)
            );
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13: an AuthConfig step called by a CUSTOM policy in the proxy saw an empty request
/// context (no sockets, request id, protocol or scheme) where behind Envoy's ext_authz it sees
/// them all. The OPA-Envoy Rego here copies them into headers the app receives. The scheme of a
/// plaintext HTTP/1 request is `http`, as Envoy derives it from the connection
/// (envoy docs/root/configuration/http/http_conn_man/headers.rst, ":scheme").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_config_in_the_proxy_sees_the_request_context_envoy_would_send() {
    let inbound = vec![Inbound {
        name: "http".into(),
        listen: loopback(),
        port: 8080,
        app: http_app(Arc::new(AtomicUsize::new(0))).await,
        protocol: Protocol::Http,
    }];
    let (dir, bound) = lone_proxy(
        "ctx",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: backend}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: seen, namespace: gloo-system}
data:
  seen.rego: |
    package envoy.authz

    import rego.v1

    http := input.attributes.request.http

    allow := {"allowed": true, "headers": {
      "x-seen-scheme": http.scheme,
      "x-seen-protocol": http.protocol,
      "x-seen-id": http.id,
      "x-seen-src-port": sprintf("%v", [input.attributes.source.address.socketAddress.portValue]),
      "x-seen-dst-port": sprintf("%v", [input.attributes.destination.address.socketAddress.portValue]),
    }}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: seen, namespace: gloo-system}
spec:
  configs:
  - name: seen
    opaEnvoy:
      modules: [{name: seen}]
      path: envoy/authz/allow
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: backend}
spec:
  action: CUSTOM
  provider: {name: gloo-system.seen}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: backend}
spec: {rules: [{}]}
"#,
        inbound,
        |_| {},
    )
    .await;
    let port = bound.inbound[0];
    let (status, body, client_port) = blocking(move || {
        let mut s = TcpStream::connect(port).expect("connect");
        let client_port = s.local_addr().expect("local").port();
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(
            b"GET /x HTTP/1.1\r\nHost: api.backend\r\nx-request-id: req-42\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status: u16 = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
        (status, body, client_port)
    })
    .await;
    assert_eq!(status, 200, "the Rego decision allows: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let seen = &v["seen"];
    assert_eq!(seen["x-seen-scheme"], "http", "{v}");
    assert_eq!(seen["x-seen-protocol"], "HTTP/1.1", "{v}");
    assert_eq!(seen["x-seen-id"], "req-42", "{v}");
    assert_eq!(seen["x-seen-src-port"], client_port.to_string(), "{v}");
    assert_eq!(seen["x-seen-dst-port"], port.port().to_string(), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
