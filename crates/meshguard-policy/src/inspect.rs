//! Read-only views of a compiled [`PolicySet`] for operators: which resources select a workload
//! and why (`meshguard policies-for`), and which callers its AuthorizationPolicies let in
//! (`meshguard who-can`, what `istioctl x authz check` shows). Scope is decided by the same
//! rules the evaluator uses; rule matching against a partial request (port, method, path) uses
//! the compiled matchers. What cannot be known without a concrete request is said so, never
//! guessed.

use std::collections::BTreeMap;

use crate::compile::{CKey, CPolicy, CRule, PolicySet, M};
use crate::request::HttpRequest;
use crate::resource::{Action, Attr, KeyRule, MtlsMode, Rule};

/// One resource and whether it selects the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub file: String,
    pub line: u32,
    pub applies: bool,
    /// Why it applies (`namespace-wide`, `selector app=backend matches`, ...) or why not.
    pub why: String,
    /// AuthorizationPolicy: the action (and `dry-run`); PeerAuthentication: its mode;
    /// RequestAuthentication: its issuers.
    pub summary: String,
}

/// What selects a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub authorization: Vec<Selected>,
    pub peer: Vec<Selected>,
    pub request: Vec<Selected>,
    /// The effective PeerAuthentication mode (for the port, when one was given).
    pub mtls_mode: MtlsMode,
}

/// One condition of a rule as written: `principals [a, b]`, `notPaths [/x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// The field or `when` key (`principals`, `request.headers[x-token]`).
    pub field: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

impl Cond {
    fn from_key(k: &KeyRule) -> Cond {
        Cond {
            field: k.field.clone(),
            values: k.values.clone(),
            not_values: k.not_values.clone(),
        }
    }

    /// `principals [a, b] notPrincipals [c]`, or for `when` keys `key in [..] not in [..]`.
    pub fn text(&self) -> String {
        let list = |v: &[String]| format!("[{}]", v.join(", "));
        let mut parts = Vec::new();
        let neg = {
            let mut c = self.field.chars();
            match c.next() {
                Some(f) => format!("not{}{}", f.to_ascii_uppercase(), c.as_str()),
                None => "not".to_owned(),
            }
        };
        let is_when = self.field.contains('.') || self.field.contains('[');
        if !self.values.is_empty() {
            if is_when {
                parts.push(format!("{} in {}", self.field, list(&self.values)));
            } else {
                parts.push(format!("{} {}", self.field, list(&self.values)));
            }
        }
        if !self.not_values.is_empty() {
            if is_when {
                parts.push(format!("{} not in {}", self.field, list(&self.not_values)));
            } else {
                parts.push(format!("{neg} {}", list(&self.not_values)));
            }
        }
        parts.join(" ")
    }
}

/// One rule of an AuthorizationPolicy, as written, with what matters for reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleView {
    /// `namespace/name`.
    pub policy: String,
    pub rule: usize,
    pub action: Action,
    pub provider: Option<String>,
    /// Alternatives (any one), each a list of conditions (all). `None`: any source/operation.
    pub from: Option<Vec<Vec<Cond>>>,
    pub to: Option<Vec<Vec<Cond>>>,
    pub when: Vec<Cond>,
    /// Uses HTTP-only fields: an ALLOW rule is dropped on TCP ports, a DENY rule loses those
    /// conditions there (matches more).
    pub http_only: bool,
}

impl RuleView {
    fn new(p: &CPolicy, r: &CRule) -> RuleView {
        let src: Option<&Rule> = p.src.rules.get(r.index);
        let group = |g: Option<&Option<Vec<Vec<KeyRule>>>>| -> Option<Vec<Vec<Cond>>> {
            g.and_then(|g| g.as_ref()).map(|alts| {
                alts.iter()
                    .map(|keys| keys.iter().map(Cond::from_key).collect())
                    .collect()
            })
        };
        RuleView {
            policy: format!("{}/{}", p.src.meta.namespace, p.src.meta.name),
            rule: r.index,
            action: p.src.action,
            provider: p.src.provider.clone(),
            from: group(src.map(|s| &s.from)),
            to: group(src.map(|s| &s.to)),
            when: src
                .map(|s| s.when.iter().map(Cond::from_key).collect())
                .unwrap_or_default(),
            http_only: r.has_http_only,
        }
    }

    /// The callers part: `any caller`, or the `from` alternatives joined with `or`.
    pub fn callers_text(&self) -> String {
        match &self.from {
            None => "any caller".to_owned(),
            Some(alts) => alts_text(alts),
        }
    }

    /// The operations part: `any operation`, or the `to` alternatives joined with `or`.
    pub fn operations_text(&self) -> String {
        match &self.to {
            None => "any operation".to_owned(),
            Some(alts) => alts_text(alts),
        }
    }

    pub fn when_text(&self) -> Option<String> {
        (!self.when.is_empty()).then(|| {
            self.when
                .iter()
                .map(Cond::text)
                .collect::<Vec<_>>()
                .join(" and ")
        })
    }
}

fn alts_text(alts: &[Vec<Cond>]) -> String {
    alts.iter()
        .map(|keys| {
            if keys.is_empty() {
                "anything".to_owned()
            } else {
                keys.iter()
                    .map(Cond::text)
                    .collect::<Vec<_>>()
                    .join(" and ")
            }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// An ALLOW rule and the DENY rules that may take part of it away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowView {
    pub rule: RuleView,
    /// DENY rules (`namespace/name`, rule) that can match some request this rule allows; rules
    /// shown to be disjoint on literal values are left out.
    pub minus: Vec<(String, usize)>,
}

/// The part of a request `who-can` is asked about; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub port: Option<u16>,
    pub method: Option<String>,
    /// As a client sends it; normalised as the mesh normalises paths before matching.
    pub path: Option<String>,
}

/// Who can reach a workload, per the AuthorizationPolicies that select it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub mtls_mode: MtlsMode,
    /// The probe path after normalisation.
    pub normalized_path: Option<String>,
    /// The probe path is refused before any policy (400/404, as Envoy refuses it).
    pub refused: Option<String>,
    pub custom: Vec<RuleView>,
    pub deny: Vec<RuleView>,
    pub allow: Vec<AllowView>,
    /// Enforced ALLOW policies that select the workload: 0 means Istio allows every caller
    /// that CUSTOM and DENY do not refuse.
    pub allow_policies: usize,
    /// ALLOW policies that select the workload but have no rules (they allow nothing).
    pub empty_allow: Vec<String>,
    /// Dry-run and AUDIT policies: evaluated and logged, never enforced.
    pub not_enforced: Vec<String>,
    /// Rules left out because they cannot match the probe, with why.
    pub not_for_probe: Vec<String>,
    /// Rules that never match (a key istiod cannot generate).
    pub never: Vec<String>,
    /// Where this view is approximate.
    pub notes: Vec<String>,
}

fn selector_text(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_matches(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Why a namespaced, selectable resource applies to `namespace`/`labels`, or why not. `None`
/// when it is in another namespace (not shown).
fn scope_why(
    res_ns: &str,
    selector: Option<&BTreeMap<String, String>>,
    has_target_refs: bool,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root: &str,
) -> Option<(bool, String)> {
    let in_root = res_ns == root;
    if !in_root && res_ns != namespace {
        return None;
    }
    if has_target_refs {
        return Some((
            false,
            "has targetRef(s): it attaches to a gateway or waypoint, never to a sidecar workload"
                .to_owned(),
        ));
    }
    let sel = selector.filter(|s| !s.is_empty());
    Some(match (in_root && res_ns != namespace, sel) {
        (true, None) => (
            true,
            format!("mesh-wide: in the root namespace {root}, no selector"),
        ),
        (true, Some(s)) if selector_matches(s, labels) => (
            true,
            format!(
                "root namespace {root}: selector {} matches (applies in every namespace)",
                selector_text(s)
            ),
        ),
        (true, Some(s)) => (
            false,
            format!(
                "root namespace {root}: selector {} does not match the labels",
                selector_text(s)
            ),
        ),
        (false, None) => (
            true,
            format!("namespace-wide: no selector in namespace {namespace}"),
        ),
        (false, Some(s)) if selector_matches(s, labels) => {
            (true, format!("selector {} matches", selector_text(s)))
        }
        (false, Some(s)) => (
            false,
            format!("selector {} does not match the labels", selector_text(s)),
        ),
    })
}

impl PolicySet {
    /// Every AuthorizationPolicy, PeerAuthentication and RequestAuthentication of the
    /// workload's namespace and the root namespace, with whether and why it selects the
    /// workload. Sorted: applying ones first, then by namespace and name.
    pub fn policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: Option<u16>,
    ) -> Selection {
        let root = self.mesh.root_namespace.as_str();
        let mut authorization = Vec::new();
        for p in &self.authz {
            let s = &p.src;
            let Some((applies, why)) = scope_why(
                &s.meta.namespace,
                s.selector.as_ref(),
                s.has_target_refs,
                namespace,
                labels,
                root,
            ) else {
                continue;
            };
            let mut summary = s.action.as_str().to_owned();
            if let Some(pr) = &s.provider {
                summary.push_str(&format!(" (provider {pr})"));
            }
            if s.dry_run {
                summary.push_str(", dry-run: evaluated and logged, not enforced");
            }
            if s.rules.is_empty() {
                summary.push_str(match s.action {
                    Action::Allow => ", no rules: allows nothing",
                    _ => ", no rules: matches nothing",
                });
            } else {
                summary.push_str(&format!(", {} rule(s)", s.rules.len()));
            }
            authorization.push(Selected {
                kind: "AuthorizationPolicy",
                namespace: s.meta.namespace.clone(),
                name: s.meta.name.clone(),
                file: s.origin.file.clone(),
                line: s.origin.line,
                applies,
                why,
                summary,
            });
        }

        // PeerAuthentication: as `mtls_mode` composes them. Mesh (root, no selector), then
        // namespace (no selector), then workload (selector, own namespace only); the oldest of
        // a level wins.
        let mut peer = Vec::new();
        let empty_sel = |s: Option<&BTreeMap<String, String>>| s.is_none_or(BTreeMap::is_empty);
        let mut taken = [false; 3];
        for p in &self.peer {
            let in_root = p.meta.namespace == root;
            if !in_root && p.meta.namespace != namespace {
                continue;
            }
            let level = if empty_sel(p.selector.as_ref()) {
                if in_root {
                    Some((
                        0,
                        format!("mesh-wide: in the root namespace {root}, no selector"),
                    ))
                } else {
                    Some((
                        1,
                        format!("namespace-wide: no selector in namespace {namespace}"),
                    ))
                }
            } else {
                None
            };
            let (applies, why) = match level {
                Some((lvl, why)) => {
                    if taken[lvl] {
                        (
                            false,
                            format!("{why}, but an older one of the same level wins"),
                        )
                    } else {
                        taken[lvl] = true;
                        (true, why)
                    }
                }
                None => {
                    let sel = p.selector.clone().unwrap_or_default();
                    if in_root && p.meta.namespace != namespace {
                        (false, format!("root namespace {root}: a PeerAuthentication with a selector applies only in its own namespace"))
                    } else if in_root {
                        (false, format!("root namespace {root}: a PeerAuthentication with a selector there is not applied"))
                    } else if !selector_matches(&sel, labels) {
                        (
                            false,
                            format!("selector {} does not match the labels", selector_text(&sel)),
                        )
                    } else if taken[2] {
                        (
                            false,
                            format!(
                                "selector {} matches, but an older workload-level one wins",
                                selector_text(&sel)
                            ),
                        )
                    } else {
                        taken[2] = true;
                        (true, format!("selector {} matches", selector_text(&sel)))
                    }
                }
            };
            let mut summary = format!("mtls {}", p.mode.as_str());
            if !p.port_level.is_empty() {
                let ports: Vec<String> = p
                    .port_level
                    .iter()
                    .map(|(port, m)| format!("{port}: {}", m.as_str()))
                    .collect();
                summary.push_str(&format!(", portLevelMtls {{{}}}", ports.join(", ")));
            }
            peer.push(Selected {
                kind: "PeerAuthentication",
                namespace: p.meta.namespace.clone(),
                name: p.meta.name.clone(),
                file: p.origin.file.clone(),
                line: p.origin.line,
                applies,
                why,
                summary,
            });
        }

        let mut request = Vec::new();
        for ra in &self.request_authn {
            let Some((applies, why)) = scope_why(
                &ra.meta.namespace,
                ra.selector.as_ref(),
                ra.has_target_refs,
                namespace,
                labels,
                root,
            ) else {
                continue;
            };
            let issuers: Vec<&str> = ra.jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
            request.push(Selected {
                kind: "RequestAuthentication",
                namespace: ra.meta.namespace.clone(),
                name: ra.meta.name.clone(),
                file: ra.origin.file.clone(),
                line: ra.origin.line,
                applies,
                why,
                summary: format!("issuers [{}]", issuers.join(", ")),
            });
        }
        for list in [&mut authorization, &mut peer, &mut request] {
            list.sort_by(|a, b| {
                (!a.applies, &a.namespace, &a.name).cmp(&(!b.applies, &b.namespace, &b.name))
            });
        }
        Selection {
            authorization,
            peer,
            request,
            mtls_mode: self.mtls_mode(namespace, labels, port),
        }
    }

    /// Which callers the AuthorizationPolicies that select the workload let in, for the
    /// operations in `probe` (any, where it leaves a part out).
    pub fn who_can(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        probe: &Probe,
    ) -> Access {
        let mtls_mode = self.mtls_mode(namespace, labels, probe.port);
        let mut access = Access {
            mtls_mode,
            normalized_path: None,
            refused: None,
            custom: Vec::new(),
            deny: Vec::new(),
            allow: Vec::new(),
            allow_policies: 0,
            empty_allow: Vec::new(),
            not_enforced: Vec::new(),
            not_for_probe: Vec::new(),
            never: Vec::new(),
            notes: Vec::new(),
        };
        if let Some(raw) = &probe.path {
            let h = HttpRequest::new(
                probe.method.clone().unwrap_or_else(|| "GET".to_owned()),
                String::new(),
                raw.clone(),
                Vec::new(),
                self.mesh.path_normalization,
            );
            match (h.rejection, h.normalized_path()) {
                (Some(r), _) => {
                    access.refused = Some(format!(
                        "the path is refused before any policy ({}): {}",
                        r.status(),
                        raw
                    ));
                }
                (None, Some(p)) => access.normalized_path = Some(p.to_owned()),
                (None, None) => {}
            }
        }
        let mut policies: Vec<&CPolicy> = Vec::new();
        self.for_each_applicable(namespace, labels, |p| policies.push(p));
        // Envoy's order: the RBAC names (rank), so output follows what decides first.
        let mut rules: Vec<(&CPolicy, &CRule)> = Vec::new();
        for p in &policies {
            let name = format!("{}/{}", p.src.meta.namespace, p.src.meta.name);
            if p.src.dry_run {
                access
                    .not_enforced
                    .push(format!("{name} ({} dry-run)", p.src.action.as_str()));
                continue;
            }
            if p.src.action == Action::Audit {
                access.not_enforced.push(format!("{name} (AUDIT)"));
                continue;
            }
            if p.src.action == Action::Allow {
                access.allow_policies += 1;
                if p.rules.is_empty() {
                    access.empty_allow.push(name.clone());
                }
            }
            for r in &p.rules {
                rules.push((p, r));
            }
        }
        rules.sort_by_key(|(_, r)| r.rank);
        let mut allow_src: Vec<(&CPolicy, &CRule)> = Vec::new();
        let mut deny_src: Vec<(&CPolicy, &CRule)> = Vec::new();
        for &(p, r) in &rules {
            let view = RuleView::new(p, r);
            if r.has_broken && p.src.action == Action::Allow {
                access.never.push(format!(
                    "{} rule {}: uses a key istiod cannot generate, so it never allows",
                    view.policy, view.rule
                ));
                continue;
            }
            if let Some(k) = numeric_claim_condition(r) {
                access.never.push(format!(
                    "{} rule {} ({}): condition `{k}` tests a numeric claim, which never matches in Istio (Envoy RBAC matches only string claims)",
                    view.policy,
                    view.rule,
                    p.src.action.as_str()
                ));
                continue;
            }
            if mtls_mode == MtlsMode::Disable && needs_identity(r) {
                access.never.push(format!(
                    "{} rule {} ({}): every `from` entry needs a mesh identity (principals, namespaces, serviceAccounts, trustDomains), which no caller has under mTLS DISABLE",
                    view.policy,
                    view.rule,
                    p.src.action.as_str()
                ));
                continue;
            }
            if let Some(why) = self.mismatch(r, probe, access.normalized_path.as_deref()) {
                access.not_for_probe.push(format!(
                    "{} rule {} ({}): {why}",
                    view.policy,
                    view.rule,
                    p.src.action.as_str()
                ));
                continue;
            }
            match p.src.action {
                Action::Custom => access.custom.push(view),
                Action::Deny => {
                    access.deny.push(view);
                    deny_src.push((p, r));
                }
                Action::Allow => {
                    access.allow.push(AllowView {
                        rule: view,
                        minus: Vec::new(),
                    });
                    allow_src.push((p, r));
                }
                Action::Audit => {}
            }
        }
        // What DENY rules may take away from each ALLOW rule.
        for (a, (ap, ar)) in access.allow.iter_mut().zip(&allow_src) {
            for (d, (dp, dr)) in access.deny.iter().zip(&deny_src) {
                if !disjoint(ap, ar, dp, dr) {
                    a.minus.push((d.policy.clone(), d.rule));
                }
            }
        }

        let mut notes = Vec::new();
        match mtls_mode {
            MtlsMode::Strict => notes.push(
                "mTLS is STRICT: plaintext callers are refused before any policy".to_owned(),
            ),
            MtlsMode::Disable => notes.push(
                "mTLS is DISABLE: callers have no mesh identity, so principals, namespaces, serviceAccounts and trustDomains never match (their not* forms always do)".to_owned(),
            ),
            _ => notes.push(
                "mTLS is PERMISSIVE: plaintext callers are accepted and have no identity (principals and namespaces do not match them)".to_owned(),
            ),
        }
        if !access.custom.is_empty() {
            notes.push("CUSTOM rules send matching requests to their provider first; what it answers is known only at request time".to_owned());
        }
        if access
            .allow
            .iter()
            .map(|a| &a.rule)
            .chain(&access.deny)
            .any(|v| v.http_only)
        {
            notes.push("rules with HTTP-only fields (paths, methods, hosts, headers, JWT claims) are dropped from ALLOW and lose those conditions in DENY on TCP ports".to_owned());
        }
        if access.allow.iter().any(|a| !a.minus.is_empty()) {
            notes.push("`minus` lists DENY rules that may match some request the ALLOW rule admits: overlap is ruled out only on literal methods, ports, paths, namespaces and principals, so a listed DENY rule may in fact take away nothing".to_owned());
        }
        let uses_jwt = |v: &RuleView| {
            v.from.iter().flatten().flatten().chain(&v.when).any(|c| {
                c.field.starts_with("requestPrincipals") || c.field.starts_with("request.auth.")
            })
        };
        if access.allow.iter().map(|a| &a.rule).any(uses_jwt)
            && self
                .request_authentications(namespace, labels)
                .next()
                .is_none()
        {
            notes.push("requestPrincipals and request.auth conditions need a JWT verified by a RequestAuthentication, and none selects this workload: those rules admit nobody".to_owned());
        }
        if probe.port.is_none() || probe.method.is_none() || probe.path.is_none() {
            notes.push("rules are shown for any port, method or path not given with --port, --method, --path".to_owned());
        }
        access.notes = notes;
        access
    }

    /// Why a rule cannot match any request with the probe's port, method and path; `None`
    /// when it can (conditions on other attributes are left to the reader).
    fn mismatch(&self, r: &CRule, probe: &Probe, path: Option<&str>) -> Option<String> {
        let key_fails = |k: &CKey| -> bool {
            let test = |m: &M| -> Option<bool> {
                match (&k.attr, m) {
                    (Attr::Port, M::Port(p)) => probe.port.map(|x| x == *p),
                    (Attr::Method, M::Present) => probe.method.as_ref().map(|_| true),
                    (Attr::Method, M::Str(s)) => probe.method.as_deref().map(|x| s.matches(x)),
                    (Attr::Path, M::Path(pm)) => path.map(|x| pm.matches(x)),
                    _ => None,
                }
            };
            let known = match k.attr {
                Attr::Port => probe.port.is_some(),
                Attr::Method => probe.method.is_some(),
                Attr::Path => path.is_some(),
                _ => false,
            };
            if !known {
                return false;
            }
            if !k.values.is_empty() && !k.values.iter().any(|m| test(m) == Some(true)) {
                return true;
            }
            k.not_values.iter().any(|m| test(m) == Some(true))
        };
        if let Some(alts) = &r.to {
            let failing: Vec<String> = alts
                .iter()
                .filter_map(|keys| keys.iter().find(|k| key_fails(k)).map(|k| k.field.clone()))
                .collect();
            if failing.len() == alts.len() && !alts.is_empty() {
                return Some(format!(
                    "its `to` does not cover this request ({} do not match)",
                    failing.join(", ")
                ));
            }
        }
        if let Some(k) = r.when.iter().find(|k| key_fails(k)) {
            return Some(format!("condition `{}` does not match", k.field));
        }
        None
    }
}

/// A `when` condition with values on `exp`, `iat` or `nbf`: verified tokens carry them as
/// numbers, and a numeric claim never matches (the rule can never match).
fn numeric_claim_condition(r: &CRule) -> Option<&str> {
    r.when
        .iter()
        .find(|k| {
            !k.values.is_empty()
                && matches!(&k.attr, Attr::Claim(path) if path.len() == 1
                    && ["exp", "iat", "nbf"].contains(&path[0].as_str()))
        })
        .map(|k| k.field.as_str())
}

/// Every `from` alternative tests a peer-identity attribute with values (not only `not*`), so
/// no caller without a mesh identity matches the rule.
fn needs_identity(r: &CRule) -> bool {
    let identity = |a: &Attr| {
        matches!(
            a,
            Attr::SrcPrincipal
                | Attr::SrcNamespace
                | Attr::SrcServiceAccount
                | Attr::SrcTrustDomain
        )
    };
    match &r.from {
        None => false,
        Some(alts) => {
            !alts.is_empty()
                && alts.iter().all(|keys| {
                    keys.iter()
                        .any(|k| identity(&k.attr) && !k.values.is_empty())
                })
        }
    }
}

/// The literal values every alternative of a group gives `attr` (union), when each one does
/// with plain values (no wildcard); `None` when some alternative leaves it open.
fn literal_values(alts: Option<&Vec<Vec<KeyRule>>>, attr: &Attr) -> Option<Vec<String>> {
    let alts = alts?;
    let mut out = Vec::new();
    for keys in alts {
        let k = keys.iter().find(|k| &k.attr == attr)?;
        if k.values.is_empty() || k.values.iter().any(|v| v.contains('*') || v.contains('{')) {
            return None;
        }
        out.extend(k.values.iter().cloned());
    }
    (!out.is_empty()).then_some(out)
}

/// Values every alternative of a group excludes for `attr` (intersection of `not*` lists).
fn excluded_values(alts: Option<&Vec<Vec<KeyRule>>>, attr: &Attr) -> Option<Vec<String>> {
    let alts = alts?;
    let mut out: Option<Vec<String>> = None;
    for keys in alts {
        let k = keys.iter().find(|k| &k.attr == attr)?;
        let mine: Vec<String> = k
            .not_values
            .iter()
            .filter(|v| !v.contains('*'))
            .cloned()
            .collect();
        out = Some(match out {
            None => mine,
            Some(prev) => prev.into_iter().filter(|v| mine.contains(v)).collect(),
        });
    }
    out.filter(|v| !v.is_empty())
}

/// Whether an ALLOW rule and a DENY rule provably match no request in common, judged on
/// literal values of single attributes (methods, ports, paths, namespaces, principals).
fn disjoint(ap: &CPolicy, ar: &CRule, dp: &CPolicy, dr: &CRule) -> bool {
    let (Some(a), Some(d)) = (ap.src.rules.get(ar.index), dp.src.rules.get(dr.index)) else {
        return false;
    };
    let groups = [
        (Attr::Method, true),
        (Attr::Port, true),
        (Attr::Path, true),
        (Attr::SrcNamespace, false),
        (Attr::SrcPrincipal, false),
    ];
    for (attr, in_to) in groups {
        let (ag, dg) = if in_to {
            (a.to.as_ref(), d.to.as_ref())
        } else {
            (a.from.as_ref(), d.from.as_ref())
        };
        let Some(allowed) = literal_values(ag, &attr) else {
            continue;
        };
        if let Some(denied) = literal_values(dg, &attr) {
            if !allowed.iter().any(|v| denied.contains(v)) {
                return true;
            }
        }
        if attr == Attr::Path {
            // Literal allowed paths that none of the DENY rule's path patterns match.
            if let Some(alts) = dg {
                let pats: Option<Vec<crate::matcher::PathMatch>> = alts
                    .iter()
                    .map(|keys| {
                        let k = keys.iter().find(|k| k.attr == Attr::Path)?;
                        if k.values.is_empty() {
                            return None;
                        }
                        Some(
                            k.values
                                .iter()
                                .filter_map(|v| crate::matcher::PathMatch::new(v).ok())
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect::<Option<Vec<Vec<_>>>>()
                    .map(|v| v.into_iter().flatten().collect());
                if let Some(pats) = pats {
                    if !pats.is_empty()
                        && !allowed.iter().any(|p| pats.iter().any(|m| m.matches(p)))
                    {
                        return true;
                    }
                }
            }
        }
        if let Some(excluded) = excluded_values(dg, &attr) {
            if allowed.iter().all(|v| excluded.contains(v)) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Probe;
    use crate::load::Loaded;
    use crate::request::{HttpRequest, Identity, Request};
    use crate::{MeshConfig, PathNormalization, PolicySet};

    fn set(yaml: &str) -> PolicySet {
        let mut l = Loaded::default();
        l.add_text(yaml, "test.yaml");
        assert!(!l.has_errors(), "{:?}", l.diagnostics);
        PolicySet::compile(l.resources, MeshConfig::default()).expect("compile")
    }

    fn labels(s: &str) -> BTreeMap<String, String> {
        crate::workload::parse_label_list(s).expect("labels")
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-all, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-web, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}, rules: [{to: [{operation: {methods: [GET]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-all, namespace: a}
spec:
  rules:
  - from: [{source: {namespaces: [a]}}]
    to: [{operation: {methods: [POST], paths: [/orders]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: empty-selector, namespace: a}
spec: {selector: {matchLabels: {}}, action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-ops, namespace: a}
spec: {action: DENY, rules: [{from: [{source: {notNamespaces: [a]}}], to: [{operation: {paths: [/admin]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: two-labels, namespace: a}
spec: {selector: {matchLabels: {app: web, version: v2}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: a}
spec: {targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: g}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other, namespace: b}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: old, namespace: a, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: new, namespace: a, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {mtls: {mode: DISABLE}}
"#;

    /// policies-for's "applies" is exactly the set the evaluator considers.
    #[test]
    fn policies_for_agrees_with_the_evaluator_scope() {
        let s = set(POLICIES);
        for (ns, l) in [
            ("a", ""),
            ("a", "app=web"),
            ("a", "app=web,version=v2"),
            ("b", "app=web"),
            ("istio-system", ""),
            ("c", "app=db"),
        ] {
            let l = labels(l);
            let mut applied: Vec<String> = Vec::new();
            s.for_each_applicable(ns, &l, |p| {
                applied.push(format!("{}/{}", p.src.meta.namespace, p.src.meta.name))
            });
            applied.sort();
            let sel = s.policies_for(ns, &l, None);
            let mut shown: Vec<String> = sel
                .authorization
                .iter()
                .filter(|x| x.applies)
                .map(|x| format!("{}/{}", x.namespace, x.name))
                .collect();
            shown.sort();
            assert_eq!(shown, applied, "{ns} {l:?}");
            assert!(sel
                .authorization
                .iter()
                .all(|x| x.namespace == ns || x.namespace == "istio-system"));
        }
        let sel = s.policies_for("a", &labels("app=web"), None);
        let why = |n: &str| {
            sel.authorization
                .iter()
                .find(|x| x.name == n)
                .map(|x| (x.applies, x.why.clone()))
                .expect("listed")
        };
        assert!(why("empty-selector").0);
        assert!(why("empty-selector").1.starts_with("namespace-wide"));
        assert!(!why("two-labels").0);
        assert!(!why("gw").0);
        // The older namespace-level PeerAuthentication wins, as mtls_mode composes them.
        assert_eq!(sel.mtls_mode, crate::MtlsMode::Strict);
        let old = sel.peer.iter().find(|p| p.name == "old").expect("old");
        let new = sel.peer.iter().find(|p| p.name == "new").expect("new");
        assert!(old.applies && !new.applies, "{:?}", sel.peer);
        assert!(new.why.contains("an older one of the same level wins"));
    }

    #[test]
    fn who_can_rules_and_minus() {
        let s = set(POLICIES);
        let a = s.who_can("a", &labels("app=web"), &Probe::default());
        let allow: Vec<String> = a
            .allow
            .iter()
            .map(|x| format!("{} {}", x.rule.policy, x.rule.rule))
            .collect();
        // Envoy's order: RBAC policy names byte-wise (`ns[a]-...` before `ns[istio-system]-...`).
        assert_eq!(allow, ["a/ns-all 0", "istio-system/root-web 0"]);
        let deny: Vec<String> = a
            .deny
            .iter()
            .map(|x| format!("{} {}", x.policy, x.rule))
            .collect();
        assert_eq!(
            deny,
            [
                "istio-system/root-all 0",
                "a/deny-ops 0",
                "a/empty-selector 0"
            ]
        );
        let minus =
            |i: usize| -> Vec<String> { a.allow[i].minus.iter().map(|(p, _)| p.clone()).collect() };
        // POST /orders from namespace a: not /admin, not from outside a, not DELETE; the root
        // IP block denial may hit anything.
        assert_eq!(minus(0), ["istio-system/root-all"]);
        // GET vs DELETE: disjoint.
        assert_eq!(minus(1), ["istio-system/root-all", "a/deny-ops"]);

        // For a request the rules cannot match, they drop out with why.
        let a = s.who_can(
            "a",
            &labels("app=web"),
            &Probe {
                port: None,
                method: Some("PUT".into()),
                path: Some("/x/../orders".into()),
            },
        );
        assert_eq!(a.normalized_path.as_deref(), Some("/orders"));
        assert!(a.allow.is_empty(), "{:?}", a.allow);
        assert_eq!(a.allow_policies, 2);
        assert!(
            a.not_for_probe
                .iter()
                .any(|w| w.starts_with("a/ns-all rule 0 (ALLOW)")),
            "{:?}",
            a.not_for_probe
        );
    }

    #[test]
    fn who_can_says_when_no_request_authentication_can_set_a_request_principal() {
        let rule = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: a}
spec: {rules: [{from: [{source: {requestPrincipals: ["https://idp/*"]}}]}]}
"#;
        let ra = r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: idp, namespace: a}
spec: {jwtRules: [{issuer: https://idp, jwksUri: https://idp/jwks}]}
"#;
        let note = "none selects this workload";
        let without = set(rule).who_can("a", &labels(""), &Probe::default());
        assert!(
            without.notes.iter().any(|n| n.contains(note)),
            "{:?}",
            without.notes
        );
        let with = set(&format!("{rule}{ra}")).who_can("a", &labels(""), &Probe::default());
        assert!(
            !with.notes.iter().any(|n| n.contains(note)),
            "{:?}",
            with.notes
        );
    }

    /// Whatever the evaluator allows by an ALLOW rule, who-can lists for that request.
    #[test]
    fn who_can_lists_every_rule_the_evaluator_allows_by() {
        let s = set(POLICIES);
        for (ns, l, method, path, peer) in [
            ("a", "app=web", "GET", "/", "cluster.local/ns/x/sa/y"),
            ("a", "", "POST", "/orders", "cluster.local/ns/a/sa/y"),
            ("a", "app=web", "POST", "/orders", "cluster.local/ns/a/sa/y"),
            (
                "a",
                "app=web,version=v2",
                "PUT",
                "/x",
                "cluster.local/ns/a/sa/y",
            ),
        ] {
            let l = labels(l);
            let mut req = Request::default();
            req.destination.namespace = ns.into();
            req.destination.labels = l.clone();
            req.http = Some(HttpRequest::new(
                method,
                "h",
                path,
                Vec::new(),
                PathNormalization::Base,
            ));
            let id = Identity::default().with_peer(peer);
            let v = s.evaluate(&req, &id);
            let a = s.who_can(
                ns,
                &l,
                &Probe {
                    port: None,
                    method: Some(method.into()),
                    path: Some(path.into()),
                },
            );
            if let crate::Reason::Allowed { at } = v.reason {
                let name = format!("{}/{}", at.policy.meta.namespace, at.policy.meta.name);
                assert!(
                    a.allow
                        .iter()
                        .any(|x| x.rule.policy == name && x.rule.rule == at.rule),
                    "{ns} {l:?} {method} {path}: allowed by {name} rule {}",
                    at.rule
                );
            }
        }
    }
}
