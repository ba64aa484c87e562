//! Gloo `apiKeyAuth`: keys from Kubernetes Secrets (`data.api-key`; every other entry is
//! metadata), presented in a header (`api-key` by default). Keys are kept only as SHA-256
//! digests and compared in constant time; the Secret's name is the caller's user id.

use std::collections::BTreeMap;

use meshguard_policy::extauth::{labels_match, ApiKeyAuth, MetadataHeader};
use meshguard_policy::PolicySet;
use serde_json::Value;

use super::{BuildError, StepInput, StepOutcome};

struct Key {
    digest: [u8; 32],
    user: String,
    metadata: BTreeMap<String, String>,
}

pub struct ApiKeyStep {
    header: String,
    keys: Vec<Key>,
    headers_from_metadata: Vec<MetadataHeader>,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The Secret data key holding the API key.
pub const KEY_FIELD: &str = "api-key";

impl ApiKeyStep {
    pub fn build(
        set: &PolicySet,
        namespace: &str,
        a: &ApiKeyAuth,
    ) -> Result<ApiKeyStep, BuildError> {
        let mut keys = Vec::new();
        let mut seen = Vec::new();
        for s in set.secrets() {
            let by_ref = a
                .secret_refs
                .iter()
                .any(|r| r.name == s.meta.name && r.namespace == s.meta.namespace);
            let by_label = a.label_selector.as_ref().is_some_and(|sel| {
                s.meta.namespace == namespace
                    && !sel.is_empty()
                    && labels_match(sel, &s.meta.labels)
            });
            if !(by_ref || by_label) {
                continue;
            }
            let Some(key) = s.data.get(KEY_FIELD) else {
                if by_ref {
                    return Err(BuildError::SecretEntryMissing {
                        namespace: s.meta.namespace.clone(),
                        name: s.meta.name.clone(),
                        entry: KEY_FIELD,
                    });
                }
                continue;
            };
            if key.is_empty() {
                return Err(BuildError::EmptyApiKey {
                    namespace: s.meta.namespace.clone(),
                    name: s.meta.name.clone(),
                });
            }
            let digest = sha256(key);
            if seen.contains(&digest) {
                return Err(BuildError::DuplicateApiKey {
                    namespace: s.meta.namespace.clone(),
                    name: s.meta.name.clone(),
                });
            }
            seen.push(digest);
            let metadata = s
                .data
                .iter()
                .filter(|(k, _)| k.as_str() != KEY_FIELD)
                .filter_map(|(k, v)| String::from_utf8(v.clone()).ok().map(|v| (k.clone(), v)))
                .collect();
            keys.push(Key {
                digest,
                user: s.meta.name.clone(),
                metadata,
            });
        }
        for r in &a.secret_refs {
            if !set
                .secrets()
                .iter()
                .any(|s| s.meta.name == r.name && s.meta.namespace == r.namespace)
            {
                return Err(BuildError::SecretNotLoaded {
                    field: "apiKeySecretRefs",
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                });
            }
        }
        Ok(ApiKeyStep {
            header: a.header_name.clone(),
            keys,
            headers_from_metadata: a.headers_from_metadata.clone(),
        })
    }

    pub fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let missing = || {
            let mut o = StepOutcome::deny(401, "API key is missing or invalid");
            o.response_headers.push((
                "www-authenticate".into(),
                "API key is missing or invalid".into(),
            ));
            o
        };
        let Some(presented) = input.header(&self.header).map(|p| p.trim().to_owned()) else {
            return missing();
        };
        let digest = sha256(presented.as_bytes());
        // Compare against every key (no early exit), each comparison in constant time.
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if super::basic::ct_eq(&k.digest, &digest) && found.is_none() {
                found = Some(k);
            }
        }
        let Some(k) = found else {
            return missing();
        };
        let mut o = StepOutcome::allow(format!("API key of {}", k.user));
        o.headers_to_add.push(("x-user-id".into(), k.user.clone()));
        for h in &self.headers_from_metadata {
            match k.metadata.get(&h.key) {
                Some(v) => {
                    o.headers_to_add.push((h.header.clone(), v.clone()));
                    input
                        .state
                        .insert(h.header.clone(), Value::String(v.clone()));
                }
                None if h.required => {
                    let mut d = missing();
                    d.reason = format!("API key of {} lacks required metadata `{}`", k.user, h.key);
                    return d;
                }
                None => {}
            }
        }
        input
            .state
            .insert("api_key_value".into(), Value::String(presented));
        o
    }
}
