//! The outcome of a decision, with its reason.

use std::fmt;

use crate::request::Rejection;
use crate::resource::{Action, AuthorizationPolicy, MtlsMode};

/// A policy and the index of its rule that matched.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    pub policy: &'a AuthorizationPolicy,
    pub rule: usize,
}

impl PolicyRef<'_> {
    /// `namespace/name`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.policy.meta.namespace, self.policy.meta.name)
    }
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// An enforced ALLOW policy matched.
    Allowed { at: PolicyRef<'a> },
    /// No enforced ALLOW policy applies to the workload, so it is allowed by default.
    NoAllowPolicies,
    /// ALLOW policies apply but none matched.
    NoAllowMatched,
    /// An enforced DENY policy matched. `unknown` names an attribute the rule tests that the
    /// front end could not know (the destination port in forward-auth mode, say): such a
    /// condition counts as met, so a DENY rule is never skipped for want of it.
    Denied {
        at: PolicyRef<'a>,
        unknown: Option<&'static str>,
    },
    /// A CUSTOM policy matched and its provider denied.
    CustomDenied { at: PolicyRef<'a> },
    /// A CUSTOM policy matched and its provider has not been consulted yet.
    CustomPending { at: PolicyRef<'a> },
    /// A CUSTOM policy matched but its provider is not in meshConfig.extensionProviders:
    /// istiod turns such rules into DENY rules.
    CustomUnknownProvider { at: PolicyRef<'a> },
    /// A CUSTOM policy matched but istiod refuses its provider's configuration: its rules
    /// become DENY rules.
    CustomInvalidProvider { at: PolicyRef<'a>, why: &'a str },
    /// More than one CUSTOM provider applies to the workload: istiod turns the rules into DENY.
    CustomMultipleProviders { at: PolicyRef<'a> },
    /// Plaintext to a workload whose effective PeerAuthentication is STRICT.
    PlaintextUnderStrict,
    /// The request was refused before authorization (path normalisation, method, header names).
    Rejected(Rejection),
}

/// What the dry-run (`istio.io/dry-run`) policies alone would have decided.
#[derive(Debug, Clone, Copy)]
pub struct Shadow<'a> {
    pub allowed: bool,
    pub policy: Option<PolicyRef<'a>>,
}

/// What the policies decide about one request (the engine turns it into a `Decision` with
/// headers and the AuthConfig chain's results). Borrows from the policy set; nothing is
/// allocated unless AUDIT policies matched.
#[derive(Debug, Clone)]
pub struct Verdict<'a> {
    pub allowed: bool,
    /// 200 allowed, 403 denied, 400/404 refused by path normalisation.
    pub status: u16,
    pub reason: Reason<'a>,
    pub mtls_mode: MtlsMode,
    /// AUDIT policies that matched, in RBAC name order.
    pub audit: Vec<PolicyRef<'a>>,
    pub dry_run: Option<Shadow<'a>>,
    /// With [`Reason::CustomPending`]: what DENY and ALLOW decide once the CUSTOM provider
    /// allows (they were evaluated in the same pass), so the caller resumes instead of
    /// evaluating again.
    pub if_custom_allows: Option<Resumed<'a>>,
    /// Policies under gradual enforcement (`meshguard.io/enforce-percent`) that apply to the
    /// workload, and whether this caller is among those they are enforced for.
    pub gradual: Vec<Gradual<'a>>,
}

/// One policy under gradual enforcement, for one caller.
#[derive(Debug, Clone, Copy)]
pub struct Gradual<'a> {
    pub policy: &'a crate::resource::AuthorizationPolicy,
    pub percent: u8,
    /// The caller's bucket, 0-99: enforced when below `percent`.
    pub bucket: u8,
    pub enforced: bool,
}

/// The caller's bucket for gradual enforcement: FNV-1a of its identity (the mTLS peer's SPIFFE
/// ID, else the original client IP, else the peer IP) modulo 100. Stable across replicas,
/// restarts and versions, so one caller never flaps between enforced and not.
pub fn caller_bucket(req: &crate::Request, peer: Option<&str>) -> u8 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    match (peer, req.source.remote_ip.or(req.source.ip)) {
        (Some(p), _) => feed(p.as_bytes()),
        (None, Some(std::net::IpAddr::V4(ip))) => feed(&ip.octets()),
        (None, Some(std::net::IpAddr::V6(ip))) => feed(&ip.octets()),
        (None, None) => {}
    }
    (h % 100) as u8
}

/// The DENY/ALLOW part of a verdict, kept while a CUSTOM provider is consulted.
#[derive(Debug, Clone, Copy)]
pub struct Resumed<'a> {
    pub allowed: bool,
    pub status: u16,
    pub reason: Reason<'a>,
}

impl<'a> Verdict<'a> {
    /// The verdict once the pending CUSTOM provider has allowed; unchanged otherwise.
    pub fn resumed(mut self) -> Verdict<'a> {
        if let Some(r) = self.if_custom_allows.take() {
            self.allowed = r.allowed;
            self.status = r.status;
            self.reason = r.reason;
        }
        self
    }

    /// The policy that decided, if one did.
    pub fn policy(&self) -> Option<PolicyRef<'a>> {
        match self.reason {
            Reason::Allowed { at }
            | Reason::Denied { at, .. }
            | Reason::CustomDenied { at }
            | Reason::CustomPending { at }
            | Reason::CustomUnknownProvider { at }
            | Reason::CustomInvalidProvider { at, .. }
            | Reason::CustomMultipleProviders { at } => Some(at),
            _ => None,
        }
    }

    /// The deciding policy's action.
    pub fn action(&self) -> Option<Action> {
        self.policy().map(|p| p.policy.action)
    }

    /// A JSON object for machines (`meshguard check --output json`, decision logs).
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("allowed".into(), self.allowed.into());
        o.insert("status".into(), self.status.into());
        o.insert("reason".into(), self.reason.to_string().into());
        if let Some(p) = self.policy() {
            o.insert("policy".into(), p.name().into());
            o.insert("rule".into(), p.rule.into());
            o.insert("action".into(), p.policy.action.as_str().into());
        }
        o.insert("mtls_mode".into(), self.mtls_mode.as_str().into());
        o.insert(
            "audit".into(),
            self.audit
                .iter()
                .map(|p| serde_json::Value::from(p.name()))
                .collect(),
        );
        if let Some(s) = &self.dry_run {
            let mut d = serde_json::Map::new();
            d.insert("allowed".into(), s.allowed.into());
            if let Some(p) = s.policy {
                d.insert("policy".into(), p.name().into());
                d.insert("rule".into(), p.rule.into());
            }
            o.insert("dry_run".into(), d.into());
        }
        o.into()
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Allowed { at } => write!(f, "allowed by ALLOW policy {} rule {}", at.name(), at.rule),
            Reason::NoAllowPolicies => f.write_str("allowed: no ALLOW policy applies to the workload, so requests are allowed by default"),
            Reason::NoAllowMatched => f.write_str("denied: ALLOW policies apply to the workload but none matched (RBAC: access denied)"),
            Reason::Denied { at, unknown: None } => write!(f, "denied by DENY policy {} rule {}", at.name(), at.rule),
            Reason::Denied { at, unknown: Some(attr) } => write!(
                f,
                "denied by DENY policy {} rule {}: the rule tests the {attr}, which this request does not carry, so the condition is taken as met (deny rather than skip)",
                at.name(),
                at.rule
            ),
            Reason::CustomDenied { at } => write!(
                f,
                "denied by CUSTOM policy {} rule {}: provider `{}` denied the request",
                at.name(),
                at.rule,
                at.policy.provider.as_deref().unwrap_or("")
            ),
            Reason::CustomPending { at } => write!(
                f,
                "denied (fail closed): CUSTOM policy {} rule {} needs the verdict of provider `{}`, which was not given (set `custom: {{{}: allow}}` to simulate it)",
                at.name(),
                at.rule,
                at.policy.provider.as_deref().unwrap_or(""),
                at.policy.provider.as_deref().unwrap_or("")
            ),
            Reason::CustomUnknownProvider { at } => write!(
                f,
                "denied by CUSTOM policy {} rule {}: provider `{}` is not defined in meshConfig.extensionProviders, so istiod turns its rules into DENY rules",
                at.name(),
                at.rule,
                at.policy.provider.as_deref().unwrap_or("")
            ),
            Reason::CustomInvalidProvider { at, why } => write!(
                f,
                "denied by CUSTOM policy {} rule {}: istiod refuses provider `{}` ({why}), so its rules act as DENY rules",
                at.name(),
                at.rule,
                at.policy.provider.as_deref().unwrap_or("")
            ),
            Reason::CustomMultipleProviders { at } => write!(
                f,
                "denied by CUSTOM policy {} rule {}: more than one CUSTOM provider applies to this workload, which Istio does not support, so the CUSTOM rules act as DENY rules",
                at.name(),
                at.rule
            ),
            Reason::PlaintextUnderStrict => f.write_str("denied: plaintext connection to a workload whose PeerAuthentication mode is STRICT (the connection is refused)"),
            Reason::Rejected(e) => write!(f, "rejected before authorization: {e}"),
        }
    }
}
