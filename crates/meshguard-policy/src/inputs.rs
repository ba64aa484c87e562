//! What of a request the policies can match beyond its fixed attributes: the header names and
//! JWT claims that `request.headers[...]`, `request.auth.claims[...]`, `audiences` and
//! `presenter` read. The decision log records exactly these (never credentials), so a replay can
//! decide a recorded request again against another policy set.

use std::collections::BTreeSet;

use crate::resource::{Attr, Resource};

/// Headers that carry credentials: never recorded, whatever a policy matches on.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
];

/// Header names (lower case) and top-level claim names that policies read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub headers: Vec<String>,
    pub claims: Vec<String>,
}

impl Inputs {
    /// The inputs the AuthorizationPolicies among `resources` match on. Headers named by an
    /// AuthConfig as where credentials come from (`apiKeyAuth.headerName`) are left out too.
    pub fn of(resources: &[Resource]) -> Inputs {
        let mut headers = BTreeSet::new();
        let mut claims = BTreeSet::new();
        for r in resources {
            let Resource::AuthorizationPolicy(p) = r else {
                continue;
            };
            for rule in &p.rules {
                let keys = rule
                    .from
                    .iter()
                    .flatten()
                    .flatten()
                    .chain(rule.to.iter().flatten().flatten())
                    .chain(rule.when.iter());
                for k in keys {
                    match &k.attr {
                        Attr::Header(h) => {
                            headers.insert(h.clone());
                        }
                        Attr::Claim(path) => {
                            if let Some(first) = path.first() {
                                claims.insert(first.clone());
                            }
                        }
                        Attr::Audiences => {
                            claims.insert("aud".to_owned());
                        }
                        Attr::Presenter => {
                            claims.insert("azp".to_owned());
                        }
                        _ => {}
                    }
                }
            }
        }
        let secret = credential_headers(resources);
        headers.retain(|h| !SECRET_HEADERS.contains(&h.as_str()) && !secret.contains(h));
        Inputs {
            headers: headers.into_iter().collect(),
            claims: claims.into_iter().collect(),
        }
    }
}

/// Headers AuthConfigs read credentials from (API key headers).
fn credential_headers(resources: &[Resource]) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::AuthConfig(c) => Some(c.credential_headers()),
            _ => None,
        })
        .flatten()
        .collect()
}
