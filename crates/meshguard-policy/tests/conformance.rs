//! Table-driven conformance suite: every case reproduces a behaviour documented or tested by
//! Istio (each case cites its source). Files: tests/conformance/*.yaml, format in README.md
//! of that folder.

use std::path::Path;

use meshguard_policy::load::{parse_mesh_config, parse_request, Loaded};
use meshguard_policy::yaml::{parse_documents, Node, NodeKind};
use meshguard_policy::{MeshConfig, PolicySet};

fn run_suite(file: &str, suite: &Node, failures: &mut Vec<String>) -> usize {
    let name = suite
        .get("suite")
        .and_then(Node::as_str)
        .unwrap_or("?")
        .to_owned();
    let mesh = match suite.get("mesh") {
        Some(m) => {
            parse_mesh_config(m).unwrap_or_else(|e| panic!("{file} suite {name}: mesh: {e}"))
        }
        None => MeshConfig::default(),
    };
    let policies = suite.get("policies").and_then(Node::as_str).unwrap_or("");
    let mut loaded = Loaded::default();
    loaded.add_text(policies, &format!("{file}[{name}]"));
    if loaded.has_errors() {
        let errs: Vec<String> = loaded.errors().map(ToString::to_string).collect();
        failures.push(format!(
            "{file} suite `{name}`: policies do not load:\n    {}",
            errs.join("\n    ")
        ));
        return 0;
    }
    let set = PolicySet::compile(loaded.resources, mesh)
        .unwrap_or_else(|e| panic!("{file} suite {name}: {e}"));
    let Some(NodeKind::Seq(cases)) = suite.get("cases").map(|c| &c.kind) else {
        panic!("{file} suite {name}: no cases");
    };
    for case in cases {
        let cname = case.get("name").and_then(Node::as_str).unwrap_or("?");
        let source = case.get("source").and_then(Node::as_str).unwrap_or("");
        assert!(
            !source.trim().is_empty(),
            "{file} case `{cname}` has no source citation"
        );
        let req = case
            .get("request")
            .unwrap_or_else(|| panic!("{file} case {cname}: no request"));
        let (req, id) = match parse_request(req, set.mesh().path_normalization) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{file} `{cname}`: bad request: {e}"));
                continue;
            }
        };
        let d = set.evaluate(&req, &id);
        let got = d.to_json();
        let expect = case
            .get("expect")
            .unwrap_or_else(|| panic!("{file} case {cname}: no expect"));
        for (k, v) in expect.as_map().unwrap_or_default() {
            let want = v.to_json();
            let ok = match k.text.as_str() {
                "reason_contains" => got["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains(want.as_str().unwrap_or("\u{0}")),
                "audit" => got["audit"] == want,
                "dry_run" => {
                    let g = &got["dry_run"];
                    want.as_object()
                        .is_some_and(|w| w.iter().all(|(wk, wv)| &g[wk] == wv))
                        || (want.is_null() && g.is_null())
                }
                key => got.get(key).unwrap_or(&serde_json::Value::Null) == &want,
            };
            if !ok {
                failures.push(format!(
                    "{file} suite `{name}` case `{cname}` ({source}): `{}` expected {want}, got {}\n      decision: {got}",
                    k.text,
                    got.get(k.text.as_str()).unwrap_or(&got)
                ));
            }
        }
    }
    cases.len()
}

#[test]
fn istio_conformance() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut total = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let fname = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{fname}: {e:?}"));
        for suite in &docs {
            total += run_suite(&fname, suite, &mut failures);
        }
    }
    eprintln!(
        "conformance: {total} cases in {} files, {} failures",
        files.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} conformance failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 80, "only {total} conformance cases");
}
