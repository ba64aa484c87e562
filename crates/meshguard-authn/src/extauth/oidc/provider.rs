//! What the OIDC step asks of the OpenID provider: discovery, the authorization-code exchange,
//! ID token verification and token revocation, plus the form encoding those requests use.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{now, OidcStep};
use crate::extauth::token::form_escape;
use crate::jose::JoseError;
use crate::remote::{FetchSettings, KeysError, RemoteJwks};

/// Bound on discovery and token requests.
pub(super) const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Discovered {
    pub(super) authorization_endpoint: String,
    pub(super) token_endpoint: String,
    pub(super) end_session_endpoint: Option<String>,
    pub(super) revocation_endpoint: Option<String>,
    jwks: Arc<RemoteJwks>,
}

/// Why a response body is not the JSON document asked for.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("{0}")]
    Read(#[source] reqwest::Error),
    #[error("response too large")]
    TooLarge,
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// Why the provider's discovery document is not usable.
#[derive(Debug, thiserror::Error)]
pub(super) enum DiscoveryError {
    #[error("OIDC discovery at {url} failed: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("OIDC discovery at {url}: {source}")]
    Body { url: String, source: BodyError },
    #[error("OIDC discovery at {url}: issuer does not match issuerUrl")]
    Issuer { url: String },
    #[error("OIDC discovery at {url} has no `{field}`")]
    Missing { url: String, field: &'static str },
}

/// Why the authorization code brought no tokens.
#[derive(Debug, thiserror::Error)]
pub(super) enum CodeError {
    #[error("token response: {0}")]
    Body(#[source] BodyError),
    #[error("the token endpoint refused the code ({0})")]
    Refused(reqwest::StatusCode),
    /// The provider could not be asked: an outage (503), not a refusal (403).
    #[error("token endpoint unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
}

/// Why an ID token is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum IdTokenError {
    #[error(transparent)]
    Malformed(#[from] JoseError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Signature(#[from] crate::TokenError),
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("the token is not for this client")]
    WrongAudience,
    #[error("nonce mismatch")]
    NonceMismatch,
    #[error("expired")]
    Expired,
}

/// RFC 7009 revocation of a session's tokens, in the background (best effort, bounded).
fn revoke_in_background(
    client: reqwest::Client,
    endpoint: String,
    client_id: String,
    secret: String,
    tokens: Vec<(&'static str, String)>,
) {
    tokio::spawn(async move {
        for (hint, t) in tokens {
            let _ = client
                .post(&endpoint)
                .timeout(Duration::from_secs(2))
                .basic_auth(form_escape(&client_id), Some(form_escape(&secret)))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={}&token_type_hint={hint}", form_escape(&t)))
                .send()
                .await;
        }
    });
}

/// A JSON response body, at most 64 KiB.
pub(super) async fn json_body(r: reqwest::Response) -> Result<Value, BodyError> {
    let b = r.bytes().await.map_err(BodyError::Read)?;
    if b.len() > 64 * 1024 {
        return Err(BodyError::TooLarge);
    }
    serde_json::from_slice(&b).map_err(BodyError::NotJson)
}

impl OidcStep {
    pub(super) async fn discover(&self) -> Result<Arc<Discovered>, DiscoveryError> {
        if let Some(d) = self.discovered.lock().ok().and_then(|d| d.clone()) {
            return Ok(d);
        }
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer_url);
        let doc: Value = self
            .client
            .get(&url)
            .timeout(HTTP_TIMEOUT)
            .send()
            .await
            .map_err(|source| DiscoveryError::Unreachable {
                url: url.clone(),
                source,
            })
            .map(json_body)?
            .await
            .map_err(|source| DiscoveryError::Body {
                url: url.clone(),
                source,
            })?;
        if doc["issuer"].as_str().map(|i| i.trim_end_matches('/'))
            != Some(self.cfg.issuer_url.as_str())
        {
            return Err(DiscoveryError::Issuer { url });
        }
        let field = |k: &'static str| {
            doc[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| DiscoveryError::Missing {
                    url: url.clone(),
                    field: k,
                })
        };
        let d = Arc::new(Discovered {
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            end_session_endpoint: doc["end_session_endpoint"].as_str().map(str::to_owned),
            revocation_endpoint: doc["revocation_endpoint"].as_str().map(str::to_owned),
            jwks: Arc::new(RemoteJwks::new(
                Some(field("jwks_uri")?),
                self.cfg.issuer_url.clone(),
                HTTP_TIMEOUT,
                self.client.clone(),
                FetchSettings::default(),
            )),
        });
        if let Ok(mut slot) = self.discovered.lock() {
            *slot = Some(d.clone());
        }
        Ok(d)
    }

    pub(super) fn redirect_uri(&self) -> String {
        format!("{}{}", self.cfg.app_url, self.cfg.callback_path)
    }

    /// The token endpoint's answer to the login's authorization code (with the PKCE verifier).
    pub(super) async fn exchange_code(
        &self,
        d: &Discovered,
        code: &str,
        verifier: &str,
    ) -> Result<Value, CodeError> {
        let body = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            form_escape(code),
            form_escape(&self.redirect_uri()),
            form_escape(verifier)
        );
        let resp = self
            .client
            .post(&d.token_endpoint)
            .timeout(HTTP_TIMEOUT)
            .basic_auth(
                form_escape(&self.cfg.client_id),
                Some(form_escape(&self.secret)),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => json_body(r).await.map_err(CodeError::Body),
            Ok(r) => Err(CodeError::Refused(r.status())),
            Err(e) => Err(CodeError::Unreachable(e)),
        }
    }

    /// Sends the session's refresh and access tokens to the `revocation_endpoint` in the
    /// background; false when the session holds none.
    pub(super) fn revoke(&self, endpoint: &str, session: &Value) -> bool {
        let tokens: Vec<(&'static str, String)> = [
            ("refresh_token", "refresh_token"),
            ("access_token", "access_token"),
        ]
        .into_iter()
        .filter_map(|(k, hint)| session[k].as_str().map(|t| (hint, t.to_owned())))
        .filter(|(_, t)| !t.is_empty())
        .collect();
        if tokens.is_empty() {
            return false;
        }
        revoke_in_background(
            self.client.clone(),
            endpoint.to_owned(),
            self.cfg.client_id.clone(),
            self.secret.clone(),
            tokens,
        );
        true
    }

    /// Verifies an ID token from the token endpoint. `nonce_required`: the login's token must
    /// carry the login's nonce; a refreshed one should carry none, and if it does, the same
    /// (OpenID Connect Core 12.2).
    pub(super) async fn verify_id_token(
        &self,
        d: &Discovered,
        token: &str,
        nonce: &str,
        nonce_required: bool,
    ) -> Result<Value, IdTokenError> {
        let jwt = crate::jose::parse(token)?;
        let mut keys = d.jwks.keys().await?;
        if let Some(kid) = &jwt.kid {
            if !keys.has_kid(kid) {
                if let Some(k) = d.jwks.refresh_for_unknown_kid().await {
                    keys = k;
                }
            }
        }
        crate::verify_signature(&keys, &jwt)?;
        let c = Value::Object(jwt.payload);
        if c["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(self.cfg.issuer_url.as_str())
        {
            return Err(IdTokenError::WrongIssuer);
        }
        let aud_ok = match &c["aud"] {
            Value::String(a) => *a == self.cfg.client_id,
            Value::Array(a) => a
                .iter()
                .any(|x| x.as_str() == Some(self.cfg.client_id.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(IdTokenError::WrongAudience);
        }
        let checked = nonce_required || !c["nonce"].is_null();
        if checked
            && !crate::extauth::basic::ct_eq(
                c["nonce"].as_str().unwrap_or("").as_bytes(),
                nonce.as_bytes(),
            )
        {
            return Err(IdTokenError::NonceMismatch);
        }
        if c["exp"]
            .as_u64()
            .is_none_or(|e| now() > e.saturating_add(60))
        {
            return Err(IdTokenError::Expired);
        }
        Ok(c)
    }
}
