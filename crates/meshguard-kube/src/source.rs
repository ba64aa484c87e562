//! The watches and the document store behind [`KubeSource`].
//!
//! One watch per policy kind (per namespace in namespace-scoped mode), plus one per Secret or
//! ConfigMap that an AuthConfig names (a field selector on the name) or selects (a label
//! selector). Each watch keeps its own map of objects; a relist (the first list, or a new one
//! after `410 Gone` or an outage) replaces its map whole, so an object deleted while the watch
//! was down does not linger. kube-runtime's watcher resumes from the last resourceVersion, relists
//! on 410 and backs off on errors; while it retries, the documents already read stay, so the
//! engine keeps its last good set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use meshguard_engine::PolicySource;
use meshguard_policy::extauth::Reference;
use meshguard_policy::load::Loaded;
use meshguard_policy::Resource;
use tokio::sync::Notify;

use crate::kinds::Kind;
use crate::KubeError;

/// How meshguard reads the cluster.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// Only these namespaces (for teams without cluster-wide rights); empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Names this replica in the Events it writes (the pod name).
    pub instance: String,
}

/// An object as the engine reads it.
#[derive(Debug, Clone)]
struct Doc {
    /// `kubernetes/<Kind>/<namespace>/<name>`: the "file" diagnostics name.
    display: String,
    text: String,
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    uid: Option<String>,
    resource_version: Option<String>,
}

/// What one watch reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WatchSpec {
    /// The kind as the engine names it (`AuthorizationPolicy`, `Secret`).
    kind: String,
    api_version: String,
    plural: String,
    group: String,
    version: String,
    namespace: Option<String>,
    fields: Option<String>,
    labels: Option<String>,
}

impl WatchSpec {
    fn id(&self) -> String {
        let mut s = format!(
            "{} in {}",
            self.kind,
            self.namespace.as_deref().unwrap_or("all namespaces")
        );
        if let Some(f) = &self.fields {
            s.push_str(&format!(" ({f})"));
        }
        if let Some(l) = &self.labels {
            s.push_str(&format!(" (labels {l})"));
        }
        s
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    fn core(kind: &str, plural: &str, namespace: &str) -> WatchSpec {
        WatchSpec {
            kind: kind.to_owned(),
            api_version: "v1".to_owned(),
            plural: plural.to_owned(),
            group: String::new(),
            version: "v1".to_owned(),
            namespace: Some(namespace.to_owned()),
            fields: None,
            labels: None,
        }
    }
}

/// One watch's objects, by (namespace, name).
type Objects = BTreeMap<(String, String), Doc>;

struct Shared {
    client: Client,
    options: KubeOptions,
    /// Per watch (by id): its objects by (namespace, name).
    docs: Mutex<BTreeMap<String, Objects>>,
    /// Watches that have not finished their first list.
    pending: Mutex<BTreeSet<String>>,
    /// The Secret/ConfigMap watches running, by spec.
    reference_watches: Mutex<HashMap<WatchSpec, tokio::task::JoinHandle<()>>>,
    /// Last error per watch, logged once until it changes or clears.
    errors: Mutex<BTreeMap<String, String>>,
    version: AtomicU64,
    changed: Arc<Notify>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Events already written, by (object uid, resourceVersion, message): one per refusal.
    reported: Mutex<BTreeSet<(String, String, String)>>,
    server: String,
}

/// The Kubernetes API as a policy source. Cheap to clone.
#[derive(Clone)]
pub struct KubeSource {
    shared: Arc<Shared>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl KubeSource {
    /// Connects with the usual client configuration (`KUBECONFIG` or `kubeconfig`, else the
    /// pod's service account), discovers the served versions and starts every watch. Returns
    /// at once; [`KubeSource::wait_synced`] waits for the first full sync.
    pub async fn start(
        kubeconfig: Option<PathBuf>,
        options: KubeOptions,
    ) -> Result<KubeSource, KubeError> {
        let (client, server) = connect(kubeconfig).await?;
        Self::with_client(client, server, options).await
    }

    /// As [`KubeSource::start`], with a client already made.
    pub async fn with_client(
        client: Client,
        server: String,
        options: KubeOptions,
    ) -> Result<KubeSource, KubeError> {
        let kinds = crate::kinds::resolve(&client).await?;
        let (synced, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            client,
            options,
            docs: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeSet::new()),
            reference_watches: Mutex::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            version: AtomicU64::new(0),
            changed: Arc::new(Notify::new()),
            synced,
            reported: Mutex::new(BTreeSet::new()),
            server,
        });
        let namespaces: Vec<Option<String>> = if shared.options.namespaces.is_empty() {
            vec![None]
        } else {
            shared
                .options
                .namespaces
                .iter()
                .cloned()
                .map(Some)
                .collect()
        };
        let mut specs = Vec::new();
        for (k, ar) in &kinds {
            for ns in &namespaces {
                specs.push(policy_spec(k, ar, ns.clone()));
            }
        }
        if let Ok(mut p) = shared.pending.lock() {
            p.extend(specs.iter().map(WatchSpec::id));
        }
        let tasks = specs
            .into_iter()
            .map(|s| tokio::spawn(run_watch(shared.clone(), s)))
            .collect();
        Ok(KubeSource {
            shared,
            tasks: Arc::new(tasks),
        })
    }

    /// Waits until every watch has finished its first list (and the Secrets and ConfigMaps the
    /// AuthConfigs reference have been read), logging what is still awaited every `progress`.
    pub async fn wait_synced(&self, progress: std::time::Duration) {
        let mut rx = self.shared.synced.subscribe();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(progress) => {
                    let waiting = self.pending();
                    let errors: Vec<String> = self
                        .shared
                        .errors
                        .lock()
                        .map(|e| e.iter().map(|(k, v)| format!("{k}: {v}")).collect())
                        .unwrap_or_default();
                    tracing::info!(
                        waiting_for = %waiting.join("; "),
                        errors = %errors.join("; "),
                        "waiting for the first full read of the Kubernetes objects (not ready until then)"
                    );
                }
            }
        }
    }

    /// Whether the first full sync is done.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// The watches that have not finished their first list.
    pub fn pending(&self) -> Vec<String> {
        self.shared
            .pending
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Watches that are failing now, with their last error.
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.shared
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.iter() {
                t.abort();
            }
            if let Ok(mut w) = self.shared.reference_watches.lock() {
                for (_, t) in w.drain() {
                    t.abort();
                }
            }
        }
    }
}

/// A client from `kubeconfig`, else the usual inference (KUBECONFIG, ~/.kube/config, the pod's
/// service account), and the API server's URL.
pub async fn connect(kubeconfig: Option<PathBuf>) -> Result<(Client, String), KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    let server = config.cluster_url.to_string();
    Ok((Client::try_from(config)?, server))
}

fn policy_spec(k: &Kind, ar: &ApiResource, namespace: Option<String>) -> WatchSpec {
    WatchSpec {
        kind: k.kind.to_owned(),
        api_version: ar.api_version.clone(),
        plural: ar.plural.clone(),
        group: ar.group.clone(),
        version: ar.version.clone(),
        namespace,
        fields: None,
        labels: None,
    }
}

impl PolicySource for KubeSource {
    fn read(&self) -> Loaded {
        let mut l = Loaded::default();
        // Sorted by kind/namespace/name and without repeats (a Secret both named and selected
        // is read by two watches): every replica reads the same documents in the same order,
        // so equal objects give an equal digest.
        let mut all: BTreeMap<String, Doc> = BTreeMap::new();
        if let Ok(docs) = self.shared.docs.lock() {
            for d in docs.values().flat_map(|m| m.values()) {
                all.entry(d.display.clone()).or_insert_with(|| d.clone());
            }
        }
        for d in all.values() {
            l.files.push(PathBuf::from(&d.display));
            l.add_text(&d.text, &d.display);
        }
        l
    }

    fn fingerprint(&self) -> u64 {
        self.shared.version.load(Ordering::SeqCst)
    }

    fn must_have_files(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        let scope = if self.shared.options.namespaces.is_empty() {
            "all namespaces".to_owned()
        } else {
            format!("namespaces {}", self.shared.options.namespaces.join(", "))
        };
        format!("the Kubernetes API at {} ({scope})", self.shared.server)
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(self.shared.changed.clone())
    }

    fn refused(&self, error: &meshguard_engine::LoadError) {
        crate::events::report(self, error);
    }

    fn problems(&self) -> Vec<String> {
        self.errors()
            .into_iter()
            .map(|(watch, e)| format!("Kubernetes watch of {watch} failing: {e}"))
            .collect()
    }
}

impl KubeSource {
    /// The object behind a diagnostic's "file", if it came from this source.
    pub(crate) fn object_of(&self, display: &str) -> Option<ObjectInfo> {
        let docs = self.shared.docs.lock().ok()?;
        docs.values()
            .flat_map(|m| m.values())
            .find(|d| d.display == display)
            .map(|d| ObjectInfo {
                api_version: d.api_version.clone(),
                kind: d.kind.clone(),
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                uid: d.uid.clone(),
                resource_version: d.resource_version.clone(),
            })
    }

    pub(crate) fn client(&self) -> Client {
        self.shared.client.clone()
    }

    pub(crate) fn instance(&self) -> &str {
        &self.shared.options.instance
    }

    /// Whether an Event for this refusal still has to be written (and marks it written).
    pub(crate) fn first_report(&self, uid: &str, rv: &str, message: &str) -> bool {
        self.shared.reported.lock().is_ok_and(|mut r| {
            if r.len() > 10_000 {
                r.clear();
            }
            r.insert((uid.to_owned(), rv.to_owned(), message.to_owned()))
        })
    }
}

/// Identifies an object for an Event.
#[derive(Debug, Clone)]
pub(crate) struct ObjectInfo {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Shared {
    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
    }

    fn done_listing(&self, id: &str) {
        let empty = self.pending.lock().is_ok_and(|mut p| {
            p.remove(id);
            p.is_empty()
        });
        if empty && !*self.synced.borrow() {
            tracing::info!("first full read of the Kubernetes objects done");
            self.synced.send_replace(true);
        }
    }

    fn set_error(&self, id: &str, error: Option<String>) {
        let Ok(mut errors) = self.errors.lock() else {
            return;
        };
        match error {
            Some(e) => {
                if errors.get(id) != Some(&e) {
                    tracing::warn!(watch = %id, error = %e, "Kubernetes watch failing; retrying with backoff, the last good policy set keeps serving");
                    errors.insert(id.to_owned(), e);
                }
            }
            None => {
                if errors.remove(id).is_some() {
                    tracing::info!(watch = %id, "Kubernetes watch recovered");
                }
            }
        }
    }

    /// The Secret and ConfigMap watches the current AuthConfigs need.
    fn wanted_references(&self) -> BTreeSet<WatchSpec> {
        let mut l = Loaded::default();
        if let Ok(docs) = self.docs.lock() {
            for d in docs.values().flat_map(|m| m.values()) {
                if d.kind == "AuthConfig" || d.kind == "ExtAuthPolicy" {
                    l.add_text(&d.text, &d.display);
                }
            }
        }
        let allowed = |ns: &str| {
            self.options.namespaces.is_empty() || self.options.namespaces.iter().any(|n| n == ns)
        };
        let mut out = BTreeSet::new();
        for r in &l.resources {
            let ac = match r {
                Resource::AuthConfig(ac) => ac,
                Resource::ExtAuthPolicy(p) => match &p.action {
                    meshguard_policy::extauth::ExtAuthAction::Gloo(ac) => ac.as_ref(),
                    _ => continue,
                },
                _ => continue,
            };
            for reference in ac.references() {
                let spec = match reference {
                    Reference::Secret(o) => WatchSpec {
                        fields: Some(format!("metadata.name={}", o.name)),
                        ..WatchSpec::core("Secret", "secrets", &o.namespace)
                    },
                    Reference::ConfigMap(o) => WatchSpec {
                        fields: Some(format!("metadata.name={}", o.name)),
                        ..WatchSpec::core("ConfigMap", "configmaps", &o.namespace)
                    },
                    Reference::LabelledSecrets {
                        namespace,
                        selector,
                    } => WatchSpec {
                        labels: Some(
                            selector
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                        ..WatchSpec::core("Secret", "secrets", &namespace)
                    },
                };
                if spec.namespace.as_deref().is_some_and(allowed) {
                    out.insert(spec);
                } else {
                    tracing::warn!(
                        auth_config = %format!("{}/{}", ac.meta.namespace, ac.meta.name),
                        watch = %spec.id(),
                        "an AuthConfig references an object outside the watched namespaces; it is not read"
                    );
                }
            }
        }
        out
    }
}

/// Starts and stops the Secret/ConfigMap watches to match the AuthConfigs (called after every
/// AuthConfig change, before that watch reports itself listed, so the first sync includes them).
fn reconcile_references(shared: &Arc<Shared>) {
    let wanted = shared.wanted_references();
    let Ok(mut running) = shared.reference_watches.lock() else {
        return;
    };
    let stale: Vec<WatchSpec> = running
        .keys()
        .filter(|s| !wanted.contains(*s))
        .cloned()
        .collect();
    let mut changed = false;
    for s in stale {
        if let Some(t) = running.remove(&s) {
            t.abort();
        }
        let id = s.id();
        if let Ok(mut docs) = shared.docs.lock() {
            changed |= docs.remove(&id).is_some_and(|m| !m.is_empty());
        }
        if let Ok(mut p) = shared.pending.lock() {
            p.remove(&id);
        }
        shared.set_error(&id, None);
    }
    for s in wanted {
        if running.contains_key(&s) {
            continue;
        }
        if let Ok(mut p) = shared.pending.lock() {
            p.insert(s.id());
        }
        let task = tokio::spawn(run_watch(shared.clone(), s.clone()));
        running.insert(s, task);
    }
    drop(running);
    if changed {
        shared.bump();
    }
}

async fn run_watch(shared: Arc<Shared>, spec: WatchSpec) {
    let id = spec.id();
    let ar = spec.resource();
    let api: Api<DynamicObject> = match &spec.namespace {
        Some(ns) => Api::namespaced_with(shared.client.clone(), ns, &ar),
        None => Api::all_with(shared.client.clone(), &ar),
    };
    let mut config = watcher::Config::default();
    if let Some(f) = &spec.fields {
        config = config.fields(f);
    }
    if let Some(l) = &spec.labels {
        config = config.labels(l);
    }
    // The kinds whose objects name Secrets and ConfigMaps to read.
    let is_auth_config = spec.kind == "AuthConfig" || spec.kind == "ExtAuthPolicy";
    let mut stream = watcher(api, config).backoff(Retry::new(&id)).boxed();
    let mut listing: Option<Objects> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => {
                shared.set_error(&id, None);
                e
            }
            Err(e) => {
                shared.set_error(&id, Some(e.to_string()));
                continue;
            }
        };
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                if let (Some(m), Some(d)) = (listing.as_mut(), document(&spec, &o)) {
                    m.insert((d.namespace.clone(), d.name.clone()), d);
                }
            }
            Event::InitDone => {
                let fresh = listing.take().unwrap_or_default();
                let changed = shared.docs.lock().is_ok_and(|mut docs| {
                    let old = docs.insert(id.clone(), fresh.clone());
                    !same(old.as_ref(), &fresh)
                });
                if is_auth_config {
                    reconcile_references(&shared);
                }
                if changed {
                    shared.bump();
                }
                shared.done_listing(&id);
            }
            Event::Apply(o) => {
                let Some(d) = document(&spec, &o) else {
                    continue;
                };
                let changed = shared.docs.lock().is_ok_and(|mut docs| {
                    let m = docs.entry(id.clone()).or_default();
                    let key = (d.namespace.clone(), d.name.clone());
                    let differs = m.get(&key).is_none_or(|old| old.text != d.text);
                    m.insert(key, d);
                    differs
                });
                if is_auth_config {
                    reconcile_references(&shared);
                }
                if changed {
                    shared.bump();
                }
            }
            Event::Delete(o) => {
                let key = (
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default(),
                );
                let removed = shared.docs.lock().is_ok_and(|mut docs| {
                    docs.get_mut(&id).is_some_and(|m| m.remove(&key).is_some())
                });
                if is_auth_config {
                    reconcile_references(&shared);
                }
                if removed {
                    shared.bump();
                }
            }
        }
    }
}

/// How a failing watch retries: from 200 ms, doubling, at most 5 s apart, with jitter so that
/// replicas do not reconnect in step. (kube-runtime's default climbs to 30 s, which kept a
/// replica on its old set for 12 s after a short API server restart in the replica test.)
struct Retry {
    next: std::time::Duration,
    seed: u64,
}

impl Retry {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(200);
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);

    fn new(id: &str) -> Retry {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        std::process::id().hash(&mut h);
        std::time::SystemTime::now().hash(&mut h);
        Retry {
            next: Self::FIRST,
            seed: h.finish() | 1,
        }
    }
}

impl Iterator for Retry {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<std::time::Duration> {
        // xorshift64: cheap, and good enough to spread replicas' retries.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(d.mul_f64(0.75 + (self.seed % 1000) as f64 / 4000.0))
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

fn same(old: Option<&Objects>, new: &Objects) -> bool {
    old.is_some_and(|o| {
        o.len() == new.len()
            && o.iter()
                .zip(new.iter())
                .all(|(a, b)| a.0 == b.0 && a.1.text == b.1.text)
    })
}

/// Annotations the API server or kubectl add that say nothing about policy.
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// The object as a policy document: apiVersion, kind, the metadata policies read (name,
/// namespace, labels, annotations) and the rest of the body (spec, data, type); server-set
/// fields (uid, resourceVersion, managedFields, status) are left out, so the document, and the
/// generation's digest, depend only on what the user wrote.
fn document(spec: &WatchSpec, o: &DynamicObject) -> Option<Doc> {
    let name = o.metadata.name.clone()?;
    let namespace = o.metadata.namespace.clone().unwrap_or_default();
    let mut meta = serde_json::Map::new();
    meta.insert("name".into(), name.clone().into());
    meta.insert("namespace".into(), namespace.clone().into());
    if let Some(l) = o.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta.insert("labels".into(), serde_json::to_value(l).ok()?);
    }
    if let Some(a) = &o.metadata.annotations {
        let kept: BTreeMap<&String, &String> = a
            .iter()
            .filter(|(k, _)| !DROPPED_ANNOTATIONS.contains(&k.as_str()))
            .collect();
        if !kept.is_empty() {
            meta.insert("annotations".into(), serde_json::to_value(kept).ok()?);
        }
    }
    let mut body = serde_json::Map::new();
    body.insert("apiVersion".into(), spec.api_version.clone().into());
    body.insert("kind".into(), spec.kind.clone().into());
    body.insert("metadata".into(), meta.into());
    if let serde_json::Value::Object(rest) = &o.data {
        for (k, v) in rest {
            if k != "status" && k != "metadata" && k != "apiVersion" && k != "kind" {
                body.insert(k.clone(), v.clone());
            }
        }
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(body)).ok()?;
    Some(Doc {
        display: format!("kubernetes/{}/{namespace}/{name}", spec.kind),
        text,
        api_version: spec.api_version.clone(),
        kind: spec.kind.clone(),
        namespace,
        name,
        uid: o.metadata.uid.clone(),
        resource_version: o.metadata.resource_version.clone(),
    })
}
