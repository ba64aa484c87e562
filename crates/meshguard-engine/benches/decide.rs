//! The whole pipeline per request (`meshguard_engine::decide`: early refusals, request
//! authentication with the verified-token cache, CUSTOM/DENY/ALLOW, header merging) on the
//! bundled seed policies, beside `PolicySet::evaluate` alone for the same requests (the part the
//! policy crate's bench measures). The decide future completes without waiting for IO here
//! (inline JWKS, tokens cached after the first call), so it is polled in place.
//!
//! Run: cargo bench -p meshguard-engine --bench decide

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use meshguard_engine::{decide, State};
use meshguard_policy::load::parse_request;
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::{Identity, MeshConfig, PathNormalization, Request};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn example_request(name: &str) -> (Request, Identity) {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/requests/{name}")).expect("read");
    let docs = parse_documents(&text).expect("yaml");
    parse_request(&docs[0], PathNormalization::Base).expect("request")
}

/// Polls a future that must not wait (no IO on this path).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => {
            panic!("the decision waited for IO; the bench measures the in-memory path")
        }
    }
}

fn bench(c: &mut Criterion) {
    let state = State::new(
        meshguard_engine::Files(vec![format!("{EXAMPLES}/policies").into()]),
        MeshConfig::default(),
        reqwest::Client::new(),
    )
    .expect("seed policies load");
    let g = state.current();
    let mut group = c.benchmark_group("decide");
    for name in [
        "frontend-reads-users.yaml",
        "frontend-admin-bypass.yaml",
        "plaintext-to-backend.yaml",
        "api-with-token.yaml",
    ] {
        let (mut req, id) = example_request(name);
        if let Some(p) = &id.peer {
            req = req.with_peer(p);
        }
        // First call verifies the token; later ones hit the verified-token cache.
        let _ = now(decide(&g, &req));
        let label = name.trim_end_matches(".yaml");
        group.bench_function(format!("pipeline/{label}"), |b| {
            b.iter(|| now(decide(black_box(&g), black_box(&req))))
        });
        group.bench_function(format!("evaluate-only/{label}"), |b| {
            b.iter(|| black_box(g.set.evaluate(black_box(&req), &id)).allowed)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
