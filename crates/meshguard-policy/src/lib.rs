//! meshguard's policy engine: Istio `AuthorizationPolicy`, `PeerAuthentication` and
//! `RequestAuthentication` resources, loaded and validated as istiod does, compiled into an
//! indexed [`PolicySet`], and decided exactly as the Envoy configuration istiod generates decides.
//!
//! No IO beyond reading policy files, no async, no wire formats.

#![forbid(unsafe_code)]

pub mod boolexpr;
pub mod compile;
pub mod diag;
mod evaluate;
pub mod extauth;
mod fields;
pub mod inputs;
pub mod inspect;
pub mod load;
pub mod matcher;
pub mod mesh;
mod meta;
pub mod path;
pub mod read;
pub mod request;
pub mod resource;
pub mod verdict;
pub mod workload;
pub mod yaml;

pub use compile::{CompileError, PolicySet};
pub use diag::{Diagnostic, Severity};
pub use mesh::MeshConfig;
pub use path::PathNormalization;
pub use request::{
    Body, Destination, HttpRequest, Identity, JwtIdentity, Rejection, Request, Source,
};
pub use resource::{Action, MtlsMode, Resource};
pub use verdict::{Gradual, PolicyRef, Reason, Resumed, Shadow, Verdict};
