//! HTTP on inbound listeners: sanitise what the app must not see from a client, build the one
//! `Request`, decide every request with the engine, answer denials, forward allowed requests
//! to the app with the peer in `x-forwarded-client-cert`.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use meshguard_policy::HttpRequest;

use crate::inbound::{request_for, Conn};
use crate::InCtx;

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

pub(crate) fn full(status: u16, body: impl Into<Bytes>) -> hyper::Response<Body> {
    let body: Bytes = body.into();
    // An empty answer carries no Content-Type (as Envoy's local replies).
    let typed = !body.is_empty();
    let mut r = hyper::Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::FORBIDDEN);
    if typed {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    r
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) a proxy must not forward.
pub(crate) const HOP_BY_HOP: &[&str] = &[
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

pub(crate) fn strip_hop_by_hop(h: &mut hyper::HeaderMap) {
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

/// Whether a `Connection` header lists `token`.
fn connection_has(h: &hyper::HeaderMap, token: &str) -> bool {
    h.get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why a request is refused before any policy runs.
pub(crate) fn malformed(why: &'static str) -> hyper::Response<Body> {
    tracing::info!(reason = why, "request refused before authorization");
    full(400, "Bad Request")
}

/// Header names that request authentication may write for this workload: a client must not be
/// able to send them.
pub(crate) fn jwt_output_headers(ctx: &InCtx) -> Vec<String> {
    let g = ctx.state.current();
    meshguard_authn::output_header_names(
        &g.set,
        &ctx.cfg.workload.namespace,
        &ctx.cfg.workload.labels,
    )
}

/// Sets `pairs` on a header map: the first value of a name replaces what is there, later values
/// of the same name are added beside it. Names or values that are not valid HTTP are skipped.
fn set_headers(map: &mut hyper::HeaderMap, pairs: &[(String, String)]) {
    let mut written: Vec<HeaderName> = Vec::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            if written.contains(&k) {
                map.append(k, v);
            } else {
                map.insert(k.clone(), v);
                written.push(k);
            }
        }
    }
}

/// A body that replays frames already read, then the rest of the client's body.
struct Replayed {
    frames: std::collections::VecDeque<hyper::body::Frame<Bytes>>,
    rest: Option<hyper::body::Incoming>,
}

impl hyper::body::Body for Replayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let me = self.get_mut();
        if let Some(f) = me.frames.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        match me.rest.as_mut() {
            Some(r) => std::pin::Pin::new(r).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// Reads a request body until it ends or holds more than `max` bytes: what was read (for the
/// check), and the body to forward (what was read, then the rest).
async fn buffer_body(
    mut body: hyper::body::Incoming,
    max: usize,
) -> Result<(Bytes, Body), hyper::Error> {
    let mut seen = bytes::BytesMut::new();
    let mut frames = std::collections::VecDeque::new();
    let mut ended = false;
    while seen.len() <= max {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    seen.extend_from_slice(d);
                }
                let trailers = f.is_trailers();
                frames.push_back(f);
                if trailers {
                    ended = true;
                    break;
                }
            }
        }
    }
    let rest = Replayed {
        frames,
        rest: (!ended).then_some(body),
    };
    Ok((seen.freeze(), rest.boxed()))
}

pub(crate) async fn handle_http(
    ctx: &InCtx,
    conn: &Conn,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let (mut parts, body) = req.into_parts();
    if parts.method == hyper::Method::CONNECT {
        return full(405, "Method Not Allowed");
    }
    // An HTTP/1.1 upgrade (WebSocket and others; not h2c, which is just dropped) is decided
    // like any request; once allowed the app's 101 hands both connections to a byte pump.
    // Only `Connection: upgrade` makes `Upgrade` a request to switch (RFC 9110 7.8).
    // A list naming h2c anywhere (`websocket, h2c`) is not honoured at all: the app could pick
    // h2c and take undecided HTTP/2 requests on the tunnel.
    let upgrade = parts
        .headers
        .get(hyper::header::UPGRADE)
        .filter(|v| {
            v.to_str().is_ok_and(|t| {
                !t.split(',').any(|p| {
                    p.trim()
                        .split('/')
                        .next()
                        .is_some_and(|n| n.eq_ignore_ascii_case("h2c"))
                })
            })
        })
        .filter(|_| connection_has(&parts.headers, "upgrade"))
        .cloned();
    if upgrade.is_some()
        && (parts.version != hyper::Version::HTTP_11
            || ctx.listener.protocol == crate::Protocol::Http2)
    {
        return full(
            501,
            "HTTP upgrades need HTTP/1.1 on both sides; this listener's app speaks HTTP/2",
        );
    }
    // gRPC needs `te: trailers` to reach an HTTP/2 app; it is the one TE value a proxy may
    // forward there (RFC 9113 section 8.2.2).
    let te_trailers = parts
        .headers
        .get_all(hyper::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
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
    // A CUSTOM provider with includeRequestBodyInCheck sees the body: buffered up to its
    // maxRequestBytes (one byte more tells a cut body), then forwarded whole.
    let g = ctx.state.current();
    let limit = meshguard_engine::remote::body_limit(
        &g,
        &ctx.cfg.workload.namespace,
        &ctx.cfg.workload.labels,
    );
    drop(g);
    let body: Body = match limit {
        None => body.boxed(),
        Some(max) => match buffer_body(body, usize::try_from(max).unwrap_or(usize::MAX)).await {
            Ok((seen, rest)) => {
                http.body = Some(meshguard_policy::Body {
                    bytes: seen.to_vec(),
                    truncated: false,
                });
                rest
            }
            Err(e) => {
                tracing::info!(error = %e, "the request body could not be read; refused");
                return full(400, "Bad Request");
            }
        },
    };
    let request = request_for(ctx, conn, Some(http));
    let o = ctx.engine.decide("proxy-http", &request).await;
    if !o.allowed {
        let mut r = full(o.status, o.body().to_owned());
        // The denial's headers replace the defaults (an authorizer's own Content-Type); a
        // name given several times (Set-Cookie) keeps every value.
        set_headers(r.headers_mut(), &o.response_headers);
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
    let h = &mut parts.headers;
    for name in &o.headers_to_remove {
        h.remove(name.as_str());
    }
    // The first value of a name replaces what the client sent (Envoy applies ext_authz and
    // AuthConfig headers with OverwriteIfExistsOrAdd, so a client cannot add its own copy of
    // x-user-id beside the real one); later values of the same name are added beside it (one
    // line per verified token, as Envoy's jwt_authn adds them).
    set_headers(h, &o.headers_to_add);
    if let Some(up) = upgrade {
        return crate::upgrade::forward(ctx, parts, body, &path, up).await;
    }
    let Ok(uri) = format!("http://{}{path}", ctx.listener.app).parse::<hyper::Uri>() else {
        return full(400, "Bad Request");
    };
    parts.uri = uri;
    let h2 = ctx.listener.protocol == crate::Protocol::Http2;
    let client = if h2 {
        parts.version = hyper::Version::HTTP_2;
        if te_trailers {
            parts
                .headers
                .insert(hyper::header::TE, HeaderValue::from_static("trailers"));
        }
        &ctx.client_h2
    } else {
        parts.version = hyper::Version::HTTP_11;
        &ctx.client
    };
    let upstream = hyper::Request::from_parts(parts, body);
    match client.request(upstream).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // Headers an ext_authz provider or Rego step adds to the client's answer
            // (`response_headers_to_add`, headersToDownstreamOnAllow): the first value of a
            // name replaces the app's, later ones (Set-Cookie) are added beside it.
            set_headers(&mut parts.headers, &o.response_headers);
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
