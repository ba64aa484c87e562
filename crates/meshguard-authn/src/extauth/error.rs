//! Why an AuthConfig, or one of its steps, cannot be built: the errors that make a policy set
//! refuse to load (and that `lint` reports).

use super::basic::MAX_BCRYPT_COST;
use crate::jwks::JwksError;

/// Why one AuthConfig step (or the whole config) cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A step named by its `name`, around what went wrong in it.
    #[error("config `{step}`: {source}")]
    Step {
        step: String,
        #[source]
        source: Box<BuildError>,
    },
    /// `field` names the reference (`htpasswdSecretRef`, `clientSecretRef`, ...).
    #[error("{field}: Secret {namespace}/{name} is not loaded")]
    SecretNotLoaded {
        field: &'static str,
        namespace: String,
        name: String,
    },
    #[error("Secret {namespace}/{name} has no `{entry}` entry")]
    SecretEntryMissing {
        namespace: String,
        name: String,
        entry: &'static str,
    },
    #[error("Secret {namespace}/{name} has an empty API key")]
    EmptyApiKey { namespace: String, name: String },
    #[error("Secret {namespace}/{name} repeats an API key another Secret already holds")]
    DuplicateApiKey { namespace: String, name: String },
    #[error("Secret {namespace}/{name} htpasswd line {line}: expected user:hash")]
    HtpasswdSyntax {
        namespace: String,
        name: String,
        line: usize,
    },
    #[error("Secret {namespace}/{name} htpasswd line {line}: bcrypt cost {cost} is above {MAX_BCRYPT_COST} (too slow to check per request)")]
    BcryptCost {
        namespace: String,
        name: String,
        line: usize,
        cost: u32,
    },
    #[error("Secret {namespace}/{name} htpasswd line {line}: only $apr1$ and bcrypt ($2y$) hashes are accepted (plain, crypt and {{SHA}} are too weak)")]
    WeakHash {
        namespace: String,
        name: String,
        line: usize,
    },
    #[error("groupLookupSettings: Secret {namespace}/{name} has no `{field}`")]
    ServiceAccountField {
        namespace: String,
        name: String,
        field: &'static str,
    },
    #[error("ConfigMap {namespace}/{name} is not loaded")]
    ConfigMapNotLoaded { namespace: String, name: String },
    #[error("the referenced ConfigMaps hold no Rego module")]
    NoRegoModule,
    /// A Rego module or data document (named `namespace/configmap/key`) that does not load.
    #[error("{name}: {source}")]
    RegoFile {
        name: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("{0}")]
    RegoBuiltins(#[source] anyhow::Error),
    #[error("the Rego modules do not compile: {0}")]
    RegoCompile(#[source] anyhow::Error),
    #[error("localJwks: {0}")]
    LocalJwks(#[source] JwksError),
    #[error("no JWKS")]
    NoJwks,
    #[error("introspectionUrl `{0}` is not an http(s) URL")]
    IntrospectionUrl(String),
    #[error("grpc.address {0}")]
    GrpcAddress(#[source] meshguard_envoy::ClientError),
    #[error("the client secret is too short (under 16 bytes) to derive a cookie key from; use the provider's generated secret")]
    ShortClientSecret,
    #[error("cookie key derivation failed")]
    CookieKey,
}

impl BuildError {
    /// This error, said to be in the step named `step`.
    pub(crate) fn in_step(self, step: &str) -> BuildError {
        BuildError::Step {
            step: step.to_owned(),
            source: Box::new(self),
        }
    }
}

/// An AuthConfig that cannot be built, with where it was loaded from.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {kind} {namespace}/{name}: {source}")]
pub struct ConfigError {
    /// `AuthConfig`, or `ExtAuthPolicy` for a policy's inline `glooAuth`.
    pub kind: &'static str,
    pub file: String,
    pub line: u32,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: Box<BuildError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts users read in `lint` and on a refused reload.
    #[test]
    fn messages_are_the_documented_text() {
        let e = BuildError::SecretNotLoaded {
            field: "clientSecretRef",
            namespace: "ns".into(),
            name: "c".into(),
        };
        assert_eq!(e.to_string(), "clientSecretRef: Secret ns/c is not loaded");
        let e = ConfigError {
            kind: "AuthConfig",
            file: "a.yaml".into(),
            line: 7,
            namespace: "ns".into(),
            name: "ac".into(),
            source: Box::new(BuildError::NoJwks.in_step("tok")),
        };
        assert_eq!(
            e.to_string(),
            "a.yaml:7: AuthConfig ns/ac: config `tok`: no JWKS"
        );
        let e = BuildError::WeakHash {
            namespace: "ns".into(),
            name: "h".into(),
            line: 3,
        };
        assert_eq!(
            e.to_string(),
            "Secret ns/h htpasswd line 3: only $apr1$ and bcrypt ($2y$) hashes are accepted (plain, crypt and {SHA} are too weak)"
        );
        let e = BuildError::BcryptCost {
            namespace: "ns".into(),
            name: "h".into(),
            line: 2,
            cost: 14,
        };
        assert_eq!(
            e.to_string(),
            "Secret ns/h htpasswd line 2: bcrypt cost 14 is above 12 (too slow to check per request)"
        );
        let e = BuildError::SecretEntryMissing {
            namespace: "ns".into(),
            name: "k".into(),
            entry: "api-key",
        };
        assert_eq!(e.to_string(), "Secret ns/k has no `api-key` entry");
    }
}
