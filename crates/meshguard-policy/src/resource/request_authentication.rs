//! `RequestAuthentication`: the JWT issuers a workload accepts, where tokens are read from and
//! what is forwarded upstream.

use std::collections::BTreeMap;

use super::{parse_selector, parse_target_refs};
use crate::diag::Ctx;
use crate::fields::{check_fields, get_bool, get_seq, get_str, get_str_list, join, parse_duration};
use crate::meta::{Meta, Origin};
use crate::yaml::Node;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    pub name: String,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// One `jwtRules` entry of a RequestAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout, as written (e.g. `5s`).
    pub timeout: Option<String>,
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthentication {
    pub meta: Meta,
    pub origin: Origin,
    pub selector: Option<BTreeMap<String, String>>,
    pub has_target_refs: bool,
    pub jwt_rules: Vec<JwtRule>,
}

const JWT_RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "outputClaimToHeaders",
    "timeout",
    "spaceDelimitedClaims",
];

pub(super) fn parse_reqauthn(
    ctx: &mut Ctx<'_>,
    spec: &Node,
    path: &str,
    meta: Meta,
    origin: Origin,
) -> Option<RequestAuthentication> {
    check_fields(
        ctx,
        spec,
        path,
        &["selector", "targetRef", "targetRefs", "jwtRules"],
    );
    let selector = parse_selector(ctx, spec, path);
    let has_target_refs = parse_target_refs(ctx, spec, path);
    let mut jwt_rules = Vec::new();
    if let Some(items) = get_seq(ctx, spec, "jwtRules", path) {
        for (i, r) in items.iter().enumerate() {
            let rp = format!("{}[{i}]", join(path, "jwtRules"));
            if let Some(rule) = parse_jwt_rule(ctx, r, &rp) {
                jwt_rules.push(rule);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &jwt_rules {
        if !seen.insert(r.issuer.as_str()) {
            ctx.warn(spec, &join(path, "jwtRules"), format!("issuer `{}` appears in more than one jwtRule; only one provider per issuer is effective", r.issuer));
        }
    }
    Some(RequestAuthentication {
        meta,
        origin,
        selector,
        has_target_refs,
        jwt_rules,
    })
}

fn parse_jwt_rule(ctx: &mut Ctx<'_>, r: &Node, path: &str) -> Option<JwtRule> {
    if r.as_map().is_none() {
        ctx.err(
            r,
            path,
            format!("a jwtRule must be a mapping, found {}", r.type_name()),
        );
        return None;
    }
    check_fields(ctx, r, path, JWT_RULE_FIELDS);
    let mut rule = JwtRule {
        issuer: get_str(ctx, r, "issuer", path)
            .map(|i| i.0)
            .unwrap_or_default(),
        ..JwtRule::default()
    };
    let auds = get_str_list(ctx, r, "audiences", path).unwrap_or_default();
    for (i, (a, line, col)) in auds.iter().enumerate() {
        if a.is_empty() {
            ctx.err_at(
                *line,
                *col,
                &format!("{}[{i}]", join(path, "audiences")),
                "audience must be non-empty string",
            );
        }
    }
    rule.audiences = auds.into_iter().map(|a| a.0).collect();
    if let Some((u, line, col)) = get_str(ctx, r, "jwksUri", path) {
        if let Err(e) = check_http_url(&u) {
            ctx.err_at(line, col, &join(path, "jwksUri"), e.to_string());
        }
        rule.jwks_uri = Some(u);
    }
    if rule.issuer.is_empty() && rule.jwks_uri.is_none() {
        ctx.err(
            r,
            &join(path, "issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if let Some((j, line, col)) = get_str(ctx, r, "jwks", path) {
        match serde_json::from_str::<serde_json::Value>(&j) {
            Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => {}
            Ok(_) => ctx.err_at(
                line,
                col,
                &join(path, "jwks"),
                "inline jwks must be a JSON Web Key Set: an object with a `keys` array",
            ),
            Err(e) => ctx.err_at(
                line,
                col,
                &join(path, "jwks"),
                format!("inline jwks is not valid JSON: {e}"),
            ),
        }
        rule.jwks = Some(j);
    }
    if rule.jwks.is_some() && rule.jwks_uri.is_some() {
        ctx.warn(r, &join(path, "jwks"), "both jwks and jwksUri are set: the inline jwks is used and jwksUri is ignored (istiod's default behaviour)");
    }
    if let Some(items) = get_seq(ctx, r, "fromHeaders", path) {
        for (i, h) in items.iter().enumerate() {
            let hp = format!("{}[{i}]", join(path, "fromHeaders"));
            if h.as_map().is_none() {
                ctx.err(
                    h,
                    &hp,
                    "must be a mapping with `name` and optional `prefix`",
                );
                continue;
            }
            check_fields(ctx, h, &hp, &["name", "prefix"]);
            let name = match get_str(ctx, h, "name", &hp) {
                Some((n, _, _)) if !n.is_empty() => n,
                _ => {
                    ctx.err(h, &join(&hp, "name"), "location header name must be set");
                    continue;
                }
            };
            let prefix = get_str(ctx, h, "prefix", &hp)
                .map(|p| p.0)
                .unwrap_or_default();
            rule.from_headers.push(JwtHeader { name, prefix });
        }
    }
    rule.from_params = strings(get_str_list(ctx, r, "fromParams", path));
    rule.from_cookies = strings(get_str_list(ctx, r, "fromCookies", path));
    for (list, name) in [
        (&rule.from_params, "fromParams"),
        (&rule.from_cookies, "fromCookies"),
    ] {
        if list.iter().any(String::is_empty) {
            ctx.err(r, &join(path, name), "names must not be empty");
        }
    }
    rule.output_payload_to_header = get_str(ctx, r, "outputPayloadToHeader", path).map(|p| p.0);
    rule.forward_original_token = get_bool(ctx, r, "forwardOriginalToken", path).unwrap_or(false);
    if let Some(items) = get_seq(ctx, r, "outputClaimToHeaders", path) {
        for (i, h) in items.iter().enumerate() {
            let hp = format!("{}[{i}]", join(path, "outputClaimToHeaders"));
            if h.as_map().is_none() {
                ctx.err(h, &hp, "must be a mapping with `header` and `claim`");
                continue;
            }
            check_fields(ctx, h, &hp, &["header", "claim"]);
            let header = get_str(ctx, h, "header", &hp)
                .map(|p| p.0)
                .unwrap_or_default();
            let claim = get_str(ctx, h, "claim", &hp)
                .map(|p| p.0)
                .unwrap_or_default();
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                ctx.err(
                    h,
                    &join(&hp, "header"),
                    format!("`{header}` is not a valid header name"),
                );
            }
            if claim.is_empty() {
                ctx.err(h, &join(&hp, "claim"), "claim must be set");
            }
            rule.output_claim_to_headers
                .push(ClaimToHeader { header, claim });
        }
    }
    if let Some((t, line, col)) = get_str(ctx, r, "timeout", path) {
        if parse_duration(&t).is_none() {
            ctx.err_at(
                line,
                col,
                &join(path, "timeout"),
                format!("`{t}` is not a duration (e.g. 5s, 500ms, 1.5s)"),
            );
        }
        rule.timeout = Some(t);
    }
    rule.space_delimited_claims = strings(get_str_list(ctx, r, "spaceDelimitedClaims", path));
    Some(rule)
}

/// Why istiod refuses a `jwksUri`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum JwksUriError {
    #[error("`{0}`: URI scheme is not supported; use http:// or https://")]
    UnsupportedScheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{uri}`: invalid port `{port}`")]
    InvalidPort { uri: String, port: String },
}

/// istio `ParseJwksURI`: http(s) scheme, a host, and a numeric port if one is given.
fn check_http_url(u: &str) -> Result<(), JwksUriError> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| JwksUriError::UnsupportedScheme(u.to_owned()))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if host_port.is_empty() {
        return Err(JwksUriError::NoHost(u.to_owned()));
    }
    if !host_port.ends_with(']') {
        if let Some((_, port)) = host_port.rsplit_once(':') {
            if port.parse::<u16>().is_err() {
                return Err(JwksUriError::InvalidPort {
                    uri: u.to_owned(),
                    port: port.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn strings(v: Option<Vec<(String, u32, u32)>>) -> Vec<String> {
    v.unwrap_or_default()
        .into_iter()
        .map(|(s, _, _)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages reach users as diagnostics and must not change.
    #[test]
    fn jwks_uri_messages() {
        let msg = |u: &str| check_http_url(u).unwrap_err().to_string();
        assert_eq!(
            msg("ftp://x"),
            "`ftp://x`: URI scheme is not supported; use http:// or https://"
        );
        assert_eq!(msg("https:///keys"), "`https:///keys` has no host");
        assert_eq!(
            msg("https://h:x/keys"),
            "`https://h:x/keys`: invalid port `x`"
        );
        assert_eq!(check_http_url("https://[::1]:8443/keys"), Ok(()));
    }
}
