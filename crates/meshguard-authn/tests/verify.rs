//! Tokens made by an independent implementation (PyJWT), Istio's own sample tokens, and the
//! attacks a verifier must refuse.

mod common;

use common::*;
use meshguard_authn::jose::JoseError;
use meshguard_authn::{AuthnOutcome, TokenError};

fn rejected(o: &AuthnOutcome) -> (u16, TokenError) {
    match o {
        AuthnOutcome::Rejected(r) => (r.status, r.error.clone()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn pyjwt_tokens_of_every_algorithm_verify() {
    let set = pyjwt_set("");
    let a = authenticator(&set);
    for alg in [
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "EdDSA",
        "HS256",
        "RS256_no_kid",
        "aud_list",
        "no_exp",
        // Envoy 1.40 ignores a future `iat` and an unknown `crit` (tests/envoy_jwt.rs).
        "issued_in_future",
        "crit_unknown",
    ] {
        match bearer(&set, &a, &token(alg)).await {
            AuthnOutcome::Authenticated(au) => {
                assert_eq!(au.identity.principal, "https://issuer.test/user-1", "{alg}");
                assert_eq!(au.identity.claims["role"], "admin");
                assert_eq!(
                    au.headers_to_remove,
                    vec!["authorization".to_owned()],
                    "forwardOriginalToken defaults to false"
                );
            }
            other => panic!("{alg}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn attacks_are_refused() {
    let set = pyjwt_set("");
    let a = authenticator(&set);
    type Check = fn(&TokenError) -> bool;
    let cases: &[(&str, u16, Check)] = &[
        ("alg_none", 401, |e| {
            *e == TokenError::Malformed(JoseError::AlgNone)
        }),
        ("key_confusion_hs256_with_rsa_pem", 401, |e| {
            *e == TokenError::NoMatchingKey
        }),
        ("expired", 401, |e| *e == TokenError::Expired),
        ("not_yet_valid", 401, |e| *e == TokenError::NotYetValid),
        ("wrong_iss", 401, |e| *e == TokenError::UnknownIssuer),
        ("wrong_aud", 403, |e| *e == TokenError::AudienceNotAllowed),
        ("unknown_kid", 401, |e| *e == TokenError::NoMatchingKey),
        ("other_key_same_kid", 401, |e| {
            *e == TokenError::BadSignature
        }),
        ("tampered_payload", 401, |e| *e == TokenError::BadSignature),
        ("truncated_two_segments", 401, |e| {
            *e == TokenError::Malformed(JoseError::Segments)
        }),
        ("truncated_signature", 401, |e| {
            *e == TokenError::BadSignature
        }),
        // Envoy's extractor stops at the first non-JWT character, so what is left is malformed.
        ("non_base64", 401, |e| {
            matches!(
                e,
                TokenError::Malformed(JoseError::Base64(_) | JoseError::Segments)
            )
        }),
        ("padded_base64", 401, |e| {
            matches!(e, TokenError::Malformed(JoseError::Base64(_)))
        }),
        (
            "duplicate_header_key",
            401,
            |e| matches!(e, TokenError::Malformed(JoseError::Json("header", m)) if m.contains("duplicate")),
        ),
        (
            "duplicate_payload_key",
            401,
            |e| matches!(e, TokenError::Malformed(JoseError::Json("payload", m)) if m.contains("duplicate")),
        ),
        ("payload_not_object", 401, |e| {
            *e == TokenError::Malformed(JoseError::NotObject("payload"))
        }),
    ];
    for (name, status, check) in cases {
        let o = bearer(&set, &a, &token(name)).await;
        let (s, e) = rejected(&o);
        assert_eq!(s, *status, "{name}: {e}");
        assert!(check(&e), "{name}: unexpected error {e:?}");
        if s == 401 {
            let AuthnOutcome::Rejected(r) = &o else {
                unreachable!()
            };
            let w = r.www_authenticate.as_deref().unwrap_or("");
            assert!(
                w.starts_with("Bearer realm=") && w.contains("error=\"invalid_token\""),
                "{name}: {w}"
            );
        }
    }
    // Non-base64 characters inside a segment, handed over directly (no header extraction).
    let t = token("RS256");
    let bad = t.replacen('.', ".~", 1);
    assert!(matches!(
        meshguard_authn::jose::parse(&bad),
        Err(JoseError::Base64("payload"))
    ));
    // An oversized token is refused before it is decoded (Envoy takes tokens as large as its
    // 60 KiB header limit allows, so the bound sits above that).
    let huge = format!("{}.{}.{}", "a".repeat(40_000), "b".repeat(40_000), "c");
    let (s, e) = rejected(&bearer(&set, &a, &huge).await);
    assert_eq!(
        (
            s,
            matches!(e, TokenError::Malformed(JoseError::TooLarge(_)))
        ),
        (401, true)
    );
}

#[tokio::test]
async fn hmac_keys_only_from_inline_jwks_and_never_for_rsa_tokens() {
    // The HS256 key is in the inline set, yet an RS-family token naming it fails, and an HS256
    // token naming the RSA key finds no key (no key confusion in either direction).
    let set = pyjwt_set("");
    let a = authenticator(&set);
    let t = token("HS256");
    let (h, rest) = t.split_once('.').expect("jwt");
    let _ = rest;
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).expect("b64"),
    )
    .expect("json");
    assert_eq!(header["alg"], "HS256");
    assert!(matches!(
        bearer(&set, &a, &t).await,
        AuthnOutcome::Authenticated(_)
    ));
    let ks = meshguard_authn::jwks::KeySet::parse(read("jwks-hs.json").as_bytes(), false);
    assert!(ks.is_err(), "oct keys are refused outside inline jwks");
}

#[tokio::test]
async fn istio_sample_tokens_verify_as_istio_tasks_describe() {
    // istio.io tasks/security/authentication/authn-policy: issuer testing@secure.istio.io with
    // security/tools/jwt/samples/jwks.json; demo.jwt and groups-scope.jwt.
    let jwks = read("istio/jwks.json");
    let set = policy_set(&format!(
        "apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: prod}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-group1, namespace: prod}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  rules:
  - from:
    - source: {{requestPrincipals: [\"testing@secure.istio.io/testing@secure.istio.io\"]}}
    when:
    - key: request.auth.claims[groups]
      values: [\"group1\"]
",
        yaml_quote(&jwks)
    ));
    let a = authenticator(&set);
    let demo = read("istio/demo.jwt");
    let groups = read("istio/groups-scope.jwt");
    for (t, has_groups) in [(demo.trim(), false), (groups.trim(), true)] {
        let AuthnOutcome::Authenticated(au) = bearer(&set, &a, t).await else {
            panic!("istio sample token refused")
        };
        assert_eq!(
            au.identity.principal,
            "testing@secure.istio.io/testing@secure.istio.io"
        );
        // End to end: the claims reach AuthorizationPolicy (groups is a list claim).
        let req = meshguard_policy::Request {
            destination: meshguard_policy::Destination {
                namespace: "prod".into(),
                labels: labels(),
                port: Some(8000),
                ip: None,
            },
            http: Some(meshguard_policy::HttpRequest::new(
                "GET",
                "api",
                "/headers",
                Vec::new(),
                meshguard_policy::PathNormalization::Base,
            )),
            ..Default::default()
        };
        let id = meshguard_policy::Identity {
            peer: None,
            jwt: Some(au.identity),
        };
        assert_eq!(
            set.evaluate(&req, &id).allowed,
            has_groups,
            "groups claim decides"
        );
    }
    // A token in a header no rule reads counts as missing (Istio test `invalid-header`).
    let o = run(&set, &a, "GET", "/", &[("x-jwt", groups.trim())]).await;
    assert!(matches!(o, AuthnOutcome::NoToken));
}

#[tokio::test]
async fn istio_e2e_tokens() {
    // istio/istio tests/common/jwt: three issuers sharing tests/common/jwt/jwks.json.
    let jwks = read("istio/e2e/jwks.json");
    let mut rules = String::new();
    for iss in [
        "test-issuer-1@istio.io",
        "test-issuer-2@istio.io",
        "test-issuer-3@istio.io",
    ] {
        rules.push_str(&format!(
            "  - issuer: {iss}\n    jwks: {}\n",
            yaml_quote(&jwks)
        ));
    }
    let set = policy_set(&format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: e2e, namespace: prod}}
spec:
  jwtRules:
{rules}"
    ));
    let a = authenticator(&set);
    let v: serde_json::Value =
        serde_json::from_str(&read("istio/e2e/tokens.json")).expect("tokens");
    for (name, entry) in v.as_object().expect("map") {
        let t = entry["token"].as_str().expect("token");
        let o = bearer(&set, &a, t).await;
        if name == "TokenExpired" {
            assert_eq!(rejected(&o), (401, TokenError::Expired), "{name}");
        } else {
            let AuthnOutcome::Authenticated(au) = o else {
                panic!("{name}: {o:?}")
            };
            let iss = entry["payload"]["iss"].as_str().unwrap_or("");
            assert!(au.identity.principal.starts_with(iss), "{name}");
        }
    }
}

#[tokio::test]
async fn clock_skew_is_sixty_seconds() {
    let set = pyjwt_set("");
    let a = authenticator(&set);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(read("rsa-1.pem").as_bytes()).expect("pem");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mint = |claims: serde_json::Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&h, &claims, &key).expect("sign")
    };
    let base = |extra: serde_json::Value| {
        let mut c =
            serde_json::json!({"iss": "https://issuer.test", "sub": "u", "aud": "api.test"});
        if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        c
    };
    let ok = |o: &AuthnOutcome| matches!(o, AuthnOutcome::Authenticated(_));
    assert!(ok(&bearer(
        &set,
        &a,
        &mint(base(serde_json::json!({"exp": now - 30})))
    )
    .await));
    assert_eq!(
        rejected(&bearer(&set, &a, &mint(base(serde_json::json!({"exp": now - 120})))).await).1,
        TokenError::Expired
    );
    assert!(ok(&bearer(
        &set,
        &a,
        &mint(base(serde_json::json!({"exp": now + 600, "nbf": now + 30})))
    )
    .await));
    assert_eq!(
        rejected(&bearer(&set, &a, &mint(base(serde_json::json!({"nbf": now + 120})))).await).1,
        TokenError::NotYetValid
    );
    assert_eq!(
        rejected(&bearer(&set, &a, &mint(base(serde_json::json!({"exp": "soon"})))).await).1,
        TokenError::BadClaim("exp")
    );
}
