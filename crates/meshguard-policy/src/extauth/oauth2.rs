//! Gloo `oauth2` steps: `accessTokenValidation` (a JWT against a JWKS, or RFC 7662
//! introspection) and `oidcAuthorizationCode` (the browser login).

use super::duration_field;
use super::secret::{object_ref, ObjectRef};
use crate::diag::Ctx;
use crate::fields::{check_fields, get_bool, get_map, get_seq, get_str, get_str_list, join};
use crate::yaml::Node;

/// How an access token is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenValidation {
    /// A JWT checked against a JWKS (inline or fetched and refreshed), and `issuer` if set.
    Jwt {
        local_jwks: Option<String>,
        remote_jwks: Option<(String, std::time::Duration)>,
        issuer: String,
    },
    /// RFC 7662 token introspection.
    Introspection {
        url: String,
        client_id: String,
        /// Secret holding the client secret (`client-secret` key).
        client_secret: Option<ObjectRef>,
        user_id_attribute: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenValidation {
    pub validation: TokenValidation,
    /// Introspection results are cached this long (default 10 minutes; 0 disables).
    pub cache_timeout: std::time::Duration,
    /// Every one of these must be in the token's `scope` (space-separated) or `scp`.
    pub required_scopes: Vec<String>,
    /// meshguard extension: claims copied into upstream headers.
    pub claims_to_headers: Vec<(String, String)>,
}

/// Gloo `oauth2.oidcAuthorizationCode`: the browser login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcAuthorizationCode {
    pub client_id: String,
    /// Secret with the client secret (`client-secret` key).
    pub client_secret: ObjectRef,
    pub issuer_url: String,
    /// The application's external base URL (`https://app.example.com`).
    pub app_url: String,
    /// Default `/oauth-gloo-callback` (Gloo's default).
    pub callback_path: String,
    pub logout_path: Option<String>,
    pub after_logout_url: Option<String>,
    /// Extra scopes besides `openid`.
    pub scopes: Vec<String>,
    /// Upstream header for the ID token (e.g. `x-id-token`), if any.
    pub id_token_header: Option<String>,
    /// Upstream header for the access token, if any.
    pub access_token_header: Option<String>,
    /// `session.cookie.allowRefreshing`: an expired session is renewed with the refresh token
    /// (Gloo's default for cookie sessions is false).
    pub allow_refreshing: bool,
    /// `session.cookie.keyPrefix`: put before the cookie names as `<prefix>_`, so two OIDC
    /// AuthConfigs on one host keep separate sessions.
    pub cookie_prefix: Option<String>,
}

pub(super) fn parse_oidc(
    ctx: &mut Ctx<'_>,
    n: &Node,
    p: &str,
    ns: &str,
) -> Option<OidcAuthorizationCode> {
    check_fields(ctx, n, p, &["oidcAuthorizationCode"]);
    let o = get_map(ctx, n, "oidcAuthorizationCode", p)?;
    let p = join(p, "oidcAuthorizationCode");
    check_fields(
        ctx,
        o,
        &p,
        &[
            "clientId",
            "clientSecretRef",
            "issuerUrl",
            "appUrl",
            "callbackPath",
            "logoutPath",
            "afterLogoutUrl",
            "scopes",
            "headers",
            "session",
            "authEndpointQueryParams",
            "tokenEndpointQueryParams",
            "discoveryPollInterval",
            "endSessionProperties",
        ],
    );
    for unsupported in ["authEndpointQueryParams", "tokenEndpointQueryParams"] {
        if o.get(unsupported).is_some() {
            ctx.warn(
                o,
                &join(&p, unsupported),
                "ignored: meshguard sends only the standard parameters",
            );
        }
    }
    let mut allow_refreshing = false;
    let mut cookie_prefix = None;
    if let Some(sess) = get_map(ctx, o, "session", &p) {
        let sp = join(&p, "session");
        check_fields(
            ctx,
            sess,
            &sp,
            &["cookie", "redis", "cookieOptions", "failOnFetchFailure"],
        );
        for ignored in ["redis", "cookieOptions", "failOnFetchFailure"] {
            if sess.get(ignored).is_some() {
                ctx.warn(sess, &join(&sp, ignored), "ignored: meshguard keeps the session in its own encrypted cookie (lifetime: the ID token's)");
            }
        }
        if let Some(c) = get_map(ctx, sess, "cookie", &sp) {
            let cp = join(&sp, "cookie");
            check_fields(
                ctx,
                c,
                &cp,
                &["allowRefreshing", "keyPrefix", "targetDomain"],
            );
            if c.get("targetDomain").is_some() {
                ctx.warn(
                    c,
                    &join(&cp, "targetDomain"),
                    "ignored: meshguard scopes its cookies to the host",
                );
            }
            if let Some((prefix, line, col)) = get_str(ctx, c, "keyPrefix", &cp) {
                if prefix.is_empty()
                    || !prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    ctx.err_at(line, col, &join(&cp, "keyPrefix"), "must be letters, digits, `-`, `_` or `.` (it becomes part of the cookie name)");
                } else {
                    cookie_prefix = Some(prefix);
                }
            }
            allow_refreshing = get_bool(ctx, c, "allowRefreshing", &cp).unwrap_or(false);
        }
    }
    if let Some(e) = get_map(ctx, o, "endSessionProperties", &p) {
        let ep = join(&p, "endSessionProperties");
        check_fields(ctx, e, &ep, &["methodType"]);
        if let Some((m, line, col)) = get_str(ctx, e, "methodType", &ep) {
            if m != "GetMethod" {
                ctx.err_at(line, col, &join(&ep, "methodType"), format!("`{m}` is not supported: meshguard sends the browser to the provider's end_session_endpoint with GET (GetMethod)"));
            }
        }
    }
    let req = |ctx: &mut Ctx<'_>, key: &str| -> Option<String> {
        let v = get_str(ctx, o, key, &p).map(|x| x.0);
        if v.is_none() {
            ctx.err(o, &join(&p, key), format!("missing `{key}`"));
        }
        v
    };
    let client_id = req(ctx, "clientId")?;
    let issuer_url = req(ctx, "issuerUrl")?;
    let app_url = req(ctx, "appUrl")?;
    let Some(client_secret) = o
        .get("clientSecretRef")
        .and_then(|r| object_ref(ctx, r, &join(&p, "clientSecretRef"), ns))
    else {
        ctx.err(
            o,
            &join(&p, "clientSecretRef"),
            "missing `clientSecretRef` (a Secret with `client-secret`)",
        );
        return None;
    };
    for (k, v) in [("issuerUrl", &issuer_url), ("appUrl", &app_url)] {
        if !(v.starts_with("http://") || v.starts_with("https://")) {
            ctx.err(o, &join(&p, k), format!("`{v}` must be an http(s) URL"));
        }
    }
    let path_of = |ctx: &mut Ctx<'_>, key: &str| -> Option<String> {
        let (v, line, col) = get_str(ctx, o, key, &p)?;
        if !v.starts_with('/') {
            ctx.err_at(line, col, &join(&p, key), "must be a path starting with /");
        }
        Some(v)
    };
    let callback_path =
        path_of(ctx, "callbackPath").unwrap_or_else(|| "/oauth-gloo-callback".into());
    let logout_path = path_of(ctx, "logoutPath");
    let (mut id_token_header, mut access_token_header) = (None, None);
    if let Some(h) = get_map(ctx, o, "headers", &p) {
        let hp = join(&p, "headers");
        check_fields(
            ctx,
            h,
            &hp,
            &[
                "idTokenHeader",
                "accessTokenHeader",
                "useBearerSchemaForAuthorization",
            ],
        );
        id_token_header = get_str(ctx, h, "idTokenHeader", &hp).map(|x| x.0.to_ascii_lowercase());
        access_token_header =
            get_str(ctx, h, "accessTokenHeader", &hp).map(|x| x.0.to_ascii_lowercase());
    }
    Some(OidcAuthorizationCode {
        client_id,
        client_secret,
        issuer_url: issuer_url.trim_end_matches('/').to_owned(),
        app_url: app_url.trim_end_matches('/').to_owned(),
        callback_path,
        logout_path,
        after_logout_url: get_str(ctx, o, "afterLogoutUrl", &p).map(|x| x.0),
        scopes: get_str_list(ctx, o, "scopes", &p)
            .map(|l| l.into_iter().map(|x| x.0).collect())
            .unwrap_or_default(),
        id_token_header,
        access_token_header,
        allow_refreshing,
        cookie_prefix,
    })
}

pub(super) fn parse_oauth2(
    ctx: &mut Ctx<'_>,
    n: &Node,
    p: &str,
    ns: &str,
) -> Option<AccessTokenValidation> {
    check_fields(
        ctx,
        n,
        p,
        &["accessTokenValidation", "oidcAuthorizationCode"],
    );
    let Some(v) = get_map(ctx, n, "accessTokenValidation", p) else {
        ctx.err(
            n,
            &join(p, "accessTokenValidation"),
            "missing `accessTokenValidation`",
        );
        return None;
    };
    let p = join(p, "accessTokenValidation");
    check_fields(
        ctx,
        v,
        &p,
        &[
            "jwt",
            "introspection",
            "introspectionUrl",
            "userinfoUrl",
            "cacheTimeout",
            "requiredScopes",
            "dynamicMetadataFromClaims",
            "claimsToHeaders",
        ],
    );
    if v.get("userinfoUrl").is_some() {
        ctx.err(
            v,
            &join(&p, "userinfoUrl"),
            "userinfo lookups are not run by meshguard yet; refusing rather than skipping it",
        );
    }
    if v.get("dynamicMetadataFromClaims").is_some() {
        ctx.warn(
            v,
            &join(&p, "dynamicMetadataFromClaims"),
            "ignored: meshguard does not emit dynamic metadata from claims",
        );
    }
    let validation = match (
        v.get("jwt"),
        v.get("introspection"),
        v.get("introspectionUrl"),
    ) {
        (Some(j), None, None) => {
            let jp = join(&p, "jwt");
            check_fields(ctx, j, &jp, &["remoteJwks", "localJwks", "issuer"]);
            let local = get_map(ctx, j, "localJwks", &jp).and_then(|l| {
                check_fields(ctx, l, &join(&jp, "localJwks"), &["inlineString"]);
                get_str(ctx, l, "inlineString", &join(&jp, "localJwks")).map(|x| x.0)
            });
            let remote = get_map(ctx, j, "remoteJwks", &jp).and_then(|r| {
                let rp = join(&jp, "remoteJwks");
                check_fields(ctx, r, &rp, &["url", "refreshInterval"]);
                let url = get_str(ctx, r, "url", &rp).map(|x| x.0);
                let every = duration_field(ctx, r, "refreshInterval", &rp)
                    .unwrap_or(std::time::Duration::from_secs(300));
                url.map(|u| (u, every))
            });
            if local.is_some() == remote.is_some() {
                ctx.err(
                    j,
                    &jp,
                    "exactly one of `localJwks.inlineString` or `remoteJwks.url`",
                );
                return None;
            }
            TokenValidation::Jwt {
                local_jwks: local,
                remote_jwks: remote,
                issuer: get_str(ctx, j, "issuer", &jp)
                    .map(|x| x.0)
                    .unwrap_or_default(),
            }
        }
        (None, Some(i), None) => {
            let ip = join(&p, "introspection");
            check_fields(
                ctx,
                i,
                &ip,
                &[
                    "introspectionUrl",
                    "clientId",
                    "clientSecretRef",
                    "userIdAttributeName",
                    "disableClientSecret",
                ],
            );
            let Some((url, _, _)) = get_str(ctx, i, "introspectionUrl", &ip) else {
                ctx.err(
                    i,
                    &join(&ip, "introspectionUrl"),
                    "missing `introspectionUrl`",
                );
                return None;
            };
            let client_secret = if get_bool(ctx, i, "disableClientSecret", &ip) == Some(true) {
                None
            } else {
                i.get("clientSecretRef")
                    .and_then(|r| object_ref(ctx, r, &join(&ip, "clientSecretRef"), ns))
            };
            TokenValidation::Introspection {
                url,
                client_id: get_str(ctx, i, "clientId", &ip)
                    .map(|x| x.0)
                    .unwrap_or_default(),
                client_secret,
                user_id_attribute: get_str(ctx, i, "userIdAttributeName", &ip)
                    .map(|x| x.0)
                    .unwrap_or_else(|| "sub".into()),
            }
        }
        (None, None, Some(_)) => TokenValidation::Introspection {
            url: get_str(ctx, v, "introspectionUrl", &p)
                .map(|x| x.0)
                .unwrap_or_default(),
            client_id: String::new(),
            client_secret: None,
            user_id_attribute: "sub".into(),
        },
        _ => {
            ctx.err(
                v,
                &p,
                "exactly one of `jwt`, `introspection` or `introspectionUrl`",
            );
            return None;
        }
    };
    let required_scopes = get_map(ctx, v, "requiredScopes", &p)
        .and_then(|r| {
            let rp = join(&p, "requiredScopes");
            check_fields(ctx, r, &rp, &["scope"]);
            get_str_list(ctx, r, "scope", &rp)
        })
        .map(|l| l.into_iter().map(|x| x.0).collect())
        .unwrap_or_default();
    let mut claims_to_headers = Vec::new();
    if let Some(items) = get_seq(ctx, v, "claimsToHeaders", &p) {
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", join(&p, "claimsToHeaders"));
            check_fields(ctx, item, &ip, &["claim", "header", "append"]);
            match (
                get_str(ctx, item, "claim", &ip),
                get_str(ctx, item, "header", &ip),
            ) {
                (Some(c), Some(h)) => claims_to_headers.push((c.0, h.0.to_ascii_lowercase())),
                _ => ctx.err(item, &ip, "needs `claim` and `header`"),
            }
        }
    }
    Some(AccessTokenValidation {
        validation,
        cache_timeout: duration_field(ctx, v, "cacheTimeout", &p)
            .unwrap_or(std::time::Duration::from_secs(600)),
        required_scopes,
        claims_to_headers,
    })
}
