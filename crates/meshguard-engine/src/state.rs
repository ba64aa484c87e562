//! The active policy generation, and reloading it without ever serving a half-applied set.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshguard_authn::{Authenticator, AuthnSettings};
use meshguard_policy::{MeshConfig, PolicySet};

pub use crate::error::LoadError;
use crate::metrics::Metrics;
use crate::source::PolicySource;
pub use meshguard_policy::workload::{check_namespace, parse_label_list, Workload, WorkloadError};

/// One compiled policy set and the authenticator built for it.
pub struct Generation {
    pub id: u64,
    /// SHA-256 of the documents the set was compiled from, in the order read (hex): equal on
    /// replicas that read the same objects, so a user can see that they converged.
    pub digest: String,
    /// The source's fingerprint taken just before it was read: a change notice whose
    /// fingerprint still equals this was already seen by this generation.
    pub source_fingerprint: u64,
    pub set: PolicySet,
    pub authn: Authenticator,
    /// Gloo AuthConfigs, compiled (Secrets resolved, Rego parsed).
    pub chains: meshguard_authn::extauth::Chains,
    /// meshConfig ext_authz providers (`envoyExtAuthzGrpc`/`envoyExtAuthzHttp`) that CUSTOM
    /// policies call.
    pub remote: crate::remote::Providers,
    pub loaded_at: SystemTime,
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
    /// Namespaces already warned about in this generation: traffic to a workload that no ALLOW
    /// policy selects, denied (or allowed) only by the default.
    pub(crate) unselected_warned: Mutex<std::collections::HashSet<String>>,
    /// The headers and claims the policies read: what the decision log records for replay.
    pub inputs: meshguard_policy::inputs::Inputs,
}

impl Generation {
    /// Namespaces that have at least one ALLOW AuthorizationPolicy (the root namespace's apply
    /// to every namespace).
    pub fn namespaces_with_allow(&self) -> std::collections::BTreeSet<String> {
        use meshguard_policy::{Action, Resource};
        self.set
            .resources()
            .iter()
            .filter_map(|r| match r {
                Resource::AuthorizationPolicy(p) if p.action == Action::Allow => {
                    Some(p.meta.namespace.clone())
                }
                _ => None,
            })
            .collect()
    }
}

/// Server-wide state shared by every listener.
pub struct State {
    current: ArcSwap<Generation>,
    pub source: Arc<dyn PolicySource>,
    pub mesh: MeshConfig,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    /// The error of the last refused reload (cleared by a successful one).
    pub last_error: Mutex<Option<String>>,
    reload_lock: tokio::sync::Mutex<()>,
    /// The reload in progress: when it started and why.
    running: Mutex<Option<(std::time::Instant, String)>>,
    /// After this long, a reload still running makes /readyz fail (milliseconds).
    stall_after_ms: std::sync::atomic::AtomicU64,
    /// Sees every decision line as the decision log would write it (the live service graph).
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
}

/// Something that watches decisions go by: given each decision's log line (the decision-log
/// schema, whether or not a log is written). Called on the deciding task; must be quick and
/// must not block.
pub trait Observer: Send + Sync {
    fn observe(&self, line: &serde_json::Value);
}

/// A reload running longer than this is reported as stuck (on /readyz and /metrics) until it ends.
pub const RELOAD_STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Loads and compiles a policy source; every problem is returned at once.
pub fn load(
    source: &dyn PolicySource,
    mesh: &MeshConfig,
    client: &reqwest::Client,
    id: u64,
    previous: Option<&Generation>,
) -> Result<Generation, LoadError> {
    let source_fingerprint = source.fingerprint();
    let loaded = source.read();
    if loaded.has_errors() {
        return Err(LoadError::Invalid(loaded.errors().cloned().collect()));
    }
    if source.must_have_files() && loaded.files.is_empty() {
        return Err(LoadError::NoFiles);
    }
    let warnings = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == meshguard_policy::Severity::Warning)
        .map(ToString::to_string)
        .collect();
    let files = loaded.files.clone();
    let digest = digest_of(&loaded.texts);
    let inputs = meshguard_policy::inputs::Inputs::of(&loaded.resources);
    let set = PolicySet::compile(loaded.resources, mesh.clone())?;
    let authn = Authenticator::after(
        &set,
        client.clone(),
        AuthnSettings::default(),
        previous.map(|p| &p.authn),
    );
    let chains = meshguard_authn::extauth::Chains::build(&set, client).map_err(|e| {
        LoadError::AuthConfig {
            file: e.file.clone(),
            message: e.to_string(),
        }
    })?;
    let remote = crate::remote::Providers::build(mesh);
    Ok(Generation {
        id,
        digest,
        source_fingerprint,
        set,
        authn,
        chains,
        remote,
        loaded_at: SystemTime::now(),
        files,
        warnings,
        unselected_warned: Mutex::new(Default::default()),
        inputs,
    })
}

/// The hex SHA-256 over the documents' lengths and bytes (names are left out, so the same
/// policies under another directory give the same digest).
fn digest_of(texts: &[String]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for t in texts {
        ctx.update(&(t.len() as u64).to_be_bytes());
        ctx.update(t.as_bytes());
    }
    crate::bundle::hex(ctx.finish().as_ref())
}

impl State {
    pub fn new(
        source: impl PolicySource + 'static,
        mesh: MeshConfig,
        client: reqwest::Client,
    ) -> Result<Arc<State>, LoadError> {
        let source: Arc<dyn PolicySource> = Arc::new(source);
        let first = load(source.as_ref(), &mesh, &client, 1, None)?;
        let metrics = Metrics::new();
        metrics.generation.store(1, Ordering::Relaxed);
        Ok(Arc::new(State {
            current: ArcSwap::from_pointee(first),
            source,
            mesh,
            client,
            metrics,
            last_error: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            running: Mutex::new(None),
            stall_after_ms: std::sync::atomic::AtomicU64::new(RELOAD_STALL_AFTER.as_millis() as u64),
            observer: std::sync::OnceLock::new(),
        }))
    }

    /// Sets the one observer of this state's decisions; `false` when one is already set.
    pub fn set_observer(&self, o: Arc<dyn Observer>) -> bool {
        self.observer.set(o).is_ok()
    }

    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.get()
    }

    /// The active generation: one lock-free load per request.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Loads, validates and compiles the source again, then swaps it in atomically. A set that
    /// fails is refused: the error is kept for /readyz and metrics, and the previous set stays.
    pub async fn reload(&self, why: &str) -> Result<u64, LoadError> {
        let _guard = self.reload_lock.lock().await;
        if let Ok(mut r) = self.running.lock() {
            *r = Some((std::time::Instant::now(), why.to_owned()));
        }
        let result = self.reload_locked(why).await;
        if let Ok(mut r) = self.running.lock() {
            *r = None;
        }
        result
    }

    /// Sets how long a reload may run before /readyz reports it as stuck.
    pub fn set_reload_stall_after(&self, d: std::time::Duration) {
        self.stall_after_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// The reload in progress, if any: for how long it has run and its trigger.
    pub fn reload_running(&self) -> Option<(std::time::Duration, String)> {
        let r = self.running.lock().ok()?;
        r.as_ref().map(|(t, why)| (t.elapsed(), why.clone()))
    }

    /// The reload in progress when it has run past the stall bound.
    pub fn reload_stalled(&self) -> Option<(std::time::Duration, String)> {
        let bound = std::time::Duration::from_millis(self.stall_after_ms.load(Ordering::Relaxed));
        self.reload_running().filter(|(d, _)| *d >= bound)
    }

    async fn reload_locked(&self, why: &str) -> Result<u64, LoadError> {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics.last_reload_at.store(now, Ordering::Relaxed);
        let next_id = self.current().id + 1;
        let (source, mesh, client) = (self.source.clone(), self.mesh.clone(), self.client.clone());
        let previous = self.current();
        let previous_set = previous.clone();
        let result = tokio::task::spawn_blocking(move || {
            load(source.as_ref(), &mesh, &client, next_id, Some(&previous))
        })
        .await
        .map_err(|e| LoadError::Task(e.to_string()))
        .and_then(|r| r);
        match result {
            Ok(g) => {
                // Fetch remote keys before the new set serves, so the first tokens do not wait.
                for e in g.authn.prefetch().await {
                    tracing::warn!(error = %e, "JWKS not available yet; tokens for that issuer are refused until a fetch succeeds");
                }
                let id = g.id;
                let warnings = g.warnings.len();
                if g.namespaces_with_allow().is_empty() {
                    tracing::warn!(generation = id, "the new policy set has no ALLOW AuthorizationPolicy: under default deny every request is denied");
                }
                self.current.store(Arc::new(g));
                self.metrics.reload_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics.generation.store(id, Ordering::Relaxed);
                self.metrics.last_reload_ok.store(1, Ordering::Relaxed);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                let c = meshguard_policy::resource::Changes::between(
                    previous_set.set.resources(),
                    self.current().set.resources(),
                );
                drop(previous_set);
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                tracing::info!(
                    generation = id,
                    warnings,
                    trigger = why,
                    added = %list(&c.added),
                    removed = %list(&c.removed),
                    modified = %list(&c.modified),
                    "policies reloaded{}",
                    if c.is_empty() { " (no resource changed)" } else { "" }
                );
                Ok(id)
            }
            Err(e) => {
                self.source.refused(&e);
                self.metrics.reload_failed.fetch_add(1, Ordering::Relaxed);
                self.metrics.last_reload_ok.store(0, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                tracing::error!(trigger = why, error = %e, "policy reload refused; the previous policy set stays active");
                Err(e)
            }
        }
    }

    /// Changes when the source's content may have changed (polled by [`crate::watch_policies`]).
    pub fn fingerprint(&self) -> u64 {
        self.source.fingerprint()
    }
}
