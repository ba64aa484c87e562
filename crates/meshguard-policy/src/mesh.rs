//! The parts of Istio's MeshConfig that change how policies are decided.

use crate::path::PathNormalization;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// meshConfig.rootNamespace: policies here apply mesh-wide.
    pub root_namespace: String,
    /// meshConfig.trustDomain; principals written with `cluster.local` are rewritten to it.
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    pub path_normalization: PathNormalization,
    /// Names of meshConfig.extensionProviders that exist (CUSTOM `provider.name` must be one).
    pub extension_providers: Vec<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "istio-system".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            trust_domain_aliases: Vec::new(),
            path_normalization: PathNormalization::Base,
            extension_providers: Vec::new(),
        }
    }
}
