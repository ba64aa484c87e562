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
pub use state::{Generation, State, Workload};

/// Hot reload until `stop` flips: policy files polled every `interval` (a change must be stable
/// for one interval before it is compiled, so a half-written file is never served) and SIGHUP.
/// A refused set leaves the previous one active. Used by `serve` and by the mTLS proxy.
pub async fn watch_policies(st: Arc<State>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut last = st.fingerprint();
    let mut pending = None;
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
        tokio::select! {
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
