//! The decision pipeline shared by every front end: refusals before any filter (STRICT mTLS on
//! plaintext, what the codec or path normalisation refuses), request authentication, the
//! AuthConfig the route binds, then CUSTOM (resumed, not re-evaluated), DENY and ALLOW. A
//! CUSTOM provider is an AuthConfig (run in-process) or a meshConfig ext_authz service (called
//! over the network, `remote`).

use std::time::{Instant, SystemTime};

use meshguard_authn::extauth::StepOutcome;
use meshguard_authn::{Authenticated, AuthnOutcome, TokenError};
use meshguard_policy::extauth::ExtAuthAction;
use meshguard_policy::{Identity, Reason, Request, Verdict};
use serde_json::json;

use crate::decision::{Decision, DryRun};
use crate::state::Generation;

/// A denial decided by an AuthConfig step.
fn chain_denial(g: &Generation, chain: &str, r: StepOutcome, policy: Option<String>) -> Decision {
    let mut o = Decision::internal(format!("denied by AuthConfig {chain}: {}", r.reason), g.id);
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

/// Decides one request against one generation. The route's AuthConfig (`req.auth_config`:
/// Envoy `context_extensions.config_id`, an HTTP-mode binding) runs after request
/// authentication, before the policies. A CUSTOM AuthorizationPolicy whose provider is an
/// AuthConfig runs that chain where Istio consults its ext_authz provider: after request
/// authentication, before DENY and ALLOW, which were evaluated in the same pass and are
/// resumed once the chain allows.
pub async fn decide(g: &Generation, req: &Request) -> Decision {
    let mut id = req.identity();
    // Refused before any filter: no token is looked at, no AuthConfig step runs.
    if let Some(v) = g.set.refusal(req, &id) {
        return decision_of(g, &v, &id, None);
    }
    let mut authenticated = None;
    match g.authn.authenticate_request(&g.set, req, &id).await {
        AuthnOutcome::Rejected(r) => {
            let why = match &r.error {
                TokenError::JwksUnavailable(detail) => format!("{}: {detail}", r.error),
                e => e.to_string(),
            };
            let mut o = Decision::internal(format!("request authentication failed: {why}"), g.id);
            o.status = r.status;
            o.www_authenticate = r.www_authenticate;
            o.policy = r.rule.clone();
            o.request_authentication = r.rule;
            o.mtls_mode = mtls_mode(g, req);
            return o;
        }
        AuthnOutcome::Authenticated(a) => {
            id.jwt = Some(a.identity.clone());
            authenticated = Some(a);
        }
        AuthnOutcome::NoToken => {}
    }
    let mut chain_ok: Vec<StepOutcome> = Vec::new();
    let mut remote_ok: Vec<crate::remote::Outcome> = Vec::new();
    let mut chain_names: Vec<String> = Vec::new();
    if let Some(cid) = req.auth_config.as_deref() {
        let Some(chain) = g.chains.get(cid) else {
            return Decision::internal(
                format!("denied (fail closed): the request names AuthConfig `{cid}`, which is not loaded"),
                g.id,
            );
        };
        // Boxed: a chain's future holds every step kind's (LDAP, OIDC, pass-through), about
        // 9 KB that would otherwise be part of, and copied with, every decision's future.
        let r = Box::pin(chain.run(req, &id)).await;
        if !r.allowed {
            return chain_denial(g, &chain.id, r, None);
        }
        chain_names.push(chain.id.clone());
        chain_ok.push(r);
    }
    // The Gloo ExtAuthPolicy that selects this route or destination (the oldest of those
    // that do), where Gloo's ext auth filter stands: before Istio's policies.
    // HTTP only: an ExtAuthPolicy configures Gloo's HTTP ext auth filter, never a TCP port.
    let ext_auth_policy = req
        .http
        .as_ref()
        .and_then(|_| g.set.ext_auth_policy_for(req));
    if let Some(p) = ext_auth_policy {
        let name = meshguard_authn::extauth::policy_chain_id(p);
        match &p.action {
            ExtAuthAction::Gloo(_) => {
                let Some(chain) = g.chains.for_policy(&p.id()) else {
                    let mut o = Decision::internal(
                        format!("denied (fail closed): {name} was not built"),
                        g.id,
                    );
                    o.auth_config = Some(name);
                    return o;
                };
                let r = Box::pin(chain.run(req, &id)).await;
                if !r.allowed {
                    return chain_denial(g, &chain.id, r, Some(name));
                }
                chain_names.push(chain.id.clone());
                chain_ok.push(r);
            }
            ExtAuthAction::Custom { context_extensions } => {
                let server = p.server.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                let Some(provider) = g.remote.get(server) else {
                    let mut o = Decision::internal(
                        format!("denied (fail closed): {name} delegates to server `{server}`, which is not an envoyExtAuthzGrpc/envoyExtAuthzHttp provider of the mesh config"),
                        g.id,
                    );
                    o.policy = Some(name.clone());
                    o.auth_config = Some(name);
                    return o;
                };
                let mut asked = req.clone();
                for (k, v) in context_extensions {
                    asked.context_extensions.insert(k.clone(), v.clone());
                }
                let r = Box::pin(provider.check(&asked)).await;
                if !r.allowed {
                    let mut o = remote_denial(g, r, Some(name.clone()));
                    o.auth_config = Some(name);
                    return o;
                }
                chain_names.push(name);
                remote_ok.push(r);
            }
        }
    }
    let mut verdict = g.set.evaluate(req, &id);
    if let Reason::CustomPending { at } = verdict.reason {
        let provider = at.policy.provider.as_deref().unwrap_or_default();
        let policy = Some(at.name());
        // A provider name resolves as `namespace.name`, or as a name in the policy's own
        // namespace, or in the root namespace: never to a same-named config elsewhere.
        let ns = &at.policy.meta.namespace;
        let root = &g.set.mesh().root_namespace;
        let found = if provider.contains('.') {
            g.chains.get_exact(provider)
        } else {
            g.chains
                .get_exact(&format!("{ns}.{provider}"))
                .or_else(|| g.chains.get_exact(&format!("{root}.{provider}")))
        };
        match (found, g.remote.get(provider)) {
            (Some(chain), _) => {
                // Boxed: a chain's future holds every step kind's (LDAP, OIDC, pass-through),
                // about 9 KB that would otherwise be part of, and copied with, every
                // decision's future.
                let r = Box::pin(chain.run(req, &id)).await;
                if !r.allowed {
                    return chain_denial(g, &chain.id, r, policy);
                }
                chain_names.push(chain.id.clone());
                chain_ok.push(r);
            }
            (None, Some(p)) => {
                // A meshConfig ext_authz provider, called as Envoy's ext_authz filter calls
                // it. Boxed like the chains: the gRPC/HTTP call's future is large and rare.
                let r = Box::pin(p.check(req)).await;
                if !r.allowed {
                    return remote_denial(g, r, policy);
                }
                remote_ok.push(r);
            }
            (None, None) => {
                let mut o = Decision::internal(
                    format!("denied (fail closed): CUSTOM policy {} names provider `{provider}`, which is neither an AuthConfig meshguard runs nor an envoyExtAuthzGrpc/envoyExtAuthzHttp provider of the mesh config", at.name()),
                    g.id,
                );
                o.policy = policy;
                o.action = Some("CUSTOM");
                return o;
            }
        }
        verdict = verdict.resumed();
    }
    let mut o = decision_of(g, &verdict, &id, authenticated.as_ref());
    finish(g, req, &mut o, authenticated, chain_ok, remote_ok);
    if !chain_names.is_empty() {
        o.auth_config = Some(chain_names.join(","));
    }
    o
}

/// A denial answered by a meshConfig ext_authz provider (or its failure, fail closed).
fn remote_denial(g: &Generation, r: crate::remote::Outcome, policy: Option<String>) -> Decision {
    let mut o = Decision::internal(r.reason, g.id);
    o.status = if (200..=599).contains(&r.status) {
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
    // Envoy answers with the provider's body as it is (empty on an error or an empty denial).
    o.custom_body = Some(r.body);
    o.dynamic_metadata = r.dynamic_metadata;
    o
}

/// An allowed decision's header changes: request authentication's, then each AuthConfig
/// step's, then the ext_authz provider's (Envoy's filter order: jwt_authn, ext_authz).
fn finish(
    g: &Generation,
    req: &Request,
    o: &mut Decision,
    authenticated: Option<Authenticated>,
    chain_ok: Vec<StepOutcome>,
    remote_ok: Vec<crate::remote::Outcome>,
) {
    if !o.allowed {
        return;
    }
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
    let mut merge = |add: Vec<(String, String)>| {
        // Envoy applies them with OverwriteIfExistsOrAdd: a later step's value replaces an
        // earlier one of the same name, so the list keeps one entry per header.
        for (k, v) in add {
            o.headers_to_add
                .retain(|(x, _)| !x.eq_ignore_ascii_case(&k));
            o.headers_to_add.push((k, v));
        }
    };
    let mut removes = Vec::new();
    let mut responses = Vec::new();
    let mut metadata = serde_json::Map::new();
    let mut queries = Vec::new();
    for r in chain_ok {
        merge(r.headers_to_add);
        removes.extend(r.headers_to_remove);
        responses.extend(r.response_headers);
        metadata.extend(r.dynamic_metadata);
    }
    for r in remote_ok {
        // The external authorizer allowed: an explicit allow, as an AuthConfig's is (the
        // default for workloads no ALLOW policy selects does not apply).
        o.by_default = false;
        merge(r.headers_to_add);
        removes.extend(r.headers_to_remove);
        responses.extend(r.response_headers);
        metadata.extend(r.dynamic_metadata);
        queries.extend(r.query_params_to_remove);
    }
    o.headers_to_remove.extend(removes);
    o.response_headers.extend(responses);
    o.dynamic_metadata.extend(metadata);
    o.query_params_to_remove.extend(queries);
}

fn mtls_mode(g: &Generation, req: &Request) -> &'static str {
    let d = &req.destination;
    g.set.mtls_mode(&d.namespace, &d.labels, d.port).as_str()
}

fn decision_of(
    g: &Generation,
    d: &Verdict<'_>,
    id: &Identity,
    authenticated: Option<&Authenticated>,
) -> Decision {
    Decision {
        allowed: d.allowed,
        status: d.status,
        reason: d.reason.to_string(),
        policy: d.policy().map(|p| p.name()),
        rule: d.policy().map(|p| p.rule),
        action: d.action().map(|a| a.as_str()),
        mtls_mode: d.mtls_mode.as_str(),
        headers_to_add: Vec::new(),
        headers_to_remove: Vec::new(),
        query_params_to_remove: Vec::new(),
        www_authenticate: None,
        request_principal: id.jwt.as_ref().map(|j| j.principal.clone()),
        identity: id.clone(),
        request_authentication: authenticated.map(|a| a.rule.clone()),
        audit: d.audit.iter().map(|p| p.name()).collect(),
        dry_run: d.dry_run.map(|s| DryRun {
            allowed: s.allowed,
            policy: s.policy.map(|p| p.name()),
            rule: s.policy.map(|p| p.rule),
            // No dry-run policy matched: ALLOW ones that matched nothing deny, DENY ones allow.
            action: match s.policy.map(|p| p.policy.action) {
                Some(meshguard_policy::Action::Deny) => "deny",
                Some(_) => "allow",
                None if s.allowed => "deny",
                None => "allow",
            },
        }),
        generation: g.id,
        by_default: matches!(d.reason, Reason::NoAllowPolicies),
        no_allow_matched: matches!(d.reason, Reason::NoAllowMatched),
        response_headers: Vec::new(),
        custom_body: None,
        auth_config: None,
        dynamic_metadata: serde_json::Map::new(),
        id: String::new(),
        gradual: d
            .gradual
            .iter()
            .map(|g| {
                (
                    format!("{}/{}", g.policy.meta.namespace, g.policy.meta.name),
                    g.percent,
                    g.enforced,
                )
            })
            .collect(),
        caller_bucket: d.gradual.first().map(|g| g.bucket),
        audit_mode: None,
    }
}

/// The version of the decision log line's schema (README, "Decision log"); bumped when a field
/// changes meaning, not when one is added.
pub const LOG_SCHEMA: u64 = 1;

/// The decision log line for a decision: what happened and, for replay (`meshguard simulate`),
/// every attribute the policies can match, the headers and claims among them only where a
/// policy reads them (`inputs`) and never credentials.
pub fn log_entry(
    via: &str,
    req: &Request,
    o: &Decision,
    started: Instant,
    inputs: &meshguard_policy::inputs::Inputs,
) -> serde_json::Value {
    let http = req.http.as_ref();
    // The original client: remote.ip (X-Forwarded-For as Envoy derives it), else the peer.
    let client_ip = req
        .source
        .remote_ip
        .or(req.source.ip)
        .or(req.peer_addr.map(|a| a.ip()));
    let ip = |i: Option<std::net::IpAddr>| i.map(|i| i.to_string());
    let mut e = json!({
        "v": LOG_SCHEMA,
        "time": crate::dlog::rfc3339(SystemTime::now()),
        "id": o.id,
        "client_ip": ip(client_ip),
        "mode": via,
        "allowed": o.allowed,
        "status": o.status,
        "reason": o.reason,
        "policy": o.policy,
        "rule": o.rule,
        "action": o.action,
        "source_principal": req.peer,
        "request_principal": o.request_principal,
        "namespace": req.destination.namespace,
        "labels": req.destination.labels,
        "port": req.destination.port,
        "source_ip": ip(req.source.ip),
        "remote_ip": ip(req.source.remote_ip),
        "destination_ip": ip(req.destination.ip),
        "sni": req.sni,
        "method": http.map(|h| h.method.as_str()),
        "host": http.map(|h| h.host.as_str()),
        // The normalised path without the query: queries can carry tokens.
        "path": http.and_then(|h| h.normalized_path()),
        "latency_us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "generation": o.generation,
    });
    if let Some(h) = http {
        let mut headers = serde_json::Map::new();
        for name in &inputs.headers {
            let lines: Vec<&str> = h.header_lines(name).collect();
            if !lines.is_empty() {
                headers.insert(name.clone(), lines.into());
            }
        }
        if !headers.is_empty() {
            e["headers"] = headers.into();
        }
    }
    if let Some(jwt) = &o.identity.jwt {
        let claims: serde_json::Map<String, serde_json::Value> = inputs
            .claims
            .iter()
            .filter_map(|c| jwt.claims.get(c).map(|v| (c.clone(), v.clone())))
            .collect();
        if !claims.is_empty() {
            e["claims"] = claims.into();
        }
    }
    if !o.audit.is_empty() {
        e["audit"] = o.audit.clone().into();
    }
    if let Some(d) = &o.dry_run {
        e["dry_run"] = json!({"allowed": d.allowed, "policy": d.policy});
    }
    if let Some(c) = &o.auth_config {
        e["auth_config"] = c.clone().into();
    }
    if let Some(a) = &o.audit_mode {
        e["audit_mode"] = json!({"would_status": a.would_status, "would_reason": a.would_reason});
    }
    if !o.gradual.is_empty() {
        e["gradual"] = o.gradual_json();
        e["caller_bucket"] = o.caller_bucket.into();
    }
    e
}
