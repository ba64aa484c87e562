//! The SPIFFE Workload API over a Unix socket (standards/SPIFFE_Workload_API.md and
//! SPIFFE_Workload_Endpoint.md): callers are identified by the kernel (SO_PEERCRED), matched
//! against registration entries, and get their X.509-SVIDs on a stream that pushes rotations.
//!
//! Both SVID profiles are served: X.509-SVIDs (pushed again at every rotation) and JWT-SVIDs
//! signed by the CA directory's JWT authority (`jwt.key`). The WIT-SVID profile answers
//! `Unimplemented`, as the standard requires of servers that do not support it.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::ca::{Ca, KeyType, Svid};
use crate::jwt::{self, JwtSvidError};
use crate::spiffe_id::SpiffeId;

/// Generated from proto/workload.proto (the standard's proto has no package).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("_");
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// Why a registration entry selector does not parse.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("`{0}`: uid must be a number")]
    BadUid(String),
    #[error("`{0}`: gid must be a number")]
    BadGid(String),
    #[error("`{selector}`: reading /etc/passwd: {error}")]
    Passwd {
        selector: String,
        error: std::io::Error,
    },
    #[error("`{0}`: no such user")]
    NoSuchUser(String),
    #[error("`{0}`: selectors are unix:uid:<n>, unix:gid:<n>, unix:user:<name> or k8s:ns|sa|pod-name|pod-uid|node-name:<value>, k8s:pod-label:<key>:<value>")]
    Syntax(String),
}

/// A caller's kernel credentials: uid, gid and (when the kernel says) pid.
type Cred = (u32, u32, Option<i32>);

/// Why the agent refuses its registration entries or SVID lifetime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("entry {entry} is not in the CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        entry: SpiffeId,
        trust_domain: String,
    },
    #[error("the SVID lifetime ({} ms) is under one second", .0.as_millis())]
    TtlTooShort(Duration),
}

/// Who may receive an identity: every selector must match the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Uid(u32),
    Gid(u32),
    /// A selector a workload attestor reports for the caller's process, such as `k8s:ns:shop`,
    /// `k8s:sa:web` or `k8s:pod-label:app:web` (the Kubernetes attestor, SPIRE's names).
    Workload(String),
}

/// The Kubernetes selector kinds (`k8s:<kind>:<value>`), as SPIRE's k8s workload attestor names
/// them.
pub const K8S_SELECTORS: &[&str] = &["ns", "sa", "pod-name", "pod-uid", "node-name", "pod-label"];

/// Tells who a calling process is beyond its uid and gid (its Kubernetes pod, say). Called for
/// every attestation; must not block (an implementation keeps what it needs in memory).
pub trait WorkloadAttestor: Send + Sync {
    /// The selectors that hold for process `pid` (`k8s:ns:shop`, ...); empty when it is not a
    /// workload this attestor knows.
    fn selectors(&self, pid: i32) -> Vec<String>;
}

impl Selector {
    /// Parses `unix:uid:1000`, `unix:gid:1000` or `unix:user:name` (resolved via /etc/passwd).
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("unix"), Some("uid"), Some(v)) => v
                .parse()
                .map(Selector::Uid)
                .map_err(|_| SelectorError::BadUid(s.to_owned())),
            (Some("unix"), Some("gid"), Some(v)) => v
                .parse()
                .map(Selector::Gid)
                .map_err(|_| SelectorError::BadGid(s.to_owned())),
            (Some("k8s"), Some(kind), Some(v))
                if K8S_SELECTORS.contains(&kind) && !v.is_empty() =>
            {
                if kind == "pod-label" && !v.contains(':') {
                    return Err(SelectorError::Syntax(s.to_owned()));
                }
                Ok(Selector::Workload(s.to_owned()))
            }
            (Some("unix"), Some("user"), Some(name)) => {
                let passwd = std::fs::read_to_string("/etc/passwd").map_err(|error| {
                    SelectorError::Passwd {
                        selector: s.to_owned(),
                        error,
                    }
                })?;
                passwd
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.first() == Some(&name))
                            .then(|| f.get(2).and_then(|u| u.parse().ok()))
                            .flatten()
                    })
                    .map(Selector::Uid)
                    .ok_or_else(|| SelectorError::NoSuchUser(s.to_owned()))
            }
            _ => Err(SelectorError::Syntax(s.to_owned())),
        }
    }

    fn matches(&self, uid: u32, gid: u32, workload: &[String]) -> bool {
        match self {
            Selector::Uid(u) => *u == uid,
            Selector::Gid(g) => *g == gid,
            Selector::Workload(w) => workload.contains(w),
        }
    }
}

/// A registration entry: callers matching every selector get `spiffe_id`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
}

struct Inner {
    ca: Ca,
    entries: RwLock<Vec<Entry>>,
    ttl: Duration,
    jwt_ttl: RwLock<Duration>,
    svids: Mutex<HashMap<SpiffeId, Svid>>,
    /// Bumped on every rotation; streams resend the full state when it changes.
    rotation: watch::Sender<u64>,
    /// Who the calling process is beyond uid/gid (a Kubernetes pod), when configured.
    attestor: RwLock<Option<Arc<dyn WorkloadAttestor>>>,
    /// Give each pod the Istio identity `spiffe://<td>/ns/<ns>/sa/<sa>` of its service account,
    /// with no entry needed.
    service_account_ids: std::sync::atomic::AtomicBool,
}

/// The Workload API service.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

const HEADER: &str = "workload.spiffe.io";

fn check_entries(ca: &Ca, entries: &[Entry]) -> Result<(), AgentError> {
    match entries
        .iter()
        .find(|e| e.spiffe_id.trust_domain() != ca.trust_domain)
    {
        Some(e) => Err(AgentError::ForeignTrustDomain {
            entry: e.spiffe_id.clone(),
            trust_domain: ca.trust_domain.clone(),
        }),
        None => Ok(()),
    }
}

fn check_header<T>(r: &Request<T>) -> Result<(), Status> {
    match r.metadata().get(HEADER).and_then(|v| v.to_str().ok()) {
        Some("true") => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: workload.spiffe.io: true",
        )),
    }
}

impl Agent {
    /// An agent for `ca`. Entries outside the CA's trust domain or a lifetime under one second
    /// are refused.
    pub fn new(ca: Ca, entries: Vec<Entry>, ttl: Duration) -> Result<Agent, AgentError> {
        check_entries(&ca, &entries)?;
        if ttl < Duration::from_secs(1) {
            return Err(AgentError::TtlTooShort(ttl));
        }
        let (rotation, _) = watch::channel(0);
        Ok(Agent {
            inner: Arc::new(Inner {
                ca,
                entries: RwLock::new(entries),
                ttl,
                jwt_ttl: RwLock::new(jwt::DEFAULT_JWT_TTL),
                svids: Mutex::new(HashMap::new()),
                rotation,
                attestor: RwLock::new(None),
                service_account_ids: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Adds a workload attestor: entries may then use its selectors (`k8s:ns:shop`), and with
    /// `service_account_ids` every pod it knows gets `spiffe://<trust domain>/ns/<ns>/sa/<sa>`
    /// (Istio's identity for a Kubernetes service account) as its first SVID, with no entry.
    pub fn set_workload_attestor(&self, a: Arc<dyn WorkloadAttestor>, service_account_ids: bool) {
        if let Ok(mut cur) = self.inner.attestor.write() {
            *cur = Some(a);
        }
        self.inner
            .service_account_ids
            .store(service_account_ids, std::sync::atomic::Ordering::Relaxed);
        self.inner.rotation.send_modify(|g| *g += 1);
    }

    /// Sets the lifetime of JWT-SVIDs (default 5 minutes).
    pub fn set_jwt_ttl(&self, ttl: Duration) {
        if let Ok(mut t) = self.inner.jwt_ttl.write() {
            *t = ttl;
        }
    }

    /// Replaces the registration entries. Open streams re-attest their caller at once: they get
    /// the new set of SVIDs, or end with `PermissionDenied` when the caller lost every identity.
    /// Entries for another trust domain than the CA's are refused as a whole.
    pub fn set_entries(&self, entries: Vec<Entry>) -> Result<(), AgentError> {
        check_entries(&self.inner.ca, &entries)?;
        if let Ok(mut e) = self.inner.entries.write() {
            *e = entries;
        }
        if let Ok(mut m) = self.inner.svids.lock() {
            // Forget SVIDs of identities no entry names any more, so they stop being renewed.
            let live = self
                .inner
                .entries
                .read()
                .map(|e| e.iter().map(|x| x.spiffe_id.clone()).collect::<Vec<_>>());
            if let Ok(live) = live {
                m.retain(|id, _| live.contains(id));
            }
        }
        self.inner.rotation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The kernel credentials (uid, gid, pid) of the caller.
    fn caller<T>(r: &Request<T>) -> Result<Cred, Status> {
        r.extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| (c.uid(), c.gid(), c.pid()))
            .ok_or_else(|| {
                Status::permission_denied(
                    "no identity issued: the caller's credentials are unknown",
                )
            })
    }

    /// SPIFFE IDs a caller with these credentials is entitled to, in entry order (the first is
    /// the default SVID clients pick).
    fn ids_for(&self, (uid, gid, pid): Cred) -> Result<Vec<SpiffeId>, Status> {
        let entries = self
            .inner
            .entries
            .read()
            .map_err(|_| Status::internal("state poisoned"))?;
        let attestor = self.inner.attestor.read().ok().and_then(|a| a.clone());
        let workload: Vec<String> = match (attestor, pid) {
            (Some(a), Some(p)) => a.selectors(p),
            _ => Vec::new(),
        };
        let mut ids: Vec<SpiffeId> = Vec::new();
        if self
            .inner
            .service_account_ids
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let value = |kind: &str| {
                workload
                    .iter()
                    .find_map(|w| w.strip_prefix(&format!("k8s:{kind}:")))
            };
            if let (Some(ns), Some(sa)) = (value("ns"), value("sa")) {
                let id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.inner.ca.trust_domain);
                match SpiffeId::parse(&id) {
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        tracing::warn!(id = %id, error = %e, "a pod's service account makes no valid SPIFFE ID")
                    }
                }
            }
        }
        for e in entries.iter() {
            if !e.selectors.is_empty()
                && e.selectors.iter().all(|s| s.matches(uid, gid, &workload))
                && !ids.contains(&e.spiffe_id)
            {
                ids.push(e.spiffe_id.clone());
            }
        }
        if ids.is_empty() {
            // An operator needs to know who knocked: a missing entry, or a process that should
            // not be asking.
            tracing::warn!(
                uid,
                gid,
                pid = %pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                workload = %if workload.is_empty() { "-".to_owned() } else { workload.join(",") },
                "Workload API caller refused: no registration entry matches its uid/gid (or its workload selectors)"
            );
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(ids)
    }

    /// SPIFFE IDs the caller is entitled to, from its kernel credentials.
    fn attest<T>(&self, r: &Request<T>) -> Result<Vec<SpiffeId>, Status> {
        self.ids_for(Self::caller(r)?)
    }

    /// The current SVID for `id`, issuing one when there is none or it has reached half-life.
    fn svid(&self, id: &SpiffeId) -> Result<Svid, Status> {
        let mut map = self
            .inner
            .svids
            .lock()
            .map_err(|_| Status::internal("state poisoned"))?;
        let now = time::OffsetDateTime::now_utc();
        if let Some(s) = map.get(id) {
            if now < s.half_life() {
                return Ok(s.clone());
            }
        }
        let s = self
            .inner
            .ca
            .issue(id, self.inner.ttl, KeyType::EcdsaP256)
            .map_err(|e| Status::internal(e.to_string()))?;
        map.insert(id.clone(), s.clone());
        Ok(s)
    }

    fn x509_response(&self, ids: &[SpiffeId]) -> Result<pb::X509svidResponse, Status> {
        let bundle = self.inner.ca.bundle_der();
        let svids = ids
            .iter()
            .map(|id| {
                let s = self.svid(id)?;
                Ok(pb::X509svid {
                    spiffe_id: id.to_string(),
                    x509_svid: s.chain_der.concat(),
                    x509_svid_key: s.key_der.clone(),
                    bundle: bundle.clone(),
                    hint: String::new(),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(pb::X509svidResponse {
            svids,
            ..Default::default()
        })
    }

    fn bundles_response(&self) -> pb::X509BundlesResponse {
        let td = format!("spiffe://{}", self.inner.ca.trust_domain);
        pb::X509BundlesResponse {
            bundles: HashMap::from([(td, self.inner.ca.bundle_der())]),
            ..Default::default()
        }
    }

    /// Re-issues every SVID that reached half-life and notifies the open streams. Run it on a
    /// timer (see [`Agent::spawn_rotation`]).
    pub fn rotate_due(&self) -> usize {
        let ids: Vec<SpiffeId> = match self.inner.svids.lock() {
            Ok(m) => m.keys().cloned().collect(),
            Err(_) => return 0,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut rotated = 0;
        for id in ids {
            let due = self
                .inner
                .svids
                .lock()
                .ok()
                .and_then(|m| m.get(&id).map(|s| now >= s.half_life()))
                .unwrap_or(false);
            if due && self.svid(&id).is_ok() {
                rotated += 1;
            }
        }
        if rotated > 0 {
            self.inner.rotation.send_modify(|g| *g += 1);
        }
        rotated
    }

    /// Re-issues every SVID now (for example after the CA changed) and pushes them to every
    /// open stream. Returns how many were re-issued.
    pub fn rotate_all(&self) -> usize {
        let ids: Vec<SpiffeId> = match self.inner.svids.lock() {
            Ok(mut m) => m.drain().map(|(k, _)| k).collect(),
            Err(_) => return 0,
        };
        let n = ids.iter().filter(|id| self.svid(id).is_ok()).count();
        self.inner.rotation.send_modify(|g| *g += 1);
        n
    }

    fn jwt_bundle_response(&self) -> Result<pb::JwtBundlesResponse, Status> {
        let signer = self.inner.ca.jwt_signer().ok_or_else(no_jwt_authority)?;
        let td = format!("spiffe://{}", self.inner.ca.trust_domain);
        Ok(pb::JwtBundlesResponse {
            bundles: HashMap::from([(td, jwt::jwks(&[signer]))]),
        })
    }

    /// A bundle stream: the bundle now, then open until the client leaves (the bundle changes
    /// only with a new CA) or the caller loses every identity (PermissionDenied).
    fn bundle_stream<T: Send + 'static>(
        &self,
        caller: Cred,
        msg: T,
    ) -> Result<Response<Stream<T>>, Status> {
        let mut rot = self.inner.rotation.subscribe();
        rot.borrow_and_update();
        self.ids_for(caller)?;
        let (tx, rx) = mpsc::channel(1);
        let me = self.clone();
        tokio::spawn(async move {
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = rot.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                if let Err(e) = me.ids_for(caller) {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Checks for due rotations every `every` until the runtime stops.
    pub fn spawn_rotation(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                me.rotate_due();
            }
        })
    }

    pub fn service(&self) -> SpiffeWorkloadApiServer<Agent> {
        SpiffeWorkloadApiServer::new(self.clone())
    }

    /// Serves on a Unix socket until `shutdown` completes. The socket file is replaced if stale
    /// and made connectable by every local user (mode 0777, as SPIRE does): who gets an
    /// identity is decided by attestation, not by file permissions.
    pub async fn serve_uds(
        &self,
        path: &Path,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // Replace a stale socket, never another kind of file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                } else {
                    return Err(format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    )
                    .into());
                }
            }
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
        }
        // Clients that send the socket path as :authority (grpc C-core: py-spiffe) get through;
        // see uds_authority.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            |conn| conn.map(crate::uds_authority::AuthorityFix::new),
        );
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Agent {
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;
    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;
    type FetchWITSVIDStream = Stream<pb::WitsvidResponse>;
    type FetchWITBundlesStream = Stream<pb::WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        r: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&r)?;
        let caller = Self::caller(&r)?;
        // Subscribe before attesting: an entry change in between is then seen as a change,
        // never lost (a revoked identity must not stay on the stream).
        let mut rot = self.inner.rotation.subscribe();
        rot.borrow_and_update();
        let ids = self.ids_for(caller)?;
        let first = self.x509_response(&ids)?;
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            // Every later message carries the full state again, after each rotation or change
            // of registration entries; a caller that lost every identity gets PermissionDenied.
            loop {
                tokio::select! {
                    changed = rot.changed() => if changed.is_err() { return },
                    // The client went away: end the task now, not at the next rotation.
                    _ = tx.closed() => return,
                }
                let msg = me.ids_for(caller).and_then(|ids| me.x509_response(&ids));
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_x509_bundles(
        &self,
        r: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&r)?;
        let msg = self.bundles_response();
        self.bundle_stream(Self::caller(&r)?, msg)
    }

    async fn fetch_jwtsvid(
        &self,
        r: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&r)?;
        let ids = self.attest(&r)?;
        let req = r.get_ref();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "audience must name at least one non-empty audience",
            ));
        }
        let wanted: Vec<SpiffeId> = if req.spiffe_id.is_empty() {
            ids
        } else {
            let id = SpiffeId::parse_workload(&req.spiffe_id)
                .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
            if !ids.contains(&id) {
                // Never someone else's identity: the caller is not entitled to this one.
                return Err(Status::permission_denied("no identity issued"));
            }
            vec![id]
        };
        let signer = self.inner.ca.jwt_signer().ok_or_else(no_jwt_authority)?;
        let ttl = self
            .inner
            .jwt_ttl
            .read()
            .map(|t| *t)
            .unwrap_or(jwt::DEFAULT_JWT_TTL);
        let svids = wanted
            .into_iter()
            .map(|id| {
                let svid = signer
                    .sign(&id, &req.audience, ttl)
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(pb::Jwtsvid {
                    spiffe_id: id.to_string(),
                    svid,
                    hint: String::new(),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        r: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&r)?;
        let msg = self.jwt_bundle_response()?;
        self.bundle_stream(Self::caller(&r)?, msg)
    }

    async fn validate_jwtsvid(
        &self,
        r: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&r)?;
        self.attest(&r)?;
        let req = r.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be set"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be set"));
        }
        let signer = self.inner.ca.jwt_signer().ok_or_else(no_jwt_authority)?;
        let (id, claims) = signer
            .validate(&req.svid, &req.audience, &self.inner.ca.trust_domain)
            .map_err(|e: JwtSvidError| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: id.to_string(),
            claims: Some(prost_types::Struct {
                fields: claims
                    .into_iter()
                    .map(|(k, v)| (k, to_proto_value(v)))
                    .collect(),
            }),
        }))
    }

    async fn fetch_witsvid(
        &self,
        _r: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }

    async fn fetch_wit_bundles(
        &self,
        _r: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }
}

fn no_jwt_authority() -> Status {
    Status::unavailable(
        "this agent's CA directory has no JWT authority (jwt.key); create one with `meshguard ca jwt-key`",
    )
}

/// JSON to google.protobuf.Value, for ValidateJWTSVID's claims.
fn to_proto_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_proto_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, to_proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages reach users (`meshguard agent` errors) and must not change.
    #[test]
    fn error_messages() {
        let msg = |s: &str| Selector::parse(s).unwrap_err().to_string();
        assert_eq!(msg("unix:uid:x"), "`unix:uid:x`: uid must be a number");
        assert_eq!(msg("unix:gid:-1"), "`unix:gid:-1`: gid must be a number");
        assert_eq!(
            msg("k8s:namespace:default"),
            "`k8s:namespace:default`: selectors are unix:uid:<n>, unix:gid:<n>, unix:user:<name> or k8s:ns|sa|pod-name|pod-uid|node-name:<value>, k8s:pod-label:<key>:<value>"
        );
        assert!(Selector::parse("k8s:pod-label:app").is_err());
        assert_eq!(
            Selector::parse("k8s:ns:default").ok(),
            Some(Selector::Workload("k8s:ns:default".into()))
        );
        assert_eq!(
            Selector::parse("unix:uid:1000").ok(),
            Some(Selector::Uid(1000))
        );
        assert_eq!(
            AgentError::TtlTooShort(Duration::from_millis(500)).to_string(),
            "the SVID lifetime (500 ms) is under one second"
        );
        let entry = SpiffeId::parse_workload("spiffe://other.td/ns/x/sa/y").expect("id");
        assert_eq!(
            AgentError::ForeignTrustDomain {
                entry,
                trust_domain: "td".into(),
            }
            .to_string(),
            "entry spiffe://other.td/ns/x/sa/y is not in the CA's trust domain td"
        );
    }
}
