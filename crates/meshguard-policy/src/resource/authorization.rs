//! `AuthorizationPolicy`: the action, its rules (`from` sources, `to` operations, `when`
//! conditions) and the value checks istiod's validation applies to them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::attr::{condition_attr, field_attr, Attr};
use super::{parse_selector, parse_target_refs};
use crate::diag::{suggest, Ctx};
use crate::fields::{check_fields, get_map, get_seq, get_str, get_str_list, join};
use crate::meta::{Meta, Origin};
use crate::yaml::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// One field of a source/operation, or one `when` condition: values are ORed, `notValues`
/// negate an OR, and the two parts are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRule {
    pub attr: Attr,
    /// The name the user wrote (`principals`, `request.headers[x-token]`, ...), for messages.
    pub field: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// One rule: (any `from`) AND (any `to`) AND (every `when`). `None` means the part is absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub from: Option<Vec<Vec<KeyRule>>>,
    pub to: Option<Vec<Vec<KeyRule>>>,
    pub when: Vec<KeyRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub origin: Origin,
    /// `None`: no selector (namespace or mesh wide). An empty map selects every workload too.
    pub selector: Option<BTreeMap<String, String>>,
    /// Policies with `targetRef(s)` attach to gateways/waypoints and never to sidecar workloads.
    pub has_target_refs: bool,
    pub action: Action,
    pub provider: Option<String>,
    /// Empty when `rules` is absent or empty: the policy then matches nothing.
    pub rules: Vec<Rule>,
    pub dry_run: bool,
    /// `meshguard.io/enforce-percent`: enforced for this share of callers (by a stable hash of
    /// the caller's identity), in dry-run for the rest. `None`: enforced for everyone.
    pub enforce_percent: Option<u8>,
}

/// Go's `strconv.ParseBool`, which istiod uses for `istio.io/dry-run`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Gradual enforcement (meshguard's own): `"0"` to `"100"`, the share of callers a new ALLOW or
/// DENY policy is enforced for; the others see it in dry-run.
pub const ENFORCE_PERCENT_ANNOTATION: &str = "meshguard.io/enforce-percent";

const AUTHZ_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "rules",
    "action",
    "provider",
];
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

pub(super) fn parse_authz(
    ctx: &mut Ctx<'_>,
    spec: &Node,
    path: &str,
    meta: Meta,
    origin: Origin,
) -> Option<AuthorizationPolicy> {
    check_fields(ctx, spec, path, AUTHZ_FIELDS);
    let selector = parse_selector(ctx, spec, path);
    let has_target_refs = parse_target_refs(ctx, spec, path);
    let action = match get_str(ctx, spec, "action", path) {
        None => Action::Allow,
        Some((a, line, col)) => match a.as_str() {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => Action::Custom,
            other => {
                let hint = suggest(other, &["ALLOW", "DENY", "AUDIT", "CUSTOM"])
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                ctx.err_at(
                    line,
                    col,
                    &join(path, "action"),
                    format!("unknown action `{other}`{hint}: use ALLOW, DENY, AUDIT or CUSTOM"),
                );
                Action::Allow
            }
        },
    };
    let mut provider = None;
    if let Some(p) = get_map(ctx, spec, "provider", path) {
        let pp = join(path, "provider");
        check_fields(ctx, p, &pp, &["name"]);
        match get_str(ctx, p, "name", &pp) {
            Some((n, _, _)) if !n.is_empty() => provider = Some(n),
            _ => ctx.err(p, &join(&pp, "name"), "provider needs a non-empty `name`"),
        }
    }
    match action {
        Action::Custom if provider.is_none() => {
            ctx.err(spec, &join(path, "provider"), "must specify a provider for CUSTOM action (provider.name, naming a meshConfig.extensionProviders entry)");
        }
        Action::Custom => {}
        _ if spec.get("provider").is_some_and(|p| !p.is_null()) => {
            ctx.err(
                spec.get("provider").unwrap_or(spec),
                &join(path, "provider"),
                format!(
                    "provider must not be set for {} action: it is only used with CUSTOM",
                    action.as_str()
                ),
            );
        }
        _ => {}
    }
    let mut rules = Vec::new();
    let rules_node = get_seq(ctx, spec, "rules", path);
    if let Some(items) = rules_node {
        for (i, r) in items.iter().enumerate() {
            let rp = format!("{}[{i}]", join(path, "rules"));
            if let Some(rule) = parse_rule(ctx, r, &rp, action) {
                rules.push(rule);
            }
        }
    }
    if action == Action::Deny {
        for (i, r) in rules.iter().enumerate() {
            let keys = r
                .from
                .iter()
                .chain(r.to.iter())
                .flatten()
                .flatten()
                .chain(r.when.iter());
            let (mut http, mut tcp) = (false, false);
            for k in keys {
                if k.attr.http_only() {
                    http = true;
                } else {
                    tcp = true;
                }
            }
            if http && !tcp {
                ctx.warn_at(origin.line, 1, &format!("{}[{i}]", join(path, "rules")), "this DENY rule uses only HTTP attributes, so on plain TCP connections it denies ALL traffic to the selected workloads (the HTTP conditions are dropped there); add `ports` to limit it");
            }
        }
    }
    if rules_node.is_none_or(<[Node]>::is_empty) {
        match action {
            Action::Deny | Action::Custom => ctx.err(
                spec,
                &join(path, "rules"),
                format!("{} action without `rules` is meaningless as it will never be triggered; add an empty rule `{{}}` if you want it to be triggered for every request", action.as_str()),
            ),
            Action::Audit => ctx.warn(spec, &join(path, "rules"), "AUDIT action without `rules` never matches"),
            // `spec: {}` is Istio's documented allow-nothing idiom: said on purpose, not a slip.
            Action::Allow if spec.as_map().is_some_and(<[_]>::is_empty) => {}
            Action::Allow => ctx.warn(spec, &join(path, "rules"), "ALLOW policy without rules allows nothing: every request to the selected workloads is denied (Istio's allow-nothing policy; write `spec: {}` to say so on purpose)"),
        }
    }
    let dry_run = match meta.annotations.get(DRY_RUN_ANNOTATION) {
        None => false,
        Some(v) if matches!(action, Action::Audit | Action::Custom) => {
            let _ = v;
            ctx.err_at(origin.line, 1, "metadata.annotations[istio.io/dry-run]", format!("the annotation istio.io/dry-run currently only supports action ALLOW/DENY, found action {}", action.as_str()));
            false
        }
        Some(v) => match parse_go_bool(v) {
            Some(b) => b,
            None => {
                ctx.err_at(origin.line, 1, "metadata.annotations[istio.io/dry-run]", format!("invalid value `{v}`: use \"true\" or \"false\" (Go strconv.ParseBool: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False). istiod's webhook rejects it; had it got through, istiod would log an error and ENFORCE the policy"));
                false
            }
        },
    };
    let field = "metadata.annotations[meshguard.io/enforce-percent]";
    let enforce_percent = match meta.annotations.get(ENFORCE_PERCENT_ANNOTATION) {
        None => None,
        Some(_) if matches!(action, Action::Audit | Action::Custom) => {
            ctx.err_at(
                origin.line,
                1,
                field,
                format!(
                    "gradual enforcement applies to ALLOW and DENY policies only, found action {}",
                    action.as_str()
                ),
            );
            None
        }
        Some(v) => match v.trim().trim_end_matches('%').parse::<u8>() {
            Ok(n) if n <= 100 => {
                if dry_run {
                    ctx.warn_at(origin.line, 1, field, "istio.io/dry-run is true, so the policy is in dry-run for every caller and the percentage does nothing");
                }
                Some(n)
            }
            _ => {
                ctx.err_at(origin.line, 1, field, format!("invalid value `{v}`: a whole number from \"0\" to \"100\" (the share of callers the policy is enforced for)"));
                None
            }
        },
    };
    Some(AuthorizationPolicy {
        enforce_percent,
        meta,
        origin,
        selector,
        has_target_refs,
        action,
        provider,
        rules,
        dry_run,
    })
}

fn parse_rule(ctx: &mut Ctx<'_>, r: &Node, path: &str, action: Action) -> Option<Rule> {
    if r.is_null() {
        ctx.err(
            r,
            path,
            "`rule` must not be nil; write `{}` for a rule that matches every request",
        );
        return None;
    }
    if r.as_map().is_none() {
        ctx.err(
            r,
            path,
            format!(
                "a rule must be a mapping (from, to, when), found {}",
                r.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, r, path, RULE_FIELDS);
    let mut rule = Rule::default();
    if let Some(items) = get_seq(ctx, r, "from", path) {
        let fp = join(path, "from");
        if items.is_empty() {
            ctx.err(
                r.get("from").unwrap_or(r),
                &fp,
                "`from` must not be empty; remove it to match any source",
            );
        }
        let mut sources = Vec::new();
        for (i, f) in items.iter().enumerate() {
            let p = format!("{fp}[{i}]");
            if f.as_map().is_none() {
                ctx.err(
                    f,
                    &p,
                    format!("must be a mapping with `source`, found {}", f.type_name()),
                );
                continue;
            }
            check_fields(ctx, f, &p, &["source"]);
            let sp = join(&p, "source");
            let Some(src) = get_map(ctx, f, "source", &p) else {
                ctx.err(f, &sp, "`from.source` must not be nil");
                continue;
            };
            check_fields(ctx, src, &sp, SOURCE_FIELDS);
            let keys = parse_fields(ctx, src, &sp, SOURCE_FIELDS, action);
            if keys.is_empty() {
                ctx.err(src, &sp, "`from.source` must not be empty");
            }
            if keys.iter().any(|k| k.attr == Attr::SrcServiceAccount)
                && keys
                    .iter()
                    .any(|k| matches!(k.attr, Attr::SrcPrincipal | Attr::SrcNamespace))
            {
                ctx.err(src, &sp, "serviceAccounts cannot be combined with principals or namespaces in the same source");
            }
            sources.push(keys);
        }
        rule.from = Some(sources);
    }
    if let Some(items) = get_seq(ctx, r, "to", path) {
        let tp = join(path, "to");
        if items.is_empty() {
            ctx.err(
                r.get("to").unwrap_or(r),
                &tp,
                "`to` must not be empty; remove it to match any operation",
            );
        }
        let mut ops = Vec::new();
        for (i, t) in items.iter().enumerate() {
            let p = format!("{tp}[{i}]");
            if t.as_map().is_none() {
                ctx.err(
                    t,
                    &p,
                    format!(
                        "must be a mapping with `operation`, found {}",
                        t.type_name()
                    ),
                );
                continue;
            }
            check_fields(ctx, t, &p, &["operation"]);
            let op_path = join(&p, "operation");
            let Some(op) = get_map(ctx, t, "operation", &p) else {
                ctx.err(t, &op_path, "`to.operation` must not be nil");
                continue;
            };
            check_fields(ctx, op, &op_path, OPERATION_FIELDS);
            let keys = parse_fields(ctx, op, &op_path, OPERATION_FIELDS, action);
            if keys.is_empty() {
                ctx.err(op, &op_path, "`to.operation` must not be empty");
            }
            ops.push(keys);
        }
        rule.to = Some(ops);
    }
    if let Some(items) = get_seq(ctx, r, "when", path) {
        let wp = join(path, "when");
        for (i, c) in items.iter().enumerate() {
            let p = format!("{wp}[{i}]");
            if let Some(k) = parse_condition(ctx, c, &p, action) {
                rule.when.push(k);
            }
        }
    }
    Some(rule)
}

/// Parses the list fields of a source or operation into key rules, pairing `x` with `notX`.
fn parse_fields(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    fields: &[&str],
    action: Action,
) -> Vec<KeyRule> {
    let mut out: Vec<KeyRule> = Vec::new();
    for f in fields {
        let Some(values) = get_str_list(ctx, node, f, path) else {
            continue;
        };
        let fp = join(path, f);
        let (attr, neg) = field_attr(f);
        for (i, (v, line, col)) in values.iter().enumerate() {
            validate_value(ctx, &attr, v, *line, *col, &format!("{fp}[{i}]"));
        }
        if values.is_empty() {
            // An explicitly empty list is the same as an absent field in proto3.
            continue;
        }
        if action == Action::Custom && attr.is_authn() {
            let n = node.get(f).unwrap_or(node);
            ctx.err(n, &fp, format!("{f} is not supported with CUSTOM action: ext_authz providers run before authentication fields are available"));
        }
        let base = if neg { &f[3..] } else { f };
        let base = base[..1].to_ascii_lowercase() + &base[1..];
        let strings: Vec<String> = values.into_iter().map(|(v, _, _)| v).collect();
        match out.iter_mut().find(|k| k.attr == attr) {
            Some(k) if neg => k.not_values = strings,
            Some(k) => k.values = strings,
            None => out.push(KeyRule {
                attr,
                field: base,
                values: if neg { Vec::new() } else { strings.clone() },
                not_values: if neg { strings } else { Vec::new() },
            }),
        }
    }
    out
}

/// Checks one value of a field or condition as istiod's validation does.
fn validate_value(ctx: &mut Ctx<'_>, attr: &Attr, v: &str, line: u32, col: u32, field: &str) {
    if v.is_empty() {
        ctx.err_at(line, col, field, "empty value is not allowed");
        return;
    }
    match attr {
        Attr::SrcIp | Attr::RemoteIp | Attr::DstIp => {
            if parse_ip_block(v).is_none() {
                ctx.err_at(line, col, field, format!("`{v}` is not a valid IP address or CIDR block (e.g. 10.0.0.1, 10.0.0.0/16, 2001:db8::/32)"));
            }
        }
        Attr::Port => {
            if v.parse::<u16>().is_err() {
                ctx.err_at(line, col, field, format!("`{v}` is not a valid port: use an integer 0-65535 (ports take no wildcards or ranges)"));
            }
        }
        Attr::SrcServiceAccount => {
            if v.contains('*') {
                ctx.err_at(
                    line,
                    col,
                    field,
                    format!("wildcard not allowed in serviceAccounts, found `{v}`"),
                );
            } else if v.len() > 320 {
                ctx.err_at(line, col, field, "value cannot exceed 320 characters");
            } else if v.split('/').count() > 2 || v.starts_with('/') || v.ends_with('/') {
                ctx.err_at(line, col, field, format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found `{v}`"));
            }
        }
        Attr::SrcTrustDomain => {
            if v.is_empty() || v.contains('/') {
                ctx.err_at(line, col, field, format!("`{v}` is not a trust domain (a name such as `cluster.local`, `*` allowed, no `/`)"));
            }
        }
        Attr::SrcNamespace => {
            if let Err(e) = regex::Regex::new(&crate::matcher::namespace_regex(v)) {
                ctx.err_at(line, col, field, format!("`{v}` does not compile: Istio turns namespaces into the regex `.*/ns/<value>/.*` (with `*` as `.*`): {e}"));
            }
        }
        Attr::Path => {
            if let Err(e) = crate::matcher::validate_path_template(v) {
                ctx.err_at(line, col, field, e.to_string());
            } else if !crate::matcher::is_path_template(v) && has_inner_wildcard(v) {
                ctx.warn_at(line, col, field, format!("`{v}` has a `*` in the middle: Istio only supports `*` at the start or end (or `{{*}}`/`{{**}}` path templates), so this `*` is a literal character and will almost never match"));
            }
        }
        _ => {
            if has_inner_wildcard(v) {
                ctx.warn_at(line, col, field, format!("`{v}` has a `*` in the middle: Istio only supports `*` at the start or end, so this `*` is matched literally"));
            }
        }
    }
}

fn has_inner_wildcard(v: &str) -> bool {
    v.len() > 2 && v[1..v.len() - 1].contains('*')
}

/// Parses an IP address or CIDR block as Istio accepts it (a bare IP is a /32 or /128).
pub fn parse_ip_block(v: &str) -> Option<ipnet::IpNet> {
    if let Some((addr, len)) = v.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        ipnet::IpNet::new(addr, len).ok()
    } else {
        let addr: IpAddr = v.parse().ok()?;
        Some(ipnet::IpNet::from(addr))
    }
}

fn parse_condition(ctx: &mut Ctx<'_>, c: &Node, path: &str, action: Action) -> Option<KeyRule> {
    if c.as_map().is_none() {
        ctx.err(
            c,
            path,
            format!(
                "a condition must be a mapping (key, values, notValues), found {}",
                c.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, c, path, &["key", "values", "notValues"]);
    let Some((key, kl, kc)) = get_str(ctx, c, "key", path) else {
        ctx.err(c, &join(path, "key"), "`key` must not be empty");
        return None;
    };
    let kp = join(path, "key");
    let values = get_str_list(ctx, c, "values", path).unwrap_or_default();
    let not_values = get_str_list(ctx, c, "notValues", path).unwrap_or_default();
    let attr = match condition_attr(&key) {
        Ok(a) => a,
        Err(e) => {
            ctx.err_at(kl, kc, &kp, e.to_string());
            return None;
        }
    };
    if values.is_empty() && not_values.is_empty() {
        ctx.err(
            c,
            path,
            format!("at least one of `values` or `notValues` must be set for key `{key}`"),
        );
        return None;
    }
    if action == Action::Custom && attr.is_authn() {
        ctx.err_at(kl, kc, &kp, format!("`{key}` is not supported with CUSTOM action: ext_authz providers run before authentication fields are available"));
    }
    for (list, name) in [(&values, "values"), (&not_values, "notValues")] {
        for (i, (v, line, col)) in list.iter().enumerate() {
            validate_value(
                ctx,
                &attr,
                v,
                *line,
                *col,
                &format!("{}[{i}]", join(path, name)),
            );
        }
    }
    if matches!(attr, Attr::Claim(ref names) if names.len() == 1 && ["exp", "iat", "nbf", "auth_time"].contains(&names[0].as_str()))
    {
        ctx.warn_at(kl, kc, &kp, format!("`{key}` is a numeric claim: Istio (Envoy RBAC) matches only string and string-list claims, so this condition never matches (istio/istio#39703){}", if values.is_empty() { "" } else if action == Action::Allow { "; this rule can never allow a request" } else { "; this rule can never match" }));
    }
    if let Attr::Broken(_) = attr {
        ctx.warn_at(
            kl,
            kc,
            &kp,
            format!(
                "istiod accepts `{key}` but cannot generate a matcher for it: {}",
                if action == Action::Allow {
                    "the whole rule is skipped (it never allows)"
                } else {
                    "the condition is dropped, so the rule matches more widely"
                }
            ),
        );
    }
    if let Attr::EnvoyMetadata(_) = attr {
        ctx.warn_at(kl, kc, &kp, format!("`{key}` reads Envoy filter metadata, which meshguard does not have: the condition never matches (its notValues always do)"));
    }
    Some(KeyRule {
        attr,
        field: key,
        values: values.into_iter().map(|(v, _, _)| v).collect(),
        not_values: not_values.into_iter().map(|(v, _, _)| v).collect(),
    })
}
