//! meshConfig `extensionProviders` of type `envoyExtAuthzGrpc` / `envoyExtAuthzHttp`: every
//! field Istio defines is read into the typed provider, unknown fields and wrong types are
//! refused with line and field, and values istiod's builder refuses leave the provider invalid
//! (its CUSTOM rules deny).

use std::time::Duration;

use meshguard_policy::load::parse_mesh_config;
use meshguard_policy::mesh::{ExtAuthzKind, HeaderPattern};
use meshguard_policy::MeshConfig;

fn mesh(text: &str) -> Result<MeshConfig, meshguard_policy::read::FieldError> {
    let docs = meshguard_policy::yaml::parse_documents(text).expect("yaml");
    parse_mesh_config(&docs[0])
}

#[test]
fn every_field_is_read() {
    let m = mesh(
        r#"
extensionProviders:
- name: opa
  envoyExtAuthzGrpc:
    service: opa.policy.svc.cluster.local
    port: 9191
    timeout: 0.5s
    failOpen: true
    statusOnError: "503"
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true, packAsBytes: true}
- name: oauth2
  envoyExtAuthzHttp:
    service: foo/oauth2-proxy.foo.svc.cluster.local
    port: "4180"
    pathPrefix: /check
    clearRouteCache: true
    includeRequestHeadersInCheck: [Cookie, "x-auth-*", "*-token"]
    includeAdditionalHeadersInCheck: {X-B: "2", x-a: "1"}
    includeRequestBodyInCheck: {maxRequestBytes: 10}
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnDeny: [set-cookie]
    headersToDownstreamOnAllow: [x-session*]
"#,
    )
    .expect("valid");
    assert!(m.invalid_providers.is_empty(), "{:?}", m.invalid_providers);
    let g = m.ext_authz_provider("opa").expect("grpc provider");
    assert_eq!(g.authority(), "opa.policy.svc.cluster.local:9191");
    assert_eq!(g.timeout, Duration::from_millis(500));
    assert!(g.fail_open);
    assert_eq!(g.status_on_error, 503);
    let b = g.body.as_ref().expect("body");
    assert_eq!(
        (
            b.max_request_bytes,
            b.allow_partial_message,
            b.pack_as_bytes
        ),
        (4096, true, true)
    );
    assert_eq!(g.kind, ExtAuthzKind::Grpc);
    let h = m.ext_authz_provider("oauth2").expect("http provider");
    assert_eq!(h.host(), "oauth2-proxy.foo.svc.cluster.local");
    assert_eq!(h.port, 4180);
    assert_eq!(h.timeout, Duration::from_secs(600), "istiod's default");
    assert_eq!(h.status_on_error, 403, "Envoy's default");
    assert!(!h.fail_open && h.clear_route_cache);
    let ExtAuthzKind::Http(s) = &h.kind else {
        panic!("http kind")
    };
    assert_eq!(s.path_prefix, "/check");
    assert_eq!(
        s.include_request_headers,
        vec![
            HeaderPattern::Exact("cookie".into()),
            HeaderPattern::Prefix("x-auth-".into()),
            HeaderPattern::Suffix("-token".into()),
        ]
    );
    assert!(s.include_request_headers[1].matches("X-Auth-User"));
    assert!(s.include_request_headers[2].matches("id-token"));
    assert!(!s.include_request_headers[0].matches("cookies"));
    assert_eq!(
        s.additional_headers,
        vec![("x-a".into(), "1".into()), ("x-b".into(), "2".into())],
        "sorted by name, as istiod adds them"
    );
    assert!(m.http_providers.contains(&"oauth2".to_owned()));
}

#[test]
fn unknown_fields_and_wrong_types_are_refused_with_line_and_field() {
    let cases = [
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc:\n    service: s\n    port: 1\n    pathPrefix: /x\n",
            6,
            "extensionProviders[0].envoyExtAuthzGrpc.pathPrefix",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp:\n    service: s\n    port: 1\n    headersToUpstreamOnDeny: [x]\n",
            6,
            "extensionProviders[0].envoyExtAuthzHttp.headersToUpstreamOnDeny",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc:\n    service: s\n    port: 1\n    failOpen: yes please\n",
            6,
            "extensionProviders[0].envoyExtAuthzGrpc.failOpen",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc:\n    service: s\n    port: nine\n",
            5,
            "extensionProviders[0].envoyExtAuthzGrpc.port",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp:\n    service: s\n    port: 1\n    includeRequestBodyInCheck: {maxBytes: 3}\n",
            6,
            "extensionProviders[0].envoyExtAuthzHttp.includeRequestBodyInCheck.maxBytes",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp:\n    service: s\n    port: 1\n    includeRequestHeadersInCheck: x-a\n",
            6,
            "extensionProviders[0].envoyExtAuthzHttp.includeRequestHeadersInCheck",
        ),
        (
            "extensionProviders:\n- name: a\n  envoyExtAuthz: {}\n",
            3,
            "extensionProviders[0].envoyExtAuthz",
        ),
    ];
    for (text, line, field) in cases {
        let e = mesh(text).expect_err(text);
        assert_eq!((e.line, e.field.as_str()), (line, field), "{text}: {e}");
    }
}

#[test]
fn values_istiod_refuses_make_the_provider_invalid() {
    for (cfg, why) in [
        ("service: s\n    port: 0", "port"),
        (
            "service: s\n    port: 1\n    statusOnError: '99'",
            "statusOnError",
        ),
        ("service: s\n    port: 1\n    timeout: soon", "timeout"),
        ("port: 1", "service"),
        (
            "service: s\n    port: 1\n    includeRequestBodyInCheck: {allowPartialMessage: true}",
            "maxRequestBytes",
        ),
    ] {
        let m = mesh(&format!(
            "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc:\n    {cfg}\n"
        ))
        .expect("structurally valid");
        assert!(m.ext_authz.is_empty(), "{cfg}");
        assert!(
            m.provider_invalid("a").is_some_and(|w| w.contains(why)),
            "{cfg}: {:?}",
            m.invalid_providers
        );
    }
    let m = mesh(
        "extensionProviders:\n- name: a\n  envoyExtAuthzHttp:\n    service: s\n    port: 1\n    headersToUpstreamOnAllow: ['*']\n",
    )
    .expect("structurally valid");
    assert!(m
        .provider_invalid("a")
        .is_some_and(|w| w.contains("wildcard")));
}
