//! What a reload reports: resources added, removed and modified, not those that only moved.

use meshguard_policy::load::Loaded;
use meshguard_policy::resource::Changes;

fn load(text: &str, file: &str) -> Loaded {
    let mut l = Loaded::default();
    l.add_text(text, file);
    assert!(!l.has_errors(), "{:?}", l.diagnostics);
    l
}

const A: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: shop}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
";
const B: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn reload_changes_are_named_and_moves_are_not_changes() {
    let old = load(&format!("{A}---\n{B}"), "one.yaml");
    // The same two resources, in another file and order: nothing changed.
    let moved = load(&format!("# moved\n{B}---\n{A}"), "two.yaml");
    assert!(Changes::between(&old.resources, &moved.resources).is_empty());
    // A modified, B removed, C added.
    let c = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
";
    let new = load(&format!("{}---\n{c}", A.replace("GET", "POST")), "one.yaml");
    let ch = Changes::between(&old.resources, &new.resources);
    assert_eq!(ch.added, ["AuthorizationPolicy shop/c"]);
    assert_eq!(ch.removed, ["PeerAuthentication shop/default"]);
    assert_eq!(ch.modified, ["AuthorizationPolicy shop/a"]);
}
