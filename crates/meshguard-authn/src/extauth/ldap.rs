//! Gloo `ldap`: the caller's Basic credentials are bound as `userDnTemplate` (with the user name
//! in place of `%s`), then the user entry's `membershipAttributeName` values must include one
//! of `allowedGroups`. Bad credentials: 401; known user outside the groups: 403; a server that
//! does not answer: 503 within [`LDAP_TIMEOUT`]. Connections are pooled (`pool.maxSize`).
//!
//! With `groupLookupSettings.checkGroupsWithServiceAccount`, the user's bind only checks the
//! password; the connection then binds as the service account (Secret `username` = its DN,
//! `password`) to read the memberships, for directories where users may not read their own
//! group attributes. A service account that cannot bind denies (503): the directory is
//! misconfigured, not the user.
//!
//! User names with DN special characters are refused rather than stripped (stripping could turn
//! one name into another), and an empty password is refused: LDAP treats a bind with a name and
//! no password as an anonymous ("unauthenticated") bind that succeeds (RFC 4513 section 5.1.2).

use std::sync::Mutex;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use meshguard_policy::extauth::LdapAuth;
use meshguard_policy::PolicySet;
use serde_json::Value;

use super::basic::basic_credentials;
use super::{BuildError, StepInput, StepOutcome};

/// Bound on connecting and on each LDAP operation.
pub const LDAP_TIMEOUT: Duration = Duration::from_secs(3);

pub struct LdapStep {
    cfg: LdapAuth,
    pool: Mutex<Vec<Ldap>>,
    /// Bounds LDAP work in flight (4 x pool.maxSize): a flood of logins queues (then gets 503)
    /// instead of opening unbounded connections to the directory.
    slots: tokio::sync::Semaphore,
    allowed: Vec<String>,
    /// (DN, password) of the account that reads group memberships, if not the user.
    service_account: Option<(String, String)>,
}

/// Characters with a meaning in a DN (RFC 4514) or a filter, and control characters.
fn safe_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 256
        && !u.starts_with([' ', '#'])
        && !u.ends_with(' ')
        && !u
            .chars()
            .any(|c| c.is_control() || ",+\"\\<>;=*()/".contains(c))
}

/// DNs compared case-insensitively, ignoring spaces after separators.
fn norm_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// The LDAP server could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("LDAP server {address} unreachable: {source}")]
struct ConnectError {
    address: String,
    source: ldap3::LdapError,
}

impl LdapStep {
    pub fn build(set: &PolicySet, cfg: &LdapAuth) -> Result<LdapStep, BuildError> {
        let service_account = match &cfg.service_account {
            None => None,
            Some(r) => {
                let s = super::secret(set, r, "groupLookupSettings.credentialsSecretRef")?;
                let field = |k: &'static str| {
                    s.data
                        .get(k)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| BuildError::ServiceAccountField {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            field: k,
                        })
                };
                Some((field("username")?, field("password")?))
            }
        };
        Ok(LdapStep {
            service_account,
            allowed: cfg.allowed_groups.iter().map(|g| norm_dn(g)).collect(),
            cfg: cfg.clone(),
            pool: Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(cfg.pool_max.max(1) * 4),
        })
    }

    /// A pooled connection, or a new one. `fresh` skips the pool.
    async fn connect(&self, fresh: bool) -> Result<Ldap, ConnectError> {
        if !fresh {
            if let Some(c) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
                return Ok(c);
            }
        }
        let settings = LdapConnSettings::new().set_conn_timeout(LDAP_TIMEOUT);
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.cfg.address)
            .await
            .map_err(|source| ConnectError {
                address: self.cfg.address.clone(),
                source,
            })?;
        tokio::spawn(async move {
            let _ = conn.drive().await;
        });
        Ok(ldap)
    }

    fn give_back(&self, ldap: Ldap) {
        if let Ok(mut p) = self.pool.lock() {
            if p.len() < self.cfg.pool_max {
                p.push(ldap);
            }
        }
    }

    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let challenge = |why: String| StepOutcome::deny(401, why);
        let Some((user, password)) = basic_credentials(input) else {
            return challenge("no Basic credentials".into());
        };
        if !safe_user(&user) {
            return challenge("user name with characters not allowed in a DN".into());
        }
        if password.is_empty() {
            return challenge("empty password (would be an unauthenticated bind)".into());
        }
        let dn = self.cfg.user_dn_template.replacen("%s", &user, 1);
        let Ok(Ok(_permit)) = tokio::time::timeout(LDAP_TIMEOUT, self.slots.acquire()).await else {
            return StepOutcome::failed(503, "too many LDAP checks in flight");
        };
        let mut ldap = match self.connect(false).await {
            Ok(l) => l,
            Err(e) => return StepOutcome::failed(503, e.to_string()),
        };
        let mut bind = ldap
            .with_timeout(LDAP_TIMEOUT)
            .simple_bind(&dn, &password)
            .await;
        if bind.is_err() {
            // A pooled connection the server closed (restart, idle timeout): one fresh try.
            if let Ok(p) = self.pool.lock().as_mut() {
                p.clear();
            }
            ldap = match self.connect(true).await {
                Ok(l) => l,
                Err(e) => return StepOutcome::failed(503, e.to_string()),
            };
            bind = ldap
                .with_timeout(LDAP_TIMEOUT)
                .simple_bind(&dn, &password)
                .await;
        }
        match bind {
            Ok(r) if r.rc == 0 => {}
            Ok(r) => {
                self.give_back(ldap);
                return challenge(format!("LDAP bind refused for {dn} (result {})", r.rc));
            }
            Err(e) => return StepOutcome::failed(503, format!("LDAP bind failed: {e}")),
        }
        let mut o = StepOutcome::allow(format!("LDAP user {dn}"));
        o.headers_to_add.push(("x-user-id".into(), user.clone()));
        input
            .state
            .insert("ldap_user_dn".into(), Value::String(dn.clone()));
        if self.cfg.disable_group_checking {
            self.give_back(ldap);
            return o;
        }
        if let Some((sa_dn, sa_password)) = &self.service_account {
            match ldap
                .with_timeout(LDAP_TIMEOUT)
                .simple_bind(sa_dn, sa_password)
                .await
            {
                Ok(r) if r.rc == 0 => {}
                Ok(r) => {
                    self.give_back(ldap);
                    return StepOutcome::failed(
                        503,
                        format!(
                            "the LDAP service account {sa_dn} cannot bind (result {}): fix groupLookupSettings.credentialsSecretRef",
                            r.rc
                        ),
                    );
                }
                Err(e) => {
                    return StepOutcome::failed(
                        503,
                        format!("LDAP service account bind failed: {e}"),
                    )
                }
            }
        }
        let attr = self.cfg.membership_attribute.clone();
        let search = ldap
            .with_timeout(LDAP_TIMEOUT)
            .search(
                &dn,
                Scope::Base,
                &self.cfg.search_filter,
                vec![attr.as_str()],
            )
            .await
            .and_then(|r| r.success());
        let entries = match search {
            Ok((entries, _)) => entries,
            Err(e) => return StepOutcome::failed(503, format!("LDAP group lookup failed: {e}")),
        };
        self.give_back(ldap);
        let groups: Vec<String> = entries
            .into_iter()
            .map(SearchEntry::construct)
            .flat_map(|e| {
                e.attrs
                    .into_iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(&attr))
                    .flat_map(|(_, v)| v)
                    .collect::<Vec<_>>()
            })
            .collect();
        if groups.iter().any(|g| self.allowed.contains(&norm_dn(g))) {
            input.state.insert(
                "ldap_groups".into(),
                Value::Array(groups.into_iter().map(Value::String).collect()),
            );
            o
        } else {
            StepOutcome::deny(
                403,
                format!("LDAP user {dn} is in none of the allowed groups"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_that_would_change_the_dn_are_refused() {
        for ok in ["alice", "alice.smith", "a-b_c", "Älice"] {
            assert!(safe_user(ok), "{ok}");
        }
        for bad in [
            "",
            "alice,ou=admins",
            "a+b",
            "a=b",
            "a\\2c",
            " alice",
            "#x",
            "a\0",
            "*",
            "a)(uid=*",
        ] {
            assert!(!safe_user(bad), "{bad:?}");
        }
        assert_eq!(
            norm_dn("CN=Managers, OU=groups,dc=x"),
            "cn=managers,ou=groups,dc=x"
        );
    }
}
