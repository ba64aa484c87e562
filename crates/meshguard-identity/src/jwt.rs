//! JWT-SVIDs (spiffe/spiffe standards/JWT-SVID.md): compact JWS tokens whose `sub` is the
//! SPIFFE ID, signed with the trust domain's JWT authority (an ECDSA P-256 key) and checked
//! against the trust domain's JWT bundle (a JWK Set whose keys carry `use: "jwt-svid"` and a
//! required `kid`).
//!
//! Validation follows the standard: compact form only, header members limited to `alg`, `kid`
//! and `typ` (`JWT` or `JOSE`), `alg` one of the RS/ES/PS families, a known `kid`, a valid
//! signature, `exp` required and in the future, `aud` required and containing the validator's
//! audience, `sub` a SPIFFE ID of this trust domain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::spiffe_id::SpiffeId;

/// Default JWT-SVID lifetime (SPIRE's default too).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// Largest token accepted for validation.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtSvidError {
    #[error("the JWT signing key is not an ECDSA P-256 PKCS#8 key")]
    BadKey,
    #[error("signing failed")]
    Sign,
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("token is not a compact JWS (three base64url parts)")]
    Malformed,
    #[error("token header is invalid: {0}")]
    Header(String),
    #[error("token algorithm `{0}` is not allowed for JWT-SVIDs")]
    Algorithm(String),
    #[error("token key id `{0}` is not in the trust domain's JWT bundle")]
    UnknownKid(String),
    #[error("token header has no `kid`")]
    NoKid,
    #[error("token signature is invalid")]
    Signature,
    #[error("token claims are invalid: {0}")]
    Claims(String),
    #[error("token has expired")]
    Expired,
    #[error("audience `{0}` is not in the token's `aud`")]
    Audience(String),
    #[error("subject `{0}` is not a SPIFFE ID of trust domain {1}")]
    Subject(String, String),
}

/// A JWT authority: the key that signs this trust domain's JWT-SVIDs.
pub struct JwtSigner {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner").field("kid", &self.kid).finish()
    }
}

/// Seconds since the Unix epoch; a clock before 1970 reads as the far future, so every token
/// counts as expired (fail closed) and nothing signed then looks valid.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX / 2)
}

impl JwtSigner {
    /// A new P-256 key as PKCS#8 DER.
    pub fn generate_pkcs8() -> Result<Vec<u8>, JwtSvidError> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| JwtSvidError::BadKey)
    }

    /// Loads a key from PKCS#8 DER. The key id is the RFC 7638 JWK thumbprint of the public key,
    /// so every agent holding the same key publishes the same `kid`.
    pub fn from_pkcs8(der: &[u8]) -> Result<JwtSigner, JwtSvidError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| JwtSvidError::BadKey)?;
        let (x, y) = xy(key.public_key().as_ref()).ok_or(JwtSvidError::BadKey)?;
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, thumb_input.as_bytes());
        Ok(JwtSigner {
            key,
            kid: B64.encode(digest.as_ref()),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK for the trust bundle (`use: jwt-svid`, with `kid`).
    pub fn jwk(&self) -> Value {
        let (x, y) = xy(self.key.public_key().as_ref()).unwrap_or_default();
        // Only the members the bundle and JWT-SVID standards define (no `alg`).
        json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": self.kid, "use": "jwt-svid"})
    }

    /// Signs a JWT-SVID for `id` valid for `ttl`, with every audience in `aud`.
    pub fn sign(
        &self,
        id: &SpiffeId,
        aud: &[String],
        ttl: Duration,
    ) -> Result<String, JwtSvidError> {
        let now = now_secs();
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let claims = json!({
            "sub": id.to_string(),
            "aud": aud,
            "iat": now,
            "exp": now + ttl.as_secs().max(1),
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| JwtSvidError::Sign)?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }

    /// Validates a JWT-SVID of this trust domain for `audience` against this authority's key.
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
        trust_domain: &str,
    ) -> Result<(SpiffeId, Map<String, Value>), JwtSvidError> {
        validate_at(token, audience, trust_domain, &[self], now_secs())
    }
}

/// The affine coordinates of an uncompressed P-256 point, base64url.
fn xy(point: &[u8]) -> Option<(String, String)> {
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    Some((B64.encode(&point[1..33]), B64.encode(&point[33..])))
}

/// The JWT bundle of a trust domain: a JWK Set of its JWT authorities.
pub fn jwks(signers: &[&JwtSigner]) -> Vec<u8> {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()})
        .to_string()
        .into_bytes()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// Validation with an explicit clock, for tests.
pub fn validate_at(
    token: &str,
    audience: &str,
    trust_domain: &str,
    authorities: &[&JwtSigner],
    now: u64,
) -> Result<(SpiffeId, Map<String, Value>), JwtSvidError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtSvidError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtSvidError::Malformed);
    };
    let dec = |p: &str| B64.decode(p).map_err(|_| JwtSvidError::Malformed);
    let header: Header =
        serde_json::from_slice(&dec(h)?).map_err(|e| JwtSvidError::Header(e.to_string()))?;
    if !ALLOWED_ALGS.contains(&header.alg.as_str()) {
        return Err(JwtSvidError::Algorithm(header.alg));
    }
    if let Some(t) = &header.typ {
        if t != "JWT" && t != "JOSE" {
            return Err(JwtSvidError::Header(format!(
                "typ `{t}` is not JWT or JOSE"
            )));
        }
    }
    // Our bundle keys always carry a kid, so a token without one cannot be attributed.
    let kid = header.kid.ok_or(JwtSvidError::NoKid)?;
    let signer = authorities
        .iter()
        .find(|a| a.kid == kid)
        .ok_or_else(|| JwtSvidError::UnknownKid(kid.clone()))?;
    // Every authority here is ES256: any other algorithm with this kid is key confusion.
    if header.alg != "ES256" {
        return Err(JwtSvidError::Algorithm(header.alg));
    }
    let sig = dec(s)?;
    let signed = &token[..h.len() + 1 + c.len()];
    UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        signer.key.public_key().as_ref(),
    )
    .verify(signed.as_bytes(), &sig)
    .map_err(|_| JwtSvidError::Signature)?;

    let claims: Map<String, Value> =
        serde_json::from_slice(&dec(c)?).map_err(|e| JwtSvidError::Claims(e.to_string()))?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| JwtSvidError::Claims("`exp` is required and must be a number".into()))?;
    if now >= exp {
        return Err(JwtSvidError::Expired);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => return Err(JwtSvidError::Claims("`aud` is required".into())),
    };
    if !aud_ok {
        return Err(JwtSvidError::Audience(audience.to_owned()));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtSvidError::Claims("`sub` is required".into()))?;
    let id = SpiffeId::parse_workload(sub)
        .ok()
        .filter(|id| id.trust_domain() == trust_domain)
        .ok_or_else(|| JwtSvidError::Subject(sub.to_owned(), trust_domain.to_owned()))?;
    Ok((id, claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> JwtSigner {
        JwtSigner::from_pkcs8(&JwtSigner::generate_pkcs8().expect("gen")).expect("load")
    }

    fn id() -> SpiffeId {
        SpiffeId::istio("cluster.local", "ns", "sa").expect("id")
    }

    fn forge(header: &str, claims: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header),
            B64.encode(claims),
            B64.encode(sig)
        )
    }

    #[test]
    fn round_trip_and_claims() {
        let s = signer();
        let t = s
            .sign(&id(), &["svc-a".into(), "svc-b".into()], DEFAULT_JWT_TTL)
            .expect("sign");
        let (got, claims) = s.validate(&t, "svc-b", "cluster.local").expect("valid");
        assert_eq!(got, id());
        assert_eq!(claims["sub"], "spiffe://cluster.local/ns/ns/sa/sa");
        assert!(claims["exp"].as_u64().unwrap_or(0) > now_secs());
        assert_eq!(s.kid().len(), 43, "SHA-256 thumbprint, base64url");
        assert_eq!(s.jwk()["use"], "jwt-svid");
    }

    #[test]
    fn refusals() {
        let s = signer();
        let other = signer();
        let t = s.sign(&id(), &["a".into()], DEFAULT_JWT_TTL).expect("sign");
        assert_eq!(
            s.validate(&t, "b", "cluster.local"),
            Err(JwtSvidError::Audience("b".into()))
        );
        assert!(matches!(
            s.validate(&t, "a", "other.td"),
            Err(JwtSvidError::Subject(..))
        ));
        // Signed by another authority: its kid is unknown here.
        let t2 = other
            .sign(&id(), &["a".into()], DEFAULT_JWT_TTL)
            .expect("sign");
        assert!(matches!(
            s.validate(&t2, "a", "cluster.local"),
            Err(JwtSvidError::UnknownKid(_))
        ));
        // Expired, by the clock.
        assert_eq!(
            validate_at(&t, "a", "cluster.local", &[&s], now_secs() + 3600),
            Err(JwtSvidError::Expired)
        );
        // A flipped signature byte.
        let mut bad = t.clone().into_bytes();
        let n = bad.len() - 3;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert_eq!(
            s.validate(&bad, "a", "cluster.local"),
            Err(JwtSvidError::Signature)
        );
        let claims = format!(
            r#"{{"sub":"spiffe://cluster.local/ns/ns/sa/sa","aud":["a"],"exp":{}}}"#,
            now_secs() + 60
        );
        // alg none and HS256 with the kid (key confusion) are refused before any signature check.
        let kid = s.kid().to_owned();
        let none = forge(r#"{"alg":"none"}"#, &claims, b"");
        assert!(matches!(
            s.validate(&none, "a", "cluster.local"),
            Err(JwtSvidError::Algorithm(_))
        ));
        let hs = forge(
            &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
            &claims,
            b"x",
        );
        assert!(matches!(
            s.validate(&hs, "a", "cluster.local"),
            Err(JwtSvidError::Algorithm(_))
        ));
        let rs = forge(
            &format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#),
            &claims,
            b"x",
        );
        assert!(matches!(
            s.validate(&rs, "a", "cluster.local"),
            Err(JwtSvidError::Algorithm(_))
        ));
        // Extra header members, a bad typ, duplicate members, no kid, junk.
        for h in [
            format!(r#"{{"alg":"ES256","kid":"{kid}","jku":"http://x"}}"#),
            format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"at+jwt"}}"#),
            format!(r#"{{"alg":"ES256","kid":"{kid}","kid":"{kid}"}}"#),
        ] {
            assert!(
                matches!(
                    s.validate(&forge(&h, &claims, b"x"), "a", "cluster.local"),
                    Err(JwtSvidError::Header(_))
                ),
                "{h}"
            );
        }
        assert_eq!(
            s.validate(
                &forge(r#"{"alg":"ES256"}"#, &claims, b"x"),
                "a",
                "cluster.local"
            ),
            Err(JwtSvidError::NoKid)
        );
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(s.validate(junk, "a", "cluster.local").is_err(), "{junk}");
        }
        assert_eq!(
            s.validate(&"a".repeat(MAX_TOKEN_LEN + 1), "a", "cluster.local"),
            Err(JwtSvidError::TooLarge)
        );
    }
}
