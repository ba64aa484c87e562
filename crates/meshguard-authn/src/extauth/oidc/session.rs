//! The OIDC step's cookies: names, the AES-256-GCM key derived from the client secret, sealing
//! and opening the login and session cookies, and reading them back from a request.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::Value;

use super::{now, OidcStep};
use crate::extauth::{BuildError, StepInput};

const SESSION_COOKIE: &str = "meshguard-session";
const PENDING_COOKIE: &str = "meshguard-oidc-pending";
/// What a browser keeps of one cookie (RFC 6265 section 6.1 asks for at least 4096 bytes).
const MAX_COOKIE: usize = 4000;
/// PBKDF2 rounds for the cookie key (paid once per AuthConfig build).
const KEY_ROUNDS: u32 = 200_000;

/// Which cookie a sealed value is: bound as associated data so one cannot pass for the other.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Session,
    Pending,
}

/// Why a cookie could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum SealError {
    #[error("no randomness")]
    NoRandomness,
    #[error("sealing failed")]
    Sealing,
    /// The sealed session (this many bytes) would not fit in a cookie.
    #[error("the session cookie would be {0} bytes, more than browsers keep ({MAX_COOKIE}); the provider's tokens are too large to keep in a cookie")]
    TooLarge(usize),
}

/// The cookie key: PBKDF2-HMAC-SHA256 of the client secret, salted with the AuthConfig id.
pub(super) fn cookie_key(secret: &str, id: &str) -> Result<LessSafeKey, BuildError> {
    let mut raw = [0u8; 32];
    let salt = format!("meshguard oidc session v2\0{id}");
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(KEY_ROUNDS).unwrap_or(std::num::NonZeroU32::MIN),
        salt.as_bytes(),
        secret.as_bytes(),
        &mut raw,
    );
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| BuildError::CookieKey)?,
    ))
}

/// The session and login cookie names: `__Host-` with an https app URL, then the keyPrefix.
pub(super) fn cookie_names(app_url: &str, cookie_prefix: Option<&str>) -> (String, String) {
    let host = if app_url.starts_with("https://") {
        "__Host-"
    } else {
        ""
    };
    let prefix = match cookie_prefix {
        Some(p) => format!("{host}{p}_"),
        None => host.to_owned(),
    };
    (
        format!("{prefix}{SESSION_COOKIE}"),
        format!("{prefix}{PENDING_COOKIE}"),
    )
}

pub(super) fn random_b64(n: usize) -> Result<String, SealError> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SealError::NoRandomness)?;
    Ok(B64.encode(b))
}

pub(super) fn cookie(input: &StepInput<'_>, name: &str) -> Option<String> {
    input.header("cookie")?.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

impl OidcStep {
    fn aad(&self, kind: Kind) -> String {
        let k = match kind {
            Kind::Session => "session",
            Kind::Pending => "pending",
        };
        format!("{}\0{k}", self.id)
    }

    pub(super) fn seal(&self, v: &Value, kind: Kind) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::NoRandomness)?;
        let mut data = v.to_string().into_bytes();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(kind).as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Sealing)?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(B64.encode(out))
    }

    pub(super) fn open(&self, s: &str, kind: Kind) -> Option<Value> {
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
    pub(super) fn session(&self, input: &StepInput<'_>) -> Option<Value> {
        let s = cookie(input, &self.session_name).and_then(|c| self.open(&c, Kind::Session))?;
        (s["id_token"].is_string() && s["sub"].is_string() && s["exp"].is_u64()).then_some(s)
    }

    /// `Set-Cookie` for a session; the access token is left out when it would make the cookie
    /// too large and nothing reads it (no accessTokenHeader).
    pub(super) fn session_cookie(&self, session: &mut Value) -> Result<String, SealError> {
        let exp = session["exp"].as_u64().unwrap_or(0);
        let mut sealed = self.seal(session, Kind::Session)?;
        if sealed.len() > MAX_COOKIE && self.cfg.access_token_header.is_none() {
            if let Some(m) = session.as_object_mut() {
                m.remove("access_token");
            }
            sealed = self.seal(session, Kind::Session)?;
        }
        if sealed.len() > MAX_COOKIE {
            return Err(SealError::TooLarge(sealed.len()));
        }
        Ok(format!(
            "{}={sealed}; {}",
            self.session_name,
            self.cookie_attrs(exp.saturating_sub(now()))
        ))
    }

    pub(super) fn cookie_attrs(&self, max_age: u64) -> String {
        let secure = if self.cfg.app_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        format!("Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshguard_policy::extauth::AuthModel;
    use meshguard_policy::load::Loaded;
    use meshguard_policy::PolicySet;
    use serde_json::json;

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
