//! `Engine`: what a front end holds. One call decides a request on the current generation and
//! records it (metrics, decision log); the settings every front end shares (default deny, the
//! decision's time bound) apply here, not in each adapter.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshguard_policy::Request;

use crate::decision::Decision;
use crate::dlog::DecisionLog;
use crate::state::State;

/// How the engine decides beyond the policies themselves.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Deny what no ALLOW policy selects (Istio allows it). The mTLS proxy's default.
    pub default_deny: bool,
    /// Audit mode (Linkerd-style) for these workloads: every request is decided and logged, none
    /// is denied; what would have been denied is in the decision and its log line.
    pub audit: Vec<crate::state::Workload>,
    /// The longest a decision may take (a slow JWKS, LDAP or pass-through server); past it the
    /// request is denied. `None`: no bound beyond each step's own timeouts.
    pub timeout: Option<Duration>,
}

/// The decision engine a front end holds (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    state: Arc<State>,
    log: DecisionLog,
    settings: Settings,
}

impl Engine {
    pub fn new(state: Arc<State>, log: DecisionLog, settings: Settings) -> Engine {
        Engine {
            state,
            log,
            settings,
        }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Decides a request on the current generation, without recording it.
    pub async fn evaluate(&self, req: &Request) -> Decision {
        let g = self.state.current();
        let decided = crate::decide::decide(&g, req);
        let mut d = match self.settings.timeout {
            None => decided.await,
            Some(t) => match tokio::time::timeout(t, decided).await {
                Ok(d) => d,
                Err(_) => {
                    self.state
                        .metrics
                        .internal_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
                        "decision timed out; denying"
                    );
                    Decision::internal("denied (fail closed): the decision timed out", g.id)
                }
            },
        };
        // An AuthConfig that ran and allowed (bound to the route, or a CUSTOM policy's
        // provider) is an explicit allow: the default applies only where nothing decided.
        if d.by_default && d.auth_config.is_none() {
            self.by_default(&g, req, &mut d);
        }
        if !d.allowed && self.in_audit_mode(req) {
            let would_status = d.status;
            let would_reason = std::mem::take(&mut d.reason);
            d.reason =
                format!("allowed (audit mode): would be denied {would_status}: {would_reason}");
            d.allowed = true;
            d.status = 200;
            d.www_authenticate = None;
            d.response_headers.clear();
            d.custom_body = None;
            d.audit_mode = Some(crate::decision::AuditMode {
                would_status,
                would_reason,
            });
        }
        d.id = decision_id(req);
        d
    }

    /// Whether the request's workload is one the settings put in audit mode (its namespace, and
    /// every label the scope names).
    fn in_audit_mode(&self, req: &Request) -> bool {
        let dst = &req.destination;
        self.settings.audit.iter().any(|w| {
            w.namespace == dst.namespace
                && w.labels.iter().all(|(k, v)| dst.labels.get(k) == Some(v))
        })
    }

    /// A request to a workload no ALLOW policy selects: denied under default deny (allowed, as
    /// in Istio, otherwise). Either way the first such request per namespace and generation is
    /// logged as a warning, so a typo in a namespace or a missing policy does not pass silently.
    fn by_default(&self, g: &crate::state::Generation, req: &Request, d: &mut Decision) {
        let ns = req.destination.namespace.as_str();
        let first = g
            .unselected_warned
            .lock()
            .map(|mut seen| seen.len() < 1024 && seen.insert(ns.to_owned()))
            .unwrap_or(false);
        if first {
            if self.settings.default_deny {
                tracing::warn!(namespace = %ns, "no ALLOW AuthorizationPolicy selects this workload, so its requests are denied by default (shown once per namespace and policy generation)");
            } else {
                tracing::warn!(namespace = %ns, "no ALLOW AuthorizationPolicy selects this workload, so its requests are ALLOWED (Istio's default; shown once per namespace and policy generation)");
            }
        }
        if d.allowed && self.settings.default_deny {
            d.allowed = false;
            d.status = 403;
            d.reason = "denied: no ALLOW AuthorizationPolicy applies to this workload (meshguard denies by default; `--default-allow` or `defaultDeny: false` gives Istio's allow-by-default)".into();
        }
    }

    /// Decides a request and records it: `via` names the front end in metrics and the log.
    pub async fn decide(&self, via: &'static str, req: &Request) -> Decision {
        let started = Instant::now();
        let d = self.evaluate(req).await;
        self.record(via, req, &d, started);
        d
    }

    /// A denial the front end made itself (an mTLS handshake it refused), recorded like a
    /// decision.
    pub fn refuse(&self, via: &'static str, req: &Request, reason: String) -> Decision {
        let mut d = Decision::internal(reason, self.state.current().id);
        d.id = decision_id(req);
        self.record(via, req, &d, Instant::now());
        d
    }

    /// A fail-closed denial for input the front end could not turn into a [`Request`]; counted
    /// as a bad request (the caller's or its configuration's mistake) and logged with why.
    pub fn undecidable(&self, via: &'static str, error: &str) -> Decision {
        self.state
            .metrics
            .bad_requests
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %error, "denying a request that cannot be decided");
        let mut d = Decision::internal(
            format!("denied (fail closed): {error}"),
            self.state.current().id,
        );
        d.id = generated_id();
        self.record(via, &Request::default(), &d, Instant::now());
        d
    }

    /// Records a finished decision: metrics, and the decision log line when the log is on.
    pub fn record(&self, via: &'static str, req: &Request, d: &Decision, started: Instant) {
        self.state.metrics.record_decision(
            via,
            d.allowed,
            d.status,
            d.policy.as_deref(),
            started.elapsed(),
        );
        if let Some(c) = &d.auth_config {
            self.state.metrics.record_auth_config(c, d.allowed);
        }
        if let Some(r) = &d.dry_run {
            self.state
                .metrics
                .record_dry_run(r.action, r.allowed, r.policy.as_deref());
        }
        if d.audit_mode.is_some() {
            self.state
                .metrics
                .record_audit_would_deny(d.policy.as_deref());
        }
        let observer = self.state.observer();
        if self.log.enabled() || observer.is_some() {
            let g = self.state.current();
            let mut line = crate::decide::log_entry(via, req, d, started, &g.inputs);
            // The digest of the set that decided (a reload between the decision and this line
            // leaves it out rather than naming the wrong set).
            if g.id == d.generation {
                line["digest"] = g.digest.clone().into();
            }
            if let Some(o) = observer {
                o.observe(&line);
            }
            if self.log.enabled() {
                self.log.write(line);
            }
        }
    }
}

/// The request's own id (`x-request-id`, which Envoy sets on every request), else a new one.
fn decision_id(req: &Request) -> String {
    match req.http.as_ref().map(|h| h.id.as_str()) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => generated_id(),
    }
}

/// `mg-` + 16 hex digits random per process + a 12-digit counter: unique across replicas and
/// restarts with overwhelming likelihood, with no entropy drawn per decision.
fn generated_id() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .hash_one((std::process::id(), std::time::SystemTime::now()))
    });
    format!(
        "mg-{seed:016x}{:012x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
