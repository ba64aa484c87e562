//! `meshguard test`: policy unit tests in YAML, in the spirit of `opa test`. A test file names
//! the policies (or uses the bundled examples), optional mesh settings, and cases: a request in
//! the `check --request` format and the verdict it must get. Every case is decided by the same
//! engine `check` and `serve` decide with.
//!
//! ```yaml
//! policies: [../policies]          # relative to this file; default: the bundled examples
//! meshConfig: {rootNamespace: istio-system}   # or a file name; optional
//! defaultDeny: false               # Istio's allow-by-default (default true, as serve, check, proxy)
//! cases:
//! - name: frontend reads users
//!   requestFile: ../requests/frontend-reads-users.yaml   # or `request: {...}` inline
//!   expect: allow                  # or {decision: deny, status: 403, policy: ns/name, rule: 0,
//!                                  #     action: DENY, reasonContains: "...",
//!                                  #     headers: {x-user-id: ci}, audit: [ns/name], dryRun: deny}
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use meshguard_engine::{Decision, DecisionLog, Engine, Files, LoadError, Settings, Sink, State};
use meshguard_policy::load::parse_mesh_config;
use meshguard_policy::yaml::{parse_documents, Node, NodeKind};
use meshguard_policy::MeshConfig;

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Test files, or directories searched recursively for `*.test.yaml`, `*.test.yml`,
    /// `*_test.yaml` and `*_test.yml`. Default: the current directory.
    paths: Vec<PathBuf>,
    /// Decide every file's cases against these policy files or directories instead of the
    /// ones each file names (repeatable, or comma-separated).
    #[arg(long = "policies", short = 'p', value_delimiter = ',')]
    policies: Vec<PathBuf>,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    run: Option<String>,
    /// Output: a line per case and a summary, one JSON object, or JUnit XML (for CI systems
    /// that show test reports).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Also show the decision of cases that pass.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// The operational log on stderr (a JWKS that cannot be fetched, an AuthConfig step that
    /// fails): error, warn, info, debug, trace, off, or an EnvFilter directive.
    #[arg(long, env = "MESHGUARD_LOG", default_value = "warn")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Junit,
}

const FILE_KEYS: &[&str] = &["policies", "meshConfig", "defaultDeny", "cases"];
const CASE_KEYS: &[&str] = &["name", "request", "requestFile", "expect"];
const EXPECT_KEYS: &[&str] = &[
    "decision",
    "status",
    "policy",
    "rule",
    "action",
    "reasonContains",
    "headers",
    "audit",
    "dryRun",
];

/// What a case expects; `None` fields are not checked.
#[derive(Default)]
struct Expect {
    allowed: bool,
    status: Option<u16>,
    policy: Option<String>,
    rule: Option<usize>,
    action: Option<String>,
    reason_contains: Option<String>,
    /// Headers the decision adds upstream (name lower-cased -> value).
    headers: Vec<(String, String)>,
    /// The AUDIT policies that must match (`namespace/name`), in any order.
    audit: Option<Vec<String>>,
    /// What the dry-run policies alone would decide.
    dry_run: Option<bool>,
}

impl Expect {
    fn to_json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({"decision": verdict(self.allowed)});
        if let Some(s) = self.status {
            j["status"] = s.into();
        }
        if let Some(p) = &self.policy {
            j["policy"] = p.clone().into();
        }
        if let Some(r) = self.rule {
            j["rule"] = r.into();
        }
        if let Some(a) = &self.action {
            j["action"] = a.clone().into();
        }
        if let Some(r) = &self.reason_contains {
            j["reasonContains"] = r.clone().into();
        }
        if !self.headers.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            j["headers"] = m.into();
        }
        if let Some(a) = &self.audit {
            j["audit"] = a.clone().into();
        }
        if let Some(d) = self.dry_run {
            j["dryRun"] = verdict(d).into();
        }
        j
    }

    /// What differs between this expectation and a decision (empty: the case passes).
    fn mismatches(&self, d: &Decision) -> Vec<String> {
        let mut out = Vec::new();
        if d.allowed != self.allowed {
            out.push(format!(
                "expected {}, got {}",
                verdict(self.allowed),
                verdict(d.allowed)
            ));
        }
        if let Some(s) = self.status {
            if s != d.status {
                out.push(format!("expected status {s}, got {}", d.status));
            }
        }
        if let Some(p) = &self.policy {
            if d.policy.as_deref() != Some(p.as_str()) {
                out.push(format!(
                    "expected policy {p}, got {}",
                    d.policy.as_deref().unwrap_or("none")
                ));
            }
        }
        if let Some(r) = self.rule {
            if d.rule != Some(r) {
                out.push(format!(
                    "expected rule {r}, got {}",
                    d.rule.map_or_else(|| "none".to_owned(), |r| r.to_string())
                ));
            }
        }
        if let Some(a) = &self.action {
            if !d.action.is_some_and(|x| x.eq_ignore_ascii_case(a)) {
                out.push(format!(
                    "expected action {a}, got {}",
                    d.action.unwrap_or("none")
                ));
            }
        }
        if let Some(r) = &self.reason_contains {
            if !d.reason.contains(r.as_str()) {
                out.push(format!("expected the reason to contain `{r}`"));
            }
        }
        for (k, v) in &self.headers {
            let got: Vec<&str> = d
                .headers_to_add
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
                .collect();
            if !got.contains(&v.as_str()) {
                if got.is_empty() {
                    out.push(format!("expected header {k}: {v}, got no {k} header"));
                } else {
                    out.push(format!(
                        "expected header {k}: {v}, got {k}: {}",
                        got.join(", ")
                    ));
                }
            }
        }
        if let Some(want) = &self.audit {
            let mut w = want.clone();
            w.sort();
            let mut g = d.audit.clone();
            g.sort();
            if w != g {
                let show = |l: &[String]| {
                    if l.is_empty() {
                        "none".to_owned()
                    } else {
                        l.join(", ")
                    }
                };
                out.push(format!(
                    "expected AUDIT policies {}, got {}",
                    show(&w),
                    show(&g)
                ));
            }
        }
        if let Some(want) = self.dry_run {
            match &d.dry_run {
                None => out.push(format!(
                    "expected the dry-run policies to {}, but no dry-run policy applies",
                    verdict(want)
                )),
                Some(dr) if dr.allowed != want => out.push(format!(
                    "expected the dry-run policies to {}, they would {}",
                    verdict(want),
                    verdict(dr.allowed)
                )),
                Some(_) => {}
            }
        }
        out
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

/// One case, ready to run.
struct Case {
    name: String,
    line: u32,
    request: Result<(String, Node), String>,
    expect: Result<Expect, String>,
}

/// One test file, parsed.
struct TestFile {
    policies: Vec<PathBuf>,
    mesh: MeshConfig,
    default_deny: bool,
    cases: Vec<Case>,
}

/// The outcome of one case.
struct Outcome {
    name: String,
    line: u32,
    expect: Option<serde_json::Value>,
    decision: Option<Decision>,
    why: Vec<String>,
    /// Empty when the case passed.
    failures: Vec<String>,
}

/// The outcome of one file.
struct FileOutcome {
    file: String,
    policies: String,
    /// The file could not be run (it does not parse, its policies do not load).
    error: Option<String>,
    cases: Vec<Outcome>,
}

pub(crate) fn run(a: TestArgs) -> Result<ExitCode> {
    crate::logging::init_logging(&a.log_level)?;
    let roots = if a.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        a.paths.clone()
    };
    let mut files = Vec::new();
    for root in &roots {
        find_test_files(root, true, &mut files)?;
    }
    if files.is_empty() {
        bail!(
            "no test files found in {} (looked for *.test.yaml, *.test.yml, *_test.yaml, *_test.yml; name a file to run it whatever its name)",
            roots
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = reqwest::Client::builder()
        .build()
        .context("building the HTTP client (JWKS, AuthConfig steps)")?;
    let mut results = Vec::new();
    for f in &files {
        let r = run_file(&rt, &client, f, &a);
        if a.format == Format::Text {
            print_file(&r, a.verbose);
        }
        results.push(r);
    }
    let passed = results
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| c.failures.is_empty())
        .count();
    let failed = results
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| !c.failures.is_empty())
        .count();
    let errors = results.iter().filter(|f| f.error.is_some()).count();
    match a.format {
        Format::Junit => println!("{}", junit(&results, passed + failed, failed, errors)),
        Format::Json => {
            let j = serde_json::json!({
                "passed": passed,
                "failed": failed,
                "errors": errors,
                "files": results.iter().map(file_json).collect::<Vec<_>>(),
            });
            println!("{j}");
        }
        Format::Text => {
            if errors > 0 {
                println!("{errors} test file(s) could not be run");
            }
            println!("{passed} passed, {failed} failed");
        }
    }
    if passed + failed == 0 && errors == 0 {
        bail!("no case was run (check --run and the files' `cases`)");
    }
    Ok(if failed == 0 && errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".test.yaml", ".test.yml", "_test.yaml", "_test.yml"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// A named file is taken whatever its name; directories are searched recursively (sorted,
/// names starting with `.` skipped, `target` directories skipped).
fn find_test_files(p: &Path, named: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
    if !meta.is_dir() {
        if named || is_test_file(p) {
            out.push(p.to_path_buf());
        }
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("cannot list {}", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if e.is_dir() {
            find_test_files(&e, false, out)?;
        } else if is_test_file(&e) {
            out.push(e);
        }
    }
    Ok(())
}

fn run_file(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    path: &Path,
    a: &TestArgs,
) -> FileOutcome {
    let file = path.display().to_string();
    let mut out = FileOutcome {
        file: file.clone(),
        policies: String::new(),
        error: None,
        cases: Vec::new(),
    };
    let tf = match parse_test_file(path) {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let policies = if a.policies.is_empty() {
        tf.policies.clone()
    } else {
        a.policies.clone()
    };
    out.policies = if policies.is_empty() {
        "the bundled example policies".to_owned()
    } else {
        policies
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let loaded = rt.block_on(async {
        if policies.is_empty() {
            State::new(crate::embedded_source(), tf.mesh.clone(), client.clone())
        } else {
            State::new(Files(policies.clone()), tf.mesh.clone(), client.clone())
        }
    });
    let state = match loaded {
        Ok(s) => s,
        Err(LoadError::Invalid(diags)) => {
            let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
            out.error = Some(format!(
                "the policies do not load ({} error(s); run `meshguard lint`):\n{}",
                diags.len(),
                lines.join("\n")
            ));
            return out;
        }
        Err(e) => {
            out.error = Some(format!("the policies do not load: {e}"));
            return out;
        }
    };
    let log = match DecisionLog::start(Sink::Off, state.clone()) {
        Ok(l) => l,
        Err(e) => {
            out.error = Some(format!("cannot start the decision log: {e}"));
            return out;
        }
    };
    let engine = Engine::new(
        state.clone(),
        log,
        Settings {
            default_deny: tf.default_deny,
            ..Settings::default()
        },
    );
    let g = state.current();
    let set = &g.set;
    for c in tf.cases {
        if let Some(filter) = &a.run {
            if !c.name.contains(filter.as_str()) {
                continue;
            }
        }
        let mut o = Outcome {
            name: c.name,
            line: c.line,
            expect: None,
            decision: None,
            why: Vec::new(),
            failures: Vec::new(),
        };
        let expect = match c.expect {
            Ok(e) => e,
            Err(e) => {
                o.failures.push(e);
                out.cases.push(o);
                continue;
            }
        };
        o.expect = Some(expect.to_json());
        let (origin, node) = match c.request {
            Ok(r) => r,
            Err(e) => {
                o.failures.push(e);
                out.cases.push(o);
                continue;
            }
        };
        let req = match crate::request_input::build(&node, set.mesh()) {
            Ok(r) => r,
            Err(e) => {
                o.failures.push(format!("{origin}: {e}"));
                out.cases.push(o);
                continue;
            }
        };
        let d = rt.block_on(engine.evaluate(&req));
        o.failures = expect.mismatches(&d);
        if d.no_allow_matched {
            o.why = set.explain_no_match(&req, &d.identity);
        }
        o.decision = Some(d);
        out.cases.push(o);
    }
    out
}

fn parse_test_file(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let docs = parse_documents(&text)
        .map_err(|e| format!("{}:{}: invalid YAML: {}", e.line, e.col, e.message))?;
    let [doc] = docs.as_slice() else {
        return Err(format!(
            "a test file is one YAML document (a mapping with `cases`), found {}",
            docs.len()
        ));
    };
    let Some(entries) = doc.as_map() else {
        return Err(format!(
            "line {}: a test file is a mapping with `cases`, found {}",
            doc.line,
            doc.type_name()
        ));
    };
    unknown_keys(entries, FILE_KEYS, "")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let policies = match doc.get("policies") {
        None => Vec::new(),
        Some(n) => string_list(n, "policies")?
            .into_iter()
            .map(|p| tidy(&dir.join(p)))
            .collect(),
    };
    let mesh = match doc.get("meshConfig") {
        None => MeshConfig::default(),
        Some(n) if n.as_map().is_some() => {
            parse_mesh_config(n).map_err(|e| format!("meshConfig: {e}"))?
        }
        Some(n) => match n.as_str() {
            Some(f) => {
                let p = tidy(&dir.join(f));
                let t = std::fs::read_to_string(&p).map_err(|e| {
                    format!("line {}: meshConfig: cannot read {}: {e}", n.line, p.display())
                })?;
                let docs = parse_documents(&t).map_err(|e| {
                    format!(
                        "{}:{}:{}: invalid YAML: {}",
                        p.display(),
                        e.line,
                        e.col,
                        e.message
                    )
                })?;
                match docs.first() {
                    Some(d) => {
                        parse_mesh_config(d).map_err(|e| format!("{}: {e}", p.display()))?
                    }
                    None => MeshConfig::default(),
                }
            }
            None => {
                return Err(format!(
                    "line {}: meshConfig: give a mapping (rootNamespace, pathNormalization, ...) or a file name, found {}",
                    n.line,
                    n.type_name()
                ))
            }
        },
    };
    // As `serve`, `check` and `proxy` decide unless told otherwise.
    let default_deny = match doc.get("defaultDeny") {
        None => true,
        Some(n) => match n.kind {
            NodeKind::Bool(b) => b,
            _ => {
                return Err(format!(
                    "line {}: defaultDeny: must be true or false, found {}",
                    n.line,
                    n.type_name()
                ))
            }
        },
    };
    let Some(cases_node) = doc.get("cases") else {
        return Err("missing `cases` (a list of {name, request or requestFile, expect})".into());
    };
    let NodeKind::Seq(items) = &cases_node.kind else {
        return Err(format!(
            "line {}: cases: must be a list, found {}",
            cases_node.line,
            cases_node.type_name()
        ));
    };
    let mut cases = Vec::new();
    for (i, item) in items.iter().enumerate() {
        cases.push(parse_case(item, i, dir));
    }
    Ok(TestFile {
        policies,
        mesh,
        default_deny,
        cases,
    })
}

fn parse_case(item: &Node, i: usize, dir: &Path) -> Case {
    let fallback = format!("case {}", i + 1);
    let Some(entries) = item.as_map() else {
        return Case {
            name: fallback,
            line: item.line,
            request: Err(format!(
                "line {}: a case is a mapping {{name, request or requestFile, expect}}, found {}",
                item.line,
                item.type_name()
            )),
            expect: Ok(Expect::default()),
        };
    };
    let request_file = item.get("requestFile").and_then(Node::as_str);
    let name = item
        .get("name")
        .and_then(Node::as_str)
        .map(str::to_owned)
        .or_else(|| request_file.map(str::to_owned))
        .unwrap_or(fallback);
    if let Err(e) = unknown_keys(entries, CASE_KEYS, &format!("cases[{i}].")) {
        return Case {
            name,
            line: item.line,
            request: Err(e),
            expect: Ok(Expect::default()),
        };
    }
    let request = match (item.get("request"), item.get("requestFile")) {
        (Some(_), Some(_)) => Err(format!(
            "line {}: cases[{i}]: give `request` or `requestFile`, not both",
            item.line
        )),
        (Some(r), None) => Ok((format!("cases[{i}].request"), r.clone())),
        (None, Some(f)) => match f.as_str() {
            Some(f) => read_request_file(&tidy(&dir.join(f))),
            None => Err(format!(
                "line {}: cases[{i}].requestFile: must be a file name, found {}",
                f.line,
                f.type_name()
            )),
        },
        (None, None) => Err(format!(
            "line {}: cases[{i}]: missing `request` (inline, the `check --request` format) or `requestFile`",
            item.line
        )),
    };
    let expect = match item.get("expect") {
        None => Err(format!(
            "line {}: cases[{i}]: missing `expect` (allow, deny, or {{decision, status, policy, rule, action, reasonContains, headers, audit, dryRun}})",
            item.line
        )),
        Some(e) => parse_expect(e, &format!("cases[{i}].expect")),
    };
    Case {
        name,
        line: item.line,
        request,
        expect,
    }
}

/// `a/tests/../policies` -> `a/policies`, lexically (for messages; symlinks are not followed,
/// and a leading `..` is kept).
fn tidy(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

fn read_request_file(p: &Path) -> Result<(String, Node), String> {
    let shown = p.display().to_string();
    let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let docs = parse_documents(&text)
        .map_err(|e| format!("{shown}:{}:{}: invalid YAML: {}", e.line, e.col, e.message))?;
    match docs.into_iter().next() {
        Some(d) => Ok((shown, d)),
        None => Err(format!("{shown}: the request is empty")),
    }
}

fn parse_decision(n: &Node, field: &str) -> Result<bool, String> {
    match n.as_str() {
        Some("allow") => Ok(true),
        Some("deny") => Ok(false),
        _ => Err(format!(
            "line {}: {field}: must be `allow` or `deny`, found {}",
            n.line,
            shown(n)
        )),
    }
}

fn shown(n: &Node) -> String {
    match &n.kind {
        NodeKind::Str(s) => format!("`{s}`"),
        NodeKind::Int(i) => format!("`{i}`"),
        NodeKind::Bool(b) => format!("`{b}`"),
        _ => n.type_name().to_owned(),
    }
}

fn parse_expect(n: &Node, field: &str) -> Result<Expect, String> {
    if n.as_str().is_some() {
        return Ok(Expect {
            allowed: parse_decision(n, field)?,
            ..Expect::default()
        });
    }
    let Some(entries) = n.as_map() else {
        return Err(format!(
            "line {}: {field}: give `allow`, `deny`, or a mapping {{decision, status, policy, rule, action, reasonContains, headers, audit, dryRun}}, found {}",
            n.line,
            n.type_name()
        ));
    };
    unknown_keys(entries, EXPECT_KEYS, &format!("{field}."))?;
    let Some(d) = n.get("decision") else {
        return Err(format!(
            "line {}: {field}: missing `decision` (allow or deny)",
            n.line
        ));
    };
    let int = |key: &str| -> Result<Option<i64>, String> {
        match n.get(key) {
            None => Ok(None),
            Some(v) => match v.kind {
                NodeKind::Int(i) => Ok(Some(i)),
                _ => Err(format!(
                    "line {}: {field}.{key}: must be a number, found {}",
                    v.line,
                    shown(v)
                )),
            },
        }
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match n.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| {
                format!(
                    "line {}: {field}.{key}: must be text, found {}",
                    v.line,
                    shown(v)
                )
            }),
        }
    };
    let status = match int("status")? {
        None => None,
        Some(s) => Some(
            u16::try_from(s)
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| format!("{field}.status: `{s}` is not an HTTP status (100-599)"))?,
        ),
    };
    let rule = match int("rule")? {
        None => None,
        Some(r) => Some(
            usize::try_from(r)
                .map_err(|_| format!("{field}.rule: `{r}` is not a rule index (0, 1, ...)"))?,
        ),
    };
    let action = text("action")?;
    if let Some(a) = &action {
        if !["ALLOW", "DENY", "CUSTOM", "AUDIT"].contains(&a.to_ascii_uppercase().as_str()) {
            return Err(format!(
                "{field}.action: `{a}` is not an action (ALLOW, DENY, CUSTOM)"
            ));
        }
    }
    Ok(Expect {
        allowed: parse_decision(d, &format!("{field}.decision"))?,
        status,
        policy: text("policy")?,
        rule,
        action,
        reason_contains: text("reasonContains")?,
        headers: match n.get("headers") {
            None => Vec::new(),
            Some(h) => {
                let Some(entries) = h.as_map() else {
                    return Err(format!(
                        "line {}: {field}.headers: must be a mapping (header name: value), found {}",
                        h.line,
                        h.type_name()
                    ));
                };
                let mut out = Vec::new();
                for (k, v) in entries {
                    let Some(v) = v.as_str() else {
                        return Err(format!(
                            "line {}: {field}.headers.{}: must be text, found {}",
                            v.line,
                            k.text,
                            shown(v)
                        ));
                    };
                    out.push((k.text.to_ascii_lowercase(), v.to_owned()));
                }
                out
            }
        },
        audit: match n.get("audit") {
            None => None,
            Some(a) => Some(string_list(a, &format!("{field}.audit"))?),
        },
        dry_run: match n.get("dryRun") {
            None => None,
            Some(d) => Some(parse_decision(d, &format!("{field}.dryRun"))?),
        },
    })
}

fn unknown_keys(
    entries: &[(meshguard_policy::yaml::Key, Node)],
    known: &[&str],
    prefix: &str,
) -> Result<(), String> {
    for (k, _) in entries {
        if !known.contains(&k.text.as_str()) {
            return Err(format!(
                "line {}: {prefix}{}: unknown field; expected one of: {}",
                k.line,
                k.text,
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn string_list(n: &Node, field: &str) -> Result<Vec<String>, String> {
    match &n.kind {
        NodeKind::Str(s) => Ok(vec![s.clone()]),
        NodeKind::Seq(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| {
                    format!(
                        "line {}: {field}: list items must be text, found {}",
                        i.line,
                        i.type_name()
                    )
                })
            })
            .collect(),
        _ => Err(format!(
            "line {}: {field}: must be text or a list of texts, found {}",
            n.line,
            n.type_name()
        )),
    }
}

fn decision_line(d: &Decision) -> String {
    let mut s = format!(
        "{} {} {}",
        verdict(d.allowed).to_ascii_uppercase(),
        d.status,
        d.reason
    );
    if let Some(c) = &d.auth_config {
        s.push_str(&format!(" (AuthConfig {c})"));
    }
    s
}

fn print_file(f: &FileOutcome, verbose: bool) {
    if f.policies.is_empty() {
        println!("{}", f.file);
    } else {
        println!("{} ({})", f.file, f.policies);
    }
    if let Some(e) = &f.error {
        println!("  ERROR {e}");
        return;
    }
    for c in &f.cases {
        if c.failures.is_empty() {
            match (&c.decision, verbose) {
                (Some(d), true) => println!("  PASS  {} ({})", c.name, decision_line(d)),
                _ => println!("  PASS  {}", c.name),
            }
            continue;
        }
        println!("  FAIL  {} (line {})", c.name, c.line);
        for m in &c.failures {
            println!("        {m}");
        }
        if let Some(d) = &c.decision {
            println!("        decision: {}", decision_line(d));
        }
        for w in &c.why {
            println!("        why: {w}");
        }
    }
}

fn file_json(f: &FileOutcome) -> serde_json::Value {
    let cases: Vec<serde_json::Value> = f
        .cases
        .iter()
        .map(|c| {
            let mut j = serde_json::json!({
                "name": c.name,
                "line": c.line,
                "passed": c.failures.is_empty(),
                "failures": c.failures,
            });
            if let Some(e) = &c.expect {
                j["expect"] = e.clone();
            }
            if let Some(d) = &c.decision {
                j["decision"] = d.to_json();
            }
            if !c.why.is_empty() {
                j["why"] = c.why.clone().into();
            }
            j
        })
        .collect();
    let mut j = serde_json::json!({
        "file": f.file,
        "policies": f.policies,
        "cases": cases,
    });
    if let Some(e) = &f.error {
        j["error"] = e.clone().into();
    }
    j
}

/// Text for an XML attribute or element: escaped, and without the control characters XML 1.0
/// cannot carry.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one testsuite per file, one testcase per case; a file that cannot be run is one
/// testcase with an `<error>`.
fn junit(results: &[FileOutcome], tests: usize, failures: usize, errors: usize) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"meshguard test\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\">\n",
        tests + errors
    ));
    for f in results {
        let failed = f.cases.iter().filter(|c| !c.failures.is_empty()).count();
        let n = f.cases.len() + usize::from(f.error.is_some());
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{failed}\" errors=\"{}\">\n",
            xml(&f.file),
            usize::from(f.error.is_some())
        ));
        if let Some(e) = &f.error {
            let first = e.lines().next().unwrap_or("");
            x.push_str(&format!(
                "    <testcase name=\"(load)\" classname=\"{}\">\n      <error message=\"{}\">{}</error>\n    </testcase>\n",
                xml(&f.file),
                xml(first),
                xml(e)
            ));
        }
        for c in &f.cases {
            x.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\"",
                xml(&c.name),
                xml(&f.file)
            ));
            if c.failures.is_empty() {
                x.push_str("/>\n");
                continue;
            }
            let mut body = c.failures.join("\n");
            if let Some(d) = &c.decision {
                body.push_str(&format!("\ndecision: {}", decision_line(d)));
            }
            for w in &c.why {
                body.push_str(&format!("\nwhy: {w}"));
            }
            x.push_str(&format!(
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                xml(&c.failures[0]),
                xml(&body)
            ));
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>");
    x
}
