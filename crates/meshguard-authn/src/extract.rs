//! Where tokens are taken from, as Envoy's jwt_authn extractor does it.

use meshguard_policy::resource::JwtRule;

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header (lower-case name); removed before forwarding unless `forwardOriginalToken`.
    Header(String),
    Param(String),
    Cookie(String),
}

/// Bytes a compact JWS may contain (base64url, dots, and `=` which Envoy also takes).
static JWT_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'=';
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

/// Extracts the tokens a rule would see. `headers` have lower-case names; `query` is the raw
/// query string (without `?`).
pub fn extract(
    locs: &Locations,
    headers: &[(String, String)],
    query: Option<&str>,
) -> Vec<(String, Location)> {
    let (hdrs, params, cookies) = (&locs.headers, &locs.params, &locs.cookies);
    let mut out = Vec::new();
    for (name, prefix) in hdrs {
        for (_, value) in headers.iter().filter(|(n, _)| n == name) {
            // Envoy: the prefix may stand anywhere in the value; a value without it is skipped.
            let token = if prefix.is_empty() {
                value.trim().to_owned()
            } else {
                match value.find(prefix.as_str()) {
                    Some(pos) => {
                        let rest = &value[pos + prefix.len()..];
                        let end = rest
                            .bytes()
                            .position(|b| !JWT_BYTES[usize::from(b)])
                            .unwrap_or(rest.len());
                        rest[..end].to_owned()
                    }
                    None => continue,
                }
            };
            if !token.is_empty() {
                out.push((token, Location::Header(name.clone())));
            }
        }
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if params.iter().any(|p| p == &percent_decode(k)) {
                let v = percent_decode(v);
                if !v.is_empty() {
                    out.push((v, Location::Param(percent_decode(k))));
                }
            }
        }
    }
    if !cookies.is_empty() {
        for (_, value) in headers.iter().filter(|(n, _)| n == "cookie") {
            for c in value.split(';') {
                let (k, v) = c.trim().split_once('=').unwrap_or((c.trim(), ""));
                if cookies.iter().any(|name| name == k) && !v.is_empty() {
                    out.push((
                        v.trim_matches('"').to_owned(),
                        Location::Cookie(k.to_owned()),
                    ));
                }
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
