//! JSON Web Key Sets: parsed once into verification keys, matched to tokens by `kid` and
//! algorithm family (so an RSA key can never verify an HMAC token: no key confusion).

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::jose::{parse_json_strict, ParsedJwt};

/// Largest JWKS document accepted (inline or fetched).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    /// A symmetric key; only accepted from inline JWKS.
    Oct,
}

impl KeyKind {
    /// For messages: `an RSA`, `an EC P-256`, `an Ed25519`, `a symmetric (oct)`.
    fn article_name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA",
            KeyKind::EcP256 => "an EC P-256",
            KeyKind::EcP384 => "an EC P-384",
            KeyKind::Ed25519 => "an Ed25519",
            KeyKind::Oct => "a symmetric (oct)",
        }
    }

    fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Oct => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no `keys` array")]
    NoKeys,
    #[error("JWKS has no usable signing key ({0})")]
    NoUsableKey(String),
}

/// Why one JWK is skipped.
#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error(transparent)]
    Alg(#[from] crate::jose::JoseError),
    #[error("invalid key material: {0}")]
    Material(#[source] jsonwebtoken::errors::Error),
    /// A required member (`n`, `e`, `x`, `y`, `k`) is absent.
    #[error("{kty} key without `{member}`")]
    Missing {
        kty: &'static str,
        member: &'static str,
    },
    #[error("unsupported {kty} curve {}", quoted_or_none(.crv.as_deref(), "no `crv`"))]
    UnsupportedCurve {
        kty: &'static str,
        crv: Option<String>,
    },
    #[error("oct key `k` is not base64url")]
    OctNotBase64,
    #[error("oct key is empty")]
    OctEmpty,
    #[error("symmetric (oct) keys are only accepted from inline jwks")]
    OctNotInline,
    #[error("unsupported key type {}", quoted_or_none(.0.as_deref(), "no `kty`"))]
    UnsupportedKty(Option<String>),
    #[error("`alg` {} does not fit {} key", alg_name(*.alg), .kind.article_name())]
    AlgMismatch { alg: Algorithm, kind: KeyKind },
}

/// The JOSE name of an algorithm (`RS256`), as written in a JWK's `alg`.
fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// `` `value` `` for messages, or what to say when the member is absent (not Rust's `Some("..")`).
fn quoted_or_none(v: Option<&str>, absent: &str) -> String {
    match v {
        Some(v) => format!("`{v}`"),
        None => format!("({absent})"),
    }
}

/// A parsed key set.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Keys that were skipped, with the reason (for logs and `lint`).
    pub skipped: Vec<String>,
}

fn s<'v>(k: &'v Value, name: &str) -> Option<&'v str> {
    k.get(name).and_then(Value::as_str)
}

impl KeySet {
    /// Parses a JWKS. `allow_oct` admits symmetric (`kty: oct`) keys, which Istio only takes from
    /// inline `jwks`.
    pub fn parse(bytes: &[u8], allow_oct: bool) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let v = parse_json_strict(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
        let Some(list) = v.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NoKeys);
        };
        let mut set = KeySet::default();
        for (i, k) in list.iter().enumerate() {
            match Self::parse_key(k, allow_oct) {
                Ok(key) => set.keys.push(key),
                Err(e) => set.skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKey(if set.skipped.is_empty() {
                "the key list is empty".to_owned()
            } else {
                set.skipped.join("; ")
            }));
        }
        Ok(set)
    }

    fn parse_key(k: &Value, allow_oct: bool) -> Result<Key, KeyError> {
        // `use` is not consulted: Envoy 1.40 (jwt_verify_lib) verifies with a key marked
        // `use: enc` too (tests/envoy_jwt.rs, case kid_enc_key).
        let alg = match s(k, "alg") {
            Some(a) => Some(crate::jose::parse_alg(a)?),
            None => None,
        };
        let bad = KeyError::Material;
        let missing = |kty, member| KeyError::Missing { kty, member };
        let (kind, decoding) = match s(k, "kty") {
            Some("RSA") => {
                let (n, e) = (
                    s(k, "n").ok_or(missing("RSA", "n"))?,
                    s(k, "e").ok_or(missing("RSA", "e"))?,
                );
                (
                    KeyKind::Rsa,
                    DecodingKey::from_rsa_components(n, e).map_err(bad)?,
                )
            }
            Some("EC") => {
                let kind = match s(k, "crv") {
                    Some("P-256") => KeyKind::EcP256,
                    Some("P-384") => KeyKind::EcP384,
                    other => {
                        return Err(KeyError::UnsupportedCurve {
                            kty: "EC",
                            crv: other.map(str::to_owned),
                        })
                    }
                };
                let (x, y) = (
                    s(k, "x").ok_or(missing("EC", "x"))?,
                    s(k, "y").ok_or(missing("EC", "y"))?,
                );
                (kind, DecodingKey::from_ec_components(x, y).map_err(bad)?)
            }
            Some("OKP") => {
                if s(k, "crv") != Some("Ed25519") {
                    return Err(KeyError::UnsupportedCurve {
                        kty: "OKP",
                        crv: s(k, "crv").map(str::to_owned),
                    });
                }
                (
                    KeyKind::Ed25519,
                    DecodingKey::from_ed_components(s(k, "x").ok_or(missing("OKP", "x"))?)
                        .map_err(bad)?,
                )
            }
            Some("oct") if allow_oct => {
                let secret = s(k, "k").ok_or(missing("oct", "k"))?;
                let raw = base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    secret.trim_end_matches('='),
                )
                .map_err(|_| KeyError::OctNotBase64)?;
                if raw.is_empty() {
                    return Err(KeyError::OctEmpty);
                }
                (KeyKind::Oct, DecodingKey::from_secret(&raw))
            }
            Some("oct") => return Err(KeyError::OctNotInline),
            other => return Err(KeyError::UnsupportedKty(other.map(str::to_owned))),
        };
        if let Some(a) = alg {
            if !kind.accepts(a) {
                return Err(KeyError::AlgMismatch { alg: a, kind });
            }
        }
        Ok(Key {
            kid: s(k, "kid").map(str::to_owned),
            alg,
            kind,
            decoding,
        })
    }

    /// Keys that may verify this token: same `kid` when the token names one, and a key type
    /// (and pinned `alg`) that fits the token's algorithm.
    pub fn candidates<'a>(&'a self, jwt: &'a ParsedJwt<'_>) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            // jwt_verify_lib skips a key only when both it and the token name a kid and they differ.
            (jwt.kid.is_none() || k.kid.is_none() || k.kid.as_deref() == jwt.kid.as_deref())
                && k.kind.accepts(jwt.alg)
                && k.alg.is_none_or(|a| a == jwt.alg)
        })
    }

    /// Whether a key with this `kid` exists at all.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why each unusable key was skipped, as `lint` and the logs show it.
    #[test]
    fn skipped_keys_say_why() {
        let jwks = br#"{"keys":[
            {"kty":"RSA","e":"AQAB"},
            {"kty":"EC","crv":"P-521","x":"a","y":"b"},
            {"kty":"OKP","crv":"X25519","x":"a"},
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"oct","k":"c2VjcmV0","alg":"RS256"},
            {"kty":"XYZ"},
            {"kty":"RSA","alg":"none","n":"a","e":"AQAB"}
        ]}"#;
        let Err(JwksError::NoUsableKey(why)) = KeySet::parse(jwks, false) else {
            panic!("no key should be usable");
        };
        assert_eq!(
            why,
            "keys[0]: RSA key without `n`; \
             keys[1]: unsupported EC curve `P-521`; \
             keys[2]: unsupported OKP curve `X25519`; \
             keys[3]: symmetric (oct) keys are only accepted from inline jwks; \
             keys[4]: symmetric (oct) keys are only accepted from inline jwks; \
             keys[5]: unsupported key type `XYZ`; \
             keys[6]: Jwt algorithm `none` is not allowed"
        );
        let Err(JwksError::NoUsableKey(why)) = KeySet::parse(
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"RS256"},{"kty":"oct","k":""},{"kty":"EC","crv":"P-256","x":"a"}]}"#,
            true,
        ) else {
            panic!("no key should be usable");
        };
        assert_eq!(
            why,
            "keys[0]: `alg` RS256 does not fit a symmetric (oct) key; keys[1]: oct key is empty; keys[2]: EC key without `y`"
        );
    }
}
