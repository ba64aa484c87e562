//! Value matchers, compiled once from policy strings the way istiod compiles them into Envoy
//! `StringMatcher`/`HeaderMatcher`/`uri_template` configuration (pilot/pkg/security/authz/matcher).

/// Istio's string forms: exact `abc`, prefix `abc*`, suffix `*abc`, presence `*`.
/// `*` is checked first, then a leading `*`, then a trailing `*`; any other `*` is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Envoy regex `.+`: any non-empty value (RE2 `.` does not match a newline).
    Presence,
    /// Regex `<prefix>.*<suffix>`, used for suffix matches on prefixed values (principals).
    PrefixSuffix(String, String),
}

impl StrMatch {
    /// `StringMatcherWithPrefix(v, prefix)` in istio matcher/string.go.
    pub fn with_prefix(v: &str, prefix: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Presence
        } else if let Some(rest) = v.strip_prefix('*') {
            if prefix.is_empty() {
                StrMatch::Suffix(rest.to_owned())
            } else {
                StrMatch::PrefixSuffix(prefix.to_owned(), rest.to_owned())
            }
        } else if let Some(rest) = v.strip_suffix('*') {
            StrMatch::Prefix(format!("{prefix}{rest}"))
        } else {
            StrMatch::Exact(format!("{prefix}{v}"))
        }
    }

    pub fn new(v: &str) -> StrMatch {
        StrMatch::with_prefix(v, "")
    }

    /// Host matching: ASCII case-insensitive; `*` is a presence match.
    pub fn new_ignore_case(v: &str) -> StrMatch {
        match StrMatch::new(v) {
            StrMatch::Exact(s) => StrMatch::Exact(s.to_ascii_lowercase()),
            StrMatch::Prefix(s) => StrMatch::Prefix(s.to_ascii_lowercase()),
            StrMatch::Suffix(s) => StrMatch::Suffix(s.to_ascii_lowercase()),
            other => other,
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(e) => s == e,
            StrMatch::Prefix(p) => s.starts_with(p.as_str()),
            StrMatch::Suffix(p) => s.ends_with(p.as_str()),
            StrMatch::Presence => !s.is_empty() && !s.contains('\n'),
            StrMatch::PrefixSuffix(p, x) => {
                s.len() >= p.len() + x.len()
                    && s.starts_with(p.as_str())
                    && s.ends_with(x.as_str())
                    && !s[p.len()..s.len() - x.len()].contains('\n')
            }
        }
    }

    /// For patterns built with [`StrMatch::new_ignore_case`].
    pub fn matches_ignore_case(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(e) => s.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p) => {
                s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(p) => {
                s.len() >= p.len()
                    && s.as_bytes()[s.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
            }
            other => other.matches(s),
        }
    }
}

/// `{*}`: one path segment. `{**}`: the rest of the path (zero or more segments).
pub const MATCH_ONE: &str = "{*}";
pub const MATCH_ANY: &str = "{**}";

pub fn is_path_template(p: &str) -> bool {
    p.contains(MATCH_ONE) || p.contains(MATCH_ANY)
}

/// Characters Envoy's uri_template allows in a literal segment (RFC 3986 pchar without `%`
/// handling beyond the character itself).
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c)
}

/// Why a `paths` value is not a valid `{*}`/`{**}` path template.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PathTemplateError {
    #[error("invalid or unsupported path `{0}`: `{{` and `}}` are only allowed in the path templates {{*}} and {{**}}")]
    StrayBrace(String),
    #[error("invalid path template `{0}`: it must start with `/`")]
    NotAbsolute(String),
    #[error("invalid path template `{0}`: {{**}} is not allowed to appear more than once")]
    RepeatedMatchAny(String),
    #[error("invalid path template `{0}`: {{**}} must be the last operator")]
    MatchAnyNotLast(String),
    #[error("invalid or unsupported path template `{path}`: `{segment}` mixes a template with other text; a template must be a whole segment")]
    MixedSegment { path: String, segment: String },
    #[error("invalid path template `{path}`: segment `{segment}` has characters that are not valid in a path")]
    InvalidCharacters { path: String, segment: String },
    #[error("path template `{path}` does not compile: {error}")]
    DoesNotCompile { path: String, error: regex::Error },
}

/// istio `CheckValidPathTemplate`: `{**}` at most once and only as the last operator, no other
/// braces, and literal segments made of valid path characters.
pub fn validate_path_template(p: &str) -> Result<(), PathTemplateError> {
    if !p.contains('{') && !p.contains('}') {
        return Ok(());
    }
    if !is_path_template(p) {
        return Err(PathTemplateError::StrayBrace(p.to_owned()));
    }
    if !p.starts_with('/') {
        return Err(PathTemplateError::NotAbsolute(p.to_owned()));
    }
    let globs: Vec<&str> = p.trim_matches('/').split('/').collect();
    let mut seen_any = false;
    for g in &globs {
        if *g == MATCH_ANY {
            if seen_any {
                return Err(PathTemplateError::RepeatedMatchAny(p.to_owned()));
            }
            seen_any = true;
            continue;
        }
        if *g == MATCH_ONE {
            if seen_any {
                return Err(PathTemplateError::MatchAnyNotLast(p.to_owned()));
            }
            continue;
        }
        if g.contains('{') || g.contains('}') {
            return Err(PathTemplateError::MixedSegment {
                path: p.to_owned(),
                segment: (*g).to_owned(),
            });
        }
        if !g.chars().all(is_pchar) || g.contains('*') {
            return Err(PathTemplateError::InvalidCharacters {
                path: p.to_owned(),
                segment: (*g).to_owned(),
            });
        }
    }
    Ok(())
}

/// Envoy's uri_template literal class (`kLiteral` in uri_template_internal.cc).
const LITERAL_CLASS: &str = r"a-zA-Z0-9\-._~%!$&'()+,;:@=";

/// A compiled `{*}`/`{**}` path template: Istio rewrites `{*}` to `*` and `{**}` to `**`, and Envoy
/// compiles that into an anchored regex where `*` is `[L]+` (one segment) and `**` is `[L/]*`.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    re: regex::Regex,
}

impl PartialEq for PathTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.re.as_str() == other.re.as_str()
    }
}
impl Eq for PathTemplate {}

impl PathTemplate {
    pub fn new(p: &str) -> Result<PathTemplate, PathTemplateError> {
        let mut pattern = String::from("^");
        let mut rest = p;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix(MATCH_ANY) {
                pattern.push_str(&format!("[{LITERAL_CLASS}/]*"));
                rest = r;
            } else if let Some(r) = rest.strip_prefix(MATCH_ONE) {
                pattern.push_str(&format!("[{LITERAL_CLASS}]+"));
                rest = r;
            } else {
                let next = rest[1..].find('{').map_or(rest.len(), |i| i + 1);
                pattern.push_str(&regex::escape(&rest[..next]));
                rest = &rest[next..];
            }
        }
        pattern.push('$');
        regex::Regex::new(&pattern)
            .map(|re| PathTemplate { re })
            .map_err(|error| PathTemplateError::DoesNotCompile {
                path: p.to_owned(),
                error,
            })
    }

    /// Matches a normalised path (query already removed).
    pub fn matches(&self, path: &str) -> bool {
        self.re.is_match(path)
    }
}

/// How a `paths` value matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Str(StrMatch),
    Template(PathTemplate),
}

impl PathMatch {
    pub fn new(v: &str) -> Result<PathMatch, PathTemplateError> {
        if is_path_template(v) {
            PathTemplate::new(v).map(PathMatch::Template)
        } else {
            Ok(PathMatch::Str(StrMatch::new(v)))
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(t) => t.matches(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        assert!(StrMatch::new("abc").matches("abc"));
        assert!(!StrMatch::new("abc").matches("abcd"));
        assert!(StrMatch::new("abc*").matches("abcd"));
        assert!(StrMatch::new("*abc").matches("xabc"));
        assert!(StrMatch::new("*").matches("x"));
        assert!(!StrMatch::new("*").matches(""));
        // a middle `*` is literal
        assert!(StrMatch::new("a*c").matches("a*c"));
        assert!(!StrMatch::new("a*c").matches("abc"));
        let p = StrMatch::with_prefix("*/sa/x", "spiffe://");
        assert!(p.matches("spiffe://td/ns/a/sa/x"));
        assert!(!p.matches("td/ns/a/sa/x"));
    }

    #[test]
    fn templates() {
        // Envoy uri_template semantics (envoy source/extensions/path/uri_template_lib).
        let t = PathTemplate::new("/foo/{*}/bar").unwrap();
        assert!(t.matches("/foo/x/bar"));
        assert!(!t.matches("/foo/x/y/bar"));
        assert!(!t.matches("/foo//bar"));
        let t = PathTemplate::new("/foo/{**}").unwrap();
        assert!(t.matches("/foo/a/b/c"));
        assert!(t.matches("/foo/a"));
        assert!(t.matches("/foo/"));
        assert!(!t.matches("/foo"));
        assert!(!t.matches("/bar/a"));
        assert!(!t.matches("/foo/a*b"));
        let t = PathTemplate::new("/foo/{**}/bar").unwrap();
        assert!(t.matches("/foo/x/y/bar"));
        assert!(!t.matches("/foo/bar"));
        assert!(validate_path_template("/foo/{**}/{*}").is_err());
        assert!(validate_path_template("/foo/{**}/{**}").is_err());
        assert!(validate_path_template("/foo{*}").is_err());
        assert!(validate_path_template("/foo/{*}/bar").is_ok());
    }

    /// The messages reach users as diagnostics and must not change.
    #[test]
    fn template_error_messages() {
        let msg = |p: &str| validate_path_template(p).unwrap_err().to_string();
        assert_eq!(msg("/a/{x}"), "invalid or unsupported path `/a/{x}`: `{` and `}` are only allowed in the path templates {*} and {**}");
        assert_eq!(
            msg("a/{*}"),
            "invalid path template `a/{*}`: it must start with `/`"
        );
        assert_eq!(
            msg("/{**}/{**}"),
            "invalid path template `/{**}/{**}`: {**} is not allowed to appear more than once"
        );
        assert_eq!(
            msg("/{**}/{*}"),
            "invalid path template `/{**}/{*}`: {**} must be the last operator"
        );
        assert_eq!(msg("/foo{*}"), "invalid or unsupported path template `/foo{*}`: `foo{*}` mixes a template with other text; a template must be a whole segment");
        assert_eq!(msg("/a b/{*}"), "invalid path template `/a b/{*}`: segment `a b` has characters that are not valid in a path");
    }
}

/// istio generator.go `srcNamespaceGenerator`: every `*` becomes `.*`, nothing else is escaped,
/// matched (RE2 full match) against the peer principal.
pub fn namespace_regex(v: &str) -> String {
    format!("^(?:.*/ns/{}/.*)$", v.replace('*', ".*"))
}

/// istio generator.go `serviceAccountRegex`; a bare name means the policy's namespace.
pub fn service_account_regex(v: &str, policy_namespace: &str) -> String {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_namespace, v));
    format!("^(?:spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?)$")
}

/// How a `requestPrincipals` value matches the JWT `iss` and `sub` claims
/// (istio generator.go `requestPrincipalGenerator.extendedPrincipal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPrincipalMatch {
    pub iss: StrMatch,
    pub sub: StrMatch,
}

impl RequestPrincipalMatch {
    pub fn new(value: &str) -> RequestPrincipalMatch {
        let (iss, sub, found) = match value.rfind('/') {
            Some(i) => (&value[..i], &value[i + 1..], true),
            None => (value, "", false),
        };
        let (iss_m, sub_m) = if value == "*" {
            (StrMatch::Presence, StrMatch::Presence)
        } else if let Some(after_star) = value.strip_prefix('*') {
            if found {
                let im = if iss == "*" {
                    StrMatch::Presence
                } else {
                    StrMatch::Suffix(iss[1..].to_owned())
                };
                (im, StrMatch::Exact(sub.to_owned()))
            } else {
                (StrMatch::Presence, StrMatch::Suffix(after_star.to_owned()))
            }
        } else if let Some(stripped) = value.strip_suffix('*') {
            if found {
                let sm = if sub == "*" {
                    StrMatch::Presence
                } else {
                    StrMatch::Prefix(sub[..sub.len() - 1].to_owned())
                };
                (StrMatch::Exact(iss.to_owned()), sm)
            } else {
                (StrMatch::Prefix(stripped.to_owned()), StrMatch::Presence)
            }
        } else {
            (
                StrMatch::Exact(iss.to_owned()),
                StrMatch::Exact(sub.to_owned()),
            )
        };
        RequestPrincipalMatch {
            iss: iss_m,
            sub: sub_m,
        }
    }

    pub fn matches(&self, iss: Option<&str>, sub: Option<&str>) -> bool {
        matches!((iss, sub), (Some(i), Some(s)) if self.iss.matches(i) && self.sub.matches(s))
    }
}

#[cfg(test)]
mod rp_tests {
    use super::*;

    /// Table from istio generator.go extendedPrincipal (see research notes in the conformance suite).
    #[test]
    fn request_principal_forms() {
        let m = |v: &str, i: &str, s: &str| RequestPrincipalMatch::new(v).matches(Some(i), Some(s));
        assert!(m("*", "a", "b"));
        assert!(!m("*", "a", ""));
        assert!(m("https://a.com/u/1", "https://a.com/u", "1"));
        assert!(m("iss/*", "iss", "x"));
        assert!(m("iss/ab*", "iss", "abc"));
        assert!(m("*/sub", "anything", "sub"));
        assert!(m("*foo/sub", "barfoo", "sub"));
        assert!(!m("*/*", "iss", "x"));
        assert!(m("*/*", "iss", "*"));
        assert!(m("abc*", "abcdef", "x"));
        assert!(m("*abc", "x", "zabc"));
        assert!(m("abc", "abc", ""));
        assert!(!m("abc", "abc", "x"));
        assert!(m("https://iss*", "https:/", "issuer"));
        assert!(!RequestPrincipalMatch::new("*").matches(Some("a"), None));
    }
}
