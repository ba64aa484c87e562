//! `meshguard serve`: Envoy ext_authz v3 over gRPC, an HTTP mode for nginx `auth_request` and
//! forward-auth proxies, and admin endpoints, all deciding with the policy engine; hot reload
//! with atomic swaps; a JSON decision log.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod grpc;
pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use meshguard_engine::{
    dlog, watch_policies, Embedded, Engine, Files, PolicySource, Settings, State, Workload,
};

/// A decision log file is rotated past this size by default (256 MiB; three files kept).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Listener and behaviour settings for `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub workload: Option<Workload>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub http_path_prefix: String,
    /// Which headers describe the original request in HTTP mode.
    pub forward_auth: http::ForwardStyle,
    /// Believe `X-Forwarded-Client-Cert` from the trusted proxies (HTTP mode).
    pub trust_forwarded_client_cert: bool,
    pub decision_log: dlog::Sink,
    /// Size bound of a decision log file (rotated to `.1`, `.2`, ...).
    pub decision_log_rotation: dlog::Rotation,
    /// How often watched policy files are checked for changes (0: only on SIGHUP).
    pub reload_interval: Duration,
    pub max_grpc_message_bytes: usize,
    /// Longest time one request may take before it fails (and the caller denies).
    pub request_timeout: Duration,
    /// HTTP mode: AuthConfigs bound to hosts and path prefixes.
    pub auth_bindings: Vec<http::AuthBinding>,
    /// HTTP mode: route labels by host and path prefix (`--route-labels`).
    pub route_bindings: Vec<http::RouteBinding>,
    /// HTTP and admin listeners: how long a client may take to send a request's headers (also
    /// bounds an idle keep-alive connection waiting for its next request).
    pub header_read_timeout: Duration,
    /// HTTP and admin listeners: connections served at once; beyond it new ones are closed at
    /// once (a client holding sockets cannot exhaust file descriptors).
    pub max_connections: usize,
    /// Deny requests to workloads that no ALLOW policy selects (on by default; off gives Istio's
    /// allow-by-default).
    pub default_deny: bool,
    /// Workloads in audit mode: decided and logged, never denied.
    pub audit: Vec<Workload>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 9191))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 9192))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9193))),
            workload: None,
            trusted_proxies: vec![
                "127.0.0.1/32".parse().expect("literal CIDR"),
                "::1/128".parse().expect("literal CIDR"),
            ],
            http_path_prefix: String::new(),
            forward_auth: http::ForwardStyle::Nginx,
            trust_forwarded_client_cert: false,
            decision_log: dlog::Sink::Stdout,
            decision_log_rotation: dlog::Rotation {
                max_bytes: Some(DEFAULT_LOG_MAX_BYTES),
                keep: 3,
            },
            reload_interval: Duration::from_secs(2),
            // OPA-Envoy's default (its grpc max-recv-msg-size): Envoy sends bodies when
            // with_request_body is set, so 1 MiB refused ordinary uploads.
            max_grpc_message_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            auth_bindings: Vec::new(),
            route_bindings: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            default_deny: true,
            audit: Vec::new(),
        }
    }
}

/// The addresses actually bound (ports may have been 0).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the decision log: {0}")]
    Log(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the built-in gRPC reflection descriptors do not load: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The ext_authz v3 protos and everything they import, compiled by build.rs.
const EXT_AUTHZ_FDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_fds.bin"));

/// gRPC server reflection (v1 and the v1alpha that older clients ask for) listing the
/// Authorization and Health services, so `grpcurl` and friends can call Check by name.
fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(EXT_AUTHZ_FDS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, ServeError> {
    match addr {
        None => Ok(None),
        Some(a) => TcpListener::bind(a)
            .await
            .map(Some)
            .map_err(|source| ServeError::Bind { addr: a, source }),
    }
}

/// Serves the admin endpoints (`/metrics`, `/healthz`, `/readyz`, `/config`) on `listener`
/// until `stop` flips. Used by `serve` and by the mTLS proxy.
pub async fn serve_admin(listener: TcpListener, state: Arc<State>, stop: watch::Receiver<bool>) {
    let d = ServeConfig::default();
    let limits = Limits {
        header_read_timeout: d.header_read_timeout,
        max_connections: d.max_connections,
    };
    serve_admin_with(listener, state, stop, limits).await
}

async fn serve_admin_with(
    listener: TcpListener,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    limits: Limits,
) {
    // The live service graph observes every decision of this state, unless MESHGUARD_GRAPH=off.
    let graph = if std::env::var("MESHGUARD_GRAPH").as_deref() == Ok("off") {
        None
    } else {
        let g = Arc::new(meshguard_rollout::Graph::new());
        if state.set_observer(g.clone()) {
            Some(g)
        } else {
            tracing::warn!("another observer already watches these decisions; /graph is off");
            None
        }
    };
    serve_hyper(listener, stop, limits, move |req, _peer| {
        admin::handle(state.clone(), graph.clone(), req)
    })
    .await
}

/// Bounds for one hyper listener.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    max_connections: usize,
}

/// Serves hyper connections until `stop` flips, then lets open requests finish (bounded).
/// Hostile clients are bounded: headers must arrive within the header-read timeout (which also
/// closes idle keep-alive connections), at most `max_connections` are served at once (more are
/// closed on accept), HTTP/2 streams per connection are capped, and accept errors (EMFILE) back
/// off instead of spinning.
async fn serve_hyper<F, Fut>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    limits: Limits,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<
            Output = Result<
                hyper::Response<http_body_util::Full<bytes::Bytes>>,
                std::convert::Infallible,
            >,
        > + Send
        + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Bounded header block for HTTP/1 and HTTP/2.
    builder
        .http1()
        .max_buf_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(256)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    accept_bounded(listener, stop, limits, |conn, peer| {
        let h = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        async move {
            let Some(conn) = conn.first_byte().await else {
                return;
            };
            let svc = service_fn(move |req| h(req, peer));
            let c = builder
                .serve_connection(TokioIo::new(conn), svc)
                .into_owned();
            let _ = watcher.watch(c).await;
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// An accepted connection holding one of its listener's slots until it is dropped.
struct Slotted {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Slotted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Slotted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Slotted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A connection just accepted, not yet known to be talking.
struct Accepted {
    conn: Slotted,
    first_byte: Duration,
}

impl Accepted {
    /// The connection once its first byte has arrived; `None` (and closed) when none arrives
    /// within the header-read timeout or the client hangs up first.
    async fn first_byte(self) -> Option<Slotted> {
        let mut probe = [0u8; 1];
        match tokio::time::timeout(self.first_byte, self.conn.io.peek(&mut probe)).await {
            Ok(Ok(n)) if n > 0 => Some(self.conn),
            _ => None,
        }
    }
}

/// Accepts connections until `stop` flips and hands each to `serve`, bounding hostile clients:
/// at most `max_connections` at once (more are closed on accept), the first byte must arrive
/// within the header-read timeout (protocol detection, HTTP/2's preface included, has no timer
/// of its own), and accept errors (EMFILE) back off instead of spinning.
async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
    serve: F,
) where
    F: FnMut(Accepted, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut serve = serve;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => {
                        backoff = Duration::from_millis(10);
                        a
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed; pausing before the next accept");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = Accepted {
                    conn: Slotted { io: stream, _slot: slot },
                    first_byte: limits.header_read_timeout,
                };
                tokio::spawn(serve(conn, peer));
            }
            _ = stop.changed() => break,
        }
    }
}

/// The gRPC listener's connections, bounded as [`accept_bounded`] bounds HTTP ones.
fn bounded_incoming(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    limits: Limits,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Slotted>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept_bounded(
        listener,
        stop,
        limits,
        move |conn, _peer| {
            let tx = tx.clone();
            async move {
                if let Some(conn) = conn.first_byte().await {
                    let _ = tx.send(Ok(conn)).await;
                }
            }
        },
    ));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Runs every listener until `shutdown` completes. `on_ready` is called once all are bound.
pub async fn serve(
    state: Arc<State>,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), ServeError> {
    let log = dlog::DecisionLog::start_rotating(
        cfg.decision_log.clone(),
        state.clone(),
        cfg.decision_log_rotation,
    )
    .map_err(ServeError::Log)?;
    for e in state.current().authn.prefetch().await {
        tracing::warn!(error = %e, "JWKS not available yet; tokens for that issuer are refused until a fetch succeeds");
    }
    let grpc_l = bind(cfg.grpc).await?;
    let http_l = bind(cfg.http).await?;
    let admin_l = bind(cfg.admin).await?;
    let bound = Bound {
        grpc: grpc_l.as_ref().and_then(|l| l.local_addr().ok()),
        http: http_l.as_ref().and_then(|l| l.local_addr().ok()),
        admin: admin_l.as_ref().and_then(|l| l.local_addr().ok()),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let limits = Limits {
        header_read_timeout: cfg.header_read_timeout,
        max_connections: cfg.max_connections,
    };

    if let Some(l) = grpc_l {
        // tonic's per-request timeout bounds a Check; the engine needs none of its own.
        let settings = Settings {
            default_deny: cfg.default_deny,
            audit: cfg.audit.clone(),
            ..Settings::default()
        };
        let engine = Engine::new(state.clone(), log.clone(), settings);
        let svc = AuthorizationServer::new(grpc::CheckService {
            engine,
            workload: cfg.workload.clone(),
        })
        .max_decoding_message_size(cfg.max_grpc_message_bytes);
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<AuthorizationServer<grpc::CheckService>>()
            .await;
        let (reflection, reflection_alpha) = reflection_services()?;
        let mut stop = stop_rx.clone();
        let accept_stop = stop_rx.clone();
        let timeout = cfg.request_timeout;
        let limit = cfg.max_grpc_message_bytes;
        let st = state.clone();
        // tonic refuses an oversized message before the handler runs; the answer carries
        // grpc-status OUT_OF_RANGE (11) in its headers (the handler never answers that code).
        // Say so in the log and count it.
        let too_large = tower::util::MapResponseLayer::new(
            move |resp: tonic::codegen::http::Response<tonic::body::Body>| {
                let status = resp.headers().get("grpc-status").map(|v| v.as_bytes());
                if status == Some(b"11".as_slice()) {
                    st.metrics
                        .grpc_too_large
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        limit_bytes = limit,
                        "refused a CheckRequest larger than --grpc-max-message-bytes (Envoy denies the request)"
                    );
                }
                resp
            },
        );
        tasks.spawn(async move {
            // Keep-alive pings find dead peers; streams per connection are bounded (Envoy opens
            // more connections when it needs them); h2 bounds rapidly reset streams itself.
            let r = tonic::transport::Server::builder()
                .timeout(timeout)
                .tcp_nodelay(true)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .max_concurrent_streams(Some(1024))
                .layer(too_large)
                .add_service(health)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    bounded_incoming(l, accept_stop, limits),
                    async move {
                        let _ = stop.changed().await;
                    },
                )
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
    }
    if let Some(l) = http_l {
        let settings = Settings {
            timeout: Some(cfg.request_timeout),
            default_deny: cfg.default_deny,
            audit: cfg.audit.clone(),
        };
        let mode = http::HttpMode {
            engine: Engine::new(state.clone(), log.clone(), settings),
            workload: cfg.workload.clone(),
            trusted_proxies: cfg.trusted_proxies.clone(),
            path_prefix: cfg.http_path_prefix.clone(),
            style: cfg.forward_auth,
            trust_client_cert: cfg.trust_forwarded_client_cert,
            bindings: cfg.auth_bindings.clone(),
            routes: cfg.route_bindings.clone(),
        };
        let stop = stop_rx.clone();
        tasks.spawn(serve_hyper(l, stop, limits, move |req, peer| {
            let m = mode.clone();
            async move { m.handle(req, peer).await }
        }));
    }
    if let Some(l) = admin_l {
        tasks.spawn(serve_admin_with(l, state.clone(), stop_rx.clone(), limits));
    }
    tasks.spawn(watch_policies(
        state.clone(),
        cfg.reload_interval,
        stop_rx.clone(),
    ));
    on_ready(&bound);
    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
