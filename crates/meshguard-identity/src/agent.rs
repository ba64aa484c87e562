//! The SPIFFE Workload API over a Unix socket (standards/SPIFFE_Workload_API.md and
//! SPIFFE_Workload_Endpoint.md): callers are identified by the kernel (SO_PEERCRED), matched
//! against registration entries, and get their X.509-SVIDs on a stream that pushes rotations.
//!
//! Status: X.509 profile served; the JWT-SVID methods answer `Unimplemented` until they are built.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::ca::{Ca, KeyType, Svid};
use crate::spiffe_id::SpiffeId;

/// Generated from proto/workload.proto (the standard's proto has no package).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("_");
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// Who may receive an identity: every selector must match the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Uid(u32),
    Gid(u32),
}

impl Selector {
    /// Parses `unix:uid:1000`, `unix:gid:1000` or `unix:user:name` (resolved via /etc/passwd).
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("unix"), Some("uid"), Some(v)) => v
                .parse()
                .map(Selector::Uid)
                .map_err(|_| format!("`{s}`: uid must be a number")),
            (Some("unix"), Some("gid"), Some(v)) => v
                .parse()
                .map(Selector::Gid)
                .map_err(|_| format!("`{s}`: gid must be a number")),
            (Some("unix"), Some("user"), Some(name)) => {
                let passwd = std::fs::read_to_string("/etc/passwd")
                    .map_err(|e| format!("`{s}`: reading /etc/passwd: {e}"))?;
                passwd
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.first() == Some(&name))
                            .then(|| f.get(2).and_then(|u| u.parse().ok()))
                            .flatten()
                    })
                    .map(Selector::Uid)
                    .ok_or_else(|| format!("`{s}`: no such user"))
            }
            _ => Err(format!(
                "`{s}`: selectors are unix:uid:<n>, unix:gid:<n> or unix:user:<name>"
            )),
        }
    }

    fn matches(&self, uid: u32, gid: u32) -> bool {
        match self {
            Selector::Uid(u) => *u == uid,
            Selector::Gid(g) => *g == gid,
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
    entries: Vec<Entry>,
    ttl: Duration,
    svids: Mutex<HashMap<SpiffeId, Svid>>,
    /// Bumped on every rotation; streams resend the full state when it changes.
    rotation: watch::Sender<u64>,
}

/// The Workload API service.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

const HEADER: &str = "workload.spiffe.io";

fn check_header<T>(r: &Request<T>) -> Result<(), Status> {
    match r.metadata().get(HEADER).and_then(|v| v.to_str().ok()) {
        Some("true") => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: workload.spiffe.io: true",
        )),
    }
}

impl Agent {
    pub fn new(ca: Ca, entries: Vec<Entry>, ttl: Duration) -> Agent {
        let (rotation, _) = watch::channel(0);
        Agent {
            inner: Arc::new(Inner {
                ca,
                entries,
                ttl,
                svids: Mutex::new(HashMap::new()),
                rotation,
            }),
        }
    }

    /// SPIFFE IDs the caller is entitled to, from its kernel credentials.
    fn attest<T>(&self, r: &Request<T>) -> Result<Vec<SpiffeId>, Status> {
        let cred = r
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| {
                Status::permission_denied(
                    "no identity issued: the caller's credentials are unknown",
                )
            })?;
        let ids: Vec<SpiffeId> = self
            .inner
            .entries
            .iter()
            .filter(|e| {
                !e.selectors.is_empty()
                    && e.selectors
                        .iter()
                        .all(|s| s.matches(cred.uid(), cred.gid()))
            })
            .map(|e| e.spiffe_id.clone())
            .collect();
        if ids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(ids)
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

    /// Serves on a Unix socket until `shutdown` completes. The socket file is replaced if stale.
    pub async fn serve_uds(
        &self,
        path: &Path,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
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
        let ids = self.attest(&r)?;
        let first = self.x509_response(&ids)?;
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        let mut rot = self.inner.rotation.subscribe();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            // Every later message carries the full state again, after each rotation.
            while rot.changed().await.is_ok() {
                let msg = me.x509_response(&ids);
                if tx.send(msg).await.is_err() {
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
        self.attest(&r)?;
        let (tx, rx) = mpsc::channel(1);
        let msg = self.bundles_response();
        tokio::spawn(async move {
            let _ = tx.send(Ok(msg)).await;
            // The bundle only changes with a new CA; keep the stream open until the client leaves.
            tx.closed().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_jwtsvid(
        &self,
        r: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&r)?;
        Err(Status::unimplemented("JWT-SVIDs are not served yet"))
    }

    async fn fetch_jwt_bundles(
        &self,
        r: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&r)?;
        Err(Status::unimplemented("JWT-SVIDs are not served yet"))
    }

    async fn validate_jwtsvid(
        &self,
        r: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&r)?;
        Err(Status::unimplemented("JWT-SVIDs are not served yet"))
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
