//! The parts of Istio's MeshConfig that change how policies are decided.

use std::time::Duration;

use crate::path::PathNormalization;

/// istiod's default for an ext_authz provider's `timeout` (builder `timeoutOrDefault`).
pub const DEFAULT_EXT_AUTHZ_TIMEOUT: Duration = Duration::from_secs(600);

/// A header name pattern of an `envoyExtAuthzHttp` list, as istiod turns it into an Envoy
/// `StringMatcher` (`generateHeaders`): `abc*` a prefix, `*abc` a suffix, else exact; always
/// case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl HeaderPattern {
    pub fn parse(s: &str) -> HeaderPattern {
        if let Some(x) = s.strip_prefix('*') {
            HeaderPattern::Suffix(x.to_ascii_lowercase())
        } else if let Some(x) = s.strip_suffix('*') {
            HeaderPattern::Prefix(x.to_ascii_lowercase())
        } else {
            HeaderPattern::Exact(s.to_ascii_lowercase())
        }
    }

    /// Whether a (lower-case) header name matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            HeaderPattern::Exact(x) => name == *x,
            HeaderPattern::Prefix(x) => name.starts_with(x.as_str()),
            HeaderPattern::Suffix(x) => name.ends_with(x.as_str()),
        }
    }
}

/// Whether any pattern of a list matches.
pub fn any_matches(list: &[HeaderPattern], name: &str) -> bool {
    list.iter().any(|p| p.matches(name))
}

/// `includeRequestBodyInCheck`: Envoy's `with_request_body` (BufferSettings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyInCheck {
    pub max_request_bytes: u32,
    pub allow_partial_message: bool,
    /// gRPC only: the body goes in `raw_body` (bytes) instead of `body` (UTF-8).
    pub pack_as_bytes: bool,
}

/// Which Envoy ext_authz service an extension provider is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzKind {
    /// `envoyExtAuthzGrpc`: Envoy's `grpc_service` (ext_authz v3 `Authorization/Check`).
    Grpc,
    /// `envoyExtAuthzHttp`: Envoy's `http_service`.
    Http(HttpService),
}

/// The `envoyExtAuthzHttp`-only fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpService {
    /// Prepended to the original path (`pathPrefix`).
    pub path_prefix: String,
    /// Client headers sent beside Host, Method, Path, Content-Length and Authorization
    /// (`includeRequestHeadersInCheck`, or the deprecated `includeHeadersInCheck`).
    pub include_request_headers: Vec<HeaderPattern>,
    /// Fixed headers added to the check request (`includeAdditionalHeadersInCheck`), sorted by
    /// name as istiod sorts them; they replace client headers of the same name.
    pub additional_headers: Vec<(String, String)>,
    /// `headersToUpstreamOnAllow` (Envoy `allowed_upstream_headers`).
    pub headers_to_upstream_on_allow: Vec<HeaderPattern>,
    /// `headersToDownstreamOnDeny` (Envoy `allowed_client_headers`); empty: every header but Host.
    pub headers_to_downstream_on_deny: Vec<HeaderPattern>,
    /// `headersToDownstreamOnAllow` (Envoy `allowed_client_headers_on_success`).
    pub headers_to_downstream_on_allow: Vec<HeaderPattern>,
}

/// A meshConfig `extensionProviders` entry of type `envoyExtAuthzGrpc` or `envoyExtAuthzHttp`,
/// with the settings istiod gives Envoy's ext_authz filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzProvider {
    pub name: String,
    /// `[<namespace>/]<hostname>` as written.
    pub service: String,
    pub port: u16,
    /// `timeout`, default 600 s.
    pub timeout: Duration,
    /// `failOpen` (Envoy `failure_mode_allow`): errors and HTTP 5xx allow the request.
    pub fail_open: bool,
    /// `statusOnError` (Envoy `status_on_error`), default 403.
    pub status_on_error: u16,
    pub body: Option<BodyInCheck>,
    /// `clearRouteCache`: accepted; meshguard has no route cache, so it changes nothing.
    pub clear_route_cache: bool,
    pub kind: ExtAuthzKind,
}

impl ExtAuthzProvider {
    /// The host to connect to: `service` without its `<namespace>/` qualifier.
    pub fn host(&self) -> &str {
        match self.service.split_once('/') {
            Some((_, h)) => h,
            None => &self.service,
        }
    }

    /// `host:port` (IPv6 literals in brackets).
    pub fn authority(&self) -> String {
        let h = self.host();
        if h.contains(':') && !h.starts_with('[') {
            format!("[{h}]:{}", self.port)
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

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
    /// The `envoyExtAuthzGrpc`/`envoyExtAuthzHttp` providers istiod accepts, in full: CUSTOM
    /// policies naming one call that service (`meshguard-engine::remote`).
    pub ext_authz: Vec<ExtAuthzProvider>,
}

impl MeshConfig {
    /// Why istiod would refuse this provider's configuration, if it would.
    pub fn provider_invalid(&self, name: &str) -> Option<&str> {
        self.invalid_providers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.as_str())
    }

    /// The ext_authz service a provider name stands for, if it is one istiod accepts.
    pub fn ext_authz_provider(&self, name: &str) -> Option<&ExtAuthzProvider> {
        self.ext_authz.iter().find(|p| p.name == name)
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
            ext_authz: Vec::new(),
        }
    }
}
