//! `meshguard policies-for` and `meshguard who-can`: which resources select a workload, and
//! which callers its AuthorizationPolicies let in (what `istioctl x authz check` shows), from
//! policy files. The analysis is `meshguard_policy::inspect`; this is loading and printing.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use meshguard_engine::source::{load_paths, PolicySource};
use meshguard_policy::inspect::{Access, Cond, Probe, RuleView, Selected};
use meshguard_policy::workload::{check_namespace, parse_label_list};
use meshguard_policy::{PolicySet, Severity};
use serde_json::{json, Value};

#[derive(Args)]
pub(crate) struct WorkloadArgs {
    /// The workload's namespace.
    #[arg(long, short = 'n')]
    namespace: String,
    /// The workload's labels, `key=value` (comma-separated or repeated), as its pods carry them.
    #[arg(long, short = 'l', value_delimiter = ',')]
    labels: Vec<String>,
    /// The workload port (PeerAuthentication portLevelMtls, `ports` and `destination.port`).
    #[arg(long)]
    port: Option<u16>,
    #[command(flatten)]
    policy: crate::PolicyArgs,
    /// Output: text for people, or one JSON object.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
pub(crate) struct PoliciesForArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Args)]
pub(crate) struct WhoCanArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Only rules that can apply to this method (e.g. GET).
    #[arg(long)]
    method: Option<String>,
    /// Only rules that can apply to this path (as a client sends it; normalised as the mesh
    /// does before matching).
    #[arg(long)]
    path: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

struct Loaded {
    set: PolicySet,
    namespace: String,
    labels: BTreeMap<String, String>,
    describe: String,
}

fn load(a: &WorkloadArgs) -> Result<Loaded> {
    check_namespace(&a.namespace).map_err(|e| anyhow::anyhow!("--namespace {e}"))?;
    let labels =
        parse_label_list(&a.labels.join(",")).map_err(|e| anyhow::anyhow!("--labels {e}"))?;
    let mesh = crate::mesh_config(&a.policy)?;
    let (loaded, describe) = if a.policy.policies.is_empty() {
        (
            crate::embedded_source().read(),
            "the bundled example policies".to_owned(),
        )
    } else {
        let l = load_paths(&a.policy.policies);
        if l.files.is_empty() && !l.has_errors() {
            bail!(
                "no policy files found in the --policies paths (looked for *.yaml, *.yml, *.json)"
            );
        }
        let d = a
            .policy
            .policies
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        (l, d)
    };
    if loaded.has_errors() {
        for d in loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            eprintln!("{d}");
        }
        bail!(
            "{} error(s) in the policies (run `meshguard lint` for details)",
            loaded.errors().count()
        );
    }
    let set = PolicySet::compile(loaded.resources, mesh)
        .map_err(|e| anyhow::anyhow!("compiling the policies: {e}"))?;
    Ok(Loaded {
        set,
        namespace: a.namespace.clone(),
        labels,
        describe,
    })
}

fn workload_text(ns: &str, labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        format!("{ns} (no labels)")
    } else {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{ns}/{}", l.join(","))
    }
}

fn selected_json(s: &Selected) -> Value {
    json!({
        "kind": s.kind,
        "namespace": s.namespace,
        "name": s.name,
        "file": s.file,
        "line": s.line,
        "applies": s.applies,
        "why": s.why,
        "summary": s.summary,
    })
}

pub(crate) fn policies_for(a: PoliciesForArgs) -> Result<ExitCode> {
    let w = &a.workload;
    let l = load(w)?;
    let sel = l.set.policies_for(&l.namespace, &l.labels, w.port);
    let root = l.set.mesh().root_namespace.clone();
    if w.format == Format::Json {
        let j = json!({
            "workload": {"namespace": l.namespace, "labels": l.labels, "port": w.port},
            "policies": l.describe,
            "rootNamespace": root,
            "mtlsMode": sel.mtls_mode.as_str(),
            "authorizationPolicies": sel.authorization.iter().map(selected_json).collect::<Vec<_>>(),
            "peerAuthentications": sel.peer.iter().map(selected_json).collect::<Vec<_>>(),
            "requestAuthentications": sel.request.iter().map(selected_json).collect::<Vec<_>>(),
        });
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Workload {}{} ({}; root namespace {root})",
        workload_text(&l.namespace, &l.labels),
        w.port.map(|p| format!(" port {p}")).unwrap_or_default(),
        l.describe
    );
    println!("Effective mTLS mode: {}", sel.mtls_mode.as_str());
    for (title, list) in [
        ("AuthorizationPolicy", &sel.authorization),
        ("PeerAuthentication", &sel.peer),
        ("RequestAuthentication", &sel.request),
    ] {
        println!();
        println!("{title}:");
        if list.is_empty() {
            println!("  none in {} or {root}", l.namespace);
        }
        for s in list.iter() {
            println!(
                "  {} {}/{}: {}",
                if s.applies { "applies" } else { "not    " },
                s.namespace,
                s.name,
                s.summary
            );
            println!("          {} ({}:{})", s.why, s.file, s.line);
        }
    }
    if !sel
        .authorization
        .iter()
        .any(|s| s.applies && s.summary.starts_with("ALLOW") && !s.summary.contains("dry-run"))
    {
        println!();
        println!("No enforced ALLOW policy selects this workload: meshguard (serve, check, proxy) denies its requests by default; with --default-allow (Istio's behaviour) it allows what CUSTOM and DENY do not refuse. An AuthConfig that allows counts as an explicit allow.");
    }
    Ok(ExitCode::SUCCESS)
}

fn cond_json(c: &Cond) -> Value {
    let mut j = json!({"field": c.field});
    if !c.values.is_empty() {
        j["values"] = c.values.clone().into();
    }
    if !c.not_values.is_empty() {
        j["notValues"] = c.not_values.clone().into();
    }
    j
}

fn group_json(g: &Option<Vec<Vec<Cond>>>) -> Value {
    match g {
        None => Value::Null,
        Some(alts) => alts
            .iter()
            .map(|keys| keys.iter().map(cond_json).collect::<Vec<_>>())
            .collect::<Vec<_>>()
            .into(),
    }
}

fn rule_json(v: &RuleView) -> Value {
    let mut j = json!({
        "policy": v.policy,
        "rule": v.rule,
        "action": v.action.as_str(),
        "from": group_json(&v.from),
        "to": group_json(&v.to),
        "when": v.when.iter().map(cond_json).collect::<Vec<_>>(),
        "httpOnly": v.http_only,
        "callers": v.callers_text(),
        "operations": v.operations_text(),
    });
    if let Some(p) = &v.provider {
        j["provider"] = p.clone().into();
    }
    j
}

fn access_json(l: &Loaded, w: &WorkloadArgs, probe: &Probe, a: &Access) -> Value {
    json!({
        "workload": {"namespace": l.namespace, "labels": l.labels, "port": w.port},
        "request": {"method": probe.method, "path": probe.path, "normalizedPath": a.normalized_path},
        "policies": l.describe,
        "mtlsMode": a.mtls_mode.as_str(),
        "refused": a.refused,
        "noAllowPolicy": a.allow_policies == 0,
        "defaultDecision": if a.allow_policies == 0 {
            Value::from(if w.policy.default_allow { "allow" } else { "deny" })
        } else {
            Value::Null
        },
        "custom": a.custom.iter().map(rule_json).collect::<Vec<_>>(),
        "deny": a.deny.iter().map(rule_json).collect::<Vec<_>>(),
        "allow": a.allow.iter().map(|x| {
            let mut j = rule_json(&x.rule);
            j["minus"] = x.minus.iter().map(|(p, r)| json!({"policy": p, "rule": r})).collect::<Vec<_>>().into();
            j
        }).collect::<Vec<_>>(),
        "emptyAllowPolicies": a.empty_allow,
        "notEnforced": a.not_enforced,
        "notForThisRequest": a.not_for_probe,
        "neverMatch": a.never,
        "approximate": a.notes,
    })
}

fn print_rule(v: &RuleView) {
    match &v.provider {
        Some(p) => println!("  {} rule {} (provider {p})", v.policy, v.rule),
        None => println!("  {} rule {}", v.policy, v.rule),
    }
    println!("    callers:    {}", v.callers_text());
    println!("    operations: {}", v.operations_text());
    if let Some(w) = v.when_text() {
        println!("    when:       {w}");
    }
}

pub(crate) fn who_can(a: WhoCanArgs) -> Result<ExitCode> {
    let w = &a.workload;
    if let Some(m) = &a.method {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            bail!(
                "--method `{}` is not an HTTP method (letters only, e.g. GET)",
                m.escape_debug()
            );
        }
    }
    if let Some(p) = &a.path {
        if !p.starts_with('/') {
            bail!(
                "--path `{}` must start with `/` (as in the request line)",
                p.escape_debug()
            );
        }
    }
    let l = load(w)?;
    let probe = Probe {
        port: w.port,
        method: a.method.clone(),
        path: a.path.clone(),
    };
    let access = l.set.who_can(&l.namespace, &l.labels, &probe);
    if w.format == Format::Json {
        println!("{}", access_json(&l, w, &probe, &access));
        return Ok(ExitCode::SUCCESS);
    }
    let mut what = Vec::new();
    if let Some(p) = w.port {
        what.push(format!("port {p}"));
    }
    if let Some(m) = &a.method {
        what.push(m.clone());
    }
    if let Some(p) = &a.path {
        match &access.normalized_path {
            Some(n) if n != p => what.push(format!("{p} (matched as {n})")),
            _ => what.push(p.clone()),
        }
    }
    println!(
        "Who can reach {}{} ({})",
        workload_text(&l.namespace, &l.labels),
        if what.is_empty() {
            String::new()
        } else {
            format!(": {}", what.join(" "))
        },
        l.describe
    );
    println!("mTLS: {}", access.mtls_mode.as_str());
    if let Some(r) = &access.refused {
        println!("Nobody: {r}");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!("CUSTOM (decided first; a denial by the provider is final):");
    if access.custom.is_empty() {
        println!("  none");
    }
    for v in &access.custom {
        print_rule(v);
    }
    println!();
    println!("DENY (before ALLOW; a request matching one is refused):");
    if access.deny.is_empty() {
        println!("  none");
    }
    for v in &access.deny {
        print_rule(v);
    }
    println!();
    if access.allow_policies == 0 {
        if w.policy.default_allow {
            println!("ALLOW: no ALLOW policy selects this workload; with --default-allow (Istio's behaviour) every caller that CUSTOM and DENY do not refuse gets in.");
        } else {
            println!("ALLOW: nobody by default. No ALLOW policy selects this workload, and meshguard (serve, check, proxy) denies its requests unless --default-allow (Istio's behaviour, which lets in every caller that CUSTOM and DENY do not refuse). An AuthConfig that allows counts as an explicit allow.");
        }
    } else if access.allow.is_empty() {
        println!("ALLOW: nobody. ALLOW policies select this workload but none of their rules can match here, so every caller is denied (403).");
        for e in &access.empty_allow {
            println!("  {e} has no rules (allows nothing)");
        }
    } else {
        println!("ALLOW (a caller must match one of these, and no DENY rule):");
        for x in &access.allow {
            print_rule(&x.rule);
            if !x.minus.is_empty() {
                let m: Vec<String> = x
                    .minus
                    .iter()
                    .map(|(p, r)| format!("{p} rule {r}"))
                    .collect();
                println!("    minus:      requests denied by {}", m.join(", "));
            }
        }
        for e in &access.empty_allow {
            println!("  {e} has no rules (allows nothing)");
        }
    }
    for (title, list) in [
        ("Not enforced", &access.not_enforced),
        ("Not for this request", &access.not_for_probe),
        ("Never match", &access.never),
    ] {
        if !list.is_empty() {
            println!();
            println!("{title}:");
            for x in list.iter() {
                println!("  {x}");
            }
        }
    }
    println!();
    println!("Notes:");
    for n in &access.notes {
        println!("  - {n}");
    }
    Ok(ExitCode::SUCCESS)
}
