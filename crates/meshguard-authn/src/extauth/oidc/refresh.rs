//! Renewing an expired OIDC session with its refresh token: one exchange shared by every request
//! that carries the same cookie, and refresh tokens a logout has retired.

use std::time::Duration;

use serde_json::{json, Value};

use super::provider::{json_body, HTTP_TIMEOUT};
use super::{now, OidcStep};
use crate::extauth::token::form_escape;

/// Why a session could not be renewed.
#[derive(Debug, Clone)]
pub(super) enum RefreshError {
    /// The provider said no (revoked, expired, a token that does not verify): log in again.
    Refused(String),
    /// The provider could not be asked: deny, do not start a login that would fail too.
    Unavailable(String),
}

/// How long a refresh result is shared with requests carrying the same expired cookie.
const REFRESH_SHARE_SECS: u64 = 30;

/// The token endpoint's answer to one refresh, shared by every request that waits for it.
pub(super) type RefreshRx = tokio::sync::watch::Receiver<Option<Result<Value, RefreshError>>>;

fn token_key(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

/// One refresh-token exchange at the token endpoint (runs as its own task: a request that is
/// cancelled, e.g. by Envoy's ext_authz timeout, does not cut it off half way, which would
/// replay the token later).
async fn exchange_refresh_token(
    client: reqwest::Client,
    endpoint: String,
    client_id: String,
    secret: String,
    token: String,
) -> Result<Value, RefreshError> {
    let resp = client
        .post(&endpoint)
        .timeout(HTTP_TIMEOUT)
        .basic_auth(form_escape(&client_id), Some(form_escape(&secret)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&refresh_token={}",
            form_escape(&token)
        ))
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => json_body(r)
            .await
            .map_err(|e| RefreshError::Refused(format!("refresh response: {e}"))),
        Ok(r) if r.status().is_server_error() => Err(RefreshError::Unavailable(format!(
            "the token endpoint failed the refresh ({})",
            r.status()
        ))),
        Ok(r) => {
            // RFC 6749 5.2: `error` and `error_description` say why (revoked, expired).
            let status = r.status();
            let why = json_body(r)
                .await
                .map(|e| {
                    format!(
                        ": {} {}",
                        e["error"].as_str().unwrap_or(""),
                        e["error_description"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            Err(RefreshError::Refused(format!(
                "the token endpoint refused the refresh token ({status}){}",
                why.trim_end()
            )))
        }
        Err(e) => Err(RefreshError::Unavailable(format!(
            "token endpoint unreachable: {e}"
        ))),
    }
}

impl OidcStep {
    /// A new session from the refresh token in `session`. Requests carrying the same expired
    /// cookie share one exchange (a provider that rotates refresh tokens revokes the grant when
    /// one is replayed); each verifies the answer against its own session (`sub`, nonce).
    pub(super) async fn refreshed(&self, session: &Value) -> Result<Value, RefreshError> {
        let Some(token) = session["refresh_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(RefreshError::Refused("no refresh token".into()));
        };
        let d = self
            .discover()
            .await
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        let key = token_key(token);
        let mut rx = {
            let Ok(mut map) = self.refreshing.lock() else {
                return Err(RefreshError::Unavailable("refresh state poisoned".into()));
            };
            let t = now();
            map.retain(|_, (at, _)| t.saturating_sub(*at) < REFRESH_SHARE_SECS);
            match map.get(&key) {
                Some((_, rx)) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let exchange = exchange_refresh_token(
                        self.client.clone(),
                        d.token_endpoint.clone(),
                        self.cfg.client_id.clone(),
                        self.secret.clone(),
                        token.to_owned(),
                    );
                    tokio::spawn(async move {
                        let _ = tx.send(Some(exchange.await));
                    });
                    map.insert(key, (t, rx.clone()));
                    rx
                }
            }
        };
        let answer = match tokio::time::timeout(
            HTTP_TIMEOUT + Duration::from_secs(1),
            rx.wait_for(Option::is_some),
        )
        .await
        {
            Ok(Ok(v)) => v.clone().unwrap_or_else(|| {
                Err(RefreshError::Unavailable(
                    "the refresh gave no answer".into(),
                ))
            }),
            _ => Err(RefreshError::Unavailable(
                "the refresh did not finish in time".into(),
            )),
        };
        // An outage is not remembered: the next request asks again. (A refusal is: the token
        // will not become valid.)
        if matches!(answer, Err(RefreshError::Unavailable(_))) {
            if let Ok(mut map) = self.refreshing.lock() {
                // Only this exchange's entry (a logout may have replaced it meanwhile).
                if map.get(&key).is_some_and(|(_, r)| r.same_channel(&rx)) {
                    map.remove(&key);
                }
            }
        }
        let tokens = answer?;
        let Some(id_token) = tokens["id_token"].as_str() else {
            return Err(RefreshError::Refused(
                "no id_token in the refresh response".into(),
            ));
        };
        let claims = self
            .verify_id_token(&d, id_token, session["nonce"].as_str().unwrap_or(""), false)
            .await
            .map_err(|e| RefreshError::Refused(format!("refreshed ID token refused: {e}")))?;
        if claims["sub"] != session["sub"] || !claims["sub"].is_string() {
            return Err(RefreshError::Refused(
                "the refreshed ID token is for another subject".into(),
            ));
        }
        let mut exp = claims["exp"].as_u64().unwrap_or(0);
        if let Some(s) = tokens["expires_in"].as_u64() {
            exp = exp.min(now().saturating_add(s));
        }
        let refresh_token = tokens["refresh_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map_or_else(|| session["refresh_token"].clone(), |t| json!(t));
        Ok(json!({
            "id_token": id_token,
            "access_token": tokens["access_token"],
            "refresh_token": refresh_token,
            "exp": exp,
            "sub": claims["sub"],
            "nonce": session["nonce"],
        }))
    }

    /// From now on this refresh token renews nothing here, even if a copy of the cookie is
    /// replayed before the provider has processed the revocation.
    pub(super) fn retire_refresh_token(&self, token: &str) {
        let (_, rx) = tokio::sync::watch::channel(Some(Err(RefreshError::Refused(
            "the session was logged out".into(),
        ))));
        if let Ok(mut map) = self.refreshing.lock() {
            map.insert(token_key(token), (now(), rx));
        }
    }
}
