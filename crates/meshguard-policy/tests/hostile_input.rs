//! Hostile policy and request input is refused with a clear error, never a panic, a hang or
//! unbounded memory.

use meshguard_policy::load::{parse_request, Loaded};
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::PathNormalization;
use proptest::prelude::*;

#[test]
fn billion_laughs_is_refused() {
    let mut doc =
        String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(",");
        doc.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    let mut l = Loaded::default();
    l.add_text(&doc, "bomb.yaml");
    let err = l.errors().next().expect("refused");
    assert!(err.message.contains("invalid YAML"), "{err}");
    assert!(l.resources.is_empty());
}

#[test]
fn deep_nesting_is_refused() {
    let text = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: x}}\nspec: {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let mut l = Loaded::default();
    l.add_text(&text, "deep.yaml");
    assert!(l.has_errors());
}

#[test]
fn a_file_that_is_not_yaml_names_the_position() {
    let mut l = Loaded::default();
    l.add_text(
        "apiVersion: security.istio.io/v1\nkind: [unclosed\n",
        "broken.yaml",
    );
    let e = l.errors().next().expect("error");
    assert_eq!(e.file, "broken.yaml");
    assert!(e.line >= 2, "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text never panics the loader.
    #[test]
    fn loader_never_panics(text in "\\PC{0,300}") {
        let mut l = Loaded::default();
        l.add_text(&text, "fuzz.yaml");
    }

    /// Policy-shaped text with random values never panics the loader or the compiler.
    #[test]
    fn policy_fields_never_panic(
        field in prop_oneof![Just("principals"), Just("namespaces"), Just("ipBlocks"), Just("requestPrincipals"), Just("serviceAccounts")],
        value in "[ -~]{0,20}",
        path in "[ -~]{0,20}",
        key in "[ -~]{0,24}",
    ) {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  rules:\n  - from:\n    - source: {{{field}: [{value:?}]}}\n    to:\n    - operation: {{paths: [{path:?}]}}\n    when:\n    - key: {key:?}\n      values: [\"v\"]\n"
        );
        let mut l = Loaded::default();
        l.add_text(&yaml, "p.yaml");
        if !l.has_errors() {
            let set = meshguard_policy::PolicySet::compile(l.resources, meshguard_policy::MeshConfig::default());
            prop_assert!(set.is_ok(), "validated policy failed to compile: {:?}", set.err());
        }
    }

    /// Arbitrary request descriptions never panic; paths with any bytes are normalised or refused.
    #[test]
    fn requests_never_panic(path in "\\PC{0,40}", method in "[ -~]{0,8}") {
        let doc = format!("destination: {{namespace: ns}}\nrequest: {{method: {method:?}, path: {path:?}}}\n");
        if let Ok(docs) = parse_documents(&doc) {
            if let Some(d) = docs.first() {
                let _ = parse_request(d, PathNormalization::DecodeAndMergeSlashes);
            }
        }
    }
}
