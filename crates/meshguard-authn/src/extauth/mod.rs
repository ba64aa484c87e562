//! Gloo-compatible external auth: the steps of an `AuthConfig` (API keys, basic auth, Rego)
//! run in order (AND) or as its `booleanExpr` says, sharing state and collecting headers.
//!
//! Everything an AuthConfig needs (Secrets, ConfigMaps, compiled Rego) is resolved when the
//! policy set loads; a config that cannot be built makes the whole set fail to load, so a
//! reload with a broken AuthConfig is refused and the previous set keeps serving.

pub mod apikey;
pub mod basic;
mod error;
pub mod ldap;
pub mod oidc;
pub mod passthrough;
pub mod rego;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;

use meshguard_policy::boolexpr::BoolExpr;
use meshguard_policy::extauth::{AuthConfig, AuthModel};
use meshguard_policy::{Identity, PolicySet, Request};
use serde_json::{Map, Value};

pub use error::{BuildError, ConfigError};

/// The result of one step or of a whole chain.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub allowed: bool,
    /// On denial: 401 (no or bad credentials) or 403 (known caller, not allowed), or what a Rego
    /// decision asked for.
    pub status: u16,
    pub body: String,
    /// Headers for the upstream request (on success).
    pub headers_to_add: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    /// Headers for the client: `WWW-Authenticate` on a 401, Rego `headers` on a denial, Rego
    /// `response_headers_to_add` on success.
    pub response_headers: Vec<(String, String)>,
    /// Why, for the decision log (never a credential).
    pub reason: String,
    /// Fields for the CheckResponse's `dynamic_metadata` (an OPA-Envoy decision's
    /// `dynamic_metadata`), which Envoy hands to later filters and its access log.
    pub dynamic_metadata: Map<String, Value>,
    /// The step could not decide (a server down, a timeout, a policy that failed). Such a step
    /// denies the whole chain, even under `!` in a booleanExpr: an outage never becomes a pass.
    pub error: bool,
}

impl StepOutcome {
    pub fn allow(reason: impl Into<String>) -> StepOutcome {
        StepOutcome {
            allowed: true,
            status: 200,
            body: String::new(),
            headers_to_add: Vec::new(),
            headers_to_remove: Vec::new(),
            response_headers: Vec::new(),
            reason: reason.into(),
            dynamic_metadata: Map::new(),
            error: false,
        }
    }

    /// A denial because the step could not decide (see [`StepOutcome::error`]).
    pub fn failed(status: u16, reason: impl Into<String>) -> StepOutcome {
        StepOutcome {
            error: true,
            ..StepOutcome::deny(status, reason)
        }
    }

    pub fn deny(status: u16, reason: impl Into<String>) -> StepOutcome {
        StepOutcome {
            allowed: false,
            status,
            ..StepOutcome::allow(reason)
        }
    }
}

/// Everything a step reads, and the chain's shared state it may extend.
pub struct StepInput<'a> {
    pub req: &'a Request,
    pub id: &'a Identity,
    /// Chain state: values earlier steps left for later ones (Gloo's `AuthorizationRequest.State`).
    pub state: &'a mut Map<String, Value>,
    /// When explaining (`meshguard check --explain`): what each step looked at and found, for
    /// people. `None` on the serving path, where nothing is collected.
    pub trace: Option<Vec<String>>,
}

impl StepInput<'_> {
    /// A request header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.req.http.as_ref().and_then(|h| h.header(name))
    }
}

enum Step {
    ApiKey(apikey::ApiKeyStep),
    Basic(basic::BasicStep),
    Rego(Box<rego::RegoStep>),
    Token(Box<token::TokenStep>),
    Ldap(Box<ldap::LdapStep>),
    PassThrough(Box<passthrough::PassThroughStep>),
    Oidc(Box<oidc::OidcStep>),
    Jwt,
}

struct CompiledStep {
    name: String,
    step: Step,
}

/// One compiled AuthConfig.
pub struct Chain {
    pub id: String,
    steps: Vec<CompiledStep>,
    expr: Option<BoolExpr>,
}

/// Every AuthConfig of a policy set, compiled, by id (`namespace.name` and unique `name`).
#[derive(Default)]
pub struct Chains {
    by_id: HashMap<String, Arc<Chain>>,
    /// The inline `glooAuth` of each ExtAuthPolicy, by the policy's `namespace.name`.
    policies: HashMap<String, Arc<Chain>>,
}

/// The chain id of an ExtAuthPolicy's `glooAuth` (logs, metrics, the decision's `auth_config`).
pub fn policy_chain_id(p: &meshguard_policy::extauth::ExtAuthPolicy) -> String {
    format!("ExtAuthPolicy/{}", p.id())
}

impl Chains {
    /// Compiles every AuthConfig of `set`; the first problem is returned with the config named.
    pub fn build(set: &PolicySet, client: &reqwest::Client) -> Result<Chains, ConfigError> {
        // Auth services are asked without following redirects: a delegate that answers an
        // unauthenticated caller with a redirect to its login page must not turn into a 200.
        let client = &reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| client.clone());
        let mut by_id = HashMap::new();
        let mut name_count: HashMap<&str, usize> = HashMap::new();
        for c in set.auth_configs() {
            *name_count.entry(c.meta.name.as_str()).or_default() += 1;
        }
        for c in set.auth_configs() {
            let chain = Arc::new(compile(set, c, client).map_err(|source| ConfigError {
                kind: "AuthConfig",
                file: c.origin.file.clone(),
                line: c.origin.line,
                namespace: c.meta.namespace.clone(),
                name: c.meta.name.clone(),
                source: Box::new(source),
            })?);
            let [full, short] = c.ids();
            by_id.insert(full, chain.clone());
            if name_count.get(c.meta.name.as_str()) == Some(&1) {
                by_id.entry(short).or_insert(chain);
            }
        }
        let mut policies = HashMap::new();
        for p in set.ext_auth_policies() {
            let meshguard_policy::extauth::ExtAuthAction::Gloo(c) = &p.action else {
                continue;
            };
            let mut chain = compile(set, c, client).map_err(|source| ConfigError {
                kind: "ExtAuthPolicy",
                file: p.origin.file.clone(),
                line: p.origin.line,
                namespace: p.meta.namespace.clone(),
                name: p.meta.name.clone(),
                source: Box::new(source),
            })?;
            chain.id = policy_chain_id(p);
            policies.insert(p.id(), Arc::new(chain));
        }
        Ok(Chains { by_id, policies })
    }

    /// The chain of an ExtAuthPolicy's `glooAuth`, by the policy's `namespace.name`.
    pub fn for_policy(&self, id: &str) -> Option<&Arc<Chain>> {
        self.policies.get(id)
    }

    /// Every AuthConfig that cannot be built, with why (for `lint`): missing Secrets or
    /// ConfigMaps, Rego that does not parse, unusable keys.
    pub fn problems(set: &PolicySet) -> Vec<(&AuthConfig, BuildError)> {
        let inline = set
            .ext_auth_policies()
            .iter()
            .filter_map(|p| match &p.action {
                meshguard_policy::extauth::ExtAuthAction::Gloo(c) => Some(c.as_ref()),
                _ => None,
            });
        set.auth_configs()
            .iter()
            .chain(inline)
            .filter_map(|c| {
                compile(set, c, &reqwest::Client::new())
                    .err()
                    .map(|e| (c, e))
            })
            .collect()
    }

    /// Only by `namespace.name`.
    pub fn get_exact(&self, id: &str) -> Option<&Arc<Chain>> {
        self.by_id.get(id).filter(|c| c.id == id)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Chain>> {
        self.by_id.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty() && self.policies.is_empty()
    }
}

/// The Secret an AuthConfig step refers to; `what` names the field for the error.
pub(crate) fn secret<'a>(
    set: &'a PolicySet,
    r: &meshguard_policy::extauth::ObjectRef,
    what: &'static str,
) -> Result<&'a meshguard_policy::extauth::Secret, BuildError> {
    set.secrets()
        .iter()
        .find(|s| s.meta.name == r.name && s.meta.namespace == r.namespace)
        .ok_or_else(|| BuildError::SecretNotLoaded {
            field: what,
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        })
}

/// An OAuth2 client secret: the `client-secret` (or `clientSecret`) entry of a Secret.
pub(crate) fn client_secret(
    set: &PolicySet,
    r: &meshguard_policy::extauth::ObjectRef,
) -> Result<String, BuildError> {
    let s = secret(set, r, "clientSecretRef")?;
    ["client-secret", "clientSecret"]
        .iter()
        .find_map(|k| s.data.get(*k))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .ok_or_else(|| BuildError::SecretEntryMissing {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            entry: "client-secret",
        })
}

fn compile(set: &PolicySet, c: &AuthConfig, client: &reqwest::Client) -> Result<Chain, BuildError> {
    let mut steps = Vec::new();
    for s in &c.steps {
        let step = match &s.model {
            AuthModel::ApiKey(a) => {
                Step::ApiKey(apikey::ApiKeyStep::build(set, &c.meta.namespace, a)?)
            }
            AuthModel::Basic(b) => Step::Basic(basic::BasicStep::build(set, b)?),
            AuthModel::Rego(r) => Step::Rego(Box::new(
                rego::RegoStep::build(set, r).map_err(|e| e.in_step(&s.name))?,
            )),
            AuthModel::AccessToken(a) => Step::Token(Box::new(
                token::TokenStep::build(set, a, client).map_err(|e| e.in_step(&s.name))?,
            )),
            AuthModel::Ldap(l) => Step::Ldap(Box::new(ldap::LdapStep::build(set, l)?)),
            AuthModel::PassThrough(p) => Step::PassThrough(Box::new(
                passthrough::PassThroughStep::build(p, client).map_err(|e| e.in_step(&s.name))?,
            )),
            AuthModel::Oidc(o) => Step::Oidc(Box::new(
                oidc::OidcStep::build(set, &c.ids()[0], o, client)
                    .map_err(|e| e.in_step(&s.name))?,
            )),
            AuthModel::Jwt => Step::Jwt,
        };
        steps.push(CompiledStep {
            name: s.name.clone(),
            step,
        });
    }
    Ok(Chain {
        id: c.ids()[0].clone(),
        steps,
        expr: c.boolean_expr.clone(),
    })
}

impl Chain {
    async fn run_step(&self, name: &str, input: &mut StepInput<'_>) -> StepOutcome {
        let Some(s) = self.steps.iter().find(|s| s.name == name) else {
            return StepOutcome::deny(403, format!("config `{name}` does not exist"));
        };
        let mark = input.trace.as_ref().map(Vec::len);
        let mut o = match &s.step {
            Step::ApiKey(k) => k.check(input),
            Step::Basic(b) => b.check(input).await,
            Step::Rego(r) => r.check(input).await,
            Step::Token(t) => t.check(input).await,
            Step::Ldap(l) => l.check(input).await,
            Step::PassThrough(p) => p.check(input).await,
            Step::Oidc(o) => o.check(input).await,
            Step::Jwt => match &input.id.jwt {
                Some(j) => {
                    // Hand the raw token on only if it is the one request authentication
                    // verified (same payload), never another bearer token of the request.
                    let bearer = input
                        .header("authorization")
                        .and_then(|a| {
                            a.strip_prefix("Bearer ")
                                .or_else(|| a.strip_prefix("bearer "))
                        })
                        .map(|t| t.trim().to_owned());
                    if let Some(tok) = bearer {
                        let same = tok
                            .split('.')
                            .nth(1)
                            .and_then(|p| {
                                base64::Engine::decode(
                                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                                    p,
                                )
                                .ok()
                            })
                            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
                            .is_some_and(|claims| claims == *j.claims);
                        if same {
                            input.state.insert("jwt".into(), Value::String(tok));
                        }
                    }
                    input
                        .state
                        .insert("jwt_claims".into(), Value::Object((*j.claims).clone()));
                    StepOutcome::allow(format!("JWT verified for {}", j.principal))
                }
                None => StepOutcome::deny(401, "no JWT verified by request authentication"),
            },
        };
        o.reason = format!("{}: {}", s.name, o.reason);
        if let (Some(trace), Some(mark)) = (input.trace.as_mut(), mark) {
            trace.insert(
                mark,
                format!(
                    "step {}: {} ({})",
                    s.name,
                    if o.error {
                        "could not decide".to_owned()
                    } else if o.allowed {
                        "passed".to_owned()
                    } else {
                        format!("denied {}", o.status)
                    },
                    o.reason
                ),
            );
        }
        o
    }

    /// Runs the chain. Denials carry the status and headers of the step that decided.
    pub async fn run(&self, req: &Request, id: &Identity) -> StepOutcome {
        let mut state = Map::new();
        let mut input = StepInput {
            req,
            id,
            state: &mut state,
            trace: None,
        };
        self.run_with(&mut input).await
    }

    /// Runs the chain as [`Chain::run`] does and says, step by step, what happened: each step's
    /// verdict and, for Rego steps, every rule of the policy's packages with its value and the
    /// lines evaluation did not reach. Slower (coverage is collected); for `check --explain`.
    pub async fn run_explained(&self, req: &Request, id: &Identity) -> (StepOutcome, Vec<String>) {
        let mut state = Map::new();
        let mut input = StepInput {
            req,
            id,
            state: &mut state,
            trace: Some(Vec::new()),
        };
        let o = self.run_with(&mut input).await;
        (o, input.trace.take().unwrap_or_default())
    }

    async fn run_with(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let mut passed: Vec<StepOutcome> = Vec::new();
        let mut last_denial: Option<StepOutcome> = None;
        let mut first_error: Option<StepOutcome> = None;
        let allowed = match &self.expr {
            None => {
                let mut ok = true;
                for s in &self.steps {
                    let o = self.run_step(&s.name, input).await;
                    if o.error && first_error.is_none() {
                        first_error = Some(o.clone());
                    }
                    if o.allowed {
                        passed.push(o);
                    } else {
                        last_denial = Some(o);
                        ok = false;
                        break;
                    }
                }
                ok
            }
            Some(e) => {
                let mut acc = Acc {
                    passed: &mut passed,
                    last_denial: &mut last_denial,
                    first_error: &mut first_error,
                };
                self.eval(e, input, &mut acc).await
            }
        };
        if let Some(e) = first_error {
            return e;
        }
        if !allowed {
            return last_denial.unwrap_or_else(|| {
                StepOutcome::deny(403, format!("AuthConfig {} denied", self.id))
            });
        }
        let mut out = StepOutcome::allow(format!(
            "AuthConfig {} allowed ({})",
            self.id,
            passed
                .iter()
                .map(|p| p.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
        for p in passed {
            out.headers_to_add.extend(p.headers_to_add);
            out.headers_to_remove.extend(p.headers_to_remove);
            out.response_headers.extend(p.response_headers);
            out.dynamic_metadata.extend(p.dynamic_metadata);
        }
        out
    }

    /// Short-circuit evaluation, left to right; steps not needed are not run. What an operand
    /// that ends up false contributed (headers, state) is rolled back, so `(a && b) || c` with
    /// `b` failing carries nothing of `a`, and `!x` never contributes.
    fn eval<'s>(
        &'s self,
        e: &'s BoolExpr,
        input: &'s mut StepInput<'_>,
        acc: &'s mut Acc<'_>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 's>> {
        Box::pin(async move {
            match e {
                BoolExpr::Step(n) => {
                    let o = self.run_step(n, input).await;
                    if o.error && acc.first_error.is_none() {
                        *acc.first_error = Some(o.clone());
                    }
                    if o.allowed {
                        acc.passed.push(o);
                        true
                    } else {
                        *acc.last_denial = Some(o);
                        false
                    }
                }
                BoolExpr::Not(inner) => {
                    let (mark, snapshot) = (acc.passed.len(), input.state.clone());
                    let v = self.eval(inner, input, acc).await;
                    acc.passed.truncate(mark);
                    *input.state = snapshot;
                    !v
                }
                BoolExpr::And(a, b) => {
                    let (mark, snapshot) = (acc.passed.len(), input.state.clone());
                    let ok = self.eval(a, input, acc).await && self.eval(b, input, acc).await;
                    if !ok {
                        acc.passed.truncate(mark);
                        *input.state = snapshot;
                    }
                    ok
                }
                BoolExpr::Or(a, b) => {
                    if self.eval(a, input, acc).await {
                        return true;
                    }
                    self.eval(b, input, acc).await
                }
            }
        })
    }
}

/// What a booleanExpr evaluation collects.
struct Acc<'a> {
    passed: &'a mut Vec<StepOutcome>,
    last_denial: &'a mut Option<StepOutcome>,
    first_error: &'a mut Option<StepOutcome>,
}
