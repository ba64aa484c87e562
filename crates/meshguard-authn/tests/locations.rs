//! Where tokens come from, what happens to them, and how several rules and tokens combine.

mod common;

use common::*;
use meshguard_authn::{AuthnOutcome, TokenError};

fn authenticated(o: AuthnOutcome) -> meshguard_authn::Authenticated {
    match o {
        AuthnOutcome::Authenticated(a) => a,
        other => panic!("expected authenticated, got {other:?}"),
    }
}

#[tokio::test]
async fn default_locations_and_missing_tokens() {
    let set = pyjwt_set("");
    let a = authenticator(&set);
    let t = token("RS256");
    // No token: no principal, the request goes on to authorization.
    assert!(matches!(
        run(&set, &a, "GET", "/", &[]).await,
        AuthnOutcome::NoToken
    ));
    // Another scheme in Authorization is not a bearer token.
    assert!(matches!(
        run(
            &set,
            &a,
            "GET",
            "/",
            &[("authorization", "Basic dXNlcjpwYXNz")]
        )
        .await,
        AuthnOutcome::NoToken
    ));
    // ?access_token= is a default location too.
    let p = format!("/x?a=1&access_token={t}");
    authenticated(run(&set, &a, "GET", &p, &[]).await);
    // A workload without RequestAuthentication ignores tokens entirely.
    let labels = std::collections::BTreeMap::from([("app".to_owned(), "other".to_owned())]);
    let headers = vec![("authorization".to_owned(), "Bearer garbage".to_owned())];
    let o = a
        .authenticate(
            &set,
            &meshguard_authn::AuthnRequest {
                method: "GET",
                host: "h",
                path: "/",
                headers: &headers,
                namespace: "prod",
                labels: &labels,
            },
        )
        .await;
    assert!(matches!(o, AuthnOutcome::NoToken));
}

#[tokio::test]
async fn custom_header_param_cookie_and_outputs() {
    let set = pyjwt_set(
        "    fromHeaders: [{name: x-jwt-assertion, prefix: \"Token \"}]
    fromParams: [jwt]
    fromCookies: [session]
    forwardOriginalToken: false
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - {header: x-role, claim: role}
    - {header: x-team, claim: nested.team.name}
    - {header: x-verified, claim: email_verified}
",
    );
    let a = authenticator(&set);
    let t = token("ES256");
    let h = format!("Token {t}");
    let au = authenticated(run(&set, &a, "GET", "/", &[("x-jwt-assertion", h.as_str())]).await);
    assert_eq!(au.headers_to_remove, vec!["x-jwt-assertion".to_owned()]);
    let get = |k: &str| {
        au.headers_to_add
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("x-role").as_deref(), Some("admin"));
    assert_eq!(get("x-team").as_deref(), Some("core"));
    assert_eq!(get("x-verified").as_deref(), Some("true"));
    assert_eq!(get("x-jwt-payload").as_deref(), t.split('.').nth(1));
    // The default location is no longer read once locations are configured.
    let b = format!("Bearer {t}");
    assert!(matches!(
        run(&set, &a, "GET", "/", &[("authorization", b.as_str())]).await,
        AuthnOutcome::NoToken
    ));
    // Wrong prefix: the header is skipped (Envoy extractor), so the token counts as missing.
    let wrong = format!("Bearer {t}");
    assert!(matches!(
        run(&set, &a, "GET", "/", &[("x-jwt-assertion", wrong.as_str())]).await,
        AuthnOutcome::NoToken
    ));
    let p = format!("/x?jwt={t}");
    authenticated(run(&set, &a, "GET", &p, &[]).await);
    let c = format!("a=b; session={t}; c=d");
    let au = authenticated(run(&set, &a, "GET", "/", &[("cookie", c.as_str())]).await);
    assert!(
        au.headers_to_remove.is_empty(),
        "cookies and params are not headers to strip"
    );
}

#[tokio::test]
async fn forward_original_token_keeps_the_header() {
    let set = pyjwt_set("    forwardOriginalToken: true\n");
    let a = authenticator(&set);
    let au = authenticated(bearer(&set, &a, &token("RS256")).await);
    assert!(au.headers_to_remove.is_empty());
}

#[tokio::test]
async fn cors_preflight_skips_jwt_checks() {
    let set = pyjwt_set("");
    let a = authenticator(&set);
    let headers = [
        ("origin", "https://app.test"),
        ("access-control-request-method", "POST"),
        ("authorization", "Bearer not-a-jwt"),
    ];
    assert!(matches!(
        run(&set, &a, "OPTIONS", "/", &headers).await,
        AuthnOutcome::NoToken
    ));
    // Not a preflight (no Access-Control-Request-Method): checked, and refused.
    let headers = [
        ("origin", "https://app.test"),
        ("authorization", "Bearer not-a-jwt"),
    ];
    assert!(matches!(
        run(&set, &a, "OPTIONS", "/", &headers).await,
        AuthnOutcome::Rejected(_)
    ));
}

#[tokio::test]
async fn one_bad_token_among_several_is_401() {
    // Istio test `invalid-token-set`: every extracted token must verify.
    let set = pyjwt_set(
        "    fromHeaders: [{name: authorization, prefix: \"Bearer \"}, {name: x-second}]\n",
    );
    let a = authenticator(&set);
    let good = format!("Bearer {}", token("RS256"));
    let o = run(
        &set,
        &a,
        "GET",
        "/",
        &[
            ("authorization", good.as_str()),
            ("x-second", &token("expired")),
        ],
    )
    .await;
    match o {
        AuthnOutcome::Rejected(r) => assert_eq!((r.status, r.error), (401, TokenError::Expired)),
        other => panic!("{other:?}"),
    }
    let o = run(
        &set,
        &a,
        "GET",
        "/",
        &[
            ("authorization", good.as_str()),
            ("x-second", &token("ES256")),
        ],
    )
    .await;
    authenticated(o);
}

#[tokio::test]
async fn tokens_route_to_the_rule_of_their_issuer() {
    let jwks = read("jwks.json");
    let istio = read("istio/jwks.json");
    let set = policy_set(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: two, namespace: prod}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    jwks: {}
  - issuer: testing@secure.istio.io
    jwks: {}
",
        yaml_quote(&jwks),
        yaml_quote(&istio)
    ));
    let a = authenticator(&set);
    let au = authenticated(bearer(&set, &a, &token("RS256")).await);
    assert_eq!(au.identity.principal, "https://issuer.test/user-1");
    let au = authenticated(bearer(&set, &a, read("istio/demo.jwt").trim()).await);
    assert_eq!(
        au.identity.principal,
        "testing@secure.istio.io/testing@secure.istio.io"
    );
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let set = pyjwt_set("");
    let a = authenticator(&set);
    let t = token("PS256");
    assert_eq!(a.cached_tokens(), 0);
    authenticated(bearer(&set, &a, &t).await);
    assert_eq!(a.cached_tokens(), 1);
    authenticated(bearer(&set, &a, &t).await);
    assert_eq!(a.cached_tokens(), 1);
    // A refused token is never cached.
    let _ = bearer(&set, &a, &token("expired")).await;
    assert_eq!(a.cached_tokens(), 1);
}
