//! Shared by the fuzz targets: the bundled example policies, loaded once.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use meshguard_engine::State;
use meshguard_policy::MeshConfig;

/// The engine state over the bundled example policies and AuthConfigs.
pub fn state() -> &'static Arc<State> {
    static S: OnceLock<Arc<State>> = OnceLock::new();
    S.get_or_init(|| {
        let docs = vec![
            (
                "deny-admin.yaml".to_owned(),
                include_str!("../../examples/policies/deny-admin.yaml").to_owned(),
            ),
            (
                "frontend-to-backend.yaml".to_owned(),
                include_str!("../../examples/policies/frontend-to-backend.yaml").to_owned(),
            ),
            (
                "audit-writes.yaml".to_owned(),
                include_str!("../../examples/policies/audit-writes.yaml").to_owned(),
            ),
            (
                "jwt-auth.yaml".to_owned(),
                include_str!("../../examples/policies/jwt-auth.yaml").to_owned(),
            ),
            (
                "api-keys.yaml".to_owned(),
                include_str!("../../examples/extauth/api-keys.yaml").to_owned(),
            ),
        ];
        State::new(
            meshguard_engine::Embedded(docs),
            MeshConfig::default(),
            reqwest::Client::new(),
        )
        .expect("example policies load")
    })
}
