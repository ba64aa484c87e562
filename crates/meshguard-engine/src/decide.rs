//! The decision pipeline shared by every front end: refusals before authorization (STRICT mTLS,
//! path normalisation), request authentication, then CUSTOM/DENY/ALLOW.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use meshguard_authn::extauth::{CheckExtra, StepOutcome};
use meshguard_authn::AuthnOutcome;
use meshguard_policy::{Decision, Identity, Reason, Request};
use serde_json::json;

use crate::state::Generation;

/// What the front end answers.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub allowed: bool,
    /// 200, 400/404 (refused before authorization), 401 (authentication), 403 (authorization).
    pub status: u16,
    pub reason: String,
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub action: Option<&'static str>,
    pub headers_to_add: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    /// Query parameters to drop from the path the app sees (a verified token's, when
    /// `forwardOriginalToken` is false).
    pub query_params_to_remove: Vec<String>,
    pub www_authenticate: Option<String>,
    pub request_principal: Option<String>,
    pub audit: Vec<String>,
    pub dry_run: Option<(bool, Option<String>)>,
    pub generation: u64,
    /// Allowed only because no enforced ALLOW policy applies to the workload (Istio's default);
    /// a default-deny front end (the mTLS proxy) refuses these.
    pub by_default: bool,
    /// Headers for the client: a denial's (`WWW-Authenticate` from API key or basic auth,
    /// Rego `headers`) or, on success, Rego `response_headers_to_add`.
    pub response_headers: Vec<(String, String)>,
    /// A denial body chosen by an AuthConfig step (Rego `body`); otherwise Envoy's wording.
    pub custom_body: Option<String>,
    /// The AuthConfig that ran, if any.
    pub auth_config: Option<String>,
    /// `dynamic_metadata` fields chosen by AuthConfig steps (OPA-Envoy decisions).
    pub dynamic_metadata: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    /// A fail-closed denial for requests that cannot be decided.
    pub fn internal(reason: impl Into<String>, generation: u64) -> Outcome {
        Outcome {
            allowed: false,
            status: 403,
            reason: reason.into(),
            policy: None,
            rule: None,
            action: None,
            headers_to_add: Vec::new(),
            headers_to_remove: Vec::new(),
            query_params_to_remove: Vec::new(),
            www_authenticate: None,
            request_principal: None,
            audit: Vec::new(),
            dry_run: None,
            generation,
            by_default: false,
            response_headers: Vec::new(),
            custom_body: None,
            auth_config: None,
            dynamic_metadata: serde_json::Map::new(),
        }
    }

    /// The body of a denial: an AuthConfig's own (empty unless a step chose one, as Gloo's
    /// ext-auth answers), or the short text Envoy's filters use.
    pub fn body(&self) -> &str {
        if let Some(b) = &self.custom_body {
            return b;
        }
        // Denied by an AuthConfig step (not by an Istio policy after the chain allowed).
        if self.auth_config.is_some() && self.action == Some("CUSTOM") {
            return "";
        }
        match self.status {
            401 => "Jwt authentication failed",
            403 => "RBAC: access denied",
            _ => "request refused",
        }
    }
}

/// Decides one request against one generation (no AuthConfig bound by the caller).
pub async fn decide(g: &Generation, req: &Request, id: Identity) -> Outcome {
    decide_ext(g, req, id, &CheckExtra::default(), None).await
}

/// A denial decided by an AuthConfig step.
fn chain_denial(g: &Generation, chain: &str, r: StepOutcome, policy: Option<String>) -> Outcome {
    let mut o = Outcome::internal(format!("denied by AuthConfig {chain}: {}", r.reason), g.id);
    // A denial never carries a success status; a redirect only with somewhere to go.
    let redirect =
        (300..400).contains(&r.status) && r.response_headers.iter().any(|(k, _)| k == "location");
    o.status = if r.status >= 400 || redirect {
        r.status
    } else {
        403
    };
    o.policy = policy;
    o.action = Some("CUSTOM");
    o.www_authenticate = r
        .response_headers
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone());
    o.response_headers = r
        .response_headers
        .into_iter()
        .filter(|(k, _)| k != "www-authenticate")
        .collect();
    o.custom_body = (!r.body.is_empty()).then_some(r.body);
    o.dynamic_metadata = r.dynamic_metadata;
    o.auth_config = Some(chain.to_owned());
    o
}

/// Decides one request. `bound` names an AuthConfig the caller chose for this request (Envoy
/// `context_extensions.config_id`, an HTTP-mode binding); it runs first. A CUSTOM
/// AuthorizationPolicy whose provider is an AuthConfig runs that chain where Istio consults its
/// ext_authz provider: after request authentication, before DENY and ALLOW.
pub async fn decide_ext(
    g: &Generation,
    req: &Request,
    mut id: Identity,
    extra: &CheckExtra,
    bound: Option<&str>,
) -> Outcome {
    // Refusals that happen before any filter (connection refused under STRICT, 400 from path
    // normalisation) come first; then request authentication; then authorization.
    let mut authenticated = None;
    match g.authn.authenticate_request(&g.set, req, &id).await {
        AuthnOutcome::Rejected(r) => {
            let mut o =
                Outcome::internal(format!("request authentication failed: {}", r.error), g.id);
            o.status = r.status;
            o.www_authenticate = r.www_authenticate;
            o.policy = r.rule;
            return o;
        }
        AuthnOutcome::Authenticated(a) => {
            id.jwt = Some(a.identity.clone());
            authenticated = Some(a);
        }
        AuthnOutcome::NoToken => {}
    }
    let mut chain_ok: Vec<StepOutcome> = Vec::new();
    let mut chain_names: Vec<String> = Vec::new();
    if let Some(cid) = bound {
        let Some(chain) = g.chains.get(cid) else {
            return Outcome::internal(
                format!("denied (fail closed): the request names AuthConfig `{cid}`, which is not loaded"),
                g.id,
            );
        };
        let r = chain.run(req, &id, extra).await;
        if !r.allowed {
            return chain_denial(g, &chain.id, r, None);
        }
        chain_names.push(chain.id.clone());
        chain_ok.push(r);
    }
    let first = g.set.evaluate(req, &id);
    let mut o = if let Reason::CustomPending { at } = first.reason {
        let provider = at.policy.provider.clone().unwrap_or_default();
        let policy = Some(at.name());
        // A provider name resolves as `namespace.name`, or as a name in the policy's own
        // namespace, or in the root namespace: never to a same-named config elsewhere.
        let ns = &at.policy.meta.namespace;
        let root = &g.set.mesh().root_namespace;
        let found = if provider.contains('.') {
            g.chains.get_exact(&provider)
        } else {
            g.chains
                .get_exact(&format!("{ns}.{provider}"))
                .or_else(|| g.chains.get_exact(&format!("{root}.{provider}")))
        };
        let Some(chain) = found else {
            let mut o = Outcome::internal(
                format!("denied (fail closed): CUSTOM policy {} names provider `{provider}`, which is not an AuthConfig meshguard runs (external ext_authz providers are not called)", at.name()),
                g.id,
            );
            o.policy = policy;
            o.action = Some("CUSTOM");
            return o;
        };
        let r = chain.run(req, &id, extra).await;
        if !r.allowed {
            return chain_denial(g, &chain.id, r, policy);
        }
        chain_names.push(chain.id.clone());
        chain_ok.push(r);
        let mut with_verdict = req.clone();
        with_verdict.custom.push((provider, true));
        let d = g.set.evaluate(&with_verdict, &id);
        outcome_of(g, &d, &id)
    } else {
        outcome_of(g, &first, &id)
    };
    if o.allowed {
        if let Some(a) = authenticated {
            o.headers_to_add = a.headers_to_add;
            o.headers_to_remove = a.headers_to_remove;
            o.query_params_to_remove = a.query_params_to_remove;
        }
        // Client-sent copies of the JWT output headers never reach the app (Envoy's jwt_authn
        // sanitises them on every request); the ones written above replace them.
        if let Some(h) = &req.http {
            for name in meshguard_authn::output_header_names(
                &g.set,
                &req.destination.namespace,
                &req.destination.labels,
            ) {
                let written = o.headers_to_add.iter().any(|(k, _)| *k == name);
                if !written && h.header(&name).is_some() && !o.headers_to_remove.contains(&name) {
                    o.headers_to_remove.push(name);
                }
            }
        }
        for r in chain_ok {
            // Envoy applies them with OverwriteIfExistsOrAdd: a later step's value replaces an
            // earlier one of the same name, so the list keeps one entry per header.
            for (k, v) in r.headers_to_add {
                o.headers_to_add
                    .retain(|(x, _)| !x.eq_ignore_ascii_case(&k));
                o.headers_to_add.push((k, v));
            }
            o.headers_to_remove.extend(r.headers_to_remove);
            o.response_headers.extend(r.response_headers);
            o.dynamic_metadata.extend(r.dynamic_metadata);
        }
    }
    if !chain_names.is_empty() {
        o.auth_config = Some(chain_names.join(","));
    }
    o
}

fn outcome_of(g: &Generation, d: &Decision<'_>, id: &Identity) -> Outcome {
    Outcome {
        allowed: d.allowed,
        status: d.status,
        reason: d.reason.to_string(),
        policy: d.policy().map(|p| p.name()),
        rule: d.policy().map(|p| p.rule),
        action: d.action().map(|a| a.as_str()),
        headers_to_add: Vec::new(),
        headers_to_remove: Vec::new(),
        query_params_to_remove: Vec::new(),
        www_authenticate: None,
        request_principal: id.jwt.as_ref().map(|j| j.principal.clone()),
        audit: d.audit.iter().map(|p| p.name()).collect(),
        dry_run: d.dry_run.map(|s| (s.allowed, s.policy.map(|p| p.name()))),
        generation: g.id,
        by_default: matches!(d.reason, Reason::NoAllowPolicies),
        response_headers: Vec::new(),
        custom_body: None,
        auth_config: None,
        dynamic_metadata: serde_json::Map::new(),
    }
}

/// The decision log line for an outcome.
pub fn log_entry(
    mode: &str,
    id: &str,
    req: &Request,
    identity: &Identity,
    o: &Outcome,
    started: Instant,
) -> serde_json::Value {
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let http = req.http.as_ref();
    let mut e = json!({
        "time": time,
        "id": id,
        "mode": mode,
        "allowed": o.allowed,
        "status": o.status,
        "reason": o.reason,
        "policy": o.policy,
        "rule": o.rule,
        "source_principal": identity.peer,
        "request_principal": o.request_principal,
        "namespace": req.destination.namespace,
        "method": http.map(|h| h.method.as_str()),
        "host": http.map(|h| h.host.as_str()),
        // The normalised path without the query: queries can carry tokens.
        "path": http.and_then(|h| h.normalized_path()),
        "latency_us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "generation": o.generation,
    });
    if !o.audit.is_empty() {
        e["audit"] = o.audit.clone().into();
    }
    if let Some((allowed, policy)) = &o.dry_run {
        e["dry_run"] = json!({"allowed": allowed, "policy": policy});
    }
    if let Some(c) = &o.auth_config {
        e["auth_config"] = c.clone().into();
    }
    e
}

/// A fail-closed denial for a request the front end could not turn into an engine request.
pub fn undecidable(
    state: &crate::state::State,
    error: &str,
    generation: u64,
) -> (Outcome, Request, Identity) {
    state
        .metrics
        .internal_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(error = %error, "denying a request that cannot be decided");
    (
        Outcome::internal(format!("denied (fail closed): {error}"), generation),
        Request::default(),
        Identity::default(),
    )
}

/// Records a finished decision: metrics, and the decision log line when the log is on.
#[allow(clippy::too_many_arguments)]
pub fn record(
    state: &crate::state::State,
    log: &crate::dlog::DecisionLog,
    mode: &'static str,
    req_id: &str,
    req: &Request,
    id: &Identity,
    o: &Outcome,
    started: Instant,
) {
    state.metrics.record_decision(
        mode,
        o.allowed,
        o.status,
        o.policy.as_deref(),
        started.elapsed(),
    );
    if log.enabled() {
        log.write(log_entry(mode, req_id, req, id, o, started));
    }
}

/// Shared handle type for front ends.
pub type Shared = Arc<crate::state::State>;
