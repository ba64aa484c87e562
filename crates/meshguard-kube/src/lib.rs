//! Kubernetes as meshguard's policy source (`meshguard serve --kubernetes`).
//!
//! A [`KubeSource`] lists and watches, through the API server, the kinds istiod and Gloo read:
//! `security.istio.io` AuthorizationPolicy, PeerAuthentication and RequestAuthentication (v1,
//! else v1beta1), `enterprise.gloo.solo.io` AuthConfig, and only those Secrets and ConfigMaps
//! that the AuthConfigs name or select. It keeps the objects as documents and hands them to the
//! engine through the same [`PolicySource`](meshguard_engine::PolicySource) seam as files, so
//! a change goes through the same validate -> compile -> swap path and a bad object is refused
//! with its kind, namespace, name and field while the last good set stays. Refusals are also
//! reported as Kubernetes Events on the object.
//!
//! - `kinds`: which kinds, which served version (API discovery).
//! - `source`: the watches, the document store and the `PolicySource` it implements.
//! - `events`: Events for refused objects.
//! - `attest`: the agent's workload attestor (caller process -> pod -> service account).
//! - `ca_service`: X.509-SVIDs for service accounts, after a TokenReview (`meshguard ca serve`).

#![forbid(unsafe_code)]

pub mod attest;
pub mod ca_service;
pub mod events;
pub mod kinds;
pub mod source;

pub use source::{KubeOptions, KubeSource};

/// What can go wrong before watching starts; once running, API errors are retried with backoff
/// and only logged (the last good set keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes client configuration: {0} (set KUBECONFIG, pass --kubeconfig, or run in a pod with a service account)")]
    Config(String),
    #[error("cannot reach the Kubernetes API server: {0}")]
    Api(#[from] kube::Error),
    #[error("the API server serves no {group} API ({what}); install the CRDs (deploy/crds.yaml, or Istio's/Gloo's own)")]
    MissingGroup { group: String, what: String },
}
