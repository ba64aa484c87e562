//! Remote JWKS (`jwksUri`, or OIDC discovery from the issuer): fetched with a bounded time and
//! body size, cached, refreshed on an interval and on an unknown `kid` (rate-limited), and kept
//! when the endpoint fails, so an outage of the identity provider does not turn valid tokens away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::Mutex;

use crate::jwks::{JwksError, KeySet, MAX_JWKS_BYTES};

/// Why no keys are available for an issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// The last fetch failed (and no keys were fetched before).
    #[error("fetching JWKS for issuer {issuer}: {source}")]
    Fetch {
        issuer: String,
        #[source]
        source: FetchError,
    },
    #[error("no keys")]
    NoKeys,
}

/// Why one fetch of a key set failed. URLs are shown redacted ([`redact_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The request or the body read failed: reqwest's message without its copy of the URL.
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url}: body larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { url: String },
    /// The discovery document is not (strict) JSON.
    #[error("{url}: {reason}")]
    DiscoveryJson { url: String, reason: String },
    #[error("{url}: no jwks_uri in the discovery document")]
    NoJwksUri { url: String },
    #[error("{url}: {source}")]
    Jwks {
        url: String,
        #[source]
        source: JwksError,
    },
}

/// How fetches behave.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Refresh interval for keys that were fetched (Istio: 5 minutes).
    pub refresh: Duration,
    /// Minimum time between fetches triggered by an unknown `kid`.
    pub unknown_kid_min_interval: Duration,
    /// Minimum time between fetches after a failed fetch, when no keys are cached.
    pub retry_after_failure: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            refresh: Duration::from_secs(300),
            unknown_kid_min_interval: Duration::from_secs(30),
            retry_after_failure: Duration::from_secs(1),
        }
    }
}

/// Outcome counters, for metrics.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_error: Option<FetchError>,
}

/// One remote key set.
#[derive(Debug)]
pub struct RemoteJwks {
    /// `jwksUri`, or `None` to discover it from `issuer`.
    uri: Option<String>,
    issuer: String,
    timeout: Duration,
    client: reqwest::Client,
    settings: FetchSettings,
    keys: ArcSwapOption<KeySet>,
    /// Set while a background refresh runs (one at a time).
    refreshing: std::sync::atomic::AtomicBool,
    /// Milliseconds since `epoch` of the last successful fetch (0: never), for a lock-free
    /// staleness check on the cached-token path.
    last_ok_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
    /// Increases each time the key set changes (verified-token cache entries remember it).
    generation: std::sync::atomic::AtomicU64,
    state: Mutex<FetchState>,
    pub stats: FetchStats,
}

impl RemoteJwks {
    pub fn new(
        uri: Option<String>,
        issuer: String,
        timeout: Duration,
        client: reqwest::Client,
        settings: FetchSettings,
    ) -> RemoteJwks {
        RemoteJwks {
            uri,
            issuer,
            timeout,
            client,
            settings,
            keys: ArcSwapOption::empty(),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            last_ok_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            generation: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(FetchState {
                last_attempt: None,
                last_success: None,
                last_error: None,
            }),
            stats: FetchStats::default(),
        }
    }

    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The fetch timeout (the jwtRule's `timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True when the keys are due for a refresh (or were never fetched).
    pub fn is_stale(&self) -> bool {
        let last = self.last_ok_ms.load(std::sync::atomic::Ordering::Acquire);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        last == 0
            || now.saturating_sub(last)
                >= u64::try_from(self.settings.refresh.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The cached keys, fetching first if none were ever fetched, or refreshing if stale.
    /// Returns the last error when no keys are available.
    pub async fn keys(self: &Arc<Self>) -> Result<Arc<KeySet>, KeysError> {
        if let Some(k) = self.keys.load_full() {
            if self.is_stale()
                && !self
                    .refreshing
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                // Refresh in the background and keep serving the current keys meanwhile, so an
                // identity provider outage never stalls requests for tokens we can verify.
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    let _ = me.fetch_now(false).await;
                    me.refreshing
                        .store(false, std::sync::atomic::Ordering::Release);
                });
            }
            return Ok(k);
        }
        self.fetch_now(false).await?;
        self.keys.load_full().ok_or(KeysError::NoKeys)
    }

    /// Re-fetches because a token named a `kid` the cached set lacks (rate-limited).
    pub async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        let _ = self.fetch_now(true).await;
        self.keys.load_full()
    }

    async fn fetch_now(&self, for_kid: bool) -> Result<(), KeysError> {
        let mut st = self.state.lock().await;
        if let Some(t) = st.last_attempt {
            let min = if for_kid {
                self.settings.unknown_kid_min_interval
            } else if st.last_success.is_some() && st.last_error.is_none() {
                self.settings.refresh
            } else {
                self.settings.retry_after_failure
            };
            if t.elapsed() < min {
                return match &st.last_error {
                    Some(e) if self.keys.load().is_none() => Err(self.fetch_failed(e.clone())),
                    _ => Ok(()),
                };
            }
        }
        st.last_attempt = Some(Instant::now());
        let result = tokio::time::timeout(self.timeout, self.fetch_keys()).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        };
        // Rate limits count from the end of an attempt, so a slow endpoint is not hit again by
        // every caller that queued behind it.
        st.last_attempt = Some(Instant::now());
        match result {
            Ok(set) => {
                self.keys.store(Some(Arc::new(set)));
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                st.last_success = Some(Instant::now());
                st.last_error = None;
                let ms = u64::try_from(self.epoch.elapsed().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.last_ok_ms
                    .store(ms, std::sync::atomic::Ordering::Release);
                self.stats
                    .ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                st.last_error = Some(e.clone());
                self.stats
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(self.fetch_failed(e))
            }
        }
    }

    fn fetch_failed(&self, source: FetchError) -> KeysError {
        KeysError::Fetch {
            issuer: self.issuer.clone(),
            source,
        }
    }

    async fn fetch_keys(&self) -> Result<KeySet, FetchError> {
        let uri = match &self.uri {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let body = self.get_bounded(&uri).await?;
        KeySet::parse(&body, false).map_err(|source| FetchError::Jwks {
            url: redact_url(&uri),
            source,
        })
    }

    /// OpenID Connect discovery: `<issuer>/.well-known/openid-configuration` -> `jwks_uri`.
    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get_bounded(&url).await?;
        let shown = redact_url(&url);
        let v = crate::jose::parse_json_strict(&body).map_err(|e| FetchError::DiscoveryJson {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        v.get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or(FetchError::NoJwksUri { url: shown })
    }

    async fn get_bounded(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        // Errors name the URL without credentials (userinfo, query values), and reqwest's own
        // message without its copy of the URL.
        let shown = redact_url(url);
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| FetchError::Http {
                url: shown.clone(),
                reason: e.without_url().to_string(),
            })?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: shown,
                status: resp.status(),
            });
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge { url: shown });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| FetchError::Http {
            url: shown.clone(),
            reason: e.without_url().to_string(),
        })? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge { url: shown });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A URL fit for logs, metric labels and `/config`: userinfo (`user:password@`) and every query
/// value replaced by `<redacted>`, the fragment dropped. A JWKS URL may carry credentials
/// (`https://user:pass@idp/keys`, `?api_key=...`).
pub fn redact_url(url: &str) -> String {
    let url = url.split('#').next().unwrap_or(url);
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://<redacted>@{host}{path}"),
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) => format!("{k}=<redacted>"),
                None => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn credentials_never_shown() {
        assert_eq!(
            redact_url("https://user:s3cret@idp.test:8443/keys?api_key=abc&x=1#frag"),
            "https://<redacted>@idp.test:8443/keys?api_key=<redacted>&x=<redacted>"
        );
        assert_eq!(redact_url("https://idp.test/jwks"), "https://idp.test/jwks");
        assert_eq!(redact_url("http://a@b@idp/x"), "http://<redacted>@idp/x");
        assert!(!redact_url("https://idp/k?token=s3cret").contains("s3cret"));
    }
}
