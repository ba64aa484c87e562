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
    /// Providers whose configuration istiod refuses (name, why): their CUSTOM rules become DENY
    /// rules (builder testdata custom-bad-invalid-config).
    pub invalid_providers: Vec<(String, String)>,
    /// `envoyExtAuthzHttp` providers: istiod's buildTCP drops CUSTOM policies that use them on
    /// TCP (no HTTP request to send).
    pub http_providers: Vec<String>,
    /// meshConfig.defaultConfig.gatewayTopology.numTrustedProxies: Envoy's
    /// `xff_num_trusted_hops`, how many X-Forwarded-For entries from the right are proxies.
    pub xff_trusted_hops: usize,
}

impl MeshConfig {
    /// Why istiod would refuse this provider's configuration, if it would.
    pub fn provider_invalid(&self, name: &str) -> Option<&str> {
        self.invalid_providers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.as_str())
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "istio-system".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            trust_domain_aliases: Vec::new(),
            path_normalization: PathNormalization::Base,
            extension_providers: Vec::new(),
            invalid_providers: Vec::new(),
            http_providers: Vec::new(),
            xff_trusted_hops: 0,
        }
    }
}
