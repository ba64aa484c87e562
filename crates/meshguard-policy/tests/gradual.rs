//! Gradual enforcement (`meshguard.io/enforce-percent`): a new policy is enforced for a stable
//! share of callers and in dry-run for the rest, decided per caller identity so one caller never
//! flaps.

use meshguard_policy::load::Loaded;
use meshguard_policy::request::{Destination, HttpRequest};
use meshguard_policy::verdict::caller_bucket;
use meshguard_policy::{MeshConfig, PathNormalization, PolicySet, Request};

fn set(percent: &str) -> PolicySet {
    let text = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-new-api
  namespace: shop
  annotations: {{meshguard.io/enforce-percent: \"{percent}\"}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/new/*]}}}}]}}]
"
    );
    let mut l = Loaded::default();
    l.add_text(&text, "gradual.yaml");
    assert!(!l.has_errors(), "{:?}", l.diagnostics);
    PolicySet::compile(l.resources, MeshConfig::default()).expect("compile")
}

fn request(caller: &str) -> Request {
    Request {
        destination: Destination {
            namespace: "shop".into(),
            ..Default::default()
        },
        http: Some(HttpRequest::new(
            "GET",
            "shop",
            "/new/orders",
            Vec::new(),
            PathNormalization::Base,
        )),
        ..Default::default()
    }
    .with_peer(&format!("cluster.local/ns/shop/sa/{caller}"))
}

#[test]
fn a_stable_share_of_callers_is_enforced_the_rest_is_dry_run() {
    let s = set("30");
    let mut denied = 0;
    for i in 0..1000 {
        let r = request(&format!("caller-{i}"));
        let id = r.identity();
        let v = s.evaluate(&r, &id);
        let again = s.evaluate(&r, &id);
        assert_eq!(v.allowed, again.allowed, "one caller never flaps");
        assert_eq!(v.gradual.len(), 1);
        let g = v.gradual[0];
        assert_eq!(g.percent, 30);
        assert_eq!(g.enforced, g.bucket < 30);
        assert_eq!(v.allowed, !g.enforced);
        if g.enforced {
            denied += 1;
        } else {
            // Not enforced for this caller: reported as what it would have done.
            let shadow = v.dry_run.expect("dry-run result");
            assert!(!shadow.allowed, "would have been denied");
        }
    }
    assert!(
        (240..=360).contains(&denied),
        "{denied} of 1000 enforced at 30%"
    );
    // 0% enforces for nobody, 100% for everybody.
    let r = request("caller-1");
    assert!(set("0").evaluate(&r, &r.identity()).allowed);
    assert!(!set("100").evaluate(&r, &r.identity()).allowed);
}

/// The bucket is part of the contract (replicas and versions must agree): pinned values.
#[test]
fn the_caller_bucket_is_pinned() {
    let r = request("frontend");
    let peer = r.peer.clone();
    assert_eq!(
        caller_bucket(&r, peer.as_deref()),
        caller_bucket(&r, peer.as_deref())
    );
    let pinned = [
        (
            "spiffe://cluster.local/ns/shop/sa/frontend",
            PINNED_FRONTEND,
        ),
        (
            "spiffe://cluster.local/ns/shop/sa/caller-1",
            PINNED_CALLER_1,
        ),
    ];
    for (p, want) in pinned {
        assert_eq!(caller_bucket(&Request::default(), Some(p)), want, "{p}");
    }
}

// FNV-1a 64 of the SPIFFE ID, modulo 100, computed independently (Python, 64-bit wrap).
const PINNED_FRONTEND: u8 = 30;
const PINNED_CALLER_1: u8 = 91;

#[test]
fn bad_percentages_are_refused_with_the_field() {
    for (v, action) in [
        ("abc", "DENY"),
        ("101", "ALLOW"),
        ("-5", "DENY"),
        ("10", "AUDIT"),
    ] {
        let text = format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: shop
  annotations: {{meshguard.io/enforce-percent: \"{v}\"}}
spec:
  action: {action}
  rules: [{{}}]
"
        );
        let mut l = Loaded::default();
        l.add_text(&text, "bad.yaml");
        let e = l
            .errors()
            .next()
            .unwrap_or_else(|| panic!("{v} {action} accepted"));
        assert_eq!(
            e.field,
            "metadata.annotations[meshguard.io/enforce-percent]"
        );
    }
}
