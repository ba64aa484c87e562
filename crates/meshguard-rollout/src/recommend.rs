//! Least privilege from observed traffic: per workload, one ALLOW rule per caller with the
//! operations it was seen to use (ids in paths generalised to `{*}`), request principals where
//! tokens were used, and an allow-nothing policy per namespace. The result is YAML that `lint`
//! accepts and that `simulate` can check against the same log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use crate::record::Recorded;

/// Which lines count.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// RFC 3339 bounds on `time` (inclusive `since`, exclusive `until`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub namespace: Option<String>,
    /// Callers seen fewer times than this on a workload get no rule.
    pub min_count: u64,
}

/// What one caller did to one workload.
#[derive(Debug, Default)]
struct Seen {
    count: u64,
    /// path template -> methods
    ops: BTreeMap<String, BTreeSet<String>>,
    ports: BTreeSet<u16>,
    /// Issuers of the verified tokens, and whether every request carried one.
    issuers: BTreeSet<String>,
    without_token: bool,
    tcp: bool,
}

/// The caller as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    /// A SPIFFE ID without the scheme, as `principals` takes it.
    Principal(String),
    /// A plaintext caller: its address (`ipBlocks`).
    Ip(String),
}

/// The recommendation and what it was built from.
#[derive(Debug, Default)]
pub struct Recommendation {
    pub yaml: String,
    pub lines: u64,
    pub used: u64,
    pub workloads: usize,
    pub rules: usize,
    /// Callers left out for being seen fewer than `min_count` times.
    pub rare: u64,
}

/// How the written policies are to be enforced: the rollout stage they are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Enforced as written.
    #[default]
    Enforce,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    DryRun,
    /// `meshguard.io/enforce-percent`: enforced for this share of callers, dry-run for the rest.
    Percent(u8),
}

impl Recommendation {
    /// The policies written for a rollout stage: every policy carries the stage's annotation
    /// (the allow-nothing ones too, so that a caller sees all of them enforced or none).
    pub fn yaml_for(&self, stage: Stage) -> String {
        let annotation = match stage {
            Stage::Enforce => return self.yaml.clone(),
            Stage::DryRun => "  annotations: {\"istio.io/dry-run\": \"true\"}\n".to_owned(),
            Stage::Percent(p) => {
                format!("  annotations: {{\"meshguard.io/enforce-percent\": \"{p}\"}}\n")
            }
        };
        // The generator writes `metadata:` on a line of its own, once per document, with the
        // name and namespace quoted, so no value can contain this line.
        self.yaml
            .replace("\nmetadata:\n", &format!("\nmetadata:\n{annotation}"))
    }
}

/// A segment that names one thing rather than a route: digits, a UUID, a long hex string.
fn is_id(seg: &str) -> bool {
    let hex = seg.len() >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
    let uuid = seg.len() == 36
        && seg.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    hex || digits || uuid
}

/// `/users/42/orders` -> `/users/{*}/orders`.
pub fn template(path: &str) -> String {
    if path == "/" {
        return path.to_owned();
    }
    path.split('/')
        .map(|s| if is_id(s) { "{*}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| q(s)).collect();
    format!("[{}]", v.join(", "))
}

/// Reads the log and writes the policies.
pub fn recommend(input: impl BufRead, f: &Filter) -> std::io::Result<Recommendation> {
    // (namespace, selector labels) -> caller -> seen
    let mut by_workload: BTreeMap<(String, BTreeMap<String, String>), BTreeMap<Caller, Seen>> =
        BTreeMap::new();
    let mut out = Recommendation::default();
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.lines += 1;
        let Ok(rec) = Recorded::parse(&line) else {
            continue;
        };
        let time = rec.time.as_ref();
        if f.since.as_ref().is_some_and(|s| time < s.as_str())
            || f.until.as_ref().is_some_and(|u| time >= u.as_str())
            || f.namespace
                .as_ref()
                .is_some_and(|n| n != rec.namespace.as_ref())
            || !rec.allowed
            || rec.namespace.is_empty()
        {
            continue;
        }
        out.used += 1;
        // Select by `app` when the workload has one, else by all its labels.
        let selector: BTreeMap<String, String> = match rec.labels.get("app") {
            Some(app) => [("app".to_owned(), app.clone())].into(),
            None => rec.labels.clone(),
        };
        let caller = match (&rec.source_principal, rec.remote_ip.or(rec.source_ip)) {
            (Some(p), _) => Caller::Principal(p.strip_prefix("spiffe://").unwrap_or(p).to_owned()),
            (None, Some(ip)) => Caller::Ip(ip.to_string()),
            (None, None) => continue,
        };
        let seen = by_workload
            .entry((rec.namespace.to_string(), selector))
            .or_default()
            .entry(caller)
            .or_default();
        seen.count += 1;
        if let Some(p) = rec.port {
            seen.ports.insert(p);
        }
        match (&rec.method, &rec.path) {
            (Some(m), Some(p)) => {
                seen.ops
                    .entry(template(p))
                    .or_default()
                    .insert(m.to_string());
            }
            _ => seen.tcp = true,
        }
        match rec
            .request_principal
            .as_deref()
            .and_then(|p| p.rsplit_once('/'))
        {
            Some((iss, _)) => {
                seen.issuers.insert(iss.to_owned());
            }
            None => seen.without_token = true,
        }
    }

    let mut y = String::from(
        "# Least-privilege AuthorizationPolicies recommended by `meshguard recommend` from observed\n# traffic. Review before applying; check with `meshguard simulate` against the same log.\n",
    );
    let namespaces: BTreeSet<String> = by_workload.keys().map(|(ns, _)| ns.clone()).collect();
    for ns in &namespaces {
        y.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: {}\nspec: {{}}\n",
            q(ns)
        ));
    }
    for ((ns, selector), callers) in &by_workload {
        let name = match selector.get("app") {
            Some(app) => format!("allow-observed-{app}"),
            None if selector.is_empty() => "allow-observed".to_owned(),
            None => format!(
                "allow-observed-{}",
                selector.values().cloned().collect::<Vec<_>>().join("-")
            ),
        };
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(63)
            .collect();
        let mut rules = String::new();
        for (caller, seen) in callers {
            if seen.count < f.min_count {
                out.rare += seen.count;
                continue;
            }
            out.rules += 1;
            let mut source = match caller {
                Caller::Principal(p) => format!("principals: [{}]", q(p)),
                Caller::Ip(ip) => format!("ipBlocks: [{}]", q(ip)),
            };
            if !seen.without_token && !seen.issuers.is_empty() {
                let rp: Vec<String> = seen.issuers.iter().map(|i| format!("{i}/*")).collect();
                source.push_str(&format!(", requestPrincipals: {}", list(&rp)));
            }
            rules.push_str(&format!("  - from: [{{source: {{{source}}}}}]\n"));
            let ports: Vec<String> = seen.ports.iter().map(|p| p.to_string()).collect();
            let port_part = if ports.is_empty() {
                String::new()
            } else {
                format!(", ports: {}", list(&ports))
            };
            if seen.tcp || seen.ops.is_empty() {
                // A TCP caller (or one seen both ways) is allowed by port alone.
                if !ports.is_empty() {
                    rules.push_str(&format!(
                        "    to: [{{operation: {{ports: {}}}}}]\n",
                        list(&ports)
                    ));
                }
                continue;
            }
            rules.push_str("    to:\n");
            for (path, methods) in &seen.ops {
                rules.push_str(&format!(
                    "    - operation: {{methods: {}, paths: [{}]{port_part}}}\n",
                    list(methods),
                    q(path)
                ));
            }
        }
        if rules.is_empty() {
            continue;
        }
        out.workloads += 1;
        y.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n",
            q(&name),
            q(ns)
        ));
        if !selector.is_empty() {
            let labels: Vec<String> = selector
                .iter()
                .map(|(k, v)| format!("{}: {}", q(k), q(v)))
                .collect();
            y.push_str(&format!(
                "  selector: {{matchLabels: {{{}}}}}\n",
                labels.join(", ")
            ));
        }
        y.push_str("  action: ALLOW\n  rules:\n");
        y.push_str(&rules);
    }
    out.yaml = y;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stages_annotate_every_policy() {
        let log = r#"{"v":1,"allowed":true,"status":200,"namespace":"shop","labels":{"app":"orders"},"source_principal":"spiffe://td/ns/shop/sa/web","method":"GET","path":"/orders/1","port":8080}"#;
        let r = super::recommend(log.as_bytes(), &super::Filter::default()).expect("read");
        assert_eq!(r.yaml_for(super::Stage::Enforce), r.yaml);
        assert!(!r.yaml.contains("annotations"));
        let dry = r.yaml_for(super::Stage::DryRun);
        assert_eq!(
            dry.matches("\"istio.io/dry-run\": \"true\"").count(),
            2,
            "{dry}"
        );
        let pct = r.yaml_for(super::Stage::Percent(25));
        assert_eq!(
            pct.matches("\"meshguard.io/enforce-percent\": \"25\"")
                .count(),
            2,
            "{pct}"
        );
    }

    #[test]
    fn ids_become_templates() {
        assert_eq!(super::template("/users/42/orders"), "/users/{*}/orders");
        assert_eq!(
            super::template("/o/3f2b8c1a-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),
            "/o/{*}"
        );
        assert_eq!(super::template("/api/v1/users"), "/api/v1/users");
        assert_eq!(super::template("/"), "/");
    }
}
