//! JWT verification cost: meshguard's full check (strict parse, claims, key selection, signature)
//! against a bare signature check with the same crypto library (aws-lc-rs) in the same run, and a
//! token seen again (verified-token cache).
//!
//! Run: cargo bench -p meshguard-authn --bench verify

use std::collections::BTreeMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use meshguard_authn::jwks::KeySet;
use meshguard_authn::{
    check_claims, jose, verify_signature, Authenticator, AuthnOutcome, AuthnRequest, AuthnSettings,
};
use meshguard_policy::load::Loaded;
use meshguard_policy::resource::JwtRule;
use meshguard_policy::{MeshConfig, PolicySet};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn read(f: &str) -> String {
    std::fs::read_to_string(format!("{DATA}/{f}")).expect("test data")
}

fn token(name: &str) -> String {
    let v: Value = serde_json::from_str(&read("tokens.json")).expect("json");
    v["tokens"][name].as_str().expect("token").to_owned()
}

fn jwk(kid: &str) -> Value {
    let v: Value = serde_json::from_str(&read("jwks.json")).expect("json");
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid")
        .clone()
}

fn b64(v: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(v.as_str().expect("str"))
        .expect("b64")
}

/// Polls a future that completes without waiting (cache hits, inline keys).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("future did not complete synchronously"),
    }
}

fn bench(c: &mut Criterion) {
    let keys = KeySet::parse(read("jwks.json").as_bytes(), false).expect("jwks");
    let rule = JwtRule {
        issuer: "https://issuer.test".into(),
        audiences: vec!["api.test".into()],
        ..JwtRule::default()
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();

    let mut g = c.benchmark_group("jwt");
    for (alg, kid) in [("RS256", "rsa-1"), ("ES256", "ec256-1")] {
        let t = token(alg);
        let (signing_input, sig_b64) = t.rsplit_once('.').expect("jwt");
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).expect("sig");
        let k = jwk(kid);
        match alg {
            "RS256" => {
                let comps = signature::RsaPublicKeyComponents {
                    n: b64(&k["n"]),
                    e: b64(&k["e"]),
                };
                g.bench_function("bare-aws-lc/RS256", |b| {
                    b.iter(|| {
                        comps
                            .verify(
                                &signature::RSA_PKCS1_2048_8192_SHA256,
                                black_box(signing_input.as_bytes()),
                                black_box(&sig),
                            )
                            .expect("valid")
                    })
                });
            }
            _ => {
                let mut point = vec![4u8];
                point.extend(b64(&k["x"]));
                point.extend(b64(&k["y"]));
                let key = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point);
                g.bench_function("bare-aws-lc/ES256", |b| {
                    b.iter(|| {
                        key.verify(black_box(signing_input.as_bytes()), black_box(&sig))
                            .expect("valid")
                    })
                });
            }
        }
        g.bench_function(format!("meshguard-uncached/{alg}"), |b| {
            b.iter(|| {
                let jwt = jose::parse(black_box(&t)).expect("parse");
                check_claims(&rule, &jwt.payload, now_s).expect("claims");
                verify_signature(&keys, &jwt).expect("signature");
            })
        });
    }

    // The whole authenticate() call for a token seen before: extraction, applicable rules, cache.
    let jwks = read("jwks.json").replace('\'', "''").replace('\n', " ");
    let mut l = Loaded::default();
    l.add_text(
        &format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: prod}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.test\n    audiences: [api.test]\n    jwks: '{jwks}'\n"),
        "bench.yaml",
    );
    let set = PolicySet::compile(l.resources, MeshConfig::default()).expect("compile");
    let a = Authenticator::new(&set, reqwest::Client::new(), AuthnSettings::default());
    let headers = vec![(
        "authorization".to_owned(),
        format!("Bearer {}", token("RS256")),
    )];
    let labels = BTreeMap::new();
    let req = AuthnRequest {
        method: "GET",
        host: "api.test",
        path: "/orders?page=1",
        headers: &headers,
        namespace: "prod",
        labels: &labels,
    };
    assert!(matches!(
        now(a.authenticate(&set, &req)),
        AuthnOutcome::Authenticated(_)
    ));
    g.bench_function("meshguard-cached/RS256-authenticate", |b| {
        b.iter(|| {
            black_box(matches!(
                now(a.authenticate(&set, black_box(&req))),
                AuthnOutcome::Authenticated(_)
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
