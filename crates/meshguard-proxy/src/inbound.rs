//! Inbound connections: accept, detect TLS or plaintext by the first bytes, the mTLS handshake
//! with an SVID of our trust domain, the L4 decision for TCP ports, and serving HTTP ports.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard_identity::SpiffeId;
use meshguard_policy::{Destination, HttpRequest, MtlsMode, Request, Source};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Protocol, HTTP_HEADER_TIMEOUT};
use crate::copy::splice_idle;
use crate::http::handle_http;
use crate::tls;
use crate::InCtx;

/// What the inbound side knows about a connection.
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The mTLS peer's SPIFFE ID and the SHA-256 of its certificate.
    pub(crate) peer_id: Option<(SpiffeId, String)>,
}

pub(crate) fn request_for(ctx: &InCtx, conn: &Conn, http: Option<HttpRequest>) -> Request {
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
    // This workload's identity: Envoy's ext_authz `destination.principal`.
    req.local_principal = Some(ctx.store.id().to_string());
    // remote.ip from X-Forwarded-For, as the sidecar Envoy it replaces derives it.
    req.derive_remote_ip(ctx.state.mesh.xff_trusted_hops);
    req
}

/// The L4 decision for a connection, recorded; true when allowed.
pub(crate) async fn decide_connection(ctx: &InCtx, conn: &Conn) -> bool {
    let req = request_for(ctx, conn, None);
    ctx.engine.decide("proxy-tcp", &req).await.allowed
}

pub(crate) async fn inbound_conn(ctx: Arc<InCtx>, stream: TcpStream, peer: SocketAddr) {
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
        First::Silent if ctx.listener.protocol != Protocol::Tcp => {
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
        if mode == MtlsMode::Permissive {
            let source = plain_conn.peer.ip().to_canonical().to_string();
            ctx.state
                .metrics
                .proxy
                .record_permissive(ctx.listener.port, false, &source);
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
    if mode == MtlsMode::Permissive {
        if let Some((id, _)) = &peer_id {
            ctx.state
                .metrics
                .proxy
                .record_permissive(ctx.listener.port, true, &id.to_string());
        }
    }
    let conn = Conn {
        peer,
        local,
        peer_id,
    };
    serve_inbound(ctx, tls_stream, conn).await;
}

pub(crate) fn refuse_handshake(ctx: &InCtx, conn: &Conn, why: &str) {
    ctx.state
        .metrics
        .proxy
        .inbound_handshake_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
pub(crate) enum First {
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
pub(crate) async fn first_bytes(s: &TcpStream, wait: Duration) -> First {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, s.peek(&mut b)).await {
        Ok(Ok(1)) if b[0] == 0x16 => First::Tls,
        Ok(Ok(n)) if n > 0 => First::Plain,
        Ok(_) => First::Closed,
        Err(_) => First::Silent,
    }
}

pub(crate) async fn serve_inbound<S>(ctx: Arc<InCtx>, io: S, conn: Conn)
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
        Protocol::Http | Protocol::Http2 => {
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
            // With upgrades: an allowed WebSocket (or other HTTP/1.1 upgrade) request hands its
            // connection over to a byte pump (http.rs), so the connection future ends then.
            let served = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
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
pub(crate) struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    started_any: std::sync::atomic::AtomicBool,
    /// Notified whenever a request ends.
    ended: tokio::sync::Notify,
}

pub(crate) struct Busy<'a>(&'a Activity);

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
