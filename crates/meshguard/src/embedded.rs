//! The bundled example policies (`examples/policies`), compiled into the binary so that
//! meshguard runs with no files at all.

pub const POLICIES: &[(&str, &str)] = &[
    (
        "strict-mtls.yaml",
        include_str!("../../../examples/policies/strict-mtls.yaml"),
    ),
    (
        "frontend-to-backend.yaml",
        include_str!("../../../examples/policies/frontend-to-backend.yaml"),
    ),
    (
        "require-jwt.yaml",
        include_str!("../../../examples/policies/require-jwt.yaml"),
    ),
    (
        "jwt-auth.yaml",
        include_str!("../../../examples/policies/jwt-auth.yaml"),
    ),
    (
        "deny-admin.yaml",
        include_str!("../../../examples/policies/deny-admin.yaml"),
    ),
    (
        "audit-writes.yaml",
        include_str!("../../../examples/policies/audit-writes.yaml"),
    ),
    (
        "dry-run-deny-legacy.yaml",
        include_str!("../../../examples/policies/dry-run-deny-legacy.yaml"),
    ),
];

pub const REQUESTS: &[(&str, &str)] = &[
    (
        "frontend-reads-users.yaml",
        include_str!("../../../examples/requests/frontend-reads-users.yaml"),
    ),
    (
        "frontend-admin-bypass.yaml",
        include_str!("../../../examples/requests/frontend-admin-bypass.yaml"),
    ),
    (
        "plaintext-to-backend.yaml",
        include_str!("../../../examples/requests/plaintext-to-backend.yaml"),
    ),
    (
        "unknown-caller.yaml",
        include_str!("../../../examples/requests/unknown-caller.yaml"),
    ),
    (
        "api-with-jwt.yaml",
        include_str!("../../../examples/requests/api-with-jwt.yaml"),
    ),
    (
        "frontend-legacy-write.yaml",
        include_str!("../../../examples/requests/frontend-legacy-write.yaml"),
    ),
];
