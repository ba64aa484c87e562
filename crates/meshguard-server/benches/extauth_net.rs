//! One decision per networked AuthConfig model (LDAP, RFC 7662 introspection, pass-through gRPC
//! and HTTP, the OIDC session and login), through `Chain::run` in-process, each next to a
//! baseline in the same run: the bare network exchange the step cannot avoid, made with the
//! same client library against the same peer. The ratio step / baseline is meshguard's cost.
//!
//! Peers on loopback, started here: a real OpenLDAP `slapd` (skipped with a message when it is
//! not installed; scripts/test.sh installs it), and in-process servers on their own runtime:
//! an HTTP server (introspection, pass-through, a minimal OpenID provider whose token endpoint
//! signs RS256 ID tokens) and a no-op ext_authz gRPC server.
//!
//! Run: cargo bench -p meshguard-server --bench extauth_net

#[path = "../examples/common/noop.rs"]
mod noop;
#[path = "../tests/slapd/mod.rs"]
mod slapd;

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::ext_authz::v3::pb::{AuthorizationServer, CheckRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::{BodyExt, Full};
use meshguard_authn::extauth::{Chain, Chains, StepOutcome};
use meshguard_policy::{HttpRequest, Identity, MeshConfig, PathNormalization, PolicySet, Request};
use serde_json::json;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../meshguard-authn/tests/data");
const CLIENT_SECRET: &str = "bench-client-secret";

thread_local! {
    /// The caller's runtime: steps run here as they would on a server worker.
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn on_rt<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        http: Some(HttpRequest::new(
            "GET",
            "app.test",
            path,
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            PathNormalization::Base,
        )),
        ..Default::default()
    }
}

fn run(chain: &Chain, req: &Request) -> StepOutcome {
    on_rt(chain.run(req, &Identity::default()))
}

/// The HTTP peer: introspection (every token active with scope `read`), the pass-through
/// delegate (always 200), and an OpenID provider whose token endpoint returns an ID token with
/// `nonce` = the authorization code (the bench passes the nonce as the code).
async fn http_peer(
    req: hyper::Request<hyper::body::Incoming>,
    base: Arc<String>,
    key: Arc<jsonwebtoken::EncodingKey>,
    jwks: Arc<String>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form = String::from_utf8_lossy(&body).to_string();
    let out = match path.as_str() {
        "/introspect" => {
            json!({"active": true, "scope": "read", "sub": "alice", "exp": now_secs() + 600})
                .to_string()
        }
        "/auth" => String::new(),
        "/.well-known/openid-configuration" => json!({
            "issuer": base.as_str(),
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
        })
        .to_string(),
        "/jwks" => jwks.to_string(),
        "/token" => {
            let code = form
                .split('&')
                .find_map(|kv| kv.strip_prefix("code="))
                .unwrap_or("")
                .to_owned();
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            h.kid = Some("rsa-1".into());
            let claims = json!({"iss": base.as_str(), "aud": "bench-app", "sub": "alice",
                "nonce": code, "iat": now_secs(), "exp": now_secs() + 600});
            let id_token = jsonwebtoken::encode(&h, &claims, &key).unwrap_or_default();
            json!({"id_token": id_token, "access_token": "at-1", "token_type": "Bearer",
                "expires_in": 600})
            .to_string()
        }
        _ => {
            return Ok(hyper::Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default())
        }
    };
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(out)))
        .unwrap_or_default())
}

/// Starts the in-process peers on their own runtime; returns (http, grpc) addresses.
fn start_peers(rt: &tokio::runtime::Runtime) -> (SocketAddr, SocketAddr) {
    let key = Arc::new(
        jsonwebtoken::EncodingKey::from_rsa_pem(
            &std::fs::read(format!("{DATA}/rsa-1.pem")).expect("rsa-1.pem"),
        )
        .expect("pem"),
    );
    let jwks = Arc::new(std::fs::read_to_string(format!("{DATA}/jwks.json")).expect("jwks"));
    rt.block_on(async {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http_addr = http.local_addr().expect("addr");
        let base = Arc::new(format!("http://{http_addr}"));
        tokio::spawn(async move {
            while let Ok((s, _)) = http.accept().await {
                let _ = s.set_nodelay(true);
                let (base, key, jwks) = (base.clone(), key.clone(), jwks.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| {
                        http_peer(r, base.clone(), key.clone(), jwks.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let grpc_addr = grpc.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(AuthorizationServer::new(noop::Noop))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                ),
        );
        (http_addr, grpc_addr)
    })
}

fn header<'a>(o: &'a StepOutcome, name: &str) -> Vec<&'a str> {
    o.response_headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn query(url: &str, name: &str) -> String {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or("")
        .to_owned()
}

/// The whole browser login against the bench provider: redirect, callback (code exchange, ID
/// token verification), session cookie. Returns the `name=value` of the session cookie.
fn login(chain: &Chain) -> String {
    let o = run(chain, &request("/private", &[]));
    assert_eq!(o.status, 302, "{}", o.reason);
    let location = header(&o, "location")[0].to_owned();
    let pending = header(&o, "set-cookie")[0]
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned();
    let cb = format!(
        "/callback?code={}&state={}",
        query(&location, "nonce"),
        query(&location, "state")
    );
    let o = run(chain, &request(&cb, &[("cookie", pending.as_str())]));
    assert_eq!(o.status, 302, "{}", o.reason);
    header(&o, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("meshguard-session="))
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_owned()
}

fn bench(c: &mut Criterion) {
    let peers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("peer runtime");
    let (http, grpc) = start_peers(&peers_rt);
    let ldap_dir =
        std::env::temp_dir().join(format!("meshguard-bench-ldap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ldap_dir);
    let slapd = slapd::start_slapd(&ldap_dir);
    let ldap_yaml = match &slapd {
        Some((_, port)) => format!(
            "---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: ldap, namespace: gloo-system}}
spec:
  configs:
  - name: ldap
    ldap:
      address: ldap://127.0.0.1:{port}
      userDnTemplate: uid=%s,ou=people,dc=example,dc=org
      allowedGroups: [\"cn=managers,ou=groups,dc=example,dc=org\"]
      pool: {{maxSize: 2}}
"
        ),
        None => {
            eprintln!("slapd is not installed: the LDAP benchmarks are skipped");
            String::new()
        }
    };
    let mut loaded = meshguard_policy::load::Loaded::default();
    loaded.add_text(
        &format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: idp-client, namespace: gloo-system}}
stringData: {{client-secret: {CLIENT_SECRET}}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: introspect, namespace: gloo-system}}
spec:
  configs:
  - name: token
    oauth2:
      accessTokenValidation:
        introspection:
          introspectionUrl: 'http://{http}/introspect'
          clientId: mesh
          clientSecretRef: {{name: idp-client}}
        cacheTimeout: 10m
        requiredScopes: {{scope: [read]}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: pt-grpc, namespace: gloo-system}}
spec:
  configs:
  - name: delegate
    passThroughAuth: {{grpc: {{address: '{grpc}'}}}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: pt-http, namespace: gloo-system}}
spec:
  configs:
  - name: delegate
    passThroughAuth: {{http: {{url: 'http://{http}/auth'}}}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: oidc, namespace: gloo-system}}
spec:
  configs:
  - name: login
    oauth2:
      oidcAuthorizationCode:
        clientId: bench-app
        clientSecretRef: {{name: idp-client}}
        issuerUrl: http://{http}
        appUrl: http://app.test
        callbackPath: /callback
{ldap_yaml}"
        ),
        "<bench>",
    );
    assert!(!loaded.has_errors(), "bench configs must load");
    let set = PolicySet::compile(loaded.resources, MeshConfig::default()).expect("compile");
    let client = on_rt(async { reqwest::Client::new() });
    // Built on the caller's runtime: gRPC channels start their worker task there.
    let chains = on_rt(async { Chains::build(&set, &client) }).expect("chains");
    let mut g = c.benchmark_group("extauth_net");

    // --- LDAP: bind as the user, read memberOf, on a pooled connection ------------------------
    if let Some((_, port)) = &slapd {
        let chain = chains.get("gloo-system.ldap").expect("ldap");
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:alice-pw")
        );
        let req = request("/", &[("authorization", auth.as_str())]);
        let url = format!("ldap://127.0.0.1:{port}");
        let mut ldap = on_rt(async {
            let (conn, ldap) = ldap3::LdapConnAsync::new(&url).await.expect("ldap connect");
            tokio::spawn(async move {
                let _ = conn.drive().await;
            });
            ldap
        });
        let dn = "uid=alice,ou=people,dc=example,dc=org";
        g.bench_function("baseline_ldap_bind_and_search", |b| {
            b.iter(|| {
                on_rt(async {
                    let r = ldap.simple_bind(dn, "alice-pw").await.expect("bind");
                    assert_eq!(r.rc, 0);
                    let (e, _) = ldap
                        .search(dn, ldap3::Scope::Base, "(uid=*)", vec!["memberOf"])
                        .await
                        .and_then(|r| r.success())
                        .expect("search");
                    black_box(e)
                })
            })
        });
        g.bench_function("ldap_step", |b| {
            b.iter(|| {
                let o = run(chain, black_box(&req));
                assert!(o.allowed, "{}", o.reason);
                black_box(o)
            })
        });
    }

    // --- RFC 7662 introspection -----------------------------------------------------------------
    let introspect = chains.get("gloo-system.introspect").expect("introspect");
    g.bench_function("baseline_introspection_post", |b| {
        let url = format!("http://{http}/introspect");
        b.iter(|| {
            on_rt(async {
                let r = client
                    .post(&url)
                    .basic_auth("mesh", Some(CLIENT_SECRET))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("token=t&token_type_hint=access_token")
                    .send()
                    .await
                    .expect("post");
                black_box(r.bytes().await.expect("body"))
            })
        })
    });
    let mut n = 0u64;
    g.bench_function("introspection_uncached", |b| {
        b.iter(|| {
            n += 1;
            let bearer = format!("Bearer bench-token-{n}");
            let o = run(
                introspect,
                &request("/", &[("authorization", bearer.as_str())]),
            );
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });
    let cached = request("/", &[("authorization", "Bearer the-same-token")]);
    g.bench_function("introspection_cached", |b| {
        b.iter(|| {
            let o = run(introspect, black_box(&cached));
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });

    // --- pass-through -------------------------------------------------------------------------
    let plain = request("/orders", &[("x-team", "blue")]);
    let mut grpc_client = on_rt(async {
        AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .expect("grpc connect")
    });
    g.bench_function("baseline_grpc_check_noop", |b| {
        b.iter(|| {
            on_rt(async {
                black_box(
                    grpc_client
                        .check(CheckRequest::default())
                        .await
                        .expect("check"),
                )
            })
        })
    });
    let pt_grpc = chains.get("gloo-system.pt-grpc").expect("pt-grpc");
    g.bench_function("passthrough_grpc", |b| {
        b.iter(|| {
            let o = run(pt_grpc, black_box(&plain));
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });
    g.bench_function("baseline_http_post_noop", |b| {
        let url = format!("http://{http}/auth");
        b.iter(|| {
            on_rt(async {
                let r = client.post(&url).send().await.expect("post");
                black_box(r.bytes().await.expect("body"))
            })
        })
    });
    let pt_http = chains.get("gloo-system.pt-http").expect("pt-http");
    g.bench_function("passthrough_http", |b| {
        b.iter(|| {
            let o = run(pt_http, black_box(&plain));
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });

    // --- OIDC: a request with a session cookie, and a whole login -----------------------------
    let oidc = chains.get("gloo-system.oidc").expect("oidc");
    let session = login(oidc);
    let with_session = request("/private", &[("cookie", session.as_str())]);
    g.bench_function("oidc_session_cookie", |b| {
        b.iter(|| {
            let o = run(oidc, black_box(&with_session));
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });
    g.bench_function("baseline_oidc_token_endpoint_post", |b| {
        let url = format!("http://{http}/token");
        b.iter(|| {
            on_rt(async {
                let r = client
                    .post(&url)
                    .basic_auth("bench-app", Some(CLIENT_SECRET))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("grant_type=authorization_code&code=n&redirect_uri=x&code_verifier=v")
                    .send()
                    .await
                    .expect("post");
                black_box(r.bytes().await.expect("body"))
            })
        })
    });
    g.bench_function("oidc_login_redirect_and_callback", |b| {
        b.iter(|| black_box(login(oidc)))
    });
    g.finish();
    drop(slapd);
    let _ = std::fs::remove_dir_all(&ldap_dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
