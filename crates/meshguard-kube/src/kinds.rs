//! The kinds meshguard reads from a cluster, and which version of each the API server serves.

use kube::discovery::ApiResource;
use kube::Client;

use crate::KubeError;

/// A custom resource kind meshguard decides with.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// In order of preference: the first one the API server serves is watched (watching two
    /// versions of one kind would see every object twice).
    pub versions: &'static [&'static str],
    /// Whether a cluster without this API group is an error (Istio's) or just has none (Gloo's).
    pub required: bool,
}

pub const ISTIO: &str = "security.istio.io";
pub const GLOO_ENTERPRISE: &str = "enterprise.gloo.solo.io";
pub const GLOO_POLICY: &str = "security.policy.gloo.solo.io";

/// The policy kinds, in the order they are watched.
pub const POLICY_KINDS: &[Kind] = &[
    Kind {
        group: ISTIO,
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        versions: &["v1", "v1beta1"],
        required: true,
    },
    Kind {
        group: ISTIO,
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        versions: &["v1", "v1beta1"],
        required: true,
    },
    Kind {
        group: ISTIO,
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        versions: &["v1", "v1beta1"],
        required: true,
    },
    Kind {
        group: GLOO_ENTERPRISE,
        kind: "AuthConfig",
        plural: "authconfigs",
        versions: &["v1"],
        required: false,
    },
    Kind {
        group: GLOO_POLICY,
        kind: "ExtAuthPolicy",
        plural: "extauthpolicies",
        versions: &["v2"],
        required: false,
    },
];

/// The API resources to watch: for each kind, the first preferred version the server serves.
/// Kinds of an optional group the server does not serve are left out (logged).
pub async fn resolve(client: &Client) -> Result<Vec<(Kind, ApiResource)>, KubeError> {
    let groups = client.list_api_groups().await?;
    let mut out = Vec::new();
    for k in POLICY_KINDS {
        let served: Vec<String> = groups
            .groups
            .iter()
            .filter(|g| g.name == k.group)
            .flat_map(|g| g.versions.iter().map(|v| v.version.clone()))
            .collect();
        match k.versions.iter().find(|v| served.iter().any(|s| s == *v)) {
            Some(v) => {
                let gvk = kube::core::GroupVersionKind::gvk(k.group, v, k.kind);
                out.push((*k, ApiResource::from_gvk_with_plural(&gvk, k.plural)));
            }
            None if k.required => {
                return Err(KubeError::MissingGroup {
                    group: k.group.to_owned(),
                    what: format!("{} in version {}", k.kind, k.versions.join(" or ")),
                })
            }
            None => {
                tracing::info!(
                    group = k.group,
                    kind = k.kind,
                    "the API server does not serve this kind; none are read"
                );
            }
        }
    }
    Ok(out)
}
