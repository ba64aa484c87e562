//! `meshguard proxy`: an mTLS sidecar that enforces PeerAuthentication and AuthorizationPolicy
//! in the data path, with the policy engine in-process.
//!
//! Inbound, in front of a local app: the effective PeerAuthentication mode of the port decides
//! whether TLS is required (STRICT), detected from the first byte (PERMISSIVE) or not used
//! (DISABLE). mTLS peers must present an X.509-SVID of our trust domain. TCP listeners decide
//! once per connection with the L4 view of the policies; HTTP listeners decide every request
//! (HTTP/1.1 and HTTP/2, request authentication included) and forward allowed ones with the
//! peer in `x-forwarded-client-cert`. Outbound: the local app connects in plaintext and the proxy
//! originates mTLS to the upstream proxy, which must present the expected SPIFFE ID.
//!
//! Default deny: a workload that no ALLOW policy selects is refused (Istio would allow it),
//! unless `default_deny` is turned off.
#![forbid(unsafe_code)]

mod config;
mod copy;
mod http;
mod inbound;
mod outbound;
pub mod source;
pub mod tls;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::TokioExecutor;
use meshguard_engine::dlog::DecisionLog;
use meshguard_engine::State;
use meshguard_engine::{Engine, Settings};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use config::{IdentitySource, Inbound, Outbound, Protocol, ProxyConfig, ProxyError, ProxyFile};
pub use copy::{splice, splice_idle};
use inbound::inbound_conn;
use outbound::outbound_conn;
pub use tls::{SvidMaterial, SvidStore};

/// Addresses actually bound (ports chosen by the OS when 0 was asked for), in config order.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

pub(crate) struct InCtx {
    pub(crate) state: Arc<State>,
    /// Decides with the proxy's default deny and decision timeout, and records.
    pub(crate) engine: Engine,
    pub(crate) store: Arc<SvidStore>,
    pub(crate) cfg: Arc<ProxyConfig>,
    pub(crate) listener: Inbound,
    pub(crate) tls: tokio_rustls::TlsAcceptor,
    pub(crate) client: AppClient,
    /// HTTP/2 without TLS (prior knowledge) to apps of `protocol: http2` listeners.
    pub(crate) client_h2: AppClient,
}

pub(crate) type AppClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    BoxBody<Bytes, hyper::Error>,
>;

/// Runs every listener until `shutdown` completes; policies reload as `serve`'s do.
pub async fn run(
    state: Arc<State>,
    store: Arc<SvidStore>,
    cfg: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), ProxyError> {
    let cfg = Arc::new(cfg);
    let log = DecisionLog::start_rotating(
        cfg.decision_log.clone(),
        state.clone(),
        cfg.decision_log_rotation,
    )
    .map_err(ProxyError::Log)?;
    for e in state.current().authn.prefetch().await {
        tracing::warn!(error = %e, "JWKS not available yet; tokens for that issuer are refused until a fetch succeeds");
    }
    let engine = Engine::new(
        state.clone(),
        log.clone(),
        Settings {
            default_deny: cfg.default_deny,
            timeout: Some(cfg.decision_timeout),
            audit: if cfg.audit {
                vec![cfg.workload.clone()]
            } else {
                Vec::new()
            },
        },
    );
    let server_tls = tokio_rustls::TlsAcceptor::from(store.server_config()?);
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector.clone());
    let client_h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(30))
        .build(connector);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = Bound::default();
    for l in &cfg.inbound {
        let listener = bind(l.listen).await?;
        bound
            .inbound
            .push(listener.local_addr().unwrap_or(l.listen));
        let ctx = Arc::new(InCtx {
            state: state.clone(),
            engine: engine.clone(),
            store: store.clone(),
            cfg: cfg.clone(),
            listener: l.clone(),
            tls: server_tls.clone(),
            client: client.clone(),
            client_h2: client_h2.clone(),
        });
        tasks.spawn(accept_loop(
            listener,
            stop_rx.clone(),
            cfg.max_connections,
            (state.clone(), Direction::Inbound),
            move |s, peer| inbound_conn(ctx.clone(), s, peer),
        ));
    }
    for o in &cfg.outbound {
        let listener = bind(o.listen).await?;
        bound
            .outbound
            .push(listener.local_addr().unwrap_or(o.listen));
        let connector = tokio_rustls::TlsConnector::from(store.client_config(o.spiffe_id.clone())?);
        let (o, timeout, idle) = (Arc::new(o.clone()), cfg.connect_timeout, cfg.idle_timeout);
        let st = state.clone();
        tasks.spawn(accept_loop(
            listener,
            stop_rx.clone(),
            cfg.max_connections,
            (state.clone(), Direction::Outbound),
            move |s, _peer| {
                outbound_conn(st.clone(), o.clone(), connector.clone(), timeout, idle, s)
            },
        ));
    }
    // The SVID's expiry on /metrics, kept current across rotations.
    let (st, svids) = (state.clone(), store.clone());
    let mut rotations = store.subscribe();
    let mut stop_expiry = stop_rx.clone();
    tasks.spawn(async move {
        loop {
            st.metrics
                .proxy
                .svid_expiry
                .store(svids.expires_at(), Ordering::Relaxed);
            tokio::select! {
                changed = rotations.changed() => if changed.is_err() { return },
                _ = stop_expiry.changed() => return,
            }
        }
    });
    tasks.spawn(meshguard_engine::watch_policies(
        state.clone(),
        cfg.reload_interval,
        stop_rx.clone(),
    ));
    on_ready(&bound);
    shutdown.await;
    tracing::info!("proxy shutting down: no new connections");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Which way a listener's connections go, for the connection counters.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    max: usize,
    (state, direction): (Arc<State>, Direction),
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Shed load: closing at once is cheaper than queueing handshakes.
                        tracing::warn!(%peer, max, "connection limit reached; closing");
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let m = &state.metrics.proxy;
                    match direction {
                        Direction::Inbound => &m.inbound_connections,
                        Direction::Outbound => &m.outbound_connections,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    m.open_connections.fetch_add(1, Ordering::Relaxed);
                    let conn = handle(s, peer);
                    let st = state.clone();
                    tokio::spawn(async move {
                        conn.await;
                        st.metrics.proxy.open_connections.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}
