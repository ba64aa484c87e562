//! Deciding a request against a compiled `PolicySet`: the refusals before any filter, CUSTOM
//! then DENY then ALLOW in one pass (AUDIT and dry-run policies evaluated beside them), and
//! explanations of why no ALLOW rule matched. Allocation-free on the common path.

use std::net::IpAddr;

use crate::compile::{CKey, CPolicy, CRule, PolicySet, M};
use crate::request::{Identity, JwtIdentity, Request};
use crate::resource::{Action, Attr, MtlsMode};
use crate::verdict::{caller_bucket, Gradual, PolicyRef, Reason, Resumed, Shadow, Verdict};

impl PolicySet {
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
            gradual: Vec::new(),
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
            gradual: Vec::new(),
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
        let mut bucket: Option<u8> = None;
        let mut gradual = Vec::new();
        self.for_each_applicable(&dst.namespace, &dst.labels, |p| {
            // Gradual enforcement: for callers outside the share, the policy is a dry-run one.
            let shadow = match p.src.enforce_percent {
                Some(percent) if !p.src.dry_run => {
                    let b = *bucket.get_or_insert_with(|| caller_bucket(req, peer));
                    let enforced = b < percent;
                    gradual.push(Gradual {
                        policy: &p.src,
                        percent,
                        bucket: b,
                        enforced,
                    });
                    !enforced
                }
                _ => p.src.dry_run,
            };
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
            if shadow {
                shadow_policies += 1;
            }
            if p.src.action == Action::Allow {
                if shadow {
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
            match (p.src.action, shadow) {
                (Action::Custom, _) => keep_first(&mut custom, m),
                (Action::Deny, false) => keep_first(&mut deny, m),
                (Action::Deny, true) => keep_first(&mut shadow_deny, m),
                (Action::Allow, false) => keep_first(&mut allow, m),
                (Action::Allow, true) => keep_first(&mut shadow_allow, m),
                (Action::Audit, _) => audit.get_or_insert_with(Vec::new).push(m),
            }
        });

        decision.gradual = gradual;
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
