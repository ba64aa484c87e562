//! Request authentication for meshguard: Istio `RequestAuthentication` (JWT/JWKS) verified the
//! way Envoy's jwt_authn filter does, failing closed.
//!
//! - No token in any configured location: no request principal, the request goes on to
//!   authorization (which may still deny it).
//! - A token that is present but invalid (malformed, bad signature, expired, unknown issuer,
//!   keys unavailable): 401 with `WWW-Authenticate: Bearer ... error="invalid_token"`.
//! - A valid token whose audience is not allowed: 403.
//! - Valid: request principal `iss/sub`, claims for AuthorizationPolicy, headers to add/remove.

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
    #[error("Jwt is issued in the future (iat beyond the allowed clock skew)")]
    IssuedInFuture,
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
            TokenError::IssuedInFuture => "Jwt is issued in the future",
            TokenError::BadClaim(_) => "Jwt has a claim of the wrong type",
            TokenError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            TokenError::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            TokenError::BadSignature => "Jwt verification fails",
            TokenError::JwksUnavailable(_) => "Jwks remote fetch is failed",
            TokenError::JwksInvalid(_) => "Jwks is invalid",
        }
    }

    /// 403 for a disallowed audience (Envoy `JwtAudienceNotAllowed`), 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::AudienceNotAllowed => 403,
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
    /// Lower-case header names.
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
        let mut providers = Vec::new();
        let mut by_owner: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        let mut remotes: HashMap<(Option<String>, String), Arc<RemoteJwks>> = HashMap::new();
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
                errors.push(e);
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
        let pre = set.evaluate(req, id);
        if matches!(
            pre.reason,
            meshguard_policy::Reason::PlaintextUnderStrict | meshguard_policy::Reason::Rejected(_)
        ) {
            return AuthnOutcome::NoToken;
        }
        self.authenticate(
            set,
            &AuthnRequest {
                method: &h.method,
                host: &h.host,
                path: &h.raw_path,
                headers: &h.headers,
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

        // Every distinct token any provider extracts, with the providers that extract it there.
        let mut found: Vec<(String, Vec<(usize, Location)>)> = Vec::new();
        for &pi in &active {
            for (token, loc) in extract::extract(&self.providers[pi].locations, req.headers, query)
            {
                match found.iter_mut().find(|(t, _)| *t == token) {
                    Some((_, ps)) => ps.push((pi, loc)),
                    None => found.push((token, vec![(pi, loc)])),
                }
            }
        }
        if found.is_empty() {
            return AuthnOutcome::NoToken;
        }

        let mut first: Option<Authenticated> = None;
        let mut headers_to_remove: Vec<String> = Vec::new();
        for (token, candidates) in &found {
            match self.verify_token(token, candidates).await {
                Ok((pi, claims)) => {
                    let p = &self.providers[pi];
                    if !p.rule.forward_original_token {
                        for (cpi, loc) in candidates {
                            if let (true, Location::Header(h)) = (*cpi == pi, loc) {
                                if !headers_to_remove.contains(h) {
                                    headers_to_remove.push(h.clone());
                                }
                            }
                        }
                    }
                    if first.is_none() {
                        first = Some(self.authenticated(pi, token, claims));
                    }
                }
                Err((error, pi)) => {
                    let status = error.status();
                    let realm = format!(
                        "http://{}{}",
                        req.host,
                        req.path.split('?').next().unwrap_or(req.path)
                    );
                    let www_authenticate = (status == 401).then(|| {
                        format!(
                            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                            realm.replace(['"', '\r', '\n'], "%22"),
                            error.public_message()
                        )
                    });
                    return AuthnOutcome::Rejected(Rejected {
                        status,
                        error,
                        www_authenticate,
                        rule: pi.map(|i| self.providers[i].owner.clone()),
                    });
                }
            }
        }
        match first {
            Some(mut a) => {
                a.headers_to_remove = headers_to_remove;
                AuthnOutcome::Authenticated(a)
            }
            None => AuthnOutcome::NoToken,
        }
    }

    fn authenticated(&self, pi: usize, token: &str, identity: Arc<JwtIdentity>) -> Authenticated {
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
            let text = match v {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            };
            if let Some(t) = text {
                headers_to_add.push((c.header.to_ascii_lowercase(), t));
            }
        }
        Authenticated {
            identity,
            headers_to_add,
            headers_to_remove: Vec::new(),
            rule: p.owner.clone(),
        }
    }

    /// Verifies one token with the provider its `iss` selects among those that extracted it.
    async fn verify_token(
        &self,
        token: &str,
        candidates: &[(usize, Location)],
    ) -> Result<(usize, Arc<JwtIdentity>), (TokenError, Option<usize>)> {
        let now = now_secs();
        if let Some((pi, claims)) = self.cache.get(token, now, |pi| self.generation(pi)) {
            if candidates.iter().any(|(c, _)| *c == pi) {
                // Keys due for a refresh are refreshed first, so a key removed by rotation stops
                // vouching for cached tokens (the generation changes and the entry is ignored).
                let fresh = match self.providers.get(pi).map(|p| &p.keys) {
                    Some(KeySource::Remote(r)) if r.is_stale() => {
                        // Starts a background refresh; the entry stays valid until the keys
                        // actually change.
                        let _ = r.keys().await;
                        self.cache
                            .get(token, now, |pi| self.generation(pi))
                            .is_some()
                    }
                    _ => true,
                };
                if fresh {
                    return Ok((pi, claims));
                }
            }
        }
        let jwt = jose::parse(token).map_err(|e| (TokenError::Malformed(e), None))?;
        let iss = jwt.payload.get("iss").and_then(Value::as_str).unwrap_or("");
        // A rule naming this issuer first; a rule without an issuer (jwksUri only) after that.
        let exact = candidates
            .iter()
            .find(|(pi, _)| self.providers[*pi].rule.issuer == iss);
        let any = || {
            candidates
                .iter()
                .find(|(pi, _)| self.providers[*pi].rule.issuer.is_empty())
        };
        let Some(&(pi, _)) = exact.or_else(any) else {
            return Err((TokenError::UnknownIssuer, None));
        };
        let p = &self.providers[pi];
        let generation = self.generation(pi);
        self.verify_with_provider(p, &jwt, now)
            .await
            .map_err(|e| (e, Some(pi)))?;
        let exp = num_claim(&jwt.payload, "exp").ok().flatten();
        let identity = Arc::new(JwtIdentity::new(jwt.payload, None));
        self.cache
            .insert(token, pi, identity.clone(), exp, generation, now);
        Ok((pi, identity))
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
            KeySource::Remote(r) => r.keys().await.map_err(TokenError::JwksUnavailable)?,
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

fn owner_name(ra: &RequestAuthentication) -> String {
    format!("{}/{}", ra.meta.namespace, ra.meta.name)
}

/// Checks the signature with the keys that fit the token (by `kid` and algorithm family).
pub fn verify_signature(keys: &KeySet, jwt: &ParsedJwt<'_>) -> Result<(), TokenError> {
    let mut any = false;
    for k in keys.candidates(jwt) {
        any = true;
        if let Ok(true) = jsonwebtoken::crypto::verify(
            jwt.signature_b64,
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
    match payload.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
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
    if let Some(exp) = num_claim(payload, "exp")? {
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::Expired);
        }
    }
    if let Some(nbf) = num_claim(payload, "nbf")? {
        if nbf > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = num_claim(payload, "iat")? {
        if iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::IssuedInFuture);
        }
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
