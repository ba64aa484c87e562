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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use meshguard_policy::extauth::OidcAuthorizationCode;
use meshguard_policy::PolicySet;
use serde_json::{json, Value};

use super::{StepInput, StepOutcome};
use crate::remote::{FetchSettings, RemoteJwks};

const SESSION_COOKIE: &str = "meshguard-session";
const PENDING_COOKIE: &str = "meshguard-oidc-pending";
/// What a browser keeps of one cookie (RFC 6265 section 6.1 asks for at least 4096 bytes).
const MAX_COOKIE: usize = 4000;
/// PBKDF2 rounds for the cookie key (paid once per AuthConfig build).
const KEY_ROUNDS: u32 = 200_000;

/// Which cookie a sealed value is: bound as associated data so one cannot pass for the other.
#[derive(Clone, Copy)]
enum Kind {
    Session,
    Pending,
}
/// How long a login may take between the redirect and the callback.
const PENDING_TTL: u64 = 600;
/// Bound on discovery and token requests.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

struct Discovered {
    authorization_endpoint: String,
    token_endpoint: String,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    jwks: Arc<RemoteJwks>,
}

/// Why a session could not be renewed.
#[derive(Debug, Clone)]
enum RefreshError {
    /// The provider said no (revoked, expired, a token that does not verify): log in again.
    Refused(String),
    /// The provider could not be asked: deny, do not start a login that would fail too.
    Unavailable(String),
}

/// How long a refresh result is shared with requests carrying the same expired cookie.
const REFRESH_SHARE_SECS: u64 = 30;

/// The token endpoint's answer to one refresh, shared by every request that waits for it.
type RefreshRx = tokio::sync::watch::Receiver<Option<Result<Value, RefreshError>>>;

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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

fn random_b64(n: usize) -> Result<String, String> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness".to_owned())?;
    Ok(B64.encode(b))
}

/// A JSON response body, at most 64 KiB.
async fn json_body(r: reqwest::Response) -> Result<Value, String> {
    let b = r.bytes().await.map_err(|e| e.to_string())?;
    if b.len() > 64 * 1024 {
        return Err("response too large".into());
    }
    serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}"))
}

fn form_escape(s: &str) -> String {
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

fn cookie(input: &StepInput<'_>, name: &str) -> Option<String> {
    input.header("cookie")?.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

impl OidcStep {
    pub fn build(
        set: &PolicySet,
        id: &str,
        cfg: &OidcAuthorizationCode,
        client: &reqwest::Client,
    ) -> Result<OidcStep, String> {
        let secret = super::client_secret(set, &cfg.client_secret)?;
        if secret.len() < 16 {
            return Err("the client secret is too short (under 16 bytes) to derive a cookie key from; use the provider's generated secret".into());
        }
        let mut raw = [0u8; 32];
        let salt = format!("meshguard oidc session v2\0{id}");
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(KEY_ROUNDS).unwrap_or(std::num::NonZeroU32::MIN),
            salt.as_bytes(),
            secret.as_bytes(),
            &mut raw,
        );
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| "cookie key derivation failed".to_owned())?,
        );
        let host = if cfg.app_url.starts_with("https://") {
            "__Host-"
        } else {
            ""
        };
        let prefix = match &cfg.cookie_prefix {
            Some(p) => format!("{host}{p}_"),
            None => host.to_owned(),
        };
        Ok(OidcStep {
            cfg: cfg.clone(),
            secret,
            key,
            id: id.to_owned(),
            session_name: format!("{prefix}{SESSION_COOKIE}"),
            pending_name: format!("{prefix}{PENDING_COOKIE}"),
            client: client.clone(),
            discovered: Mutex::new(None),
            refreshing: Mutex::new(HashMap::new()),
        })
    }

    fn aad(&self, kind: Kind) -> String {
        let k = match kind {
            Kind::Session => "session",
            Kind::Pending => "pending",
        };
        format!("{}\0{k}", self.id)
    }

    fn seal(&self, v: &Value, kind: Kind) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no randomness".to_owned())?;
        let mut data = v.to_string().into_bytes();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(kind).as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(B64.encode(out))
    }

    fn open(&self, s: &str, kind: Kind) -> Option<Value> {
        let raw = B64.decode(s).ok()?;
        if raw.len() < NONCE_LEN + 16 || raw.len() > 16 * 1024 {
            return None;
        }
        let (n, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.aad(kind).as_bytes()), &mut data)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }

    /// The session from the request's cookie, if it is one of ours and well formed.
    fn session(&self, input: &StepInput<'_>) -> Option<Value> {
        let s = cookie(input, &self.session_name).and_then(|c| self.open(&c, Kind::Session))?;
        (s["id_token"].is_string() && s["sub"].is_string() && s["exp"].is_u64()).then_some(s)
    }

    /// `Set-Cookie` for a session; the access token is left out when it would make the cookie
    /// too large and nothing reads it (no accessTokenHeader).
    fn session_cookie(&self, session: &mut Value) -> Result<String, String> {
        let exp = session["exp"].as_u64().unwrap_or(0);
        let mut sealed = self.seal(session, Kind::Session)?;
        if sealed.len() > MAX_COOKIE && self.cfg.access_token_header.is_none() {
            if let Some(m) = session.as_object_mut() {
                m.remove("access_token");
            }
            sealed = self.seal(session, Kind::Session)?;
        }
        if sealed.len() > MAX_COOKIE {
            return Err(format!(
                "the session cookie would be {} bytes, more than browsers keep ({MAX_COOKIE}); the provider's tokens are too large to keep in a cookie",
                sealed.len()
            ));
        }
        Ok(format!(
            "{}={sealed}; {}",
            self.session_name,
            self.cookie_attrs(exp.saturating_sub(now()))
        ))
    }

    fn cookie_attrs(&self, max_age: u64) -> String {
        let secure = if self.cfg.app_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        format!("Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
    }

    async fn discover(&self) -> Result<Arc<Discovered>, String> {
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
            .map_err(|e| format!("OIDC discovery at {url} failed: {e}"))
            .map(json_body)?
            .await
            .map_err(|e| format!("OIDC discovery at {url}: {e}"))?;
        if doc["issuer"].as_str().map(|i| i.trim_end_matches('/'))
            != Some(self.cfg.issuer_url.as_str())
        {
            return Err(format!(
                "OIDC discovery at {url}: issuer does not match issuerUrl"
            ));
        }
        let field = |k: &str| {
            doc[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("OIDC discovery at {url} has no `{k}`"))
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

    fn redirect_uri(&self) -> String {
        format!("{}{}", self.cfg.app_url, self.cfg.callback_path)
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
            Err(e) => return StepOutcome::failed(503, e),
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
            Err(e) => return StepOutcome::failed(503, e),
        };
        let body = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            form_escape(&code),
            form_escape(&self.redirect_uri()),
            form_escape(pending["verifier"].as_str().unwrap_or(""))
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
        let tokens: Value = match resp {
            Ok(r) if r.status().is_success() => match json_body(r).await {
                Ok(v) => v,
                Err(e) => return deny(format!("token response: {e}")),
            },
            Ok(r) => {
                return deny(format!(
                    "the token endpoint refused the code ({})",
                    r.status()
                ))
            }
            Err(e) => return StepOutcome::failed(503, format!("token endpoint unreachable: {e}")),
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
            Err(e) => return StepOutcome::failed(503, e),
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

    /// Verifies an ID token from the token endpoint. `nonce_required`: the login's token must
    /// carry the login's nonce; a refreshed one should carry none, and if it does, the same
    /// (OpenID Connect Core 12.2).
    async fn verify_id_token(
        &self,
        d: &Discovered,
        token: &str,
        nonce: &str,
        nonce_required: bool,
    ) -> Result<Value, String> {
        let jwt = crate::jose::parse(token).map_err(|e| e.to_string())?;
        let mut keys = d.jwks.keys().await?;
        if let Some(kid) = &jwt.kid {
            if !keys.has_kid(kid) {
                if let Some(k) = d.jwks.refresh_for_unknown_kid().await {
                    keys = k;
                }
            }
        }
        crate::verify_signature(&keys, &jwt).map_err(|e| e.to_string())?;
        let c = Value::Object(jwt.payload);
        if c["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(self.cfg.issuer_url.as_str())
        {
            return Err("wrong issuer".into());
        }
        let aud_ok = match &c["aud"] {
            Value::String(a) => *a == self.cfg.client_id,
            Value::Array(a) => a
                .iter()
                .any(|x| x.as_str() == Some(self.cfg.client_id.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err("the token is not for this client".into());
        }
        let checked = nonce_required || !c["nonce"].is_null();
        if checked
            && !super::basic::ct_eq(
                c["nonce"].as_str().unwrap_or("").as_bytes(),
                nonce.as_bytes(),
            )
        {
            return Err("nonce mismatch".into());
        }
        if c["exp"]
            .as_u64()
            .is_none_or(|e| now() > e.saturating_add(60))
        {
            return Err("expired".into());
        }
        Ok(c)
    }

    /// A new session from the refresh token in `session`. Requests carrying the same expired
    /// cookie share one exchange (a provider that rotates refresh tokens revokes the grant when
    /// one is replayed); each verifies the answer against its own session (`sub`, nonce).
    async fn refreshed(&self, session: &Value) -> Result<Value, RefreshError> {
        let Some(token) = session["refresh_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(RefreshError::Refused("no refresh token".into()));
        };
        let d = self.discover().await.map_err(RefreshError::Unavailable)?;
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
                let tokens: Vec<(&'static str, String)> = [
                    ("refresh_token", "refresh_token"),
                    ("access_token", "access_token"),
                ]
                .into_iter()
                .filter_map(|(k, hint)| s[k].as_str().map(|t| (hint, t.to_owned())))
                .filter(|(_, t)| !t.is_empty())
                .collect();
                if !tokens.is_empty() {
                    why = format!("{why} (token revocation sent)");
                    revoke_in_background(
                        self.client.clone(),
                        endpoint.clone(),
                        self.cfg.client_id.clone(),
                        self.secret.clone(),
                        tokens,
                    );
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
        // From now on this refresh token renews nothing here, even if a copy of the cookie is
        // replayed before the provider has processed the revocation.
        if let Some(t) = session
            .as_ref()
            .and_then(|s| s["refresh_token"].as_str())
            .filter(|t| !t.is_empty())
        {
            let (_, rx) = tokio::sync::watch::channel(Some(Err(RefreshError::Refused(
                "the session was logged out".into(),
            ))));
            if let Ok(mut map) = self.refreshing.lock() {
                map.insert(token_key(t), (now(), rx));
            }
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
                            Err(e) => return StepOutcome::failed(503, e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use meshguard_policy::extauth::AuthModel;
    use meshguard_policy::load::Loaded;

    /// Two OIDC AuthConfigs: `a` on https with keyPrefix `shop`, `b` on http without.
    fn steps() -> Vec<OidcStep> {
        let mut l = Loaded::default();
        l.add_text(
            "apiVersion: v1
kind: Secret
metadata: {name: c, namespace: ns}
stringData: {client-secret: a-client-secret-of-some-length}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: a, namespace: ns}
spec:
  configs:
  - name: o
    oauth2:
      oidcAuthorizationCode:
        clientId: app
        clientSecretRef: {name: c}
        issuerUrl: https://idp.test
        appUrl: https://app.test
        session: {cookie: {keyPrefix: shop}}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: b, namespace: ns}
spec:
  configs:
  - name: o
    oauth2:
      oidcAuthorizationCode:
        clientId: app
        clientSecretRef: {name: c}
        issuerUrl: https://idp.test
        appUrl: http://app.test
",
            "<test>",
        );
        assert!(!l.has_errors(), "{:?}", l.diagnostics);
        let set = PolicySet::compile(l.resources, Default::default()).expect("compile");
        set.auth_configs()
            .iter()
            .map(|ac| {
                let AuthModel::Oidc(cfg) = &ac.steps[0].model else {
                    panic!("oidc expected");
                };
                OidcStep::build(&set, &ac.ids()[0], cfg, &reqwest::Client::new()).expect("build")
            })
            .collect()
    }

    #[test]
    fn cookie_names_and_kinds_are_kept_apart() {
        let s = steps();
        let (a, b) = (&s[0], &s[1]);
        assert_eq!(a.session_name, "__Host-shop_meshguard-session");
        assert_eq!(a.pending_name, "__Host-shop_meshguard-oidc-pending");
        assert_eq!(b.session_name, "meshguard-session");
        let v = json!({"id_token": "t", "sub": "u", "exp": 1});
        let pending = a.seal(&v, Kind::Pending).expect("seal");
        // A login cookie is no session, and one config's cookie opens in no other.
        assert!(a.open(&pending, Kind::Pending).is_some());
        assert!(a.open(&pending, Kind::Session).is_none());
        let session = a.seal(&v, Kind::Session).expect("seal");
        assert!(a.open(&session, Kind::Session).is_some());
        assert!(b.open(&session, Kind::Session).is_none());
    }
}
