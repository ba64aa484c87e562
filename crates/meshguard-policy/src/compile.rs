//! Compiles validated resources into an indexed [`PolicySet`] and decides requests against it.
//!
//! Policies are indexed by namespace and by one label of their selector, so a decision looks at
//! the handful of policies that can apply to the destination workload instead of scanning all of
//! them. Evaluation borrows from the set and the request and allocates nothing on the common path.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use regex::Regex;

use crate::matcher::{self, PathMatch, RequestPrincipalMatch, StrMatch};
use crate::mesh::MeshConfig;
use crate::request::{Identity, JwtIdentity, Request};
use crate::resource::{
    Action, Attr, AuthorizationPolicy, KeyRule, MtlsMode, PeerAuthentication,
    RequestAuthentication, Resource, Rule,
};
use crate::verdict::{PolicyRef, Reason, Resumed, Shadow, Verdict};

/// A compile failure (a value that validation should have refused).
#[derive(Debug, thiserror::Error)]
#[error("{policy}: {field}: {message}")]
pub struct CompileError {
    pub policy: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone)]
enum M {
    Str(StrMatch),
    StrIgnoreCase(StrMatch),
    /// Envoy `present_match` (headers, methods, hosts with `*`).
    Present,
    Regex(Regex),
    /// A substring test that is equivalent to the regex Istio generates (namespaces without
    /// wildcards or regex syntax: `.*/ns/<ns>/.*` is "contains `/ns/<ns>/`").
    Contains(String),
    Path(PathMatch),
    Ip(ipnet::IpNet),
    Port(u16),
    RequestPrincipal(RequestPrincipalMatch),
}

#[derive(Debug, Clone)]
struct CKey {
    /// The field or `when` key as written, for explanations.
    field: String,
    attr: Attr,
    values: Vec<M>,
    not_values: Vec<M>,
}

#[derive(Debug, Clone)]
struct CRule {
    /// Position in the sorted RBAC policy names (Envoy reports the first match in that order).
    rank: u32,
    index: usize,
    from: Option<Vec<Vec<CKey>>>,
    to: Option<Vec<Vec<CKey>>>,
    when: Vec<CKey>,
    /// An ALLOW rule that uses an HTTP-only field is dropped from TCP filter chains.
    has_http_only: bool,
    /// An ALLOW rule with a key istiod cannot generate is dropped everywhere.
    has_broken: bool,
}

#[derive(Debug)]
struct CPolicy {
    src: AuthorizationPolicy,
    rules: Vec<CRule>,
}

#[derive(Debug, Default)]
struct ScopeIndex {
    unselected: Vec<u32>,
    /// label key -> label value -> policies whose selector's first label is that pair.
    by_label: HashMap<String, HashMap<String, Vec<u32>>>,
}

impl ScopeIndex {
    fn add(&mut self, id: u32, selector: Option<&BTreeMap<String, String>>) {
        match selector.and_then(|s| s.iter().next()) {
            None => self.unselected.push(id),
            Some((k, v)) => self
                .by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push(id),
        }
    }
}

fn selector_matches(
    sel: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A compiled, indexed and immutable set of policies.
#[derive(Debug)]
pub struct PolicySet {
    mesh: MeshConfig,
    resources: Vec<Resource>,
    authz: Vec<CPolicy>,
    authz_index: HashMap<String, ScopeIndex>,
    peer: Vec<PeerAuthentication>,
    request_authn: Vec<RequestAuthentication>,
    /// issuer -> extra claim names split on spaces (besides `scope` and `permission`).
    space_delimited: HashMap<String, Vec<String>>,
    auth_configs: Vec<crate::extauth::AuthConfig>,
    secrets: Vec<crate::extauth::Secret>,
    config_maps: Vec<crate::extauth::ConfigMap>,
}

fn rbac_name(p: &AuthorizationPolicy, rule: usize) -> String {
    let prefix = match (&p.action, &p.provider) {
        (Action::Custom, Some(pr)) => format!("istio-ext-authz-{pr}-"),
        _ => String::new(),
    };
    format!(
        "{prefix}ns[{}]-policy[{}]-rule[{rule}]",
        p.meta.namespace, p.meta.name
    )
}

impl PolicySet {
    /// Compiles validated resources (see [`crate::load`] for loading and validation).
    pub fn compile(
        resources: Vec<Resource>,
        mut mesh: MeshConfig,
    ) -> Result<PolicySet, CompileError> {
        // Every AuthConfig is an extension provider CUSTOM policies may name, as
        // `namespace.name` or `name`.
        for r in &resources {
            if let Resource::AuthConfig(c) = r {
                for id in c.ids() {
                    if !mesh.extension_providers.contains(&id) {
                        mesh.extension_providers.push(id);
                    }
                }
            }
        }
        let mut authz_src = Vec::new();
        let mut peer = Vec::new();
        let mut request_authn = Vec::new();
        let mut auth_configs = Vec::new();
        let mut secrets = Vec::new();
        let mut config_maps = Vec::new();
        for r in &resources {
            match r {
                Resource::AuthorizationPolicy(p) => authz_src.push(p.clone()),
                Resource::PeerAuthentication(p) => peer.push(p.clone()),
                Resource::RequestAuthentication(p) => request_authn.push(p.clone()),
                Resource::AuthConfig(c) => auth_configs.push(c.clone()),
                Resource::Secret(x) => secrets.push(x.clone()),
                Resource::ConfigMap(x) => config_maps.push(x.clone()),
            }
        }
        // Oldest first, ties by name: the order istiod composes PeerAuthentication in.
        peer.sort_by(|a, b| {
            let ta = a.meta.creation_timestamp.as_deref().unwrap_or("");
            let tb = b.meta.creation_timestamp.as_deref().unwrap_or("");
            (ta, &a.meta.name, &a.meta.namespace).cmp(&(tb, &b.meta.name, &b.meta.namespace))
        });

        // Ranks: byte-wise order of the RBAC policy names, except that root-namespace DENY
        // policies come first (istiod puts them in their own RBAC filter ahead of the others).
        let mut names: Vec<(bool, String, usize, usize)> = Vec::new();
        for (pi, p) in authz_src.iter().enumerate() {
            let later = !(p.action == Action::Deny && p.meta.namespace == mesh.root_namespace);
            for ri in 0..p.rules.len().max(1) {
                names.push((later, rbac_name(p, ri), pi, ri));
            }
        }
        names.sort();
        let mut rank_of: HashMap<(usize, usize), u32> = HashMap::new();
        for (rank, (_, _, pi, ri)) in names.iter().enumerate() {
            rank_of.insert((*pi, *ri), u32::try_from(rank).unwrap_or(u32::MAX));
        }

        let mut authz = Vec::with_capacity(authz_src.len());
        let mut authz_index: HashMap<String, ScopeIndex> = HashMap::new();
        for (pi, p) in authz_src.into_iter().enumerate() {
            let mut rules = Vec::with_capacity(p.rules.len());
            for (ri, r) in p.rules.iter().enumerate() {
                let rank = rank_of.get(&(pi, ri)).copied().unwrap_or(u32::MAX);
                rules.push(compile_rule(&p, r, ri, rank, &mesh)?);
            }
            let id = u32::try_from(authz.len()).unwrap_or(u32::MAX);
            if !p.has_target_refs {
                authz_index
                    .entry(p.meta.namespace.clone())
                    .or_default()
                    .add(id, p.selector.as_ref());
            }
            authz.push(CPolicy { src: p, rules });
        }

        let mut space_delimited: HashMap<String, Vec<String>> = HashMap::new();
        for ra in &request_authn {
            for r in &ra.jwt_rules {
                let e = space_delimited.entry(r.issuer.clone()).or_default();
                for c in &r.space_delimited_claims {
                    if !e.contains(c) {
                        e.push(c.clone());
                    }
                }
            }
        }

        Ok(PolicySet {
            mesh,
            resources,
            authz,
            authz_index,
            peer,
            request_authn,
            space_delimited,
            auth_configs,
            secrets,
            config_maps,
        })
    }

    /// Gloo AuthConfigs loaded with the policies.
    pub fn auth_configs(&self) -> &[crate::extauth::AuthConfig] {
        &self.auth_configs
    }

    /// The AuthConfig named `id` (`namespace.name`, or a unique `name`).
    pub fn auth_config(&self, id: &str) -> Option<&crate::extauth::AuthConfig> {
        crate::extauth::find(&self.auth_configs, id)
    }

    pub fn secrets(&self) -> &[crate::extauth::Secret] {
        &self.secrets
    }

    pub fn config_maps(&self) -> &[crate::extauth::ConfigMap] {
        &self.config_maps
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// RequestAuthentication resources that apply to a workload (root namespace, then its own).
    pub fn request_authentications<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a RequestAuthentication> + 'a {
        let root = self.mesh.root_namespace.as_str();
        self.request_authn.iter().filter(move |ra| {
            !ra.has_target_refs
                && (ra.meta.namespace == namespace || ra.meta.namespace == root)
                && selector_matches(ra.selector.as_ref(), labels)
        })
    }

    /// The effective PeerAuthentication mode for a workload and port
    /// (istio `ComposePeerAuthentication`): workload > namespace > mesh > PERMISSIVE.
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: Option<u16>,
    ) -> MtlsMode {
        let root = self.mesh.root_namespace.as_str();
        let empty_sel = |p: &PeerAuthentication| p.selector.as_ref().is_none_or(BTreeMap::is_empty);
        let mut mesh_p = None;
        let mut ns_p = None;
        let mut wl_p = None;
        // `self.peer` is sorted oldest first, so the first hit per level wins.
        for p in &self.peer {
            if empty_sel(p) {
                if p.meta.namespace == root {
                    mesh_p.get_or_insert(p);
                } else if p.meta.namespace == namespace {
                    ns_p.get_or_insert(p);
                }
            } else if p.meta.namespace == namespace
                && p.meta.namespace != root
                && selector_matches(p.selector.as_ref(), labels)
            {
                wl_p.get_or_insert(p);
            }
        }
        let mut mode = MtlsMode::Permissive;
        for p in [mesh_p, ns_p, wl_p].into_iter().flatten() {
            if p.mode != MtlsMode::Unset {
                mode = p.mode;
            }
        }
        if let (Some(w), Some(port)) = (wl_p, port) {
            if let Some(m) = w.port_level.get(&u32::from(port)) {
                if *m != MtlsMode::Unset {
                    return *m;
                }
            }
        }
        mode
    }

    fn for_each_applicable<'s>(
        &'s self,
        ns: &str,
        labels: &BTreeMap<String, String>,
        mut f: impl FnMut(&'s CPolicy),
    ) {
        let root = self.mesh.root_namespace.as_str();
        let scopes = [
            self.authz_index.get(root),
            if ns == root {
                None
            } else {
                self.authz_index.get(ns)
            },
        ];
        for scope in scopes.into_iter().flatten() {
            for &id in &scope.unselected {
                f(&self.authz[id as usize]);
            }
            for (k, v) in labels {
                if let Some(ids) = scope.by_label.get(k).and_then(|m| m.get(v)) {
                    for &id in ids {
                        let p = &self.authz[id as usize];
                        if selector_matches(p.src.selector.as_ref(), labels) {
                            f(p);
                        }
                    }
                }
            }
        }
    }

    /// Whether the request is refused before any filter runs: plaintext on a STRICT mTLS port,
    /// or a path or method Envoy's codec answers 400 to. Cheap (no policy is evaluated): what
    /// request authentication checks before it looks at tokens.
    pub fn refused_before_filters(&self, req: &Request, id: &Identity) -> bool {
        self.refusal(req, id).is_some()
    }

    /// The verdict for a request refused before any filter runs (see
    /// [`PolicySet::refused_before_filters`]), without evaluating a policy; `None` when the
    /// request goes on to authentication and authorization.
    pub fn refusal<'a>(&'a self, req: &Request, id: &Identity) -> Option<Verdict<'a>> {
        if id.peer.is_some() && req.http.as_ref().is_none_or(|h| h.rejection.is_none()) {
            return None;
        }
        let dst = &req.destination;
        let mtls_mode = self.mtls_mode(&dst.namespace, &dst.labels, dst.port);
        let (status, reason) = refusal(mtls_mode, req, id)?;
        Some(Verdict {
            allowed: false,
            status,
            reason,
            mtls_mode,
            audit: Vec::new(),
            dry_run: None,
            if_custom_allows: None,
        })
    }

    /// Decides a request: CUSTOM, then DENY, then ALLOW; AUDIT and dry-run policies are
    /// evaluated and reported but never change the decision.
    pub fn evaluate<'a>(&'a self, req: &'a Request, id: &'a Identity) -> Verdict<'a> {
        let dst = &req.destination;
        let mtls_mode = self.mtls_mode(&dst.namespace, &dst.labels, dst.port);
        let mut decision = Verdict {
            allowed: false,
            status: 403,
            reason: Reason::NoAllowMatched,
            mtls_mode,
            audit: Vec::new(),
            dry_run: None,
            if_custom_allows: None,
        };
        if let Some((status, reason)) = refusal(mtls_mode, req, id) {
            decision.status = status;
            decision.reason = reason;
            return decision;
        }
        // Under DISABLE the server side terminates no mTLS, so no peer identity is available.
        let peer = if mtls_mode == MtlsMode::Disable {
            None
        } else {
            id.peer.as_deref()
        };
        let ctx = Ctx {
            req,
            peer,
            jwt: id.jwt.as_deref(),
            set: self,
        };

        let mut custom: Option<(u32, PolicyRef<'a>)> = None;
        let mut first_provider: Option<&str> = None;
        let mut many_providers = false;
        let mut deny: Option<(u32, PolicyRef<'a>)> = None;
        let mut allow: Option<(u32, PolicyRef<'a>)> = None;
        let mut allow_policies = 0usize;
        let mut shadow_deny: Option<(u32, PolicyRef<'a>)> = None;
        let mut shadow_allow: Option<(u32, PolicyRef<'a>)> = None;
        let mut shadow_allow_policies = 0usize;
        let mut shadow_policies = 0usize;
        let mut audit: Option<Vec<(u32, PolicyRef<'a>)>> = None;

        let keep_first = |slot: &mut Option<(u32, PolicyRef<'a>)>, m: (u32, PolicyRef<'a>)| {
            if slot.as_ref().is_none_or(|(r, _)| m.0 < *r) {
                *slot = Some(m);
            }
        };

        let tcp = req.http.is_none();
        self.for_each_applicable(&dst.namespace, &dst.labels, |p| {
            if p.src.action == Action::Custom && tcp {
                // istiod's buildTCP leaves out CUSTOM policies whose provider is HTTP.
                let provider = p.src.provider.as_deref().unwrap_or("");
                if self.mesh.http_providers.iter().any(|h| h == provider) {
                    return;
                }
            }
            if p.src.action == Action::Custom {
                if let Some(pr) = p.src.provider.as_deref() {
                    match first_provider {
                        None => first_provider = Some(pr),
                        Some(f) if f != pr => many_providers = true,
                        _ => {}
                    }
                }
            }
            if p.src.dry_run {
                shadow_policies += 1;
            }
            if p.src.action == Action::Allow {
                if p.src.dry_run {
                    shadow_allow_policies += 1;
                } else {
                    allow_policies += 1;
                }
            }
            let Some((rank, rule)) = ctx.first_match(p) else {
                return;
            };
            let m = (
                rank,
                PolicyRef {
                    policy: &p.src,
                    rule,
                },
            );
            match (p.src.action, p.src.dry_run) {
                (Action::Custom, _) => keep_first(&mut custom, m),
                (Action::Deny, false) => keep_first(&mut deny, m),
                (Action::Deny, true) => keep_first(&mut shadow_deny, m),
                (Action::Allow, false) => keep_first(&mut allow, m),
                (Action::Allow, true) => keep_first(&mut shadow_allow, m),
                (Action::Audit, _) => audit.get_or_insert_with(Vec::new).push(m),
            }
        });

        if let Some(mut a) = audit {
            a.sort_by_key(|(r, _)| *r);
            decision.audit = a.into_iter().map(|(_, p)| p).collect();
        }
        if shadow_policies > 0 {
            decision.dry_run = Some(match (shadow_deny, shadow_allow) {
                (Some((_, d)), _) => Shadow {
                    allowed: false,
                    policy: Some(d),
                },
                (None, Some((_, a))) => Shadow {
                    allowed: true,
                    policy: Some(a),
                },
                (None, None) => Shadow {
                    allowed: shadow_allow_policies == 0,
                    policy: None,
                },
            });
        }

        // DENY, then ALLOW: what decides when no CUSTOM policy matched or its provider allowed.
        let after_custom = if let Some((_, at)) = deny {
            let unknown = self.compiled_rule(at).and_then(|r| ctx.unknown_attr_in(r));
            Resumed {
                allowed: false,
                status: 403,
                reason: Reason::Denied { at, unknown },
            }
        } else if allow_policies == 0 {
            Resumed {
                allowed: true,
                status: 200,
                reason: Reason::NoAllowPolicies,
            }
        } else if let Some((_, at)) = allow {
            Resumed {
                allowed: true,
                status: 200,
                reason: Reason::Allowed { at },
            }
        } else {
            Resumed {
                allowed: false,
                status: 403,
                reason: Reason::NoAllowMatched,
            }
        };
        if let Some((_, at)) = custom {
            let provider = at.policy.provider.as_deref().unwrap_or("");
            if many_providers {
                decision.reason = Reason::CustomMultipleProviders { at };
                return decision;
            }
            if !self.mesh.extension_providers.iter().any(|p| p == provider) {
                decision.reason = Reason::CustomUnknownProvider { at };
                return decision;
            }
            if let Some(why) = self.mesh.provider_invalid(provider) {
                decision.reason = Reason::CustomInvalidProvider { at, why };
                return decision;
            }
            match req.custom_verdict(provider) {
                Some(true) => {}
                Some(false) => {
                    decision.reason = Reason::CustomDenied { at };
                    return decision;
                }
                None => {
                    decision.reason = Reason::CustomPending { at };
                    decision.if_custom_allows = Some(after_custom);
                    return decision;
                }
            }
        }
        decision.allowed = after_custom.allowed;
        decision.status = after_custom.status;
        decision.reason = after_custom.reason;
        decision
    }
}

/// Status and reason for a request refused before any filter: plaintext on a STRICT port, then
/// what the HTTP codec or path normalisation refuses.
fn refusal<'a>(mode: MtlsMode, req: &Request, id: &Identity) -> Option<(u16, Reason<'a>)> {
    if mode == MtlsMode::Strict && id.peer.is_none() {
        return Some((403, Reason::PlaintextUnderStrict));
    }
    let rejection = req.http.as_ref().and_then(|h| h.rejection)?;
    Some((rejection.status(), Reason::Rejected(rejection)))
}

impl PolicySet {
    /// Explains, for a request that no ALLOW policy admitted, why each applicable ALLOW rule did
    /// not match (one line per rule). Allocates; meant for `check` and logs, not the hot path.
    pub fn explain_no_match(&self, req: &Request, id: &Identity) -> Vec<String> {
        let dst = &req.destination;
        let mode = self.mtls_mode(&dst.namespace, &dst.labels, dst.port);
        let ctx = Ctx {
            req,
            peer: if mode == MtlsMode::Disable {
                None
            } else {
                id.peer.as_deref()
            },
            jwt: id.jwt.as_deref(),
            set: self,
        };
        let tcp = req.http.is_none();
        let mut out = Vec::new();
        self.for_each_applicable(&dst.namespace, &dst.labels, |p| {
            if p.src.action != Action::Allow || p.src.dry_run {
                return;
            }
            let name = format!("{}/{}", p.src.meta.namespace, p.src.meta.name);
            if p.rules.is_empty() {
                out.push(format!("{name}: has no rules, so it allows nothing"));
            }
            for r in &p.rules {
                let why = if r.has_broken {
                    "uses a key istiod cannot generate, so the rule is skipped".to_owned()
                } else if tcp && r.has_http_only {
                    "uses HTTP-only fields, so it is dropped for TCP connections".to_owned()
                } else {
                    ctx.why_not(r, tcp).unwrap_or_else(|| "matched".to_owned())
                };
                out.push(format!("{name} rule {}: {why}", r.index));
            }
        });
        out
    }
}

impl Ctx<'_> {
    fn why_not(&self, r: &CRule, tcp: bool) -> Option<String> {
        let first_failing = |keys: &[CKey]| {
            keys.iter()
                .find(|k| !self.key_matches(k, tcp, false))
                .map(|k| k.field.clone())
        };
        let group = |g: &Option<Vec<Vec<CKey>>>, part: &str, item: &str| -> Option<String> {
            let alts = g.as_ref()?;
            if alts
                .iter()
                .any(|keys| keys.iter().all(|k| self.key_matches(k, tcp, false)))
            {
                return None;
            }
            let fields: Vec<String> = alts
                .iter()
                .enumerate()
                .filter_map(|(i, keys)| {
                    first_failing(keys).map(|f| format!("{part}[{i}].{item}.{f}"))
                })
                .collect();
            Some(format!(
                "no `{part}` entry matched ({} did not match)",
                fields.join(", ")
            ))
        };
        if let Some(w) = group(&r.from, "from", "source") {
            return Some(w);
        }
        if let Some(w) = group(&r.to, "to", "operation") {
            return Some(w);
        }
        first_failing(&r.when).map(|f| match &self.set.lookup_claim_kind(&f) {
            Some(note) => format!("condition `{f}` did not match ({note})"),
            None => format!("condition `{f}` did not match"),
        })
    }
}

impl PolicySet {
    /// The compiled rule a decision points at.
    fn compiled_rule(&self, at: PolicyRef<'_>) -> Option<&CRule> {
        self.authz
            .iter()
            .find(|p| std::ptr::eq(&p.src, at.policy))
            .and_then(|p| p.rules.iter().find(|r| r.index == at.rule))
    }

    fn lookup_claim_kind(&self, key: &str) -> Option<&'static str> {
        [
            "request.auth.claims[exp]",
            "request.auth.claims[iat]",
            "request.auth.claims[nbf]",
        ]
        .contains(&key)
        .then_some("a numeric claim never matches in Istio")
    }
}

struct Ctx<'a> {
    req: &'a Request,
    peer: Option<&'a str>,
    jwt: Option<&'a JwtIdentity>,
    set: &'a PolicySet,
}

impl Ctx<'_> {
    /// The first matching rule of a policy, in RBAC name order.
    fn first_match(&self, p: &CPolicy) -> Option<(u32, usize)> {
        let tcp = self.req.http.is_none();
        let mut best: Option<(u32, usize)> = None;
        for r in &p.rules {
            if p.src.action == Action::Allow && (r.has_broken || (tcp && r.has_http_only)) {
                continue;
            }
            if best.is_some_and(|(rank, _)| rank < r.rank) {
                continue;
            }
            if self.rule_matches(r, tcp, p.src.action != Action::Allow) {
                best = Some((r.rank, r.index));
            }
        }
        best
    }

    fn rule_matches(&self, r: &CRule, tcp: bool, deny_like: bool) -> bool {
        let group = |g: &Option<Vec<Vec<CKey>>>| match g {
            None => true,
            Some(alts) => alts
                .iter()
                .any(|keys| keys.iter().all(|k| self.key_matches(k, tcp, deny_like))),
        };
        group(&r.from) && group(&r.to) && r.when.iter().all(|k| self.key_matches(k, tcp, deny_like))
    }

    /// An attribute this request does not carry at all (not "carries a different value"): the
    /// destination port or address, which a forward-auth front end may not be told.
    fn unknown(&self, attr: &Attr) -> Option<&'static str> {
        match attr {
            Attr::Port if self.req.destination.port.is_none() => Some("destination port"),
            Attr::DstIp if self.req.destination.ip.is_none() => Some("destination address"),
            _ => None,
        }
    }

    /// The first unknown attribute a rule tests, for the reason of a denial.
    fn unknown_attr_in(&self, r: &CRule) -> Option<&'static str> {
        let keys = r
            .from
            .iter()
            .chain(r.to.iter())
            .flatten()
            .flatten()
            .chain(r.when.iter());
        keys.filter_map(|k| self.unknown(&k.attr)).next()
    }

    fn key_matches(&self, k: &CKey, tcp: bool, deny_like: bool) -> bool {
        if (tcp && k.attr.http_only()) || matches!(k.attr, Attr::Broken(_)) {
            // Only reached for DENY/AUDIT/CUSTOM: the condition is dropped (wider rule).
            return true;
        }
        if deny_like && self.unknown(&k.attr).is_some() {
            // DENY/AUDIT/CUSTOM: a condition on an attribute the front end cannot know is taken
            // as met, so the rule denies rather than being skipped (fail closed).
            return true;
        }
        if !k.values.is_empty() && !k.values.iter().any(|m| self.value_matches(&k.attr, m)) {
            return false;
        }
        !k.not_values.iter().any(|m| self.value_matches(&k.attr, m))
    }

    fn value_matches(&self, attr: &Attr, m: &M) -> bool {
        let req = self.req;
        match attr {
            Attr::SrcPrincipal
            | Attr::SrcNamespace
            | Attr::SrcServiceAccount
            | Attr::SrcTrustDomain => self.peer.is_some_and(|p| str_match(m, p)),
            Attr::SrcIp => ip_match(m, req.source.ip),
            Attr::RemoteIp => ip_match(m, req.remote_ip()),
            Attr::DstIp => ip_match(m, req.destination.ip),
            Attr::Port => matches!(m, M::Port(p) if req.destination.port == Some(*p)),
            // Envoy lower-cases the SNI before `requested_server_name` matching; the policy's
            // values are compared as written.
            Attr::Sni => match req.sni.as_deref() {
                Some(sni) if sni.bytes().any(|b| b.is_ascii_uppercase()) => {
                    str_match(m, &sni.to_ascii_lowercase())
                }
                other => str_match(m, other.unwrap_or("")),
            },
            Attr::EnvoyMetadata(_) | Attr::Broken(_) => false,
            Attr::RequestPrincipal => match (m, self.jwt) {
                (M::RequestPrincipal(rp), Some(j)) => {
                    rp.matches(j.iss.as_deref(), j.sub.as_deref())
                }
                _ => false,
            },
            Attr::Audiences => self.claim_match(m, "aud", &[]),
            Attr::Presenter => self.claim_match(m, "azp", &[]),
            Attr::Claim(path) => match path.split_first() {
                Some((first, rest)) => self.claim_match(m, first, rest),
                None => false,
            },
            Attr::Header(name) => {
                // Envoy 1.40's RBAC header matcher: a repeated header matches when any one of
                // its lines matches; the same values sent as one comma-joined line are one value
                // (tests/envoy_rbac.rs).
                let Some(h) = &req.http else { return false };
                let mut lines = h.header_lines(name).peekable();
                match (m, lines.peek()) {
                    (M::Present, Some(_)) => true,
                    (_, Some(_)) => lines.any(|v| str_match(m, v)),
                    (_, None) => false,
                }
            }
            Attr::Host => req.http.as_ref().is_some_and(|h| str_match(m, &h.host)),
            Attr::Method => req.http.as_ref().is_some_and(|h| str_match(m, &h.method)),
            Attr::Path => match (m, req.http.as_ref().and_then(|h| h.normalized_path())) {
                (M::Path(pm), Some(p)) => pm.matches(p),
                _ => false,
            },
        }
    }

    fn claim_match(&self, m: &M, first: &str, rest: &[String]) -> bool {
        let Some(j) = self.jwt else { return false };
        let mut v = match j.claims.get(first) {
            Some(v) => v,
            None => return false,
        };
        for key in rest {
            match v.get(key.as_str()) {
                Some(next) => v = next,
                None => return false,
            }
        }
        let split = rest.is_empty() && self.space_delimited(first, j);
        let one = |s: &str| {
            if split {
                s.split(' ')
                    .filter(|p| !p.is_empty())
                    .any(|p| str_match(m, p))
            } else {
                str_match(m, s)
            }
        };
        match v {
            serde_json::Value::String(s) => one(s),
            serde_json::Value::Array(items) => items
                .iter()
                .any(|i| i.as_str().is_some_and(|s| str_match(m, s))),
            _ => false,
        }
    }

    fn space_delimited(&self, claim: &str, j: &JwtIdentity) -> bool {
        claim == "scope"
            || claim == "permission"
            || j.iss
                .as_deref()
                .and_then(|iss| self.set.space_delimited.get(iss))
                .is_some_and(|l| l.iter().any(|c| c == claim))
    }
}

fn str_match(m: &M, s: &str) -> bool {
    match m {
        M::Str(sm) => sm.matches(s),
        M::StrIgnoreCase(sm) => sm.matches_ignore_case(s),
        M::Present => true,
        M::Regex(re) => re.is_match(s),
        M::Contains(needle) => s.contains(needle.as_str()) && !s.contains('\n'),
        _ => false,
    }
}

fn ip_match(m: &M, ip: Option<IpAddr>) -> bool {
    match (m, ip) {
        (M::Ip(net), Some(ip)) => net.contains(&ip),
        _ => false,
    }
}

fn compile_rule(
    p: &AuthorizationPolicy,
    r: &Rule,
    index: usize,
    rank: u32,
    mesh: &MeshConfig,
) -> Result<CRule, CompileError> {
    let mut has_http_only = false;
    let is_broken = |k: &KeyRule| matches!(k.attr, Attr::Broken(_));
    let has_broken = r.when.iter().any(is_broken);
    let mut group =
        |g: &Option<Vec<Vec<KeyRule>>>| -> Result<Option<Vec<Vec<CKey>>>, CompileError> {
            match g {
                None => Ok(None),
                Some(alts) => alts
                    .iter()
                    .map(|keys| {
                        keys.iter()
                            .map(|k| {
                                has_http_only |= k.attr.http_only();
                                compile_key(p, k, mesh)
                            })
                            .collect()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
            }
        };
    let from = group(&r.from)?;
    let to = group(&r.to)?;
    let when = r
        .when
        .iter()
        .map(|k| {
            has_http_only |= k.attr.http_only();
            compile_key(p, k, mesh)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CRule {
        rank,
        index,
        from,
        to,
        when,
        has_http_only,
        has_broken,
    })
}

fn compile_key(
    p: &AuthorizationPolicy,
    k: &KeyRule,
    mesh: &MeshConfig,
) -> Result<CKey, CompileError> {
    let err = |message: String| CompileError {
        policy: format!("{}/{}", p.meta.namespace, p.meta.name),
        field: k.field.clone(),
        message,
    };
    let compile_one = |v: &str| -> Result<Vec<M>, CompileError> {
        Ok(match &k.attr {
            Attr::SrcPrincipal => principal_variants(v, mesh)
                .into_iter()
                .map(|pv| M::Str(StrMatch::with_prefix(&pv, "spiffe://")))
                .collect(),
            Attr::SrcNamespace if !v.contains(|c: char| "*.+?()|[]{}^$\\".contains(c)) => {
                vec![M::Contains(format!("/ns/{v}/"))]
            }
            Attr::SrcNamespace => vec![M::Regex(
                Regex::new(&matcher::namespace_regex(v)).map_err(|e| err(e.to_string()))?,
            )],
            // istiod (builder testdata trust-domains-in/-out): `td` is the principal prefix
            // `spiffe://td/`, a `*` in it matches within the domain (`spiffe://bad[^/]*/.*`).
            Attr::SrcTrustDomain => {
                let domain: Vec<String> = v.split('*').map(regex::escape).collect();
                vec![M::Regex(
                    Regex::new(&format!("^spiffe://{}/.*$", domain.join("[^/]*")))
                        .map_err(|e| err(e.to_string()))?,
                )]
            }
            Attr::SrcServiceAccount => vec![M::Regex(
                Regex::new(&matcher::service_account_regex(v, &p.meta.namespace))
                    .map_err(|e| err(e.to_string()))?,
            )],
            Attr::SrcIp | Attr::RemoteIp | Attr::DstIp => vec![M::Ip(
                crate::resource::parse_ip_block(v)
                    .ok_or_else(|| err(format!("bad IP address or CIDR `{v}`")))?,
            )],
            Attr::Port => vec![M::Port(
                v.parse().map_err(|_| err(format!("bad port `{v}`")))?,
            )],
            Attr::RequestPrincipal => vec![M::RequestPrincipal(RequestPrincipalMatch::new(v))],
            Attr::Header(_) | Attr::Method if v == "*" => vec![M::Present],
            Attr::Host if v == "*" => vec![M::Present],
            Attr::Host => vec![M::StrIgnoreCase(StrMatch::new_ignore_case(v))],
            Attr::Path => vec![M::Path(PathMatch::new(v).map_err(|e| err(e.to_string()))?)],
            Attr::Header(_)
            | Attr::Method
            | Attr::Sni
            | Attr::Audiences
            | Attr::Presenter
            | Attr::Claim(_)
            | Attr::EnvoyMetadata(_)
            | Attr::Broken(_) => vec![M::Str(StrMatch::new(v))],
        })
    };
    let mut values = Vec::with_capacity(k.values.len());
    for v in &k.values {
        values.extend(compile_one(v)?);
    }
    let mut not_values = Vec::with_capacity(k.not_values.len());
    for v in &k.not_values {
        not_values.extend(compile_one(v)?);
    }
    Ok(CKey {
        field: k.field.clone(),
        attr: k.attr.clone(),
        values,
        not_values,
    })
}

/// istio `MigrateTrustDomain`: a principal written with `cluster.local` (or the mesh trust domain
/// or an alias) also matches the same identity in the trust domain and every alias.
fn principal_variants(v: &str, mesh: &MeshConfig) -> Vec<String> {
    let mut out = vec![v.to_owned()];
    if mesh.trust_domain == "cluster.local" && mesh.trust_domain_aliases.is_empty() {
        return out;
    }
    let Some((td, rest)) = v.split_once('/') else {
        return out;
    };
    let known = td == "cluster.local"
        || td == mesh.trust_domain
        || mesh.trust_domain_aliases.iter().any(|a| a == td);
    if known {
        for t in std::iter::once(&mesh.trust_domain).chain(&mesh.trust_domain_aliases) {
            let cand = format!("{t}/{rest}");
            if !out.contains(&cand) {
                out.push(cand);
            }
        }
    }
    out
}
