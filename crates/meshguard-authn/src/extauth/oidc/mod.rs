//! Gloo `oauth2.oidcAuthorizationCode`: the browser login, as a step that answers with redirects.
//!
//! - No session: 302 to the provider's authorization endpoint (code flow with `state`, `nonce`
//!   and PKCE S256), remembering state, nonce, verifier and the original URL in an encrypted,
//!   short-lived cookie.
//! - `callbackPath` with `code` and `state`: the state must match that cookie; the code is
//!   exchanged at the token endpoint (client_secret_basic); the ID token is verified (signature
//!   by the provider's JWKS, `iss`, `aud`, `nonce`, `exp`); the session goes into an encrypted
//!   cookie and the browser is sent back to the original URL.
//! - A valid session cookie: allowed, tokens optionally passed upstream in headers, the ID token
//!   in chain state (`jwt`) for later steps.
//! - An expired session with `session.cookie.allowRefreshing`: the refresh token (kept in the
//!   cookie) is exchanged at the token endpoint; the new ID token is verified like the first
//!   (same `sub`, no other `nonce`), the request is allowed and the renewed cookie is set on the
//!   response. Requests that arrive together with the same expired cookie share one refresh
//!   (a provider that rotates refresh tokens would revoke the grant on a replay). A refused
//!   refresh starts a new login; an unreachable provider denies (503).
//! - `logoutPath`: the session cookie is cleared; the refresh and access tokens are revoked at
//!   the provider's `revocation_endpoint` (RFC 7009, best effort, as Gloo does); the browser goes
//!   to the provider's `end_session_endpoint` (OpenID RP-Initiated Logout: `id_token_hint`,
//!   `client_id`, `post_logout_redirect_uri` = `afterLogoutUrl`) when discovery lists one, else
//!   straight to `afterLogoutUrl` (default: the app URL).
//!
//! Cookies are AES-256-GCM sealed with a key derived from the client secret (PBKDF2-HMAC-SHA256,
//! 200,000 rounds, salted with the AuthConfig id, so guessing a weak secret from a cookie is
//! slow), so every replica with the same AuthConfig reads them. The associated data binds the
//! AuthConfig id and the cookie's kind: a cookie of one config is not accepted by another, and a
//! login cookie (which any visitor gets) is never accepted as a session. With an https app URL
//! the cookies carry the `__Host-` prefix (Secure, Path=/, no Domain: a sibling subdomain cannot
//! plant one). A session cookie that would exceed what browsers keep (4 KB) drops the access
//! token if nothing needs it, else the login fails with that reason instead of looping.

mod provider;
mod refresh;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::LessSafeKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use meshguard_policy::extauth::OidcAuthorizationCode;
use meshguard_policy::PolicySet;
use serde_json::{json, Value};

use super::{BuildError, StepInput, StepOutcome};
use crate::extauth::token::form_escape;
use provider::{CodeError, Discovered};
use refresh::{RefreshError, RefreshRx};
use session::{cookie, random_b64, Kind};

/// How long a login may take between the redirect and the callback.
const PENDING_TTL: u64 = 600;

pub struct OidcStep {
    cfg: OidcAuthorizationCode,
    secret: String,
    key: LessSafeKey,
    id: String,
    session_name: String,
    pending_name: String,
    client: reqwest::Client,
    discovered: Mutex<Option<Arc<Discovered>>>,
    /// Refreshes in flight or just done (or refused by a logout), by SHA-256 of the refresh
    /// token.
    refreshing: Mutex<HashMap<[u8; 32], (u64, RefreshRx)>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

/// A form or query value: `+` is a space, then percent-decoding.
fn percent_decode(s: &str) -> String {
    meshguard_policy::path::percent_decode_lossy(&s.replace('+', " "))
}

fn query_param(raw: &str, name: &str) -> Option<String> {
    let q = raw.split_once('?')?.1.split('#').next()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

impl OidcStep {
    pub fn build(
        set: &PolicySet,
        id: &str,
        cfg: &OidcAuthorizationCode,
        client: &reqwest::Client,
    ) -> Result<OidcStep, BuildError> {
        let secret = super::client_secret(set, &cfg.client_secret)?;
        if secret.len() < 16 {
            return Err(BuildError::ShortClientSecret);
        }
        let key = session::cookie_key(&secret, id)?;
        let (session_name, pending_name) =
            session::cookie_names(&cfg.app_url, cfg.cookie_prefix.as_deref());
        Ok(OidcStep {
            cfg: cfg.clone(),
            secret,
            key,
            id: id.to_owned(),
            session_name,
            pending_name,
            client: client.clone(),
            discovered: Mutex::new(None),
            refreshing: Mutex::new(HashMap::new()),
        })
    }

    fn redirect(&self, location: &str, cookies: Vec<String>, why: &str) -> StepOutcome {
        let mut o = StepOutcome::deny(302, why.to_owned());
        o.response_headers
            .push(("location".into(), location.to_owned()));
        for c in cookies {
            o.response_headers.push(("set-cookie".into(), c));
        }
        o
    }

    async fn start_login(&self, input: &StepInput<'_>) -> StepOutcome {
        let d = match self.discover().await {
            Ok(d) => d,
            Err(e) => return StepOutcome::failed(503, e.to_string()),
        };
        let (Ok(state), Ok(nonce), Ok(verifier)) = (random_b64(24), random_b64(24), random_b64(32))
        else {
            return StepOutcome::failed(503, "no randomness for the login");
        };
        let challenge = B64.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let original = input
            .req
            .http
            .as_ref()
            .map(|h| h.raw_path.clone())
            .filter(|p| p.starts_with('/') && !p.starts_with("//"))
            .unwrap_or_else(|| "/".into());
        let pending = json!({"state": state, "nonce": nonce, "verifier": verifier, "url": original, "exp": now().saturating_add(PENDING_TTL)});
        let Ok(sealed) = self.seal(&pending, Kind::Pending) else {
            return StepOutcome::failed(503, "could not seal the login cookie");
        };
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(self.cfg.scopes.iter().filter(|s| *s != "openid").cloned());
        let sep = if d.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!(
            "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            d.authorization_endpoint,
            form_escape(&self.cfg.client_id),
            form_escape(&self.redirect_uri()),
            form_escape(&scopes.join(" ")),
            state,
            nonce,
            challenge
        );
        self.redirect(
            &location,
            vec![format!(
                "{}={sealed}; {}",
                self.pending_name,
                self.cookie_attrs(PENDING_TTL)
            )],
            "no session: redirected to the OpenID provider",
        )
    }

    async fn callback(&self, input: &StepInput<'_>, raw: &str) -> StepOutcome {
        let deny = |why: String| StepOutcome::deny(403, why);
        let Some(pending) =
            cookie(input, &self.pending_name).and_then(|c| self.open(&c, Kind::Pending))
        else {
            return deny("OIDC callback without a valid login cookie".into());
        };
        if pending["exp"].as_u64().is_none_or(|e| now() > e) {
            return deny("the login took too long".into());
        }
        let (Some(code), Some(state)) = (query_param(raw, "code"), query_param(raw, "state"))
        else {
            return deny(format!(
                "OIDC callback without code/state (error: {})",
                query_param(raw, "error").unwrap_or_default()
            ));
        };
        let expected = pending["state"].as_str().unwrap_or("");
        if !super::basic::ct_eq(expected.as_bytes(), state.as_bytes()) {
            return deny("OIDC state mismatch".into());
        }
        let d = match self.discover().await {
            Ok(d) => d,
            Err(e) => return StepOutcome::failed(503, e.to_string()),
        };
        let verifier = pending["verifier"].as_str().unwrap_or("");
        let tokens = match self.exchange_code(&d, &code, verifier).await {
            Ok(v) => v,
            Err(e @ CodeError::Unreachable(_)) => return StepOutcome::failed(503, e.to_string()),
            Err(e) => return deny(e.to_string()),
        };
        let Some(id_token) = tokens["id_token"].as_str() else {
            return deny("no id_token in the token response".into());
        };
        let claims = match self
            .verify_id_token(&d, id_token, pending["nonce"].as_str().unwrap_or(""), true)
            .await
        {
            Ok(c) => c,
            Err(e) => return deny(format!("ID token refused: {e}")),
        };
        let mut exp = claims["exp"].as_u64().unwrap_or(0);
        if let Some(s) = tokens["expires_in"].as_u64() {
            exp = exp.min(now().saturating_add(s));
        }
        if !claims["sub"].is_string() {
            return deny("the ID token has no `sub`".into());
        }
        let mut session = json!({
            "id_token": id_token,
            "access_token": tokens["access_token"],
            "exp": exp,
            "sub": claims["sub"],
            "nonce": pending["nonce"],
        });
        // The refresh token travels in the (encrypted) cookie only when it will be used.
        if self.cfg.allow_refreshing {
            if let Some(rt) = tokens["refresh_token"].as_str().filter(|t| !t.is_empty()) {
                session["refresh_token"] = Value::String(rt.to_owned());
            }
        }
        let set_session = match self.session_cookie(&mut session) {
            Ok(c) => c,
            Err(e) => return StepOutcome::failed(503, e.to_string()),
        };
        let url = pending["url"].as_str().unwrap_or("/");
        self.redirect(
            &format!("{}{url}", self.cfg.app_url),
            vec![
                set_session,
                format!("{}=; {}", self.pending_name, self.cookie_attrs(0)),
            ],
            "logged in: redirected to the original URL",
        )
    }

    /// Allowed with a live session: tokens upstream as configured, the ID token in chain state.
    fn with_session(&self, input: &mut StepInput<'_>, session: &Value, why: &str) -> StepOutcome {
        let id_token = session["id_token"].as_str().unwrap_or("").to_owned();
        let mut o = StepOutcome::allow(why);
        if let Some(h) = &self.cfg.id_token_header {
            o.headers_to_add.push((h.clone(), id_token.clone()));
        }
        if let Some(h) = &self.cfg.access_token_header {
            match session["access_token"].as_str() {
                Some(at) => o.headers_to_add.push((h.clone(), at.to_owned())),
                // Never let a client-sent header of that name pass for ours.
                None => o.headers_to_remove.push(h.clone()),
            }
        }
        input.state.insert("jwt".into(), Value::String(id_token));
        o
    }

    async fn logout(&self, input: &StepInput<'_>) -> StepOutcome {
        let session = self.session(input);
        let after = self
            .cfg
            .after_logout_url
            .clone()
            .unwrap_or_else(|| format!("{}/", self.cfg.app_url));
        let mut to = after.clone();
        let mut why = "logged out".to_owned();
        // Without discovery (provider down) the local logout still happens.
        if let Ok(d) = self.discover().await {
            if let (Some(endpoint), Some(s)) = (&d.revocation_endpoint, &session) {
                if self.revoke(endpoint, s) {
                    why = format!("{why} (token revocation sent)");
                }
            }
            if let Some(end) = &d.end_session_endpoint {
                let sep = if end.contains('?') { '&' } else { '?' };
                to = format!(
                    "{end}{sep}client_id={}&post_logout_redirect_uri={}",
                    form_escape(&self.cfg.client_id),
                    form_escape(&after)
                );
                if let Some(t) = session.as_ref().and_then(|s| s["id_token"].as_str()) {
                    to.push_str(&format!("&id_token_hint={}", form_escape(t)));
                }
                why = format!("{why}; sent to the provider's end_session_endpoint");
            }
        }
        // A logged-out session's refresh token renews nothing more here.
        if let Some(t) = session
            .as_ref()
            .and_then(|s| s["refresh_token"].as_str())
            .filter(|t| !t.is_empty())
        {
            self.retire_refresh_token(t);
        }
        self.redirect(
            &to,
            vec![format!("{}=; {}", self.session_name, self.cookie_attrs(0))],
            &why,
        )
    }

    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let Some(http) = input.req.http.as_ref() else {
            return StepOutcome::deny(403, "the OIDC login needs an HTTP request");
        };
        let path = http.normalized_path().unwrap_or("").to_owned();
        let raw = http.raw_path.clone();
        if self.cfg.logout_path.as_deref() == Some(path.as_str()) {
            return self.logout(input).await;
        }
        if path == self.cfg.callback_path {
            return self.callback(input, &raw).await;
        }
        let mut refused = None;
        if let Some(session) = self.session(input) {
            if session["exp"].as_u64().is_some_and(|e| now() < e) {
                return self.with_session(input, &session, "OIDC session");
            }
            if self.cfg.allow_refreshing && session["refresh_token"].is_string() {
                match self.refreshed(&session).await {
                    Ok(mut new) => {
                        let set_session = match self.session_cookie(&mut new) {
                            Ok(c) => c,
                            Err(e) => return StepOutcome::failed(503, e.to_string()),
                        };
                        let mut o = self.with_session(input, &new, "OIDC session refreshed");
                        o.response_headers.push(("set-cookie".into(), set_session));
                        return o;
                    }
                    Err(RefreshError::Unavailable(e)) => return StepOutcome::failed(503, e),
                    Err(RefreshError::Refused(e)) => refused = Some(e),
                }
            }
        }
        let mut o = self.start_login(input).await;
        if let Some(e) = refused {
            o.reason = format!("{} (session refresh refused: {e})", o.reason);
        }
        o
    }
}
