//! Request authentication for meshguard: Istio `RequestAuthentication` (JWT/JWKS) verified the
//! way Envoy's jwt_authn filter does, failing closed.
//!
//! - No token in any configured location: no request principal, the request goes on to
//!   authorization (which may still deny it).
//! - A token that is present but invalid (malformed, bad signature, expired, unknown issuer,
//!   keys unavailable): 401 with `WWW-Authenticate: Bearer ... error="invalid_token"`.
//! - A valid token whose audience is not allowed: 403.
//! - Valid: request principal `iss/sub`, claims for AuthorizationPolicy, headers to add/remove.

#![forbid(unsafe_code)]

pub mod cache;
pub mod extauth;
pub mod extract;
pub mod jose;
pub mod jwks;
pub mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::Algorithm;
use meshguard_policy::resource::{parse_duration, JwtRule, RequestAuthentication};
use meshguard_policy::{JwtIdentity, PolicySet};
use serde_json::{Map, Value};

use crate::cache::TokenCache;
use crate::extract::Location;
use crate::jose::{JoseError, ParsedJwt};
use crate::jwks::KeySet;
use crate::remote::{FetchSettings, RemoteJwks};

/// Clock skew allowed on `exp`/`nbf`/`iat` (Envoy's `clock_skew_seconds` default; Istio keeps it).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why a present token was refused. Messages follow Envoy's jwt_authn status strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Malformed(#[from] JoseError),
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt claim `{0}` has the wrong type")]
    BadClaim(&'static str),
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    BadSignature,
    #[error("Jwks remote fetch is failed")]
    JwksUnavailable(String),
    #[error("Jwks is invalid: {0}")]
    JwksInvalid(String),
    #[error("Jwt claim `{0}` cannot be written to a header (line break or NUL)")]
    ClaimNotAHeader(String),
}

impl TokenError {
    /// A fixed message for answers sent to clients (Envoy's status strings). Details derived from
    /// the token or the JWKS stay in logs: they could carry quotes or line breaks.
    pub fn public_message(&self) -> &'static str {
        match self {
            TokenError::Malformed(JoseError::TooLarge(_)) => "Jwt is too large",
            TokenError::Malformed(JoseError::AlgNone | JoseError::UnsupportedAlg(_)) => {
                "Jwt algorithm is not supported"
            }
            TokenError::Malformed(_) => {
                "Jwt is not in the form of Header.Payload.Signature with valid JSON"
            }
            TokenError::UnknownIssuer => "Jwt issuer is not configured",
            TokenError::Expired => "Jwt is expired",
            TokenError::NotYetValid => "Jwt not yet valid",
            TokenError::BadClaim(_) => "Jwt has a claim of the wrong type",
            TokenError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            TokenError::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            TokenError::BadSignature => "Jwt verification fails",
            TokenError::JwksUnavailable(_) => "Jwks remote fetch is failed",
            TokenError::JwksInvalid(_) => "Jwks is invalid",
            TokenError::ClaimNotAHeader(_) => "Jwt claim cannot be written to a header",
        }
    }

    /// 403 for a disallowed audience (Envoy `JwtAudienceNotAllowed`), 503 for a claim that
    /// cannot be a header value (Envoy refuses to forward it), 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::AudienceNotAllowed => 403,
            TokenError::ClaimNotAHeader(_) => 503,
            _ => 401,
        }
    }
}

/// The result of authenticating one request.
#[derive(Debug, Clone)]
pub enum AuthnOutcome {
    /// No RequestAuthentication applies, or no token was presented.
    NoToken,
    Authenticated(Authenticated),
    Rejected(Rejected),
}

#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Arc<JwtIdentity>,
    /// `outputPayloadToHeader` and `outputClaimToHeaders`.
    pub headers_to_add: Vec<(String, String)>,
    /// Token headers to strip before forwarding (`forwardOriginalToken: false`).
    pub headers_to_remove: Vec<String>,
    /// Query parameters that carried a verified token, removed from the path the app sees
    /// (`forwardOriginalToken: false`, as Envoy 1.40 does).
    pub query_params_to_remove: Vec<String>,
    /// `namespace/name` of the RequestAuthentication whose rule verified the token.
    pub rule: String,
}

#[derive(Debug, Clone)]
pub struct Rejected {
    pub status: u16,
    pub error: TokenError,
    /// `WWW-Authenticate` value for 401 answers.
    pub www_authenticate: Option<String>,
    /// The RequestAuthentication involved, when known.
    pub rule: Option<String>,
}

/// What authentication looks at.
#[derive(Debug, Clone, Copy)]
pub struct AuthnRequest<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The request target as sent (path and query).
    pub path: &'a str,
    /// Header lines as received (lower-case names; a repeated header is several entries).
    pub headers: &'a [(String, String)],
    pub namespace: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
}

enum KeySource {
    Inline(Result<Arc<KeySet>, String>),
    Remote(Arc<RemoteJwks>),
}

struct Provider {
    /// `namespace/name` of the RequestAuthentication.
    owner: String,
    rule: JwtRule,
    locations: extract::Locations,
    keys: KeySource,
}

/// Settings for building an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthnSettings {
    pub fetch: FetchSettings,
    /// Capacity of the verified-token cache (entries).
    pub token_cache_capacity: usize,
    /// How long a verified token is trusted without re-checking its signature (never past `exp`).
    pub token_cache_ttl: Duration,
}

impl Default for AuthnSettings {
    fn default() -> Self {
        AuthnSettings {
            fetch: FetchSettings::default(),
            token_cache_capacity: 10_000,
            token_cache_ttl: Duration::from_secs(300),
        }
    }
}

/// Verifies tokens for every RequestAuthentication in a policy set.
pub struct Authenticator {
    providers: Vec<Provider>,
    /// namespace -> name -> providers of that RequestAuthentication.
    by_owner: HashMap<String, HashMap<String, Vec<usize>>>,
    cache: TokenCache,
    remotes: Vec<Arc<RemoteJwks>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    /// Builds providers for every jwtRule. Remote key sets are shared per (jwksUri, issuer) and
    /// fetched lazily (use [`Authenticator::prefetch`] to fetch at start).
    pub fn new(set: &PolicySet, client: reqwest::Client, settings: AuthnSettings) -> Authenticator {
        Self::after(set, client, settings, None)
    }

    /// As [`Authenticator::new`], for a reloaded policy set: a remote key set the previous
    /// authenticator already had (same jwksUri, issuer and timeout) is carried over with its
    /// fetched keys, so a reload never forgets keys (nor needs the JWKS endpoint to be up).
    pub fn after(
        set: &PolicySet,
        client: reqwest::Client,
        settings: AuthnSettings,
        previous: Option<&Authenticator>,
    ) -> Authenticator {
        let mut providers = Vec::new();
        let mut by_owner: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        let mut remotes: HashMap<(Option<String>, String), Arc<RemoteJwks>> = HashMap::new();
        let carried: Vec<Arc<RemoteJwks>> = previous.map(|p| p.remotes.clone()).unwrap_or_default();
        for r in set.resources() {
            let meshguard_policy::Resource::RequestAuthentication(ra) = r else {
                continue;
            };
            let owner = owner_name(ra);
            for rule in &ra.jwt_rules {
                let keys = if let Some(j) = &rule.jwks {
                    KeySource::Inline(
                        KeySet::parse(j.as_bytes(), true)
                            .map(Arc::new)
                            .map_err(|e| e.to_string()),
                    )
                } else {
                    let timeout = rule
                        .timeout
                        .as_deref()
                        .and_then(parse_duration)
                        .unwrap_or(Duration::from_secs(5));
                    let key = (rule.jwks_uri.clone(), rule.issuer.clone());
                    let remote = remotes
                        .entry(key)
                        .or_insert_with(|| {
                            if let Some(r) = carried.iter().find(|r| {
                                r.uri() == rule.jwks_uri.as_deref()
                                    && r.issuer() == rule.issuer
                                    && r.timeout() == timeout
                            }) {
                                return r.clone();
                            }
                            Arc::new(RemoteJwks::new(
                                rule.jwks_uri.clone(),
                                rule.issuer.clone(),
                                timeout,
                                client.clone(),
                                settings.fetch.clone(),
                            ))
                        })
                        .clone();
                    KeySource::Remote(remote)
                };
                by_owner
                    .entry(ra.meta.namespace.clone())
                    .or_default()
                    .entry(ra.meta.name.clone())
                    .or_default()
                    .push(providers.len());
                providers.push(Provider {
                    owner: owner.clone(),
                    locations: extract::locations(rule),
                    rule: rule.clone(),
                    keys,
                });
            }
        }
        Authenticator {
            providers,
            by_owner,
            cache: TokenCache::new(settings.token_cache_capacity, settings.token_cache_ttl),
            remotes: remotes.into_values().collect(),
        }
    }

    /// Fetches every remote key set once; returns the errors (keys stay unavailable for those
    /// issuers until a later fetch succeeds, and their tokens are refused meanwhile).
    pub async fn prefetch(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for r in &self.remotes {
            if let Err(e) = r.keys().await {
                errors.push(e.to_string());
            }
        }
        errors
    }

    /// Authenticates an engine request the way the filter chain orders it: nothing to do for a
    /// TCP connection, for a request already refused before any filter (plaintext under STRICT
    /// mTLS, a path or method Envoy answers 400), or when verified claims are already known.
    pub async fn authenticate_request(
        &self,
        set: &PolicySet,
        req: &meshguard_policy::Request,
        id: &meshguard_policy::Identity,
    ) -> AuthnOutcome {
        let Some(h) = &req.http else {
            return AuthnOutcome::NoToken;
        };
        if id.jwt.is_some() {
            return AuthnOutcome::NoToken;
        }
        if set.refused_before_filters(req, id) {
            return AuthnOutcome::NoToken;
        }
        self.authenticate(
            set,
            &AuthnRequest {
                method: &h.method,
                host: &h.host,
                path: &h.raw_path,
                headers: &h.lines,
                namespace: &req.destination.namespace,
                labels: &req.destination.labels,
            },
        )
        .await
    }

    /// Number of verified tokens currently cached.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    pub fn remotes(&self) -> &[Arc<RemoteJwks>] {
        &self.remotes
    }

    /// Authenticates a request against the RequestAuthentication resources that apply to its
    /// destination workload.
    pub async fn authenticate(&self, set: &PolicySet, req: &AuthnRequest<'_>) -> AuthnOutcome {
        // CORS preflight requests skip JWT checks (Istio sets bypass_cors_preflight).
        if req.method == "OPTIONS"
            && req
                .headers
                .iter()
                .any(|(n, v)| n == "origin" && !v.is_empty())
            && req
                .headers
                .iter()
                .any(|(n, v)| n == "access-control-request-method" && !v.is_empty())
        {
            return AuthnOutcome::NoToken;
        }
        let mut active: Vec<usize> = set
            .request_authentications(req.namespace, req.labels)
            .filter_map(|ra| {
                self.by_owner
                    .get(&ra.meta.namespace)
                    .and_then(|m| m.get(&ra.meta.name))
            })
            .flatten()
            .copied()
            .collect();
        if active.is_empty() {
            return AuthnOutcome::NoToken;
        }
        // istiod sorts the merged jwtRules by issuer.
        active.sort_by(|a, b| {
            self.providers[*a]
                .rule
                .issuer
                .cmp(&self.providers[*b].rule.issuer)
        });
        let query = req
            .path
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(q));

        // What each provider sees in its own locations (istiod gives every jwtRule its own
        // provider, and Envoy extracts per provider).
        let seen: Vec<(usize, Vec<extract::Extracted<'_>>)> = active
            .iter()
            .map(|&pi| {
                let tokens = extract::extract(&self.providers[pi].locations, req.headers, query);
                (pi, tokens)
            })
            .collect();
        if seen.iter().all(|(_, t)| t.is_empty()) {
            return AuthnOutcome::NoToken;
        }

        // istiod's requirement (convertToEnvoyJwtConfig): one rule is
        // `requires_any [provider, allow_missing]`; several are
        // `requires_any [p0, .., pN, requires_all [any [pi, allow_missing] ...]]`. Envoy's
        // verifiers make of it: the request passes when one provider finds tokens in its own
        // locations and verifies every one of them (a token elsewhere does not matter), or when
        // no provider finds any token; otherwise it fails with the first failing provider's
        // error. Envoy 1.40 agrees case by case (tests/envoy_jwt.rs, scenario "multi").
        let mut first_error: Option<(TokenError, usize)> = None;
        for (pi, tokens) in &seen {
            if tokens.is_empty() {
                continue;
            }
            match self.verify_all(*pi, tokens).await {
                Ok(a) => return a,
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some((e, *pi));
                    }
                }
            }
        }
        let Some((error, pi)) = first_error else {
            return AuthnOutcome::NoToken;
        };
        let status = error.status();
        // Envoy challenges on 401 and on 403 (a disallowed audience) alike.
        let www_authenticate = (status != 503).then(|| www_authenticate(req.host, req.path));
        AuthnOutcome::Rejected(Rejected {
            status,
            error,
            www_authenticate,
            rule: Some(self.providers[pi].owner.clone()),
        })
    }

    /// Verifies every token one provider extracted; on success, what the request carries on.
    /// Envoy's authenticator takes tokens from the back of the extracted list and writes each
    /// verified token's outputs as it goes; the principal is the last one verified, i.e. the
    /// first extracted (its payload metadata is written last).
    async fn verify_all(
        &self,
        pi: usize,
        tokens: &[extract::Extracted<'_>],
    ) -> Result<AuthnOutcome, TokenError> {
        let p = &self.providers[pi];
        let mut out: Option<Authenticated> = None;
        for (token, loc) in tokens.iter().rev() {
            let identity = self.verify_token(token, pi).await?;
            let mut a = self.authenticated(pi, token, identity)?;
            if !p.rule.forward_original_token {
                match loc {
                    Location::Header(h) => a.headers_to_remove.push(h.clone()),
                    Location::Param(q) => a.query_params_to_remove.push(q.clone()),
                    Location::Cookie(_) => {}
                }
            }
            if let Some(o) = out.take() {
                a.headers_to_add.splice(0..0, o.headers_to_add);
                a.headers_to_remove.splice(0..0, o.headers_to_remove);
                a.query_params_to_remove
                    .splice(0..0, o.query_params_to_remove);
            }
            out = Some(a);
        }
        Ok(out.map_or(AuthnOutcome::NoToken, AuthnOutcome::Authenticated))
    }

    fn authenticated(
        &self,
        pi: usize,
        token: &str,
        identity: Arc<JwtIdentity>,
    ) -> Result<Authenticated, TokenError> {
        let claims = &identity.claims;
        let p = &self.providers[pi];
        let mut headers_to_add = Vec::new();
        if let Some(h) = &p.rule.output_payload_to_header {
            let payload = token.split('.').nth(1).unwrap_or("");
            headers_to_add.push((h.to_ascii_lowercase(), payload.to_owned()));
        }
        for c in &p.rule.output_claim_to_headers {
            // Nested claims are written with dots (`a.b.c`).
            let mut parts = c.claim.split('.');
            let mut v = parts.next().and_then(|first| claims.get(first));
            for part in parts {
                v = v.and_then(|x| x.get(part));
            }
            if let Some(t) = v.and_then(claim_header_value) {
                // Envoy answers 503 rather than send a header value with a line break or NUL.
                if t.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                    return Err(TokenError::ClaimNotAHeader(c.claim.clone()));
                }
                headers_to_add.push((c.header.to_ascii_lowercase(), t));
            }
        }
        Ok(Authenticated {
            identity,
            headers_to_add,
            headers_to_remove: Vec::new(),
            query_params_to_remove: Vec::new(),
            rule: p.owner.clone(),
        })
    }

    /// Verifies one token with one provider (its issuer must match the provider's, when the
    /// provider names one).
    async fn verify_token(&self, token: &str, pi: usize) -> Result<Arc<JwtIdentity>, TokenError> {
        let now = now_secs();
        if let Some((cpi, claims)) = self.cache.get(token, now, |pi| self.generation(pi)) {
            if cpi == pi {
                // Keys due for a refresh are refreshed first, so a key removed by rotation stops
                // vouching for cached tokens (the generation changes and the entry is ignored).
                let fresh = match self.providers.get(pi).map(|p| &p.keys) {
                    Some(KeySource::Remote(r)) if r.is_stale() => {
                        // Starts a background refresh; the entry stays valid until the keys
                        // actually change.
                        let _ = Box::pin(r.keys()).await;
                        self.cache
                            .get(token, now, |pi| self.generation(pi))
                            .is_some()
                    }
                    _ => true,
                };
                if fresh {
                    return Ok(claims);
                }
            }
        }
        let jwt = jose::parse(token).map_err(TokenError::Malformed)?;
        let p = &self.providers[pi];
        let generation = self.generation(pi);
        // Boxed: the key fetch it may wait for is a large future, and this is the cache-miss
        // path; the common (cached) path keeps a small future.
        Box::pin(self.verify_with_provider(p, &jwt, now)).await?;
        let exp = num_claim(&jwt.payload, "exp")
            .ok()
            .flatten()
            .filter(|e| *e != 0);
        let identity = Arc::new(JwtIdentity::new(jwt.payload, None));
        self.cache
            .insert(token, pi, identity.clone(), exp, generation, now);
        Ok(identity)
    }

    fn generation(&self, pi: usize) -> u64 {
        match self.providers.get(pi).map(|p| &p.keys) {
            Some(KeySource::Remote(r)) => r.generation(),
            _ => 0,
        }
    }

    async fn verify_with_provider(
        &self,
        p: &Provider,
        jwt: &ParsedJwt<'_>,
        now: u64,
    ) -> Result<(), TokenError> {
        check_claims(&p.rule, &jwt.payload, now)?;
        let keys = match &p.keys {
            KeySource::Inline(Ok(k)) => k.clone(),
            KeySource::Inline(Err(e)) => return Err(TokenError::JwksInvalid(e.clone())),
            KeySource::Remote(r) => r
                .keys()
                .await
                .map_err(|e| TokenError::JwksUnavailable(e.to_string()))?,
        };
        match verify_signature(&keys, jwt) {
            Err(TokenError::NoMatchingKey) => {
                // A kid we do not know: the issuer may have rotated keys. Re-fetch (rate-limited).
                if let (KeySource::Remote(r), Some(kid)) = (&p.keys, &jwt.kid) {
                    if !keys.has_kid(kid) {
                        if let Some(fresh) = r.refresh_for_unknown_kid().await {
                            return verify_signature(&fresh, jwt);
                        }
                    }
                }
                Err(TokenError::NoMatchingKey)
            }
            other => other,
        }
    }
}

/// Envoy's challenge: `Bearer realm="<scheme>://<host><path>", error="invalid_token"`, the path
/// (with its query) cut at 256 bytes (jwt_authn `filter.cc`, `buildOriginalUri`).
fn www_authenticate(host: &str, path: &str) -> String {
    let mut end = path.len().min(256);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let realm = format!("http://{host}{}", &path[..end]);
    format!(
        "Bearer realm=\"{}\", error=\"invalid_token\"",
        realm.replace(['"', '\r', '\n'], "%22")
    )
}

/// A claim as Envoy's `claim_to_headers` writes it: strings as they are (empty: no header),
/// booleans as `true`/`false`, non-negative integers as integers, other numbers as `%f`
/// (`-3.000000`, `1.500000`), lists and objects as standard base64 of their JSON; null: none.
fn claim_header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) => format!("{f:.6}"),
            (None, None) => n.to_string(),
        }),
        Value::Array(_) | Value::Object(_) => {
            Some(base64::engine::general_purpose::STANDARD.encode(v.to_string().as_bytes()))
        }
        Value::Null => None,
    }
}

/// Header names request authentication may write for a workload (`outputClaimToHeaders`,
/// `outputPayloadToHeader` of every rule that applies). Envoy's jwt_authn removes client-sent
/// copies of all of them on every request, token or not (tests/envoy_jwt.rs, forged_outputs).
pub fn output_header_names(
    set: &PolicySet,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut names = Vec::new();
    for ra in set.request_authentications(namespace, labels) {
        for rule in &ra.jwt_rules {
            let claim = rule.output_claim_to_headers.iter().map(|c| &c.header);
            for h in claim.chain(rule.output_payload_to_header.iter()) {
                let h = h.to_ascii_lowercase();
                if !names.contains(&h) {
                    names.push(h);
                }
            }
        }
    }
    names
}

fn owner_name(ra: &RequestAuthentication) -> String {
    format!("{}/{}", ra.meta.namespace, ra.meta.name)
}

/// Checks the signature with the keys that fit the token (by `kid` and algorithm family).
pub fn verify_signature(keys: &KeySet, jwt: &ParsedJwt<'_>) -> Result<(), TokenError> {
    let mut any = false;
    for k in keys.candidates(jwt) {
        any = true;
        if let Ok(true) = jsonwebtoken::crypto::verify(
            &jwt.signature_b64,
            jwt.signing_input.as_bytes(),
            &k.decoding,
            jwt.alg,
        ) {
            return Ok(());
        }
    }
    if any {
        Err(TokenError::BadSignature)
    } else {
        Err(TokenError::NoMatchingKey)
    }
}

/// Audience comparison as jwt_verify_lib does it: scheme and trailing slash are ignored.
fn normalize_aud(a: &str) -> &str {
    let a = a
        .strip_prefix("https://")
        .or_else(|| a.strip_prefix("http://"))
        .unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a)
}

fn num_claim(payload: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    // jwt_verify_lib reads time claims as unsigned 64-bit integers: a fraction is dropped, a
    // negative number or one of 2^64 or more is a malformed token (401).
    match payload.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(TokenError::BadClaim(name)),
        Some(_) => Err(TokenError::BadClaim(name)),
    }
}

/// Time, issuer and audience checks (signature aside).
pub fn check_claims(
    rule: &JwtRule,
    payload: &Map<String, Value>,
    now: u64,
) -> Result<(), TokenError> {
    match payload.get("iss") {
        Some(Value::String(iss)) if rule.issuer.is_empty() || *iss == rule.issuer => {}
        Some(Value::String(_)) | None if !rule.issuer.is_empty() => {
            return Err(TokenError::UnknownIssuer)
        }
        None => {}
        _ => return Err(TokenError::BadClaim("iss")),
    }
    if let Some(s) = payload.get("sub") {
        if !s.is_string() {
            return Err(TokenError::BadClaim("sub"));
        }
    }
    // `exp: 0` means no expiry (jwt_verify_lib).
    if let Some(exp) = num_claim(payload, "exp")?.filter(|e| *e != 0) {
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::Expired);
        }
    }
    if let Some(nbf) = num_claim(payload, "nbf")? {
        if nbf > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
    }
    // `iat` must be a number but is not compared with the clock: Envoy 1.40 accepts a token
    // issued in the future (tests/envoy_jwt.rs, case iat_future).
    num_claim(payload, "iat")?;
    // `aud` must be a string or a list of strings, whatever the rule's audiences (a number, a
    // boolean or a list holding one is a malformed token, 401, not a disallowed audience).
    match payload.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(TokenError::BadClaim("aud")),
    }
    if !rule.audiences.is_empty() {
        let ok = |a: &str| {
            rule.audiences
                .iter()
                .any(|want| normalize_aud(want) == normalize_aud(a))
        };
        let allowed = match payload.get("aud") {
            Some(Value::String(a)) => ok(a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(ok),
            _ => false,
        };
        if !allowed {
            return Err(TokenError::AudienceNotAllowed);
        }
    }
    Ok(())
}

/// The algorithm names meshguard accepts, for documentation and errors.
pub const SUPPORTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
];

/// Base64url (unpadded) of the payload, for `outputPayloadToHeader` consumers that re-encode.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
