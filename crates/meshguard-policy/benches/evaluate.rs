//! Decision latency: the bundled seed policies, and synthetic sets of 10 / 1,000 / 10,000
//! policies spread over 1,000 workloads (100 namespaces x 10 workloads). The `empty-set`
//! benchmark is the baseline (fixed cost of a decision with no policy) for ratio reporting.
//!
//! Run: cargo bench -p meshguard-policy --bench evaluate

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use meshguard_policy::load::{parse_request, Loaded};

#[path = "../tests/support/mod.rs"]
mod support;
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::{
    Destination, HttpRequest, Identity, MeshConfig, PathNormalization, PolicySet, Request, Source,
};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn seed_set() -> PolicySet {
    let l = support::load_dir(&format!("{EXAMPLES}/policies"));
    assert!(!l.has_errors(), "{:?}", l.diagnostics);
    PolicySet::compile(l.resources, MeshConfig::default()).expect("compile")
}

fn example_request(name: &str) -> (Request, Identity) {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/requests/{name}")).expect("read");
    let docs = parse_documents(&text).expect("yaml");
    parse_request(&docs[0], PathNormalization::Base).expect("request")
}

/// `n` policies over 100 namespaces x 10 workloads: per workload ALLOW rules on principals,
/// methods and paths; every 10th policy a namespace-wide DENY; plus one mesh-wide DENY.
fn synthetic(n: usize) -> PolicySet {
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh-deny, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/debug/*\"]}\n",
    );
    for i in 0..n {
        let ns = i % 100;
        let wl = (i / 100) % 10;
        if i % 10 == 9 {
            yaml.push_str(&format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: ns-{ns}}}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {{notNamespaces: [\"ns-{ns}\", \"ops\"]}}\n    to:\n    - operation: {{paths: [\"/admin/{i}/*\"]}}\n"
            ));
        } else {
            yaml.push_str(&format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: wl-{wl}}}}}\n  rules:\n  - from:\n    - source: {{principals: [\"cluster.local/ns/ns-{ns}/sa/client-{i}\"]}}\n    to:\n    - operation: {{methods: [\"GET\", \"POST\"], paths: [\"/api/{i}/*\"]}}\n  - from:\n    - source: {{namespaces: [\"monitoring\"]}}\n    to:\n    - operation: {{methods: [\"GET\"], paths: [\"/metrics\"]}}\n"
            ));
        }
    }
    let mut l = Loaded::default();
    l.add_text(&yaml, "synthetic.yaml");
    assert!(!l.has_errors(), "{:?}", l.errors().next());
    PolicySet::compile(l.resources, MeshConfig::default()).expect("compile")
}

fn synthetic_request(n: usize) -> (Request, Identity) {
    // Workload wl-3 in ns-42, called by the client that policy (3*100+42) allows.
    let i = (300 + 42) % n.max(1);
    let req = Request {
        destination: Destination {
            namespace: "ns-42".into(),
            labels: BTreeMap::from([
                ("app".into(), "wl-3".into()),
                ("version".into(), "v1".into()),
            ]),
            port: Some(8080),
            ip: None,
        },
        source: Source {
            ip: "10.1.2.3".parse().ok(),
            remote_ip: None,
        },
        http: Some(HttpRequest::new(
            "GET",
            "wl-3.ns-42.svc.cluster.local",
            format!("/api/{i}/items?page=1"),
            vec![("x-request-id".to_owned(), "1".to_owned())],
            PathNormalization::Base,
        )),
        ..Request::default()
    };
    let id = Identity::default().with_peer(&format!("cluster.local/ns/ns-42/sa/client-{i}"));
    (req, id)
}

fn bench(c: &mut Criterion) {
    let empty = PolicySet::compile(Vec::new(), MeshConfig::default()).expect("compile");
    let (req, id) = example_request("frontend-reads-users.yaml");
    c.bench_function("baseline/empty-set", |b| {
        b.iter(|| black_box(empty.evaluate(black_box(&req), black_box(&id)).allowed))
    });

    let seed = seed_set();
    let mut g = c.benchmark_group("seed");
    for name in [
        "frontend-reads-users.yaml",
        "frontend-admin-bypass.yaml",
        "unknown-caller.yaml",
        "api-with-jwt.yaml",
        "plaintext-to-backend.yaml",
    ] {
        let (req, id) = example_request(name);
        g.bench_function(name.trim_end_matches(".yaml"), |b| {
            b.iter(|| black_box(seed.evaluate(black_box(&req), black_box(&id)).allowed))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("scale");
    for n in [10usize, 1_000, 10_000] {
        let set = synthetic(n);
        let (req, id) = synthetic_request(n);
        g.bench_with_input(BenchmarkId::new("policies", n), &n, |b, _| {
            b.iter(|| black_box(set.evaluate(black_box(&req), black_box(&id)).allowed))
        });
    }
    g.finish();

    // The cost an adapter pays once per request: path normalisation and header merging.
    c.bench_function("prepare/http-request", |b| {
        b.iter(|| {
            black_box(HttpRequest::new(
                "GET",
                "backend.production.svc.cluster.local",
                black_box("/api/v1/../users/./42?page=2"),
                vec![("x-request-id".to_owned(), "abc".to_owned())],
                PathNormalization::Base,
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
