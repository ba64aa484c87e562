//! Strict parsing of a compact JWS before any cryptography runs.
//!
//! Refused here: oversized tokens (before any decoding), anything but three base64url segments
//! (no padding, no foreign characters), JSON that is not an object, duplicate member names at any
//! depth (RFC 7515 §5.2 lets implementations reject them; an attacker relies on parsers
//! disagreeing about which duplicate wins; Envoy 1.40 refuses them too), `alg: none` and
//! algorithms outside the allowlist, and unencoded payloads (RFC 7797).
//!
//! Accepted because Envoy 1.40's jwt_verify_lib accepts them (tests/envoy_jwt.rs shows it): a
//! `crit` header naming extensions (ignored), and non-canonical base64url (unused trailing bits).

use std::fmt;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Largest token accepted; longer ones are refused before they are decoded.
/// Envoy 1.40 verifies tokens of any size its header limits admit (60 KiB of request headers by
/// default): a 20 KiB token is accepted there. The bound only stops unbounded work.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Base64url without padding, as jwt_verify_lib decodes it: unused low bits of the last
/// character are ignored (a non-canonical encoding still verifies in Envoy 1.40).
const LENIENT_B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Why a token is malformed or unacceptable before signature verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("Jwt is too large ({0} bytes, limit {MAX_TOKEN_BYTES})")]
    TooLarge(usize),
    #[error("Jwt is not in the form of Header.Payload.Signature with three segments")]
    Segments,
    #[error("Jwt {0} is not valid base64url (unpadded)")]
    Base64(&'static str),
    #[error("Jwt {0} is not valid JSON: {1}")]
    Json(&'static str, String),
    #[error("Jwt {0} is not a JSON object")]
    NotObject(&'static str),
    #[error("Jwt header has no `alg`")]
    NoAlg,
    #[error("Jwt algorithm `none` is not allowed")]
    AlgNone,
    #[error("Jwt algorithm `{0}` is not supported")]
    UnsupportedAlg(String),
    #[error("Jwt header `b64: false` (unencoded payload) is not supported")]
    UnencodedPayload,
    #[error("Jwt header `kid` must be a string")]
    BadKid,
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct ParsedJwt<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub payload: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'t str,
    /// The base64url payload segment, as sent (for `outputPayloadToHeader`).
    pub payload_b64: &'t str,
    /// The base64url signature segment, canonically encoded (a segment with stray trailing bits
    /// is re-encoded so the signature check sees the bytes Envoy would).
    pub signature_b64: std::borrow::Cow<'t, str>,
}

/// The algorithms meshguard verifies (Envoy jwt_authn's list without ES512).
pub fn parse_alg(s: &str) -> Result<Algorithm, JoseError> {
    Ok(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        n if n.eq_ignore_ascii_case("none") => return Err(JoseError::AlgNone),
        other => return Err(JoseError::UnsupportedAlg(other.chars().take(32).collect())),
    })
}

fn decode_segment(s: &str, what: &'static str) -> Result<Vec<u8>, JoseError> {
    // absl's WebSafeBase64Unescape, which jwt_verify_lib uses, skips ASCII whitespace: a
    // signature followed by ` junk` decodes (then fails verification), so the audience is still
    // judged first, as Envoy 1.40 does (403, not 401).
    let result = if s.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        LENIENT_B64URL.decode(compact)
    } else {
        LENIENT_B64URL.decode(s)
    };
    result.map_err(|_| JoseError::Base64(what))
}

/// Splits, decodes and checks a compact JWS.
pub fn parse(token: &str) -> Result<ParsedJwt<'_>, JoseError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JoseError::TooLarge(token.len()));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JoseError::Segments);
    };
    if h.is_empty() || p.is_empty() {
        return Err(JoseError::Segments);
    }
    let header = strict_object(&decode_segment(h, "header")?, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => parse_alg(a)?,
        Some(_) | None => return Err(JoseError::NoAlg),
    };
    if s.is_empty() {
        return Err(JoseError::Segments);
    }
    if header.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err(JoseError::UnencodedPayload);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JoseError::BadKid),
    };
    let payload = strict_object(&decode_segment(p, "payload")?, "payload")?;
    // The signature must decode too; the verifier decodes it again.
    let sig = decode_segment(s, "signature")?;
    let canonical = URL_SAFE_NO_PAD.encode(&sig);
    // The signed input is the segments as sent (whitespace and all), as jwt_verify_lib signs
    // over the token text.
    let signature_b64 = if canonical == s {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(canonical)
    };
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(ParsedJwt {
        alg,
        kid,
        payload,
        signing_input,
        payload_b64: p,
        signature_b64,
    })
}

fn strict_object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, JoseError> {
    let v: StrictValue =
        serde_json::from_slice(bytes).map_err(|e| JoseError::Json(what, e.to_string()))?;
    match v.0 {
        Value::Object(m) => Ok(m),
        _ => Err(JoseError::NotObject(what)),
    }
}

/// Parses JSON strictly: duplicate member names anywhere are an error.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<StrictValue>(bytes).map(|v| v.0)
}

/// A JSON value whose deserialisation refuses duplicate object keys.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate member `{key}`"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn duplicate_keys_refused_at_any_depth() {
        assert!(parse_json_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_json_strict(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_json_strict(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(parse_json_strict(br#"{"a":1,"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn structure() {
        let t = format!(
            "{}.{}.{}",
            seg(r#"{"alg":"RS256"}"#),
            seg(r#"{"sub":"x"}"#),
            seg("sig")
        );
        let p = parse(&t).unwrap();
        assert_eq!(p.alg, Algorithm::RS256);
        assert_eq!(p.payload["sub"], "x");
        assert!(matches!(parse(&format!("{t}.x")), Err(JoseError::Segments)));
        assert!(matches!(parse("a.b"), Err(JoseError::Segments)));
        let none = format!("{}.{}.", seg(r#"{"alg":"none"}"#), seg("{}"));
        assert_eq!(parse(&none).unwrap_err(), JoseError::AlgNone);
        let none2 = format!("{}.{}.x", seg(r#"{"alg":"NoNe"}"#), seg("{}"));
        assert_eq!(parse(&none2).unwrap_err(), JoseError::AlgNone);
        // Envoy 1.40 ignores `crit`.
        let crit = format!(
            "{}.{}.{}",
            seg(r#"{"alg":"RS256","crit":["x"],"x":1}"#),
            seg("{}"),
            seg("s")
        );
        assert!(parse(&crit).is_ok());
        let b64 = format!(
            "{}.{}.{}",
            seg(r#"{"alg":"RS256","b64":false}"#),
            seg("{}"),
            seg("s")
        );
        assert_eq!(parse(&b64).unwrap_err(), JoseError::UnencodedPayload);
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(parse(&big), Err(JoseError::TooLarge(_))));
        let arr = format!("{}.{}.{}", seg(r#"{"alg":"RS256"}"#), seg("[1]"), seg("s"));
        assert_eq!(parse(&arr).unwrap_err(), JoseError::NotObject("payload"));
    }
}
