//! A bounded cache of verified tokens: a token seen again costs a hash lookup, not a signature
//! check. Entries expire at the token's `exp` at the latest, and are ignored once the issuer's key
//! set changes (a key removed by rotation must stop vouching for old tokens).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshguard_policy::JwtIdentity;

struct Entry {
    provider: usize,
    claims: Arc<JwtIdentity>,
    /// Unix seconds after which the entry is dead.
    expires: u64,
    generation: u64,
}

pub struct TokenCache {
    /// foldhash: tokens are long and hashing them with SipHash dominated a cache hit. Only
    /// verified tokens are inserted, so an attacker cannot fill the map with chosen keys.
    map: Mutex<HashMap<Box<str>, Entry, foldhash::fast::RandomState>>,
    capacity: usize,
    ttl: Duration,
}

impl TokenCache {
    pub fn new(capacity: usize, ttl: Duration) -> TokenCache {
        TokenCache {
            map: Mutex::new(HashMap::with_capacity_and_hasher(
                capacity.min(1024),
                foldhash::fast::RandomState::default(),
            )),
            capacity,
            ttl,
        }
    }

    /// A live entry for `token`, if its key set generation is unchanged.
    pub fn get(
        &self,
        token: &str,
        now: u64,
        generation: impl Fn(usize) -> u64,
    ) -> Option<(usize, Arc<JwtIdentity>)> {
        let map = self.map.lock().ok()?;
        let e = map.get(token)?;
        (e.expires > now && e.generation == generation(e.provider))
            .then(|| (e.provider, e.claims.clone()))
    }

    pub fn insert(
        &self,
        token: &str,
        provider: usize,
        claims: Arc<JwtIdentity>,
        exp: Option<u64>,
        generation: u64,
        now: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let ttl_end = now.saturating_add(self.ttl.as_secs());
        let expires = exp.map_or(ttl_end, |e| e.min(ttl_end));
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.capacity {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary tenth to make room.
                let drop: Vec<Box<str>> =
                    map.keys().take(self.capacity / 10 + 1).cloned().collect();
                for k in drop {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            token.into(),
            Entry {
                provider,
                claims,
                expires,
                generation,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_at_exp_and_on_key_rotation() {
        let c = TokenCache::new(10, Duration::from_secs(300));
        let claims = Arc::new(JwtIdentity::default());
        c.insert("t", 0, claims.clone(), Some(1_005), 7, 1_000);
        assert!(c.get("t", 1_004, |_| 7).is_some());
        assert!(c.get("t", 1_005, |_| 7).is_none(), "never past exp");
        assert!(c.get("t", 1_001, |_| 8).is_none(), "keys changed");
        c.insert("u", 0, claims.clone(), None, 7, 1_000);
        assert!(c.get("u", 1_299, |_| 7).is_some());
        assert!(c.get("u", 1_300, |_| 7).is_none(), "ttl bound without exp");
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(100, Duration::from_secs(300));
        for i in 0..1_000 {
            c.insert(
                &format!("t{i}"),
                0,
                Arc::new(JwtIdentity::default()),
                Some(10_000),
                0,
                1_000,
            );
        }
        assert!(c.len() <= 100);
    }
}
