//! One decision per AuthConfig model, in-process (no network): the bundled examples/extauth
//! configs run through `Chain::run`, next to a baseline in the same run (the bare hash or
//! signature the step cannot avoid).
//!
//! Run: cargo bench -p meshguard-authn --bench extauth

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use meshguard_authn::extauth::{basic, Chains, CheckExtra};
use meshguard_policy::load::load_paths;
use meshguard_policy::{HttpRequest, Identity, MeshConfig, PathNormalization, PolicySet, Request};

const EXTAUTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/extauth");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// Polls a future that completes without waiting (the steps benched here do no IO).
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        let mut f = std::pin::pin!(self);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a benched step waited on IO"),
        }
    }
}
impl<F: std::future::Future> Now for F {}

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
    let loaded = load_paths(&[std::path::PathBuf::from(EXTAUTH)]);
    assert!(!loaded.has_errors(), "examples/extauth must load");
    let set = PolicySet::compile(loaded.resources, MeshConfig::default()).expect("compile");
    let chains = Chains::build(&set, &reqwest::Client::new()).expect("chains");
    let id = Identity::default();
    let extra = CheckExtra::default();
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
            let o = keys.run(black_box(&req), &id, &extra).now();
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
            let o = basic_chain.run(black_box(&req), &id, &extra).now();
            assert!(o.allowed);
            black_box(o)
        })
    });

    let opa = chains.get("gloo-system.orders-opa").expect("orders-opa");
    let token = {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{DATA}/tokens.json")).expect("tokens"),
        )
        .expect("json");
        v["tokens"]["RS256"].as_str().expect("token").to_owned()
    };
    let bearer = format!("Bearer {token}");
    let req = request(
        "POST",
        "/post",
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
    );
    let body_extra = CheckExtra {
        body: Some(br#"{"item": "book", "quantity": 2}"#.to_vec()),
        ..Default::default()
    };
    g.bench_function("opa_envoy_jwt_and_schema", |b| {
        b.iter(|| {
            let o = opa.run(black_box(&req), &id, &body_extra).now();
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
            let o = shop.run(black_box(&req), &id, &extra).now();
            assert!(o.allowed);
            black_box(o)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
