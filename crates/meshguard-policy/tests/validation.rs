//! Validation cases taken from istiod's own validation tests (each cites its source): what Istio
//! refuses, meshguard refuses with the offending field named; what Istio accepts, meshguard accepts.

use std::path::Path;

use meshguard_policy::load::Loaded;
use meshguard_policy::yaml::{parse_documents, Node, NodeKind};

#[test]
fn istio_validation_cases() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validation/cases.yaml");
    let text = std::fs::read_to_string(&path).expect("read cases");
    let docs = parse_documents(&text).expect("parse cases");
    let Some(NodeKind::Seq(cases)) = docs.first().map(|d| &d.kind) else {
        panic!("cases.yaml must be a list");
    };
    let mut failures = Vec::new();
    for case in cases {
        let name = case.get("name").and_then(Node::as_str).unwrap_or("?");
        let source = case.get("source").and_then(Node::as_str).unwrap_or("");
        assert!(!source.is_empty(), "case `{name}` has no source");
        let policy = case.get("policy").and_then(Node::as_str).expect("policy");
        let valid = matches!(
            case.get("valid").map(|v| &v.kind),
            Some(NodeKind::Bool(true))
        );
        let mut l = Loaded::default();
        l.add_text(policy, "case.yaml");
        let errors: Vec<String> = l.errors().map(ToString::to_string).collect();
        if valid {
            if !errors.is_empty() {
                failures.push(format!(
                    "`{name}` ({source}): Istio accepts it, meshguard refused:\n    {}",
                    errors.join("\n    ")
                ));
            } else if l.resources.is_empty() {
                failures.push(format!("`{name}`: no resource loaded"));
            }
            continue;
        }
        if errors.is_empty() {
            failures.push(format!(
                "`{name}` ({source}): Istio refuses it, meshguard accepted it"
            ));
            continue;
        }
        if let Some(field) = case.get("error_field").and_then(Node::as_str) {
            // Every error names a line and a field; the field must be the one Istio complains about
            // (or a parent/child of it).
            let ok = l
                .errors()
                .any(|d| d.line > 0 && (d.field.starts_with(field) || field.starts_with(&d.field)));
            if !ok {
                failures.push(format!(
                    "`{name}`: expected an error at `{field}`, got:\n    {}",
                    errors.join("\n    ")
                ));
            }
        }
    }
    eprintln!(
        "validation: {} cases, {} failures",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} validation failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
