//! Rego steps, evaluated in-process with regorus:
//!
//! - `opaAuth` (Gloo): input `{check_request, http_request, state}`; the `query`'s first
//!   expression must be `true` (or an array whose first element is `true`) to allow.
//! - `opaEnvoy` (meshguard): opa-envoy-plugin's input (`attributes` in protojson names,
//!   `parsed_path`, `parsed_query`, `parsed_body`, `truncated_body`, `version`) and its decision:
//!   a rule (default `envoy/authz/allow`) that is a boolean or an object with `allowed` and
//!   optional `headers`, `response_headers_to_add`, `request_headers_to_remove`, `http_status`,
//!   `body`, `dynamic_metadata`.
//!
//! Builtins real policies use that regorus leaves to the host are provided as extensions:
//! `io.jwt.decode`, `io.jwt.decode_verify` and `io.jwt.verify_{rs,ps,es,hs}{256,384,512}`;
//! `json.match_schema` replaces regorus' own so that a schema is compiled once, not per call.
//! Any error (a policy that fails, a bad result shape, the time limit) denies with the reason.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use meshguard_policy::extauth::{RegoAuth, RegoMode};
use meshguard_policy::PolicySet;
use regorus::Value as RValue;
use serde_json::{json, Map, Value};

use super::{BuildError, StepInput, StepOutcome};

/// Wall-clock bound on one evaluation.
pub const EVAL_LIMIT: Duration = Duration::from_millis(100);

/// Evaluations allowed to run at once (2 per core): a flood of slow policies queues here for
/// at most [`QUEUE_LIMIT`] and is then denied (503), instead of filling tokio's blocking pool
/// (512 threads by default, shared with password hashing and policy reloads).
fn eval_slots() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cores * 2))
    })
}

/// How long an evaluation may wait for a slot.
pub const QUEUE_LIMIT: Duration = Duration::from_secs(1);

pub struct RegoStep {
    template: regorus::Engine,
    mode: RegoMode,
    /// Evaluations left that go straight to the blocking pool: set after one ran out of the
    /// inline budget.
    pool_only: AtomicU32,
}

/// How long an evaluation may run on the async worker that received the request before it is
/// moved to the blocking pool.
pub const INLINE_LIMIT: Duration = Duration::from_millis(2);

/// After an evaluation outgrew [`INLINE_LIMIT`], this many of the step's next evaluations skip
/// the inline attempt.
const POOL_AFTER_OVERRUN: u32 = 256;

fn timer(limit: Duration) -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    }
}

fn is_time_limit(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<regorus::utils::limits::LimitError>(),
            Some(regorus::utils::limits::LimitError::TimeLimitExceeded { .. })
        )
    })
}

fn b64url(s: &str) -> anyhow::Result<Vec<u8>> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))?)
}

fn to_rvalue(v: &Value) -> RValue {
    // Straight from the borrowed document: no copy of it first.
    serde::Deserialize::deserialize(v).unwrap_or_else(|_| RValue::from(v.clone()))
}

fn from_rvalue(v: &RValue) -> Value {
    if matches!(v, RValue::Undefined) {
        return Value::Null;
    }
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A compact JWS split into its three parts: header, payload, signature (base64url).
fn jws_parts(token: &str) -> anyhow::Result<(&str, &str, &str)> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => anyhow::bail!("io.jwt.decode: not a compact JWS"),
    }
}

/// The decoded header and payload of a compact JWS.
fn jwt_header_payload(h: &str, p: &str) -> anyhow::Result<(Value, Value)> {
    let header: Value = serde_json::from_slice(&b64url(h)?)?;
    let payload: Value = serde_json::from_slice(&b64url(p)?)?;
    Ok((header, payload))
}

/// `io.jwt.decode(token)`: `[header, payload, signature_hex]`, no verification.
fn jwt_decode(token: &str) -> anyhow::Result<(Value, Value, String)> {
    let (h, p, s) = jws_parts(token)?;
    let (header, payload) = jwt_header_payload(h, p)?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw = b64url(s)?;
    let mut sig = String::with_capacity(raw.len() * 2);
    for b in raw {
        sig.push(char::from(HEX[usize::from(b >> 4)]));
        sig.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok((header, payload, sig))
}

/// What one Rego step remembers between evaluations, shared by the engine clones of one
/// compiled policy set (a reload starts empty): parsed verification keys, signatures already
/// verified, compiled JSON schemas. Each is pure in its key, so a hit decides exactly as a miss
/// would; each is bounded and emptied when full.
#[derive(Default)]
struct RegoCaches {
    /// Algorithm -> `cert` argument (JWKS, JWK or PEM) -> its keys, with an id for `verified`.
    /// Nested, not keyed by a tuple, so a lookup borrows the argument instead of copying it.
    keys: std::sync::Mutex<KeyMap>,
    /// Key set id -> tokens whose signature verified under that key set. Only successes go in,
    /// so a caller cannot fill it with tokens of its choosing without valid signatures.
    verified: std::sync::Mutex<VerifiedMap>,
    /// Schema JSON -> compiled validator.
    schemas: std::sync::Mutex<HashMap<Box<str>, Arc<jsonschema::Validator>>>,
}

type KeyMap = HashMap<Algorithm, HashMap<Box<str>, (u64, Arc<Vec<DecodingKey>>)>>;
type VerifiedMap = HashMap<u64, HashSet<Box<str>>>;
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Entries kept per cache before it is emptied: key sets and schemas are few per policy set;
/// verified tokens are one per live caller token.
const KEY_SETS_KEPT: usize = 64;
const SCHEMAS_KEPT: usize = 64;
const VERIFIED_KEPT: usize = 16_384;

impl RegoCaches {
    fn keys(&self, cert: &str, alg: Algorithm) -> (u64, Arc<Vec<DecodingKey>>) {
        if let Ok(map) = self.keys.lock() {
            if let Some((id, k)) = map.get(&alg).and_then(|m| m.get(cert)) {
                return (*id, k.clone());
            }
        }
        let keys = Arc::new(keys_from(cert, alg));
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.keys.lock() {
            if map.values().map(|m| m.len()).sum::<usize>() >= KEY_SETS_KEPT {
                map.clear();
            }
            map.entry(alg)
                .or_default()
                .insert(cert.into(), (id, keys.clone()));
        }
        (id, keys)
    }

    /// Whether `token`'s signature verifies with `alg` under one of `keys` (set `id`).
    fn verify(&self, id: u64, token: &str, alg: Algorithm, keys: &[DecodingKey]) -> bool {
        if let Ok(set) = self.verified.lock() {
            if set.get(&id).is_some_and(|s| s.contains(token)) {
                return true;
            }
        }
        if !verify_sig(token, alg, keys) {
            return false;
        }
        if let Ok(mut set) = self.verified.lock() {
            if set.values().map(|s| s.len()).sum::<usize>() >= VERIFIED_KEPT {
                set.clear();
            }
            set.entry(id).or_default().insert(token.into());
        }
        true
    }

    fn schema(&self, json: &str) -> anyhow::Result<Arc<jsonschema::Validator>> {
        if let Some(v) = self.schemas.lock().ok().and_then(|m| m.get(json).cloned()) {
            return Ok(v);
        }
        let schema: Value = serde_json::from_str(json)
            .map_err(|_| anyhow::anyhow!("json.match_schema: not a valid json schema"))?;
        let v = Arc::new(jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("{e}"))?);
        if let Ok(mut m) = self.schemas.lock() {
            if m.len() >= SCHEMAS_KEPT {
                m.clear();
            }
            m.insert(json.into(), v.clone());
        }
        Ok(v)
    }
}

/// Keys from OPA's `cert` argument: a JWKS, a single JWK, a PEM certificate or public key.
fn keys_from(cert: &str, alg: Algorithm) -> Vec<DecodingKey> {
    let t = cert.trim();
    if t.starts_with('{') {
        if let Ok(set) = serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(t) {
            return set
                .keys
                .iter()
                .filter_map(|k| DecodingKey::from_jwk(k).ok())
                .collect();
        }
        if let Ok(k) = serde_json::from_str::<jsonwebtoken::jwk::Jwk>(t) {
            return DecodingKey::from_jwk(&k).into_iter().collect();
        }
        return Vec::new();
    }
    let pem = t.as_bytes();
    let key = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem).ok(),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem).ok(),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem).ok(),
        _ => None,
    };
    key.into_iter().collect()
}

/// Signature check only (OPA's `io.jwt.verify_*`): exp/nbf are not looked at. The header must
/// parse and name `alg`; the signature is checked over the token's first two parts as sent.
fn verify_sig(token: &str, alg: Algorithm, keys: &[DecodingKey]) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    if header.alg != alg {
        return false;
    }
    let Some((message, signature)) = token.rsplit_once('.') else {
        return false;
    };
    keys.iter().any(|k| {
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), k, alg).unwrap_or(false)
    })
}

fn alg_of(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// `io.jwt.decode_verify(token, constraints)` as OPA defines it: `[valid, header, payload]`,
/// `[false, {}, {}]` when anything fails. Constraints: `cert` or `secret`, optional `alg`,
/// `iss`, `aud`, `time` (ns since the epoch).
fn decode_verify(caches: &RegoCaches, token: &str, c: &Value) -> Value {
    let fail = json!([false, {}, {}]);
    let Ok((header, payload)) = jws_parts(token).and_then(|(h, p, _)| jwt_header_payload(h, p))
    else {
        return fail;
    };
    let Some(alg) = header["alg"].as_str().and_then(alg_of) else {
        return fail;
    };
    if let Some(want) = c["alg"].as_str() {
        if header["alg"].as_str() != Some(want) {
            return fail;
        }
    }
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    let verified = match (c["cert"].as_str(), c["secret"].as_str()) {
        (Some(cert), None) if !hmac => {
            let (id, keys) = caches.keys(cert, alg);
            caches.verify(id, token, alg, &keys)
        }
        // Shared secrets are not kept: HMAC is cheap, and a secret should not outlive its use.
        (None, Some(secret)) if hmac => {
            verify_sig(token, alg, &[DecodingKey::from_secret(secret.as_bytes())])
        }
        _ => false,
    };
    if !verified {
        return fail;
    }
    let now = c["time"].as_f64().map(|ns| ns / 1e9).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(f64::MAX)
    });
    if payload["exp"].as_f64().is_some_and(|e| now >= e)
        || payload["nbf"].as_f64().is_some_and(|n| now < n)
    {
        return fail;
    }
    if let Some(iss) = c["iss"].as_str() {
        if payload["iss"].as_str() != Some(iss) {
            return fail;
        }
    }
    // OPA: a token with `aud` needs a matching `aud` constraint, and a constraint needs a token
    // `aud` that contains it.
    let token_aud: Vec<&str> = match &payload["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    match c["aud"].as_str() {
        Some(a) if !token_aud.contains(&a) => return fail,
        None if !token_aud.is_empty() => return fail,
        _ => {}
    }
    json!([true, header, payload])
}

/// The `i`th argument of a builtin as a string (a non-string is an error, as in OPA).
fn str_arg(args: &[RValue], i: usize) -> anyhow::Result<String> {
    match args.get(i) {
        Some(a) => Ok(a.as_string()?.to_string()),
        None => anyhow::bail!("missing argument {}", i + 1),
    }
}

/// `json.match_schema(document, schema)` as OPA defines it: `[true, []]` when the document
/// matches, else `[false, errors]` with one `{error, type, field, desc}` object per violation.
/// Replaces regorus' builtin, which compiles the schema on every call (most of a small
/// policy's evaluation); here a schema is compiled once per policy set. Shape and caching as in
/// OPA's `builtinJSONMatchSchema` (topdown/jsonschema.go: an errors array, empty on success;
/// compiled schemas cached keyed on the schema value; a schema that does not compile is an
/// evaluation error).
fn match_schema(caches: &RegoCaches, args: &[RValue]) -> anyhow::Result<RValue> {
    let (Some(doc), Some(schema)) = (args.first(), args.get(1)) else {
        anyhow::bail!("json.match_schema: expects 2 arguments");
    };
    if matches!(doc, RValue::Undefined) || matches!(schema, RValue::Undefined) {
        return Ok(RValue::Undefined);
    }
    let schema_json = match schema {
        RValue::String(s) => s.to_string(),
        other => other.to_json_str()?,
    };
    let validator = caches.schema(&schema_json)?;
    let document = serde_json::to_value(doc)?;
    let errors: Vec<Value> = validator
        .iter_errors(&document)
        .map(|e| {
            let path = e.instance_path().as_str();
            let field = if path.is_empty() {
                "(root)".to_owned()
            } else {
                path.trim_start_matches('/').replace('/', ".")
            };
            let desc = e.to_string();
            json!({
                "error": format!("{field}: {desc}"),
                "type": e.kind().keyword(),
                "field": field,
                "desc": desc,
            })
        })
        .collect();
    Ok(to_rvalue(&json!([errors.is_empty(), errors])))
}

fn add_builtins(e: &mut regorus::Engine, caches: &Arc<RegoCaches>) -> anyhow::Result<()> {
    let c = caches.clone();
    e.add_extension(
        "json.match_schema".into(),
        2,
        Box::new(move |args: Vec<RValue>| match_schema(&c, &args)),
    )?;
    e.add_extension(
        "io.jwt.decode".into(),
        1,
        Box::new(|args: Vec<RValue>| {
            let t = str_arg(&args, 0)?;
            let (h, p, s) = jwt_decode(&t)?;
            Ok(to_rvalue(&json!([h, p, s])))
        }),
    )?;
    let c = caches.clone();
    e.add_extension(
        "io.jwt.decode_verify".into(),
        2,
        Box::new(move |args: Vec<RValue>| {
            let t = str_arg(&args, 0)?;
            let constraints = args.get(1).map(from_rvalue).unwrap_or(Value::Null);
            Ok(to_rvalue(&decode_verify(&c, &t, &constraints)))
        }),
    )?;
    for name in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "HS256", "HS384",
        "HS512",
    ] {
        let alg = alg_of(name).ok_or_else(|| anyhow::anyhow!("alg"))?;
        let hmac = name.starts_with("HS");
        let c = caches.clone();
        e.add_extension(
            format!("io.jwt.verify_{}", name.to_ascii_lowercase()),
            2,
            Box::new(move |args: Vec<RValue>| {
                let t = str_arg(&args, 0)?;
                let k = str_arg(&args, 1)?;
                let ok = if hmac {
                    verify_sig(&t, alg, &[DecodingKey::from_secret(k.as_bytes())])
                } else {
                    let (id, keys) = c.keys(&k, alg);
                    c.verify(id, &t, alg, &keys)
                };
                Ok(RValue::from(ok))
            }),
        )?;
    }
    Ok(())
}

impl RegoStep {
    pub fn build(set: &PolicySet, r: &RegoAuth) -> Result<RegoStep, BuildError> {
        let mut modules: Vec<(String, String)> = Vec::new();
        let mut data: Vec<(String, String)> = Vec::new();
        for m in &r.modules {
            let cm = set
                .config_maps()
                .iter()
                .find(|c| c.meta.name == m.name && c.meta.namespace == m.namespace)
                .ok_or_else(|| BuildError::ConfigMapNotLoaded {
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                })?;
            for (k, v) in &cm.data {
                let name = format!("{}/{}/{k}", m.namespace, m.name);
                if k.ends_with(".json") {
                    data.push((name, v.clone()));
                } else {
                    modules.push((name, v.clone()));
                }
            }
        }
        if modules.is_empty() {
            return Err(BuildError::NoRegoModule);
        }
        // Current OPA parses Rego v1; Gloo-era policies are v0. Try v1, then v0.
        let caches = Arc::new(RegoCaches::default());
        let build = |v0: bool| -> Result<regorus::Engine, BuildError> {
            let mut e = regorus::Engine::new();
            e.set_rego_v0(v0);
            if v0 {
                add_v0_builtins(&mut e);
            }
            for (name, src) in &modules {
                e.add_policy(name.clone(), src.clone())
                    .map_err(|source| BuildError::RegoFile {
                        name: name.clone(),
                        source,
                    })?;
            }
            for (name, json) in &data {
                e.add_data_json(json)
                    .map_err(|source| BuildError::RegoFile {
                        name: name.clone(),
                        source,
                    })?;
            }
            add_builtins(&mut e, &caches).map_err(BuildError::RegoBuiltins)?;
            e.set_execution_timer_config(timer(EVAL_LIMIT));
            Ok(e)
        };
        let mut template = match build(false) {
            Ok(e) => e,
            Err(v1) => build(true).map_err(|_| v1)?,
        };
        // Analyse once now (a trivial query prepares every module), so a policy that parses but
        // cannot be scheduled (an unsafe variable, a bad reference) refuses the load instead of
        // denying every request later; clones start prepared.
        template
            .eval_query("true".into(), false)
            .map_err(BuildError::RegoCompile)?;
        Ok(RegoStep {
            template,
            mode: r.mode.clone(),
            pool_only: AtomicU32::new(0),
        })
    }

    /// Evaluates within [`INLINE_LIMIT`] on this thread, else on tokio's blocking pool: an
    /// evaluation may run up to [`EVAL_LIMIT`], which must not stall the async workers that
    /// carry every other request. The input document is built here; an engine clone (shared,
    /// reference-counted modules) evaluates it.
    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let doc = match &self.mode {
            RegoMode::Gloo { .. } => gloo_input(input),
            RegoMode::Envoy { .. } => envoy_input(input),
        };
        let explain = input.trace.is_some();
        // First on this thread within INLINE_LIMIT: nearly every policy decides in well under
        // it, and the hop to the blocking pool (two thread wake-ups) cost more than the
        // evaluation. One that runs out of that budget starts again on the pool with the full
        // EVAL_LIMIT (evaluation has no side effects), and the next evaluations of this step go
        // straight there for a while, so a slow policy does not pay twice nor hold the
        // async workers.
        if !explain && self.pool_only.load(Ordering::Relaxed) == 0 {
            let mut engine = self.template.clone();
            engine.set_execution_timer_config(timer(INLINE_LIMIT));
            match evaluate_within(engine, &self.mode, &doc) {
                Ok(o) => return o,
                Err(err) if !is_time_limit(&err) => {
                    return StepOutcome::failed(
                        403,
                        format!("Rego evaluation failed (denied): {err}"),
                    )
                }
                Err(_) => self.pool_only.store(POOL_AFTER_OVERRUN, Ordering::Relaxed),
            }
        } else if !explain {
            let _ = self
                .pool_only
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        let engine = self.template.clone();
        let mode = self.mode.clone();
        let permit =
            match tokio::time::timeout(QUEUE_LIMIT, eval_slots().clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    return StepOutcome::failed(
                        503,
                        "Rego evaluation queue full (denied): too many evaluations in flight",
                    )
                }
            };
        let run = move || {
            let o = if explain {
                evaluate_explained(engine, &mode, &doc)
            } else {
                (evaluate(engine, &mode, &doc), Vec::new())
            };
            drop(permit);
            o
        };
        match tokio::task::spawn_blocking(run).await {
            Ok((o, lines)) => {
                if let Some(t) = input.trace.as_mut() {
                    t.extend(lines);
                }
                o
            }
            Err(e) => StepOutcome::failed(403, format!("Rego evaluation aborted (denied): {e}")),
        }
    }
}

/// Values longer than this are cut in explanations (a decoded token, a whole input).
const EXPLAIN_VALUE_CHARS: usize = 160;

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= EXPLAIN_VALUE_CHARS {
        return s;
    }
    let cut: String = s.chars().take(EXPLAIN_VALUE_CHARS).collect();
    format!("{cut}... ({} chars)", s.chars().count())
}

/// [`evaluate`], then what a person needs to see why: every rule of the modules' packages with
/// its value (rules left out are undefined for this input) and, from regorus' coverage, the
/// policy lines evaluation never reached or found false.
fn evaluate_explained(
    mut e: regorus::Engine,
    mode: &RegoMode,
    doc: &Value,
) -> (StepOutcome, Vec<String>) {
    e.set_enable_coverage(true);
    e.clear_coverage_data();
    let o = evaluate(e.clone(), mode, doc);
    let mut lines = Vec::new();
    e.set_input(to_rvalue(doc));
    let mut packages = e.get_packages().unwrap_or_default();
    packages.sort();
    packages.dedup();
    for pkg in packages {
        match e.eval_query(pkg.clone(), false) {
            Ok(r) => {
                let v = r
                    .result
                    .first()
                    .and_then(|q| q.expressions.first())
                    .map(|x| from_rvalue(&x.value))
                    .unwrap_or(Value::Null);
                let rules = v.as_object().cloned().unwrap_or_default();
                for (name, value) in &rules {
                    lines.push(format!("  {pkg}.{name} = {}", short(value)));
                }
                let undefined: Vec<String> = rule_names(&e, &pkg)
                    .into_iter()
                    .filter(|n| !rules.contains_key(n))
                    .collect();
                if !undefined.is_empty() {
                    lines.push(format!(
                        "  {pkg}: undefined for this input: {}",
                        undefined.join(", ")
                    ));
                }
            }
            Err(err) => lines.push(format!("  {pkg}: evaluation failed: {err}")),
        }
    }
    if let Ok(report) = e.get_coverage_report() {
        for file in &report.files {
            let src: Vec<&str> = file.code.lines().collect();
            let missed: Vec<String> = file
                .not_covered
                .iter()
                .filter_map(|n| {
                    let i = usize::try_from(*n).ok()?.checked_sub(1)?;
                    Some(format!("    {}:{n}: {}", file.path, src.get(i)?.trim()))
                })
                .collect();
            if !missed.is_empty() {
                lines.push(
                    "  not reached, or false (where evaluation stopped in each rule):".to_owned(),
                );
                lines.extend(missed);
            }
        }
    }
    (o, lines)
}

/// The names of the rules that the modules of package `pkg` (`data.a.b`) define, from the
/// heads of their rules (lines that start at column 0 with a name), in order, once each.
fn rule_names(e: &regorus::Engine, pkg: &str) -> Vec<String> {
    let want = pkg.strip_prefix("data.").unwrap_or(pkg);
    let mut names: Vec<String> = Vec::new();
    for source in e.get_policies().unwrap_or_default() {
        let text = source.get_contents();
        let mut in_pkg = false;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("package ") {
                in_pkg = p.trim() == want;
                continue;
            }
            if !in_pkg || line.starts_with(char::is_whitespace) {
                continue;
            }
            let head = line.strip_prefix("default ").unwrap_or(line);
            let name: String = head
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let rest = head[name.len()..].trim_start();
            let is_rule = ["if", ":=", "=", "[", "(", "{", "contains"]
                .iter()
                .any(|t| rest.starts_with(t))
                || rest.is_empty();
            if !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && !["import", "package", "else", "not", "some", "every"].contains(&name.as_str())
                && is_rule
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    names
}

fn evaluate(e: regorus::Engine, mode: &RegoMode, doc: &Value) -> StepOutcome {
    match evaluate_within(e, mode, doc) {
        Ok(o) => o,
        Err(err) => StepOutcome::failed(403, format!("Rego evaluation failed (denied): {err}")),
    }
}

/// [`evaluate`], with a failed evaluation (the time limit among them) left to the caller.
fn evaluate_within(
    mut e: regorus::Engine,
    mode: &RegoMode,
    doc: &Value,
) -> anyhow::Result<StepOutcome> {
    e.set_input(to_rvalue(doc));
    Ok(match mode {
        RegoMode::Gloo { query } => {
            let r = e.eval_query(query.clone(), false)?;
            let v = r
                .result
                .first()
                .and_then(|q| q.expressions.first())
                .map(|x| x.value.clone())
                .unwrap_or(RValue::Undefined);
            let allowed = match &v {
                RValue::Bool(b) => *b,
                RValue::Array(a) => matches!(a.first(), Some(RValue::Bool(true))),
                _ => false,
            };
            if allowed {
                StepOutcome::allow(format!("Rego query `{query}` is true"))
            } else {
                StepOutcome::deny(403, format!("Rego query `{query}` is not true"))
            }
        }
        RegoMode::Envoy { path } => {
            let rule = format!("data.{}", path.replace('/', "."));
            let v = e.eval_rule(rule.clone())?;
            envoy_decision(&rule, &from_rvalue(&v), matches!(v, RValue::Undefined))
        }
    })
}

/// The request headers as Envoy sends them in a CheckRequest: with the pseudo-headers
/// `:authority`, `:method`, `:path` and `:scheme` (Envoy always sets `:scheme`), which policies
/// written for opa-envoy-plugin read (`input.attributes.request.http.headers[":path"]`).
fn headers_object(input: &StepInput<'_>) -> Map<String, Value> {
    let mut h = Map::new();
    if let Some(http) = &input.req.http {
        h.insert(":authority".into(), Value::String(http.host.clone()));
        h.insert(":method".into(), Value::String(http.method.clone()));
        h.insert(":path".into(), Value::String(http.raw_path.clone()));
        if !http.scheme.is_empty() {
            h.insert(":scheme".into(), Value::String(http.scheme.clone()));
        }
        // A header named like a pseudo-header (possible only in `check` request files) must
        // not replace the real one.
        for (k, v) in http.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            h.insert(k.clone(), Value::String(v.clone()));
        }
    }
    h
}

fn http_object(input: &StepInput<'_>, headers: &Map<String, Value>) -> Value {
    let Some(http) = &input.req.http else {
        return json!({});
    };
    let mut o = json!({
        "id": http.id,
        "method": http.method,
        "headers": headers,
        "path": http.raw_path,
        "host": http.host,
        "scheme": http.scheme,
        "protocol": http.protocol,
    });
    if let Some(b) = &http.body {
        o["body"] = Value::String(String::from_utf8_lossy(&b.bytes).into_owned());
        o["size"] = json!(b.bytes.len());
    }
    o
}

/// Gloo's input: `check_request` as Go's encoding/json renders the Envoy CheckRequest,
/// `http_request` (its http part) and the chain `state`.
fn gloo_input(input: &StepInput<'_>) -> Value {
    let headers = headers_object(input);
    let http = http_object(input, &headers);
    let addr = |a: Option<std::net::SocketAddr>| match a {
        Some(a) => {
            json!({"Address": {"SocketAddress": {"address": a.ip().to_string(), "PortSpecifier": {"PortValue": a.port()}}}})
        }
        None => json!({}),
    };
    let mut source = json!({"address": addr(input.req.peer_addr)});
    if let Some(p) = &input.id.peer {
        source["principal"] = Value::String(p.clone());
    }
    json!({
        "check_request": {"attributes": {
            "source": source,
            "destination": {"address": addr(input.req.local_addr)},
            "request": {"http": http},
            "context_extensions": input.req.context_extensions,
            "metadata_context": {},
        }},
        "http_request": http,
        "state": if input.state.is_empty() { Value::Null } else { Value::Object(input.state.clone()) },
    })
}

fn parsed_path(raw: &str) -> Vec<Value> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed
        .split('/')
        .map(|seg| Value::String(percent_decode(seg)))
        .collect()
}

use meshguard_policy::path::percent_decode_lossy as percent_decode;

fn parsed_query(raw: &str) -> Map<String, Value> {
    let mut q: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    if let Some((_, query)) = raw.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " "));
            q.entry(dec(k)).or_default().push(Value::String(dec(v)));
        }
    }
    q.into_iter().map(|(k, v)| (k, Value::Array(v))).collect()
}

/// opa-envoy-plugin's input document (envoyauth/request.go), protojson (camelCase) names.
fn envoy_input(input: &StepInput<'_>) -> Value {
    let headers = headers_object(input);
    let http = http_object(input, &headers);
    let raw_path = input
        .req
        .http
        .as_ref()
        .map(|h| h.raw_path.as_str())
        .unwrap_or("/");
    let addr = |a: Option<std::net::SocketAddr>| match a {
        Some(a) => json!({"socketAddress": {"address": a.ip().to_string(), "portValue": a.port()}}),
        None => json!({}),
    };
    let mut source = json!({"address": addr(input.req.peer_addr)});
    if let Some(p) = &input.id.peer {
        source["principal"] = Value::String(p.clone());
    }
    let content_type = headers
        .get("content-type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = input.req.http.as_ref().and_then(|h| h.body.as_ref());
    let cut = body.is_some_and(|b| b.truncated);
    let (parsed_body, truncated) = match body.map(|b| b.bytes.as_slice()) {
        Some(b) if content_type.starts_with("application/json") => {
            let declared = headers
                .get("content-length")
                .and_then(Value::as_str)
                .and_then(|l| l.parse::<usize>().ok());
            let truncated = cut || declared.is_some_and(|l| l > b.len());
            if truncated {
                (Value::Null, true)
            } else {
                (serde_json::from_slice(b).unwrap_or(Value::Null), false)
            }
        }
        Some(b) if content_type.starts_with("application/x-www-form-urlencoded") => (
            Value::Object(parsed_query(&format!("?{}", String::from_utf8_lossy(b)))),
            cut,
        ),
        _ => (Value::Null, cut),
    };
    let mut doc = json!({
        "attributes": {
            "source": source,
            "destination": {"address": addr(input.req.local_addr)},
            "request": {"http": http},
            "contextExtensions": input.req.context_extensions,
            "metadataContext": {},
        },
        "parsed_path": parsed_path(raw_path),
        "parsed_query": parsed_query(raw_path),
        "parsed_body": parsed_body,
        "truncated_body": truncated,
        "version": {"ext_authz": "v3", "encoding": "protojson"},
    });
    if let Some(p) = &input.id.peer {
        doc["source_principal"] = Value::String(p.clone());
    }
    doc
}

fn header_pairs(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, val) in o {
            match val {
                Value::String(s) => out.push((k.to_ascii_lowercase(), s.clone())),
                Value::Array(a) => {
                    for s in a.iter().filter_map(Value::as_str) {
                        out.push((k.to_ascii_lowercase(), s.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// opa-envoy-plugin's decision (envoyauth/response.go): a boolean, or an object with a
/// required boolean `allowed`.
fn envoy_decision(rule: &str, v: &Value, undefined: bool) -> StepOutcome {
    if undefined {
        return StepOutcome::deny(403, format!("{rule} is undefined"));
    }
    match v {
        Value::Bool(true) => StepOutcome::allow(format!("{rule} is true")),
        Value::Bool(false) => StepOutcome::deny(403, format!("{rule} is false")),
        Value::Object(o) => {
            let Some(allowed) = o.get("allowed").and_then(Value::as_bool) else {
                return StepOutcome::deny(
                    403,
                    format!("{rule}: the decision object needs a boolean `allowed`"),
                );
            };
            let mut out = if allowed {
                StepOutcome::allow(format!("{rule}.allowed is true"))
            } else {
                let status = o.get("http_status").and_then(Value::as_u64).unwrap_or(403);
                // A denial must not look like a success (nginx and Traefik allow any 2xx).
                if !(300..=599).contains(&status) {
                    return StepOutcome::deny(
                        403,
                        format!("{rule}: http_status {status} is not an HTTP status"),
                    );
                }
                StepOutcome::deny(status as u16, format!("{rule}.allowed is false"))
            };
            if let Some(b) = o.get("body").and_then(Value::as_str) {
                out.body = b.to_owned();
            }
            match o.get("dynamic_metadata") {
                None => {}
                Some(Value::Object(m)) => out.dynamic_metadata = m.clone(),
                Some(other) => {
                    return StepOutcome::deny(
                        403,
                        format!("{rule}: dynamic_metadata must be an object, found {other}"),
                    )
                }
            }
            let headers = header_pairs(o.get("headers").unwrap_or(&Value::Null));
            if allowed {
                out.headers_to_add = headers;
                out.response_headers =
                    header_pairs(o.get("response_headers_to_add").unwrap_or(&Value::Null));
                out.headers_to_remove = o
                    .get("request_headers_to_remove")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_ascii_lowercase)
                            .collect()
                    })
                    .unwrap_or_default();
            } else {
                out.response_headers = headers;
            }
            out
        }
        other => StepOutcome::deny(
            403,
            format!("{rule} must be a boolean or an object with `allowed`, found {other}"),
        ),
    }
}

/// OPA's deprecated `any(collection)` and `all(collection)`, which v0 policies still call (Gloo's
/// guide's allow-get-users Rego uses `any`) and regorus does not define: whether any (every)
/// element of an array or set is `true`. OPA v0 topdown/aggregates.go: `all` of an empty
/// collection is true, `any` of one is false; other argument types are a type error.
fn add_v0_builtins(e: &mut regorus::Engine) {
    fn booleans(args: &[regorus::Value]) -> anyhow::Result<Vec<bool>> {
        let [arg] = args else {
            anyhow::bail!("expects one argument");
        };
        let items: Vec<&regorus::Value> = match arg {
            regorus::Value::Array(a) => a.iter().collect(),
            regorus::Value::Set(s) => s.iter().collect(),
            _ => anyhow::bail!("operand 1 must be one of {{array, set}}"),
        };
        Ok(items
            .into_iter()
            .map(|v| matches!(v, regorus::Value::Bool(true)))
            .collect())
    }
    // Adding fails only when the name is taken, i.e. a future regorus defines them itself.
    let _ = e.add_extension(
        "any".to_owned(),
        1,
        Box::new(
            |args: Vec<regorus::Value>| -> anyhow::Result<regorus::Value> {
                Ok(regorus::Value::Bool(
                    booleans(&args)?.into_iter().any(|b| b),
                ))
            },
        ),
    );
    let _ = e.add_extension(
        "all".to_owned(),
        1,
        Box::new(
            |args: Vec<regorus::Value>| -> anyhow::Result<regorus::Value> {
                Ok(regorus::Value::Bool(
                    booleans(&args)?.into_iter().all(|b| b),
                ))
            },
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_as_opa_envoy_parses_them() {
        assert_eq!(
            parsed_path("/a/b%20c/?x=1"),
            vec![json!("a"), json!("b c"), json!("")]
        );
        assert_eq!(parsed_path("/"), vec![json!("")]);
        // Hostile escapes: a `%` before a multi-byte character, truncated escapes.
        assert_eq!(
            parsed_path("/%aé/%/%4"),
            vec![json!("%aé"), json!("%"), json!("%4")]
        );
        let q = parsed_query("/p?a=1&a=2&b=x%2By&c");
        assert_eq!(
            Value::Object(q),
            json!({"a": ["1", "2"], "b": ["x+y"], "c": [""]})
        );
    }

    /// Envoy sends `:authority`, `:method`, `:path` and `:scheme` among the headers; policies
    /// written for opa-envoy-plugin read them (its README's sample input shows them).
    #[test]
    fn pseudo_headers_are_in_the_envoy_input() {
        let mut http = meshguard_policy::HttpRequest::new(
            "POST",
            "shop.test",
            "/a/../b?x=1",
            [("x-k".to_owned(), "v".to_owned())],
            meshguard_policy::PathNormalization::Base,
        );
        http.scheme = "https".into();
        let req = meshguard_policy::Request {
            http: Some(http),
            ..Default::default()
        };
        let mut state = Map::new();
        let input = StepInput {
            req: &req,
            id: &meshguard_policy::Identity::default(),
            state: &mut state,
            trace: None,
        };
        let doc = envoy_input(&input);
        let h = &doc["attributes"]["request"]["http"]["headers"];
        assert_eq!(h[":authority"], json!("shop.test"));
        assert_eq!(h[":method"], json!("POST"));
        assert_eq!(h[":path"], json!("/a/../b?x=1"), "as sent, not normalised");
        assert_eq!(h[":scheme"], json!("https"));
        assert_eq!(h["x-k"], json!("v"));
        assert_eq!(
            gloo_input(&input)["http_request"]["headers"][":path"],
            h[":path"]
        );
    }

    #[test]
    fn decision_shapes() {
        assert!(envoy_decision("r", &json!(true), false).allowed);
        assert!(!envoy_decision("r", &json!(true), true).allowed);
        assert!(!envoy_decision("r", &json!("yes"), false).allowed);
        assert!(!envoy_decision("r", &json!({"headers": {}}), false).allowed);
        let d = envoy_decision(
            "r",
            &json!({"allowed": false, "http_status": 401, "body": "no", "headers": {"x": "y"}}),
            false,
        );
        assert_eq!(
            (d.status, d.body.as_str(), d.response_headers.clone()),
            (401, "no", vec![("x".into(), "y".into())])
        );
        let a = envoy_decision(
            "r",
            &json!({"allowed": true, "headers": {"x-a": ["1", "2"]}, "request_headers_to_remove": ["Authorization"]}),
            false,
        );
        assert!(a.allowed);
        assert_eq!(a.headers_to_add.len(), 2);
        assert_eq!(a.headers_to_remove, vec!["authorization".to_owned()]);
    }

    fn engine_with_builtins() -> regorus::Engine {
        let mut e = regorus::Engine::new();
        add_builtins(&mut e, &Arc::new(RegoCaches::default())).expect("builtins");
        e.add_policy(
            "t.rego".into(),
            r#"package t
import rego.v1
verified := v if { [v, _, _] := io.jwt.decode_verify(input.token, {"cert": input.cert, "iss": "https://issuer.test", "aud": "api.test"}) }
sig := io.jwt.verify_rs256(input.token, input.cert)
schema := json.match_schema(input.doc, {"type": "object", "required": ["item"], "properties": {"quantity": {"type": "integer", "minimum": 1}}})
"#
            .into(),
        )
        .expect("policy");
        e
    }

    fn eval(e: &mut regorus::Engine, rule: &str, input: &Value) -> Value {
        e.set_input(to_rvalue(input));
        from_rvalue(&e.eval_rule(format!("data.t.{rule}")).expect("eval"))
    }

    /// The caches of verified signatures and parsed keys decide exactly as a fresh check: once
    /// a valid token is cached, a token that differs in any part, a token that has expired, or
    /// another key set still fails, on the same engine and on its clones.
    #[test]
    fn cached_signatures_never_vouch_for_other_tokens() {
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let tokens: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{data}/tokens.json")).expect("tokens"),
        )
        .expect("json");
        let cert = std::fs::read_to_string(format!("{data}/jwks.json")).expect("jwks");
        let other = std::fs::read_to_string(format!("{data}/jwks-other.json")).expect("jwks");
        let t = |name: &str| tokens["tokens"][name].as_str().expect(name).to_owned();
        let mut e = engine_with_builtins();
        let with = |token: String, cert: &str| json!({"token": token, "cert": cert});
        for _ in 0..3 {
            assert_eq!(
                eval(&mut e, "verified", &with(t("RS256"), &cert)),
                json!(true)
            );
            assert_eq!(eval(&mut e, "sig", &with(t("RS256"), &cert)), json!(true));
        }
        let mut clone = e.clone();
        for engine in [&mut e, &mut clone] {
            for bad in [
                "tampered_payload",
                "other_key_same_kid",
                "truncated_signature",
                "padded_base64",
                "alg_none",
                "key_confusion_hs256_with_rsa_pem",
            ] {
                let input = with(t(bad), &cert);
                assert_ne!(eval(engine, "verified", &input), json!(true), "{bad}");
                assert_ne!(eval(engine, "sig", &input), json!(true), "{bad}");
            }
            // Expiry and claims are checked on every call, cached signature or not.
            assert_eq!(eval(engine, "sig", &with(t("expired"), &cert)), json!(true));
            assert_eq!(
                eval(engine, "verified", &with(t("expired"), &cert)),
                json!(false)
            );
            assert_eq!(
                eval(engine, "verified", &with(t("expired"), &cert)),
                json!(false)
            );
            // The same token under a key set that does not hold its key.
            assert_eq!(
                eval(engine, "verified", &with(t("RS256"), &other)),
                json!(false)
            );
            assert_eq!(eval(engine, "sig", &with(t("RS256"), &other)), json!(false));
        }
    }

    /// OPA's result shape: `[true, []]`, or `[false, [{error, type, field, desc}]]`; the schema
    /// compiled once answers every later call the same.
    #[test]
    fn match_schema_answers_as_opa_and_compiles_once() {
        let mut e = engine_with_builtins();
        for _ in 0..2 {
            let ok = eval(
                &mut e,
                "schema",
                &json!({"doc": {"item": "b", "quantity": 2}}),
            );
            assert_eq!(ok, json!([true, []]));
            let bad = eval(
                &mut e,
                "schema",
                &json!({"doc": {"item": "b", "quantity": 0}}),
            );
            assert_eq!(bad[0], json!(false), "{bad}");
            assert_eq!(bad[1][0]["field"], json!("quantity"), "{bad}");
            assert_eq!(bad[1][0]["type"], json!("minimum"), "{bad}");
            let missing = eval(&mut e, "schema", &json!({"doc": {}}));
            assert_eq!(missing[1][0]["field"], json!("(root)"), "{missing}");
            assert_eq!(missing[1][0]["type"], json!("required"), "{missing}");
            assert_eq!(
                eval(&mut e, "schema", &json!({"doc": "not an object"}))[0],
                json!(false)
            );
        }
    }

    /// An evaluation that outgrows the inline budget is not denied for it: it runs again on
    /// the blocking pool with the step's full limit, and the step's next evaluations go there
    /// directly. One that outgrows the full limit is denied.
    #[test]
    fn slow_policies_move_to_the_pool_and_still_decide() {
        let policy = r#"package envoy.authz
import rego.v1
allow if { count([x | some x in numbers.range(1, 100000); x > 0]) == 100000 }
"#;
        let step = |limit: Duration| {
            let mut e = regorus::Engine::new();
            e.add_policy("slow.rego".into(), policy.into())
                .expect("policy");
            e.set_execution_timer_config(timer(limit));
            RegoStep {
                template: e,
                mode: RegoMode::Envoy {
                    path: "envoy/authz/allow".into(),
                },
                pool_only: AtomicU32::new(0),
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let req = meshguard_policy::Request::default();
        let id = meshguard_policy::Identity::default();
        let mut state = Map::new();
        let mut input = StepInput {
            req: &req,
            id: &id,
            state: &mut state,
            trace: None,
        };
        // The inline attempt alone runs out of its budget.
        let mut inline = step(Duration::from_secs(60)).template.clone();
        inline.set_execution_timer_config(timer(INLINE_LIMIT));
        let err = evaluate_within(
            inline,
            &RegoMode::Envoy {
                path: "envoy/authz/allow".into(),
            },
            &json!({}),
        )
        .expect_err("over the inline budget");
        assert!(is_time_limit(&err), "{err}");
        let generous = step(Duration::from_secs(60));
        let o = rt.block_on(generous.check(&mut input));
        assert!(o.allowed, "{}", o.reason);
        assert_eq!(
            generous.pool_only.load(Ordering::Relaxed),
            POOL_AFTER_OVERRUN
        );
        let o = rt.block_on(generous.check(&mut input));
        assert!(o.allowed, "{}", o.reason);
        assert_eq!(
            generous.pool_only.load(Ordering::Relaxed),
            POOL_AFTER_OVERRUN - 1
        );
        let tight = step(Duration::from_millis(1));
        let o = rt.block_on(tight.check(&mut input));
        assert!(!o.allowed);
        assert!(o.reason.contains("Rego evaluation failed"), "{}", o.reason);
    }
}
