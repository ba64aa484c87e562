//! Gloo `oauth2.accessTokenValidation`: a bearer token checked as a JWT (inline or remote JWKS,
//! optional issuer) or by RFC 7662 introspection (results cached up to `cacheTimeout` and never
//! past the token's `exp`), then `requiredScopes`. Claims go to the chain state
//! (`jwtAccessToken` / `introspection`) and, with `claimsToHeaders`, to upstream headers.
//! Gloo answers a missing or invalid token with 403, and so does this step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshguard_policy::extauth::{AccessTokenValidation, TokenValidation};
use meshguard_policy::PolicySet;
use serde_json::{Map, Value};

use super::{BuildError, StepInput, StepOutcome};
use crate::jose::JoseError;
use crate::jwks::KeySet;
use crate::remote::{FetchSettings, KeysError, RemoteJwks};

/// Bound on one introspection call.
pub const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest introspection response read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Entries kept in the introspection cache.
const CACHE_CAPACITY: usize = 10_000;

/// SHA-256 of a token -> (valid until, introspection response).
type IntrospectionCache = Mutex<HashMap<[u8; 32], (Instant, Map<String, Value>)>>;

enum Keys {
    Local(KeySet),
    Remote(Arc<RemoteJwks>),
}

enum Kind {
    Jwt {
        keys: Keys,
        issuer: String,
    },
    Introspection {
        url: String,
        client_id: String,
        client_secret: Option<String>,
        user_id_attribute: String,
        client: reqwest::Client,
        cache: IntrospectionCache,
    },
}

/// Why a bearer token is not accepted (or could not be checked).
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("malformed token: {0}")]
    Malformed(#[source] JoseError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Signature(#[from] crate::TokenError),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("introspection endpoint unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("introspection endpoint answered {0}")]
    Status(reqwest::StatusCode),
    #[error("introspection response: {0}")]
    Body(#[source] reqwest::Error),
    #[error("introspection response too large")]
    TooLarge,
    #[error("introspection response is not JSON")]
    NotJson,
    #[error("introspection response is not an object")]
    NotObject,
    #[error("token is not active")]
    Inactive,
}

impl CheckError {
    /// The token could not be checked: the key set or the introspection endpoint could not be
    /// asked. Decided by the kind of error, never by its text: a token's own header is echoed
    /// in some messages (`Jwt algorithm `fetch` is not supported`), and a client must not be
    /// able to turn its refusal into an outage.
    fn is_outage(&self) -> bool {
        match self {
            CheckError::Keys(KeysError::Fetch { .. })
            | CheckError::Signature(crate::TokenError::JwksUnavailable(_))
            | CheckError::Unreachable(_) => true,
            CheckError::Status(s) => s.is_server_error(),
            CheckError::Body(e) => e.is_timeout(),
            _ => false,
        }
    }
}

pub struct TokenStep {
    kind: Kind,
    cache_timeout: Duration,
    required_scopes: Vec<String>,
    claims_to_headers: Vec<(String, String)>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(f64::MAX)
}

impl TokenStep {
    pub fn build(
        set: &PolicySet,
        a: &AccessTokenValidation,
        client: &reqwest::Client,
    ) -> Result<TokenStep, BuildError> {
        let kind = match &a.validation {
            TokenValidation::Jwt {
                local_jwks,
                remote_jwks,
                issuer,
            } => {
                let keys = match (local_jwks, remote_jwks) {
                    (Some(inline), _) => Keys::Local(
                        KeySet::parse(inline.as_bytes(), false).map_err(BuildError::LocalJwks)?,
                    ),
                    (None, Some((url, every))) => Keys::Remote(Arc::new(RemoteJwks::new(
                        Some(url.clone()),
                        issuer.clone(),
                        Duration::from_secs(5),
                        client.clone(),
                        FetchSettings {
                            refresh: *every,
                            ..FetchSettings::default()
                        },
                    ))),
                    (None, None) => return Err(BuildError::NoJwks),
                };
                Kind::Jwt {
                    keys,
                    issuer: issuer.clone(),
                }
            }
            TokenValidation::Introspection {
                url,
                client_id,
                client_secret,
                user_id_attribute,
            } => {
                let secret = match client_secret {
                    Some(r) => Some(super::client_secret(set, r)?),
                    None => None,
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(BuildError::IntrospectionUrl(url.clone()));
                }
                Kind::Introspection {
                    url: url.clone(),
                    client_id: client_id.clone(),
                    client_secret: secret,
                    user_id_attribute: user_id_attribute.clone(),
                    client: client.clone(),
                    cache: Mutex::new(HashMap::new()),
                }
            }
        };
        Ok(TokenStep {
            kind,
            cache_timeout: a.cache_timeout,
            required_scopes: a.required_scopes.clone(),
            claims_to_headers: a.claims_to_headers.clone(),
        })
    }

    async fn jwt_claims(
        keys: &Keys,
        issuer: &str,
        token: &str,
    ) -> Result<Map<String, Value>, CheckError> {
        let jwt = crate::jose::parse(token).map_err(CheckError::Malformed)?;
        let fetched;
        let set: &KeySet = match keys {
            Keys::Local(k) => k,
            Keys::Remote(r) => {
                let mut k = r.keys().await?;
                if let Some(kid) = &jwt.kid {
                    if !k.has_kid(kid) {
                        if let Some(fresh) = r.refresh_for_unknown_kid().await {
                            k = fresh;
                        }
                    }
                }
                fetched = k;
                &fetched
            }
        };
        crate::verify_signature(set, &jwt)?;
        let now = now_secs();
        let skew = 60.0;
        let claims = jwt.payload;
        if claims
            .get("exp")
            .and_then(Value::as_f64)
            .is_some_and(|e| now > e + skew)
        {
            return Err(CheckError::Expired);
        }
        if claims
            .get("nbf")
            .and_then(Value::as_f64)
            .is_some_and(|n| now + skew < n)
        {
            return Err(CheckError::NotYetValid);
        }
        if !issuer.is_empty() && claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(CheckError::WrongIssuer);
        }
        Ok(claims)
    }

    #[allow(clippy::too_many_arguments)]
    async fn introspect(
        &self,
        url: &str,
        client_id: &str,
        client_secret: Option<&str>,
        client: &reqwest::Client,
        cache: &IntrospectionCache,
        token: &str,
    ) -> Result<Map<String, Value>, CheckError> {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(d.as_ref());
        if let Ok(c) = cache.lock() {
            if let Some((until, claims)) = c.get(&key) {
                if Instant::now() < *until {
                    return Ok(claims.clone());
                }
            }
        }
        let mut req = client
            .post(url)
            .timeout(INTROSPECTION_TIMEOUT)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(format!(
                "token={}&token_type_hint=access_token",
                form_escape(token)
            ));
        if !client_id.is_empty() {
            req = req.basic_auth(client_id, client_secret);
        }
        let resp = req.send().await.map_err(CheckError::Unreachable)?;
        if !resp.status().is_success() {
            return Err(CheckError::Status(resp.status()));
        }
        let body = resp.bytes().await.map_err(CheckError::Body)?;
        if body.len() > MAX_RESPONSE {
            return Err(CheckError::TooLarge);
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| CheckError::NotJson)?;
        let Value::Object(claims) = v else {
            return Err(CheckError::NotObject);
        };
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(CheckError::Inactive);
        }
        if claims
            .get("exp")
            .and_then(Value::as_f64)
            .is_some_and(|e| now_secs() > e)
        {
            return Err(CheckError::Expired);
        }
        // Cache until the earlier of cacheTimeout and the token's exp.
        let mut ttl = self.cache_timeout;
        if let Some(exp) = claims.get("exp").and_then(Value::as_f64) {
            ttl = ttl.min(Duration::from_secs_f64((exp - now_secs()).max(0.0)));
        }
        if !ttl.is_zero() {
            if let Ok(mut c) = cache.lock() {
                if c.len() >= CACHE_CAPACITY {
                    let now = Instant::now();
                    c.retain(|_, (until, _)| *until > now);
                    if c.len() >= CACHE_CAPACITY {
                        c.clear();
                    }
                }
                c.insert(key, (Instant::now() + ttl, claims.clone()));
            }
        }
        Ok(claims)
    }

    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let Some(token) = input
            .header("authorization")
            .and_then(|a| {
                let (scheme, t) = a.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| t.trim().to_owned())
            })
            .filter(|t| !t.is_empty())
        else {
            return StepOutcome::deny(403, "no bearer token");
        };
        let (claims, state_key, user_attr) = match &self.kind {
            Kind::Jwt { keys, issuer } => match Self::jwt_claims(keys, issuer, &token).await {
                Ok(c) => (c, "jwtAccessToken", "sub"),
                Err(e) => return refusal(e),
            },
            Kind::Introspection {
                url,
                client_id,
                client_secret,
                user_id_attribute,
                client,
                cache,
            } => match self
                .introspect(
                    url,
                    client_id,
                    client_secret.as_deref(),
                    client,
                    cache,
                    &token,
                )
                .await
            {
                Ok(c) => (c, "introspection", user_id_attribute.as_str()),
                Err(e) => return refusal(e),
            },
        };
        let granted: Vec<&str> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split(' ').filter(|x| !x.is_empty()).collect(),
            (_, Some(Value::Array(a))) => a.iter().filter_map(Value::as_str).collect(),
            (_, Some(Value::String(s))) => s.split(' ').collect(),
            _ => Vec::new(),
        };
        if let Some(missing) = self
            .required_scopes
            .iter()
            .find(|s| !granted.contains(&s.as_str()))
        {
            return StepOutcome::deny(403, format!("access token lacks scope `{missing}`"));
        }
        let user = claims
            .get(user_attr)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut o = StepOutcome::allow(format!("access token of `{user}`"));
        for (claim, header) in &self.claims_to_headers {
            match claims.get(claim) {
                Some(Value::String(s)) => o.headers_to_add.push((header.clone(), s.clone())),
                Some(Value::Null) | None => {}
                Some(other) => o.headers_to_add.push((header.clone(), other.to_string())),
            }
        }
        input.state.insert(state_key.into(), Value::Object(claims));
        o
    }
}

/// A refused token is 403; an endpoint or JWKS that could not be asked is an outage (503),
/// which never counts as a pass, not even under `!`.
fn refusal(e: CheckError) -> StepOutcome {
    let outage = e.is_outage();
    let e = e.to_string();
    if outage {
        StepOutcome::failed(503, format!("access token not checked: {e}"))
    } else {
        StepOutcome::deny(403, format!("access token refused: {e}"))
    }
}

/// `application/x-www-form-urlencoded` escaping of a value (also for the OIDC step's token
/// requests).
pub(crate) fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use crate::jose::JoseError;

    /// Found in review: the status used to be chosen by searching the message for words such as
    /// "fetch" or "JWKS", and an unsupported `alg` is echoed in the message.
    #[test]
    fn a_token_cannot_name_itself_into_an_outage() {
        for alg in ["fetch", "JWKS", "timed out", "unreachable", "answered 503"] {
            let o = refusal(CheckError::Malformed(JoseError::UnsupportedAlg(alg.into())));
            assert_eq!(o.status, 403, "alg {alg:?}");
            assert!(!o.error, "alg {alg:?} must be a refusal, not an outage");
        }
        let o = refusal(CheckError::Status(reqwest::StatusCode::BAD_GATEWAY));
        assert_eq!((o.status, o.error), (503, true));
        let o = refusal(CheckError::Status(reqwest::StatusCode::UNAUTHORIZED));
        assert_eq!((o.status, o.error), (403, false));
        let o = refusal(CheckError::Signature(crate::TokenError::JwksUnavailable(
            "down".into(),
        )));
        assert_eq!((o.status, o.error), (503, true));
    }
}
