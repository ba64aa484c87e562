//! meshguard's decision engine: the one pipeline every front end calls (`Engine::decide`, a
//! `Request` in and a `Decision` out: refusals before any filter, request authentication, the
//! bound AuthConfig chain, CUSTOM, DENY, ALLOW, default deny, header merging), the compiled
//! policy generation and its lock-free swap with hot reload (`state`, `source`,
//! `watch_policies`), the decision log (`dlog`) and metrics (`metrics`). It knows no wire format
//! and owns no listener: `meshguard-server` (ext_authz gRPC, HTTP forward-auth, admin),
//! `meshguard-proxy` (the mTLS sidecar) and `meshguard check` adapt to it.

#![forbid(unsafe_code)]

pub mod decide;
pub mod decision;
pub mod dlog;
mod engine;
mod error;
pub mod metrics;
pub mod remote;
pub mod source;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use decide::decide;
pub use decision::{Decision, DryRun};
pub use dlog::{DecisionLog, Sink};
pub use engine::{Engine, Settings};
pub use error::LoadError;
pub use meshguard_policy::workload::WorkloadError;
pub use source::{Embedded, Files, PolicySource};
pub mod bundle;
pub use state::{Generation, Observer, State, Workload};

/// How long a source that announced a change is given to finish a burst before reloading.
pub const SOURCE_SETTLE: Duration = Duration::from_millis(50);

/// Hot reload until `stop` flips: policy files polled every `interval` (a change must be stable
/// for one interval before it is compiled, so a half-written file is never served), SIGHUP, and
/// the source's own change notices (Kubernetes watches). A refused set leaves the previous one
/// active. Used by `serve` and by the mTLS proxy.
pub async fn watch_policies(st: Arc<State>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut last = st.fingerprint();
    let mut pending = None;
    let notifier = st.source.changed();
    let mut refused_at: Option<u64> = None;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let tick = async {
            if interval.is_zero() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(interval).await;
            }
        };
        #[cfg(unix)]
        let sighup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let notified = async {
            match &notifier {
                Some(n) => n.notified().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = notified => {
                // A burst of changes (kubectl apply of many objects) becomes one reload.
                tokio::time::sleep(SOURCE_SETTLE).await;
                last = st.fingerprint();
                pending = None;
                // A notice for a change the active set already holds (the first read) or that
                // a refused reload already tried is not a reason to compile again.
                let seen = st.current().source_fingerprint == last || refused_at == Some(last);
                if !seen {
                    refused_at = st
                        .reload("policy source changed")
                        .await
                        .is_err()
                        .then_some(last);
                }
            }
            _ = tick => {
                let now = st.fingerprint();
                if now == last {
                    pending = None;
                } else if pending.as_ref() == Some(&now) {
                    last = now;
                    pending = None;
                    let _ = st.reload("policy files changed").await;
                } else {
                    pending = Some(now);
                }
            }
            _ = sighup => {
                // logrotate's postrotate sends SIGHUP: the decision log file is reopened too.
                st.metrics.decision_log.reopen.store(true, std::sync::atomic::Ordering::Relaxed);
                last = st.fingerprint();
                let _ = st.reload("SIGHUP").await;
            }
            _ = stop.changed() => break,
        }
    }
}
