//! SPIFFE IDs, validated as the SPIFFE-ID standard requires (spiffe/spiffe standards/SPIFFE-ID.md).

use std::fmt;

/// Longest SPIFFE ID accepted (the standard: implementations must accept up to 2048 bytes).
pub const MAX_LEN: usize = 2048;
/// Longest trust domain (host component).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error(
        "the trust domain `{0}` may only contain lower-case letters, digits, `.`, `-` and `_`"
    )]
    TrustDomainChars(String),
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("path segments may only contain letters, digits, `.`, `-` and `_` (found `{0}`)")]
    PathChars(String),
    #[error("the path has an empty segment, a trailing `/`, or a `.`/`..` segment")]
    PathSegment,
    #[error("a SPIFFE ID is at most {MAX_LEN} bytes")]
    TooLong,
    #[error("a workload SPIFFE ID needs a path (`spiffe://{0}/...`)")]
    NoPath(String),
}

/// A validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty, or starting with `/`.
    path: String,
}

fn valid_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
}

fn valid_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'
}

/// Validates a trust domain name.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !td.bytes().all(valid_td_char) {
        return Err(SpiffeIdError::TrustDomainChars(td.to_owned()));
    }
    Ok(())
}

impl SpiffeId {
    /// Parses `spiffe://trust-domain/path`. The scheme and trust domain are case-insensitive in
    /// the standard but must be written in lower case; upper case is refused rather than folded.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() || seg == "." || seg == ".." {
                    return Err(SpiffeIdError::PathSegment);
                }
                if !seg.bytes().all(valid_path_char) {
                    return Err(SpiffeIdError::PathChars(seg.to_owned()));
                }
            }
        }
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }

    /// A workload ID: like [`SpiffeId::parse`], and the path must not be empty.
    pub fn parse_workload(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        let id = SpiffeId::parse(s)?;
        if id.path.is_empty() {
            return Err(SpiffeIdError::NoPath(id.trust_domain));
        }
        Ok(id)
    }

    /// Istio's form: `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn istio(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse_workload(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The ID of a trust domain itself (`spiffe://td`), as a CA's SAN.
    pub fn trust_domain_id(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: String::new(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases from the SPIFFE-ID standard's rules (scheme, trust domain charset, path segments).
    #[test]
    fn spec_rules() {
        for ok in [
            "spiffe://cluster.local/ns/default/sa/web",
            "spiffe://example.org",
            "spiffe://a_b-c.d/x.y-z_1/A",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok}");
        }
        let bad: &[(&str, SpiffeIdError)] = &[
            ("http://example.org/x", SpiffeIdError::Scheme),
            ("spiffe:///x", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Example.org/x",
                SpiffeIdError::TrustDomainChars("Example.org".into()),
            ),
            (
                "spiffe://ex:8080/x",
                SpiffeIdError::TrustDomainChars("ex:8080".into()),
            ),
            (
                "spiffe://user@ex/x",
                SpiffeIdError::TrustDomainChars("user@ex".into()),
            ),
            ("spiffe://ex/a//b", SpiffeIdError::PathSegment),
            ("spiffe://ex/a/", SpiffeIdError::PathSegment),
            ("spiffe://ex/a/../b", SpiffeIdError::PathSegment),
            ("spiffe://ex/./b", SpiffeIdError::PathSegment),
            (
                "spiffe://ex/a%20b",
                SpiffeIdError::PathChars("a%20b".into()),
            ),
            ("spiffe://ex/a?b", SpiffeIdError::PathChars("a?b".into())),
            ("spiffe://ex/a#b", SpiffeIdError::PathChars("a#b".into())),
        ];
        for (s, e) in bad {
            assert_eq!(SpiffeId::parse(s).unwrap_err(), *e, "{s}");
        }
        assert_eq!(
            SpiffeId::parse_workload("spiffe://ex").unwrap_err(),
            SpiffeIdError::NoPath("ex".into())
        );
        let long = format!("spiffe://ex/{}", "a".repeat(MAX_LEN));
        assert_eq!(SpiffeId::parse(&long).unwrap_err(), SpiffeIdError::TooLong);
        assert_eq!(
            SpiffeId::istio("cluster.local", "prod", "web")
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/prod/sa/web"
        );
    }
}
