//! Where tokens are taken from, as Envoy's jwt_authn extractor does it.

use std::borrow::Cow;

use meshguard_policy::resource::JwtRule;

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header (lower-case name); removed before forwarding unless `forwardOriginalToken`.
    Header(String),
    Param(String),
    Cookie(String),
}

/// Characters jwt_authn looks for after a header prefix: base64url and the dot (Envoy's
/// `ConstantBase64UrlEncodingCharsPlusDot`; no `=`).
static JWT_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        i += 1;
    }
    t
};

/// The locations a rule reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// (lower-case header name, value prefix)
    pub headers: Vec<(String, String)>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
}

/// The locations a rule reads: its own, or `Authorization: Bearer` and `access_token` by default.
pub fn locations(rule: &JwtRule) -> Locations {
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        return Locations {
            headers: vec![("authorization".to_owned(), "Bearer ".to_owned())],
            params: vec!["access_token".to_owned()],
            cookies: Vec::new(),
        };
    }
    Locations {
        headers: rule
            .from_headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.prefix.clone()))
            .collect(),
        params: rule.from_params.clone(),
        cookies: rule.from_cookies.clone(),
    }
}

/// A token and where it was found; borrowed from the request unless it had to be built
/// (repeated header lines joined, a percent-decoded parameter).
pub type Extracted<'a> = (Cow<'a, str>, Location);

/// Extracts the tokens one provider (jwtRule) sees, in Envoy 1.40's order: header locations,
/// then query parameters, then cookies. `headers` have lower-case names; `query` is the raw query
/// string (without `?`). Empty tokens are returned too: a location that is present but empty is
/// a malformed token (401), not a missing one.
///
/// As Envoy's jwt_authn extractor (`extractor.cc`) does it, and as tests/envoy_jwt.rs checks
/// against Envoy 1.40:
/// - every line of a header is one value, joined with `,`; the prefix may stand anywhere in it,
///   and a value without the prefix is no token;
/// - after the prefix, the token starts at the first base64url-or-dot character and runs to the
///   end of the value (`Bearer  t`, `Bearer \tt` give `t`; `Bearer t junk` and `Bearer "t"` give
///   tokens that fail verification); a value with no such character is taken whole;
/// - a query parameter counts once, its first occurrence, percent-decoded;
/// - cookies from every `Cookie` line; the first cookie of a name counts, quotes removed.
pub fn extract<'a>(
    locs: &Locations,
    headers: &'a [(String, String)],
    query: Option<&str>,
) -> Vec<Extracted<'a>> {
    let mut out = Vec::new();
    for (name, prefix) in &locs.headers {
        // One line is borrowed as it is; only repeated lines are joined into a new string.
        let mut joined: Option<Cow<'a, str>> = None;
        for (_, v) in headers.iter().filter(|(n, _)| n == name) {
            joined = Some(match joined {
                None => Cow::Borrowed(v.as_str()),
                Some(j) => Cow::Owned(format!("{j},{v}")),
            });
        }
        let Some(value) = joined else { continue };
        let token = if prefix.is_empty() {
            value
        } else {
            let Some(pos) = value.find(prefix.as_str()) else {
                continue;
            };
            let after = pos + prefix.len();
            match value.as_bytes()[after..]
                .iter()
                .position(|b| JWT_BYTES[usize::from(*b)])
            {
                Some(start) => match value {
                    Cow::Borrowed(v) => Cow::Borrowed(&v[after + start..]),
                    Cow::Owned(v) => Cow::Owned(v[after + start..].to_owned()),
                },
                None => value,
            }
        };
        out.push((token, Location::Header(name.clone())));
    }
    if let (Some(q), false) = (query, locs.params.is_empty()) {
        for name in &locs.params {
            let first = q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k) == *name).then(|| percent_decode(v))
            });
            if let Some(v) = first {
                out.push((Cow::Owned(v), Location::Param(name.clone())));
            }
        }
    }
    if !locs.cookies.is_empty() {
        for name in &locs.cookies {
            let first = headers
                .iter()
                .filter(|(n, _)| n == "cookie")
                .flat_map(|(_, v)| v.split(';'))
                .find_map(|c| {
                    let c = c.trim();
                    let (k, v) = c.split_once('=').unwrap_or((c, ""));
                    (k == name).then(|| {
                        let v = v.trim();
                        Cow::Borrowed(
                            v.strip_prefix('"')
                                .and_then(|x| x.strip_suffix('"'))
                                .unwrap_or(v),
                        )
                    })
                });
            if let Some(v) = first {
                out.push((v, Location::Cookie(name.clone())));
            }
        }
    }
    out
}

/// Removes every occurrence of the named parameters from a request target (path and query), as
/// Envoy's jwt_authn does for a verified token taken from a parameter when `forward` is false.
pub fn remove_query_params(target: &str, names: &[String]) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !names.iter().any(|n| *n == percent_decode(k))
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

fn percent_decode(s: &str) -> String {
    meshguard_policy::path::percent_decode_lossy(s)
}
