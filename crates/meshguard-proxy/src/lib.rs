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

pub mod source;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_engine::dlog::{DecisionLog, Sink};
use meshguard_engine::{Engine, Settings};
use meshguard_engine::{State, Workload};
use meshguard_identity::SpiffeId;
use meshguard_policy::{Destination, HttpRequest, MtlsMode, Request, Source};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use tls::{SvidMaterial, SvidStore};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("identity: {0}")]
    Identity(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the decision log: {0}")]
    Log(std::io::Error),
}

/// What an inbound listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Opaque TCP: one decision per connection with the L4 parts of the policies.
    Tcp,
    /// HTTP/1.1 or HTTP/2 (detected per connection): one decision per request.
    Http,
}

/// A listener in front of the local app.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub name: String,
    pub listen: SocketAddr,
    /// The workload port as policies and PeerAuthentication `portLevelMtls` see it.
    pub port: u16,
    /// Where the app listens (plaintext, usually loopback).
    pub app: SocketAddr,
    pub protocol: Protocol,
}

/// A plaintext listener for the local app, originating mTLS to an upstream proxy.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub name: String,
    pub listen: SocketAddr,
    /// The upstream proxy's inbound listener.
    pub upstream: SocketAddr,
    /// The SPIFFE ID the upstream must present.
    pub spiffe_id: SpiffeId,
}

/// Everything `run` needs besides the policy state and the identity.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub workload: Workload,
    pub inbound: Vec<Inbound>,
    pub outbound: Vec<Outbound>,
    /// Refuse what no ALLOW policy covers (the default); `false` gives Istio's allow-by-default.
    pub default_deny: bool,
    /// PERMISSIVE: how long to wait for a client's first byte before treating it as plaintext
    /// (server-first protocols send nothing).
    pub detect_timeout: Duration,
    /// Bound on a TLS handshake and on a connection to the app or upstream.
    pub connect_timeout: Duration,
    /// Bound on one decision (remote JWKS fetches included); exceeding it denies.
    pub decision_timeout: Duration,
    pub reload_interval: Duration,
    pub decision_log: Sink,
    /// Open connections per listener; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// A connection with no bytes moving either way (TCP), or with no request in flight (HTTP),
    /// for this long is closed. Envoy's default for tcp_proxy and the HTTP connection manager.
    pub idle_timeout: Duration,
}

/// How long an HTTP connection may take to start its first request (and HTTP/1 its next one).
const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

impl ProxyConfig {
    pub fn new(workload: Workload) -> ProxyConfig {
        ProxyConfig {
            workload,
            inbound: Vec::new(),
            outbound: Vec::new(),
            default_deny: true,
            detect_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            decision_timeout: Duration::from_secs(5),
            reload_interval: Duration::from_secs(2),
            decision_log: Sink::Off,
            max_connections: 16_384,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Addresses actually bound (ports chosen by the OS when 0 was asked for), in config order.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

struct InCtx {
    state: Arc<State>,
    /// Decides with the proxy's default deny and decision timeout, and records.
    engine: Engine,
    store: Arc<SvidStore>,
    cfg: Arc<ProxyConfig>,
    listener: Inbound,
    tls: tokio_rustls::TlsAcceptor,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        BoxBody<Bytes, hyper::Error>,
    >,
}

/// Runs every listener until `shutdown` completes; policies reload as `serve`'s do.
pub async fn run(
    state: Arc<State>,
    store: Arc<SvidStore>,
    cfg: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), ProxyError> {
    let cfg = Arc::new(cfg);
    let log =
        DecisionLog::start(cfg.decision_log.clone(), state.clone()).map_err(ProxyError::Log)?;
    for e in state.current().authn.prefetch().await {
        tracing::warn!(error = %e, "JWKS not available yet; tokens for that issuer are refused until a fetch succeeds");
    }
    let engine = Engine::new(
        state.clone(),
        log.clone(),
        Settings {
            default_deny: cfg.default_deny,
            timeout: Some(cfg.decision_timeout),
        },
    );
    let server_tls = tokio_rustls::TlsAcceptor::from(store.server_config()?);
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
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
        });
        tasks.spawn(accept_loop(
            listener,
            stop_rx.clone(),
            cfg.max_connections,
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
        tasks.spawn(accept_loop(
            listener,
            stop_rx.clone(),
            cfg.max_connections,
            move |s, _peer| outbound_conn(o.clone(), connector.clone(), timeout, idle, s),
        ));
    }
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

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    max: usize,
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
                    let conn = handle(s, peer);
                    tokio::spawn(async move {
                        conn.await;
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

/// First buffer of each copy direction: idle connections hold only this much.
const SMALL_BUF: usize = 4 * 1024;
/// Buffer once a read fills the small one (bulk transfer): four full TLS records.
const LARGE_BUF: usize = 64 * 1024;

/// One direction of a splice: an adaptive buffer that is small while traffic is small (an idle
/// connection costs little memory) and grows once a read fills it (bulk transfer).
struct Pump {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    /// Written since the last flush (a TLS writer may hold records until flushed).
    unflushed: bool,
    /// Writes so far (the idle timer restarts when it changes).
    moved: u64,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: vec![0u8; SMALL_BUF],
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            unflushed: false,
            moved: 0,
        }
    }

    /// Moves bytes from `r` to `w` until `r` is pending (flushing `w` first) or at EOF (then
    /// shuts `w` down, half-closing that direction).
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut r: std::pin::Pin<&mut R>,
        mut w: std::pin::Pin<&mut W>,
    ) -> std::task::Poll<std::io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos == self.cap && !self.eof {
                let mut rb = tokio::io::ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        if self.unflushed {
                            std::task::ready!(w.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.pos = 0;
                        self.cap = n;
                        if n == 0 {
                            self.eof = true;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    std::task::ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.unflushed = true;
                self.moved = self.moved.wrapping_add(1);
            }
            // A read that filled the buffer means bulk traffic: grow (only when empty).
            if self.cap == self.buf.len() && self.buf.len() < LARGE_BUF {
                self.buf.resize(LARGE_BUF, 0);
            }
            if self.eof {
                std::task::ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }
}

/// Copies both ways until both sides have closed, or either fails. The proxy's byte pump;
/// public so benchmarks build their baseline hops with the same loop.
pub async fn splice<A, B>(a: A, b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_idle(a, b, None).await;
}

/// [`splice`] that also gives up once no byte has moved either way for `idle`. Returns whether
/// it stopped for idleness.
pub async fn splice_idle<A, B>(mut a: A, mut b: B, idle: Option<Duration>) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use std::pin::Pin;
    use std::task::Poll;
    let (mut ab, mut ba) = (Pump::new(), Pump::new());
    let mut timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let r = std::future::poll_fn(|cx| {
        let moved = ab.moved + ba.moved;
        let x = ab.poll_pump(cx, Pin::new(&mut a), Pin::new(&mut b))?;
        let y = ba.poll_pump(cx, Pin::new(&mut b), Pin::new(&mut a))?;
        if let (Poll::Ready(()), Poll::Ready(())) = (x, y) {
            return Poll::Ready(Ok::<bool, std::io::Error>(false));
        }
        if let Some((d, sleep)) = timer.as_mut() {
            if ab.moved + ba.moved != moved {
                sleep.as_mut().reset(tokio::time::Instant::now() + *d);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(true));
            }
        }
        Poll::Pending
    })
    .await;
    matches!(r, Ok(true))
}

/// What the inbound side knows about a connection.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    /// The mTLS peer's SPIFFE ID and the SHA-256 of its certificate.
    peer_id: Option<(SpiffeId, String)>,
}

fn request_for(ctx: &InCtx, conn: &Conn, http: Option<HttpRequest>) -> Request {
    let mut req = Request {
        destination: Destination {
            namespace: ctx.cfg.workload.namespace.clone(),
            labels: ctx.cfg.workload.labels.clone(),
            port: Some(ctx.listener.port),
            // IPv4 peers on a dual-stack listener arrive as ::ffff:a.b.c.d; policies name them
            // as IPv4 (ipBlocks, source.ip), so compare in canonical form.
            ip: Some(conn.local.ip().to_canonical()),
        },
        source: Source {
            ip: Some(conn.peer.ip().to_canonical()),
            remote_ip: None,
        },
        // What Envoy's ext_authz sends as source and destination addresses.
        peer_addr: Some(conn.peer),
        local_addr: Some(conn.local),
        http,
        ..Request::default()
    };
    if let Some((id, _)) = &conn.peer_id {
        req = req.with_peer(&id.to_string());
    }
    // remote.ip from X-Forwarded-For, as the sidecar Envoy it replaces derives it.
    req.derive_remote_ip(ctx.state.mesh.xff_trusted_hops);
    req
}

/// The L4 decision for a connection, recorded; true when allowed.
async fn decide_connection(ctx: &InCtx, conn: &Conn) -> bool {
    let req = request_for(ctx, conn, None);
    ctx.engine.decide("proxy-tcp", &req).await.allowed
}

async fn inbound_conn(ctx: Arc<InCtx>, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().unwrap_or(ctx.listener.listen);
    let mode = ctx.state.current().set.mtls_mode(
        &ctx.cfg.workload.namespace,
        &ctx.cfg.workload.labels,
        Some(ctx.listener.port),
    );
    let first = match mode {
        MtlsMode::Disable => First::Plain,
        // STRICT also peeks, so plaintext is refused with a logged reason, not a TLS error.
        _ => first_bytes(&stream, ctx.cfg.detect_timeout).await,
    };
    let plain_conn = Conn {
        peer,
        local,
        peer_id: None,
    };
    match first {
        First::Closed => return,
        // HTTP clients speak first: one that sends nothing is closed, not held. A TCP port may
        // carry a server-first protocol, so silence there means plaintext, as istiod's inbound
        // listener (virtualInbound, 15006) sets continue_on_listener_filters_timeout: true, so
        // Envoy goes on without the TLS inspector's verdict (pilot/pkg/networking/core
        // listener builders).
        First::Silent if ctx.listener.protocol == Protocol::Http => {
            tracing::debug!(%peer, "closing a connection that sent nothing within the detect timeout");
            return;
        }
        _ => {}
    }
    if first != First::Tls {
        if mode == MtlsMode::Strict {
            // The engine's own verdict: plaintext under STRICT is refused, with its reason.
            decide_connection(&ctx, &plain_conn).await;
            return;
        }
        serve_inbound(ctx, stream, plain_conn).await;
        return;
    }
    let accepted = tokio::time::timeout(ctx.cfg.connect_timeout, ctx.tls.accept(stream)).await;
    let tls_stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse_handshake(&ctx, &plain_conn, &e.to_string()),
        Err(_) => return refuse_handshake(&ctx, &plain_conn, "handshake timed out"),
    };
    let peer_id = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| {
            tls::spiffe_id_of(leaf)
                .ok()
                .map(|id| (id, tls::cert_sha256(leaf)))
        });
    if peer_id.is_none() {
        // The verifier requires a valid SVID, so this cannot happen; deny if it ever does.
        return refuse_handshake(&ctx, &plain_conn, "no peer SVID after the handshake");
    }
    let conn = Conn {
        peer,
        local,
        peer_id,
    };
    serve_inbound(ctx, tls_stream, conn).await;
}

fn refuse_handshake(ctx: &InCtx, conn: &Conn, why: &str) {
    let req = request_for(ctx, conn, None);
    ctx.engine.refuse(
        "proxy-tcp",
        &req,
        format!("denied: mTLS handshake refused: {why}"),
    );
    tracing::info!(peer = %conn.peer, reason = why, "inbound connection refused");
}

/// What a new inbound connection sent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// A TLS handshake record (0x16).
    Tls,
    /// Other bytes, or nothing looked at (DISABLE).
    Plain,
    /// Nothing within the detect timeout.
    Silent,
    /// The client closed (or the socket failed) before sending anything.
    Closed,
}

/// PERMISSIVE and STRICT detection: a TLS connection starts with a handshake record (0x16).
async fn first_bytes(s: &TcpStream, wait: Duration) -> First {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, s.peek(&mut b)).await {
        Ok(Ok(1)) if b[0] == 0x16 => First::Tls,
        Ok(Ok(n)) if n > 0 => First::Plain,
        Ok(_) => First::Closed,
        Err(_) => First::Silent,
    }
}

async fn serve_inbound<S>(ctx: Arc<InCtx>, io: S, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match ctx.listener.protocol {
        Protocol::Tcp => {
            if !decide_connection(&ctx, &conn).await {
                // Closing is the TCP denial (Envoy's RBAC network filter does the same).
                return;
            }
            let app = match tokio::time::timeout(
                ctx.cfg.connect_timeout,
                TcpStream::connect(ctx.listener.app),
            )
            .await
            {
                Ok(Ok(a)) => a,
                _ => {
                    tracing::warn!(app = %ctx.listener.app, "cannot reach the app; closing the connection");
                    return;
                }
            };
            let _ = app.set_nodelay(true);
            if splice_idle(io, app, Some(ctx.cfg.idle_timeout)).await {
                tracing::debug!(peer = %conn.peer, "closed an idle TCP connection");
            }
        }
        Protocol::Http => {
            let peer = conn.peer;
            let conn = Arc::new(conn);
            let activity = Arc::new(Activity::default());
            let act = activity.clone();
            let idle = ctx.cfg.idle_timeout;
            let svc = service_fn(move |req| {
                let (ctx, conn, act) = (ctx.clone(), conn.clone(), act.clone());
                async move {
                    let _busy = act.begin();
                    Ok::<_, Infallible>(handle_http(&ctx, &conn, req).await)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_TIMEOUT)
                .max_buf_size(64 * 1024);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10))
                .max_concurrent_streams(256)
                .max_header_list_size(64 * 1024);
            let served = builder.serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                _ = served => {}
                why = activity.expired(idle) => {
                    tracing::debug!(peer = %peer, reason = why, "closing an HTTP connection");
                }
            }
        }
    }
}

/// Requests in flight on one HTTP connection and when the last one ended, for the idle bound
/// that hyper does not give HTTP/2 (HTTP/1 has its header-read timeout).
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    started_any: std::sync::atomic::AtomicBool,
    /// Notified whenever a request ends.
    ended: tokio::sync::Notify,
}

struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.ended.notify_one();
    }
}

impl Activity {
    fn begin(&self) -> Busy<'_> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.started_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Busy(self)
    }

    /// Resolves when the connection should be closed: no first request within the header
    /// timeout, or no request in flight for `idle`.
    async fn expired(&self, idle: Duration) -> &'static str {
        use std::sync::atomic::Ordering::Relaxed;
        tokio::time::sleep(HTTP_HEADER_TIMEOUT.min(idle)).await;
        if !self.started_any.load(Relaxed) {
            return "no request within the header timeout";
        }
        loop {
            // Wait until nothing is in flight, then for `idle` without a new request starting.
            while self.in_flight.load(Relaxed) > 0 {
                self.ended.notified().await;
            }
            self.started_any.store(false, Relaxed);
            tokio::time::sleep(idle).await;
            if self.in_flight.load(Relaxed) == 0 && !self.started_any.load(Relaxed) {
                return "idle timeout";
            }
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(status: u16, body: impl Into<Bytes>) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::FORBIDDEN);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) a proxy must not forward.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
];

fn strip_hop_by_hop(h: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// Why a request is refused before any policy runs.
fn malformed(why: &'static str) -> hyper::Response<Body> {
    tracing::info!(reason = why, "request refused before authorization");
    full(400, "Bad Request")
}

/// Header names that request authentication may write for this workload: a client must not be
/// able to send them.
fn jwt_output_headers(ctx: &InCtx) -> Vec<String> {
    let g = ctx.state.current();
    meshguard_authn::output_header_names(
        &g.set,
        &ctx.cfg.workload.namespace,
        &ctx.cfg.workload.labels,
    )
}

async fn handle_http(
    ctx: &InCtx,
    conn: &Conn,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let (mut parts, body) = req.into_parts();
    if parts.method == hyper::Method::CONNECT {
        return full(405, "Method Not Allowed");
    }
    let upgrade = parts
        .headers
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if upgrade.as_deref().is_some_and(|u| u != "h2c") {
        // WebSocket and other upgrades would turn into an unchecked byte stream.
        return full(
            501,
            "upgrades are not supported on HTTP listeners; use protocol: tcp",
        );
    }
    // One host, decided and forwarded alike: the URI authority (HTTP/2 :authority or an
    // absolute-form target) and every Host header must agree (RFC 9113 section 8.3.1).
    let mut hosts = parts.headers.get_all(hyper::header::HOST).iter();
    let host_header = hosts.next().map(|h| h.to_str());
    if hosts.next().is_some() {
        return malformed("several Host headers");
    }
    let host = match (parts.uri.authority().map(|a| a.as_str()), host_header) {
        (_, Some(Err(_))) => return malformed("a Host header that is not text"),
        (Some(a), Some(Ok(h))) if !a.eq_ignore_ascii_case(h) => {
            return malformed("the Host header differs from the request's authority")
        }
        (Some(a), _) => a.to_owned(),
        (None, Some(Ok(h))) => h.to_owned(),
        (None, None) => String::new(),
    };
    // Sanitise first, then decide on exactly the headers the app will receive.
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    h.remove("x-forwarded-client-cert");
    for name in jwt_output_headers(ctx) {
        h.remove(name.as_str());
    }
    if let Some((peer, hash)) = &conn.peer_id {
        let xfcc = format!("By={};Hash={hash};URI={peer}", ctx.store.id());
        if let Ok(v) = HeaderValue::from_str(&xfcc) {
            h.insert("x-forwarded-client-cert", v);
        }
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.peer_id.is_some() {
            "https"
        } else {
            "http"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&host) {
        h.insert(hyper::header::HOST, v);
    }
    let mut headers = Vec::with_capacity(h.len());
    for (k, v) in h.iter() {
        // Envoy forwards UTF-8 (obs-text) in header values; the engine must see what the app
        // sees, so bytes that are not UTF-8 are refused rather than compared lossily. hyper
        // has already refused control characters.
        match std::str::from_utf8(v.as_bytes()) {
            Ok(t) => headers.push((k.as_str().to_owned(), t.to_owned())),
            Err(_) => return malformed("a header value that is not UTF-8"),
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    // Envoy's HTTP/1 codec answers 400 to a request target with a fragment (`#`).
    if target.contains('#') {
        return malformed("a request target with a fragment (#)");
    }
    let mut http = HttpRequest::new(
        parts.method.as_str(),
        host,
        target,
        headers,
        ctx.state.mesh.path_normalization,
    );
    if parts.version < hyper::Version::HTTP_2 {
        http = http.as_http1();
    }
    // What Envoy's ext_authz would put in the CheckRequest, so an AuthConfig step (a CUSTOM
    // provider) sees the same input here as behind Envoy: the sockets, the request id, the
    // protocol and `:scheme`. Envoy (docs/root/configuration/http/http_conn_man/headers.rst,
    // ":scheme"): HTTP/2 keeps the client's; HTTP/1 takes it from an absolute URL, else from
    // X-Forwarded-Proto as sanitised for an untrusted downstream (a sidecar trusts none), i.e.
    // from the connection: https over TLS, http in the clear.
    http.id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    http.protocol = match parts.version {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
    .to_owned();
    http.scheme = match parts.uri.scheme_str() {
        Some(sch) => sch.to_owned(),
        None if conn.peer_id.is_some() => "https".to_owned(),
        None => "http".to_owned(),
    };
    let request = request_for(ctx, conn, Some(http));
    let o = ctx.engine.decide("proxy-http", &request).await;
    if !o.allowed {
        let mut r = full(o.status, o.body().to_owned());
        for (k, v) in &o.response_headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                r.headers_mut().append(k, v);
            }
        }
        if let Some(w) = o
            .www_authenticate
            .as_deref()
            .and_then(|w| HeaderValue::from_str(w).ok())
        {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, w);
        }
        return r;
    }

    // The app receives the path that was authorised (normalised as Envoy forwards it).
    let mut path = match request.http.as_ref().and_then(|h| h.path.as_ref().ok()) {
        Some(p) => match &p.query {
            Some(q) => format!("{}?{q}", p.path),
            None => p.path.clone(),
        },
        None => return full(400, "Bad Request"),
    };
    if !o.query_params_to_remove.is_empty() {
        path = meshguard_authn::extract::remove_query_params(&path, &o.query_params_to_remove);
    }
    let Ok(uri) = format!("http://{}{path}", ctx.listener.app).parse::<hyper::Uri>() else {
        return full(400, "Bad Request");
    };
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    let h = &mut parts.headers;
    for name in &o.headers_to_remove {
        h.remove(name.as_str());
    }
    // Client-sent copies of these names were removed before the decision; one line per
    // verified token, as Envoy's jwt_authn adds them.
    for (k, v) in &o.headers_to_add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    let upstream = hyper::Request::from_parts(parts, body.boxed());
    match ctx.client.request(upstream).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            hyper::Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            tracing::warn!(app = %ctx.listener.app, error = %e, "the app did not answer");
            full(
                503,
                "upstream connect error or disconnect/reset before headers",
            )
        }
    }
}

async fn outbound_conn(
    o: Arc<Outbound>,
    connector: tokio_rustls::TlsConnector,
    timeout: Duration,
    idle: Duration,
    local: TcpStream,
) {
    let up = match tokio::time::timeout(timeout, TcpStream::connect(o.upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::warn!(upstream = %o.upstream, "cannot reach the upstream proxy");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(o.upstream.ip().into());
    let tls = match tokio::time::timeout(timeout, connector.connect(name, up)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(upstream = %o.upstream, expected = %o.spiffe_id, error = %e, "upstream refused: mTLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(upstream = %o.upstream, "upstream handshake timed out");
            return;
        }
    };
    splice_idle(local, tls, Some(idle)).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes cross intact both ways (sizes that make the buffer grow), and a half-close in one
    /// direction leaves the other direction working, as TCP allows.
    #[tokio::test]
    async fn splice_copies_both_ways_and_keeps_half_close() {
        let (mut client, proxy_a) = tokio::io::duplex(7 * 1024);
        let (proxy_b, mut server) = tokio::io::duplex(5 * 1024);
        tokio::spawn(super::splice(proxy_a, proxy_b));
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expect = up.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&up).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, expect);
        // The client has closed its sending side; the server can still answer.
        server.write_all(b"reply after EOF").await.expect("write");
        server.shutdown().await.expect("close");
        assert_eq!(writer.await.expect("join"), b"reply after EOF");
    }
}
