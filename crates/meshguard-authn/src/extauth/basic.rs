//! Gloo `basicAuth`: users with salted apr1 (Apache MD5 crypt) or SHA-1 hashes, and (a meshguard
//! extension) htpasswd lines from a Secret with `$apr1$` or bcrypt hashes. A missing or wrong
//! credential is 401 with `WWW-Authenticate: Basic realm="..."`.

use std::collections::BTreeMap;

use base64::Engine as _;
use md5::{Digest, Md5};
use meshguard_policy::extauth::{BasicAuth, PasswordEncryption};
use meshguard_policy::PolicySet;

use super::{BuildError, StepInput, StepOutcome};

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn to64(out: &mut String, mut v: u32, n: usize) {
    for _ in 0..n {
        out.push(ITOA64[(v & 0x3f) as usize] as char);
        v >>= 6;
    }
}

/// The 22-character hash part of `$apr1$<salt>$<hash>` (Apache's MD5 crypt; salt up to 8
/// characters).
pub fn apr1(password: &[u8], salt: &str) -> String {
    let salt = &salt.as_bytes()[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(b"$apr1$");
    ctx.update(salt);
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(password);
        }
        if i & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    let f = |i: usize| u32::from(fin[i]);
    let mut out = String::with_capacity(22);
    to64(&mut out, (f(0) << 16) | (f(6) << 8) | f(12), 4);
    to64(&mut out, (f(1) << 16) | (f(7) << 8) | f(13), 4);
    to64(&mut out, (f(2) << 16) | (f(8) << 8) | f(14), 4);
    to64(&mut out, (f(3) << 16) | (f(9) << 8) | f(15), 4);
    to64(&mut out, (f(4) << 16) | (f(10) << 8) | f(5), 4);
    to64(&mut out, f(11), 2);
    out
}

/// Equal in constant time (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// A stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Apr1 {
        salt: String,
        hash: String,
    },
    /// Gloo sha1: lower-case hex SHA-1 of the password followed by the salt.
    Sha1 {
        salt: String,
        hash: String,
    },
    Bcrypt(String),
}

impl Stored {
    /// Parses an htpasswd hash field: `$apr1$salt$hash` or bcrypt (`$2a$`, `$2b$`, `$2y$`).
    pub fn from_htpasswd(field: &str) -> Option<Stored> {
        if let Some(rest) = field.strip_prefix("$apr1$") {
            let (salt, hash) = rest.split_once('$')?;
            return Some(Stored::Apr1 {
                salt: salt.to_owned(),
                hash: hash.to_owned(),
            });
        }
        if ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|p| field.starts_with(p))
        {
            return Some(Stored::Bcrypt(field.to_owned()));
        }
        None
    }

    pub fn verify(&self, password: &str) -> bool {
        match self {
            Stored::Apr1 { salt, hash } => {
                ct_eq(apr1(password.as_bytes(), salt).as_bytes(), hash.as_bytes())
            }
            Stored::Sha1 { salt, hash } => {
                let mut input = password.as_bytes().to_vec();
                input.extend_from_slice(salt.as_bytes());
                let d =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
                let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                ct_eq(hex.as_bytes(), hash.to_ascii_lowercase().as_bytes())
            }
            Stored::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

pub struct BasicStep {
    realm: String,
    users: BTreeMap<String, std::sync::Arc<Stored>>,
    /// SHA-256(user, password) of credentials verified recently: a repeat caller does not pay
    /// the hash again (bcrypt cost 10 is ~60 ms). Positive results only, bounded, 5 minutes.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
}

const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const VERIFIED_CAPACITY: usize = 10_000;

fn credential_digest(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&(user.len() as u64).to_be_bytes());
    ctx.update(user.as_bytes());
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl BasicStep {
    pub fn build(set: &PolicySet, b: &BasicAuth) -> Result<BasicStep, BuildError> {
        let mut users = BTreeMap::new();
        for (name, u) in &b.users {
            let stored = match b.encryption {
                PasswordEncryption::Apr => Stored::Apr1 {
                    salt: u.salt.clone(),
                    hash: u.hashed_password.clone(),
                },
                PasswordEncryption::Sha1 => Stored::Sha1 {
                    salt: u.salt.clone(),
                    hash: u.hashed_password.clone(),
                },
            };
            users.insert(name.clone(), std::sync::Arc::new(stored));
        }
        if let Some(r) = &b.htpasswd_secret {
            let s = super::secret(set, r, "htpasswdSecretRef")?;
            let text = ["htpasswd", ".htpasswd", "users"]
                .iter()
                .find_map(|k| s.data.get(*k))
                .ok_or_else(|| BuildError::SecretEntryMissing {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    entry: "htpasswd",
                })?;
            let text = String::from_utf8_lossy(text);
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) =
                    line.split_once(':')
                        .ok_or_else(|| BuildError::HtpasswdSyntax {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            line: i + 1,
                        })?;
                if let Some(cost) = hash.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
                    if hash.starts_with("$2") && cost > MAX_BCRYPT_COST {
                        return Err(BuildError::BcryptCost {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            line: i + 1,
                            cost,
                        });
                    }
                }
                let stored = Stored::from_htpasswd(hash).ok_or_else(|| BuildError::WeakHash {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    line: i + 1,
                })?;
                users.insert(user.to_owned(), std::sync::Arc::new(stored));
            }
        }
        Ok(BasicStep {
            realm: b.realm.clone(),
            users,
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let challenge = |why: &str| {
            let mut o = StepOutcome::deny(401, why.to_owned());
            o.response_headers.push((
                "www-authenticate".into(),
                format!("Basic realm=\"{}\"", self.realm.replace('"', "")),
            ));
            o
        };
        let Some((user, password)) = basic_credentials(input) else {
            return challenge("no Basic credentials");
        };
        let digest = credential_digest(&user, &password);
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(&digest).copied())
            .is_some_and(|t| t.elapsed() < VERIFIED_TTL);
        let ok = cached || {
            // Password hashing is CPU work (bcrypt: tens of milliseconds): off the async
            // workers. An unknown user costs an apr1 hash, so names are not probed by timing.
            let stored = self.users.get(&user).cloned().unwrap_or_else(|| {
                std::sync::Arc::new(Stored::Apr1 {
                    salt: "xxxxxxxx".into(),
                    hash: String::new(),
                })
            });
            let known = self.users.contains_key(&user);
            let pw = password.clone();
            let good = tokio::task::spawn_blocking(move || stored.verify(&pw))
                .await
                .unwrap_or(false);
            known && good
        };
        if !ok {
            return challenge(if self.users.contains_key(&user) {
                "wrong password"
            } else {
                "unknown user"
            });
        }
        if !cached {
            if let Ok(mut m) = self.verified.lock() {
                if m.len() >= VERIFIED_CAPACITY {
                    m.retain(|_, t| t.elapsed() < VERIFIED_TTL);
                    if m.len() >= VERIFIED_CAPACITY {
                        m.clear();
                    }
                }
                m.insert(digest, std::time::Instant::now());
            }
        }
        let mut o = StepOutcome::allow(format!("basic auth user {user}"));
        o.headers_to_add.push(("x-user-id".into(), user.clone()));
        input
            .state
            .insert("basic_user".into(), serde_json::Value::String(user));
        o
    }
}

/// Longest `Authorization` header read for Basic credentials.
pub const MAX_CREDENTIALS: usize = 2048;
/// Highest bcrypt cost accepted in htpasswd data (each step doubles the work per request).
pub const MAX_BCRYPT_COST: u32 = 12;

/// `Authorization: Basic base64(user:password)` (scheme case-insensitive).
pub fn basic_credentials(input: &StepInput<'_>) -> Option<(String, String)> {
    let h = input.header("authorization")?;
    // Bounded work per request: a megabyte "password" would cost seconds of MD5 rounds.
    if h.len() > MAX_CREDENTIALS {
        return None;
    }
    let (scheme, b64) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gloo_documentation_hashes() {
        // docs.solo.io basic auth guide: user `user`, password `password`.
        let apr = Stored::Apr1 {
            salt: "TYiryv0/".into(),
            hash: "8BvzLUO9IfGPGGsPnAgSu1".into(),
        };
        assert!(apr.verify("password"));
        assert!(!apr.verify("Password"));
        let sha = Stored::Sha1 {
            salt: "TYiryv0/".into(),
            hash: "010eb058a59f4ac5ba05639b0263cf91b4345fd6".into(),
        };
        assert!(sha.verify("password"));
        assert!(!sha.verify("passwor"));
    }
}
