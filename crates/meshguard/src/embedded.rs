//! The bundled examples (`examples/`), compiled into the binary so that meshguard runs with no
//! files at all.

macro_rules! bundled {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../examples/", $dir, "/", $name)))),*]
    };
}

/// The embedded default policy set.
pub const POLICIES: &[(&str, &str)] = bundled!("policies":
    "strict-mtls.yaml",
    "frontend-to-backend.yaml",
    "require-jwt.yaml",
    "jwt-auth.yaml",
    "deny-admin.yaml",
    "audit-writes.yaml",
    "dry-run-deny-legacy.yaml",
);

/// Example requests for `meshguard check --example`.
pub const REQUESTS: &[(&str, &str)] = bundled!("requests":
    "frontend-reads-users.yaml",
    "frontend-admin-bypass.yaml",
    "plaintext-to-backend.yaml",
    "unknown-caller.yaml",
    "api-with-jwt.yaml",
    "api-with-token.yaml",
    "api-with-forged-token.yaml",
    "frontend-legacy-write.yaml",
);

/// The Gloo AuthConfig examples, with the Secrets and ConfigMaps they read.
pub const EXTAUTH: &[(&str, &str)] = bundled!("extauth":
    "api-keys.yaml",
    "basic-auth.yaml",
    "opa-envoy.yaml",
    "shop.yaml",
);

/// `meshguard test` files for the requests and the AuthConfigs.
pub const TESTS: &[(&str, &str)] = bundled!("tests":
    "requests.test.yaml",
    "extauth.test.yaml",
);

/// Every bundled file by its folder under `examples/`.
pub const ALL: &[(&str, &[(&str, &str)])] = &[
    ("policies", POLICIES),
    ("extauth", EXTAUTH),
    ("requests", REQUESTS),
    ("tests", TESTS),
];
