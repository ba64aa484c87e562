//! One decision per AuthConfig model, in-process (no network): the bundled examples/extauth
//! configs run through `Chain::run`, next to a baseline in the same run (the bare hash or
//! signature the step cannot avoid).
//!
//! Run: cargo bench -p meshguard-authn --bench extauth

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use meshguard_authn::extauth::{basic, Chains};
use meshguard_policy::{HttpRequest, Identity, MeshConfig, PathNormalization, PolicySet, Request};

#[path = "../../meshguard-policy/tests/support/mod.rs"]
mod support;

const EXTAUTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/extauth");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// Runs a step's future to completion on a small runtime (password hashes run on its blocking
/// pool, as in the server).
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        RT.with(|rt| rt.block_on(self))
    }
}
impl<F: std::future::Future> Now for F {}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        http: Some(HttpRequest::new(
            method,
            "shop.test",
            path,
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            PathNormalization::Base,
        )),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut loaded = support::load_dir(EXTAUTH);
    // More models, in memory: an access token checked against an inline JWKS, Gloo's sha1
    // basic auth, and an htpasswd bcrypt (cost 10) user.
    let jwks = std::fs::read_to_string(format!("{DATA}/jwks.json"))
        .expect("jwks")
        .replace('\n', " ")
        .replace('\'', "''");
    let bcrypt_hash = bcrypt::hash("password", 10).expect("bcrypt");
    loaded.add_text(
        &format!(
            "apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: tokens, namespace: gloo-system}}
spec:
  configs:
  - name: token
    oauth2:
      accessTokenValidation:
        jwt: {{localJwks: {{inlineString: '{jwks}'}}, issuer: https://issuer.test}}
        requiredScopes: {{scope: [read]}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: sha1, namespace: gloo-system}}
spec:
  configs:
  - name: basic
    basicAuth:
      encryption: {{sha1: {{}}}}
      userList: {{users: {{user: {{salt: TYiryv0/, hashedPassword: 010eb058a59f4ac5ba05639b0263cf91b4345fd6}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: htpasswd, namespace: gloo-system}}
stringData: {{htpasswd: 'user:{bcrypt_hash}'}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: bcrypt, namespace: gloo-system}}
spec:
  configs:
  - name: basic
    basicAuth: {{htpasswdSecretRef: {{name: htpasswd}}}}
"
        ),
        "<bench>",
    );
    assert!(!loaded.has_errors(), "examples/extauth must load");
    let set = PolicySet::compile(loaded.resources, MeshConfig::default()).expect("compile");
    let chains = Chains::build(&set, &reqwest::Client::new()).expect("chains");
    let id = Identity::default();
    let mut g = c.benchmark_group("extauth");

    let keys = chains.get("gloo-system.api-keys").expect("api-keys");
    let req = request(
        "GET",
        "/api",
        &[(
            "api-key",
            "N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy",
        )],
    );
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| {
            black_box(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                black_box(b"N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy"),
            ))
        })
    });
    g.bench_function("api_key", |b| {
        b.iter(|| {
            let o = keys.run(black_box(&req), &id).now();
            assert!(o.allowed);
            black_box(o)
        })
    });

    let basic_chain = chains.get("gloo-system.basic-auth").expect("basic-auth");
    let req = request(
        "GET",
        "/",
        &[("authorization", "Basic dXNlcjpwYXNzd29yZA==")],
    );
    g.bench_function("baseline_apr1_hash", |b| {
        b.iter(|| black_box(basic::apr1(black_box(b"password"), "TYiryv0/")))
    });
    g.bench_function("basic_apr1", |b| {
        b.iter(|| {
            let o = basic_chain.run(black_box(&req), &id).now();
            assert!(o.allowed);
            black_box(o)
        })
    });

    let req = request(
        "GET",
        "/",
        &[("authorization", "Basic dXNlcjpwYXNzd29yZA==")],
    );
    for (cid, name) in [
        ("gloo-system.sha1", "basic_sha1"),
        ("gloo-system.bcrypt", "basic_bcrypt_cost10"),
    ] {
        let chain = chains.get(cid).expect(cid);
        g.bench_function(name, |b| {
            b.iter(|| {
                let o = chain.run(black_box(&req), &id).now();
                assert!(o.allowed, "{}", o.reason);
                black_box(o)
            })
        });
    }
    let opa = chains.get("gloo-system.orders-opa").expect("orders-opa");
    let token = {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{DATA}/tokens.json")).expect("tokens"),
        )
        .expect("json");
        v["tokens"]["RS256"].as_str().expect("token").to_owned()
    };
    let bearer = format!("Bearer {token}");
    let mut req = request(
        "POST",
        "/post",
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
    );
    if let Some(h) = req.http.as_mut() {
        h.body = Some(meshguard_policy::Body {
            bytes: br#"{"item": "book", "quantity": 2}"#.to_vec(),
            truncated: false,
        });
    }
    g.bench_function("opa_envoy_jwt_and_schema", |b| {
        b.iter(|| {
            let o = opa.run(black_box(&req), &id).now();
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });
    let tokens = chains.get("gloo-system.tokens").expect("tokens");
    let req = request("GET", "/", &[("authorization", bearer.as_str())]);
    g.bench_function("access_token_jwt_rs256", |b| {
        b.iter(|| {
            let o = tokens.run(black_box(&req), &id).now();
            assert!(o.allowed, "{}", o.reason);
            black_box(o)
        })
    });
    let shop = chains.get("gloo-system.shop-auth").expect("shop-auth");
    let req = request(
        "GET",
        "/api/x",
        &[("authorization", "Basic dXNlcjpwYXNzd29yZA==")],
    );
    g.bench_function("chain_apikey_or_basic_fallthrough", |b| {
        b.iter(|| {
            let o = shop.run(black_box(&req), &id).now();
            assert!(o.allowed);
            black_box(o)
        })
    });
    g.finish();

    // Hash costs a first-time caller pays (repeat callers hit the verified-credentials cache).
    let mut slow = c.benchmark_group("extauth_first_call");
    slow.sample_size(10);
    slow.bench_function("baseline_bcrypt_cost10_verify", |b| {
        let h = bcrypt_hash.clone();
        b.iter(|| black_box(bcrypt::verify(black_box("password"), &h).expect("verify")))
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
