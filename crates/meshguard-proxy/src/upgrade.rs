//! HTTP/1.1 upgrades on HTTP listeners (WebSocket, and any other `Upgrade` protocol): the
//! upgrade request was decided like any other request (http.rs); here it goes to the app on a
//! connection of its own, and when the app answers 101 Switching Protocols both sides are
//! handed to the byte pump, with the listener's idle timeout. Any other answer goes back as an
//! ordinary response. This is what Envoy does with `upgrade_configs: [{upgrade_type: websocket}]`
//! (istiod enables it on every HTTP route): one authorization at the upgrade request, then bytes.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::{full, strip_hop_by_hop, Body};
use crate::InCtx;

/// Sends the allowed upgrade request (`parts`, already sanitised and with the decision's
/// headers) to the app with the authorised `path`, and answers the client with the app's answer.
pub(crate) async fn forward(
    ctx: &InCtx,
    mut parts: hyper::http::request::Parts,
    body: Body,
    path: &str,
    protocol: HeaderValue,
) -> hyper::Response<Body> {
    let Some(client_side) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return full(400, "Bad Request");
    };
    let Ok(uri) = path.parse::<hyper::Uri>() else {
        return full(400, "Bad Request");
    };
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    // The hop-by-hop headers were stripped before the decision; the upgrade's own go back.
    parts.headers.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    parts.headers.insert(hyper::header::UPGRADE, protocol);

    let unreachable = || {
        full(
            503,
            "upstream connect error or disconnect/reset before headers",
        )
    };
    let tcp = match tokio::time::timeout(
        ctx.cfg.connect_timeout,
        TcpStream::connect(ctx.listener.app),
    )
    .await
    {
        Ok(Ok(t)) => t,
        _ => {
            tracing::warn!(app = %ctx.listener.app, "cannot reach the app for an upgrade");
            return unreachable();
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(app = %ctx.listener.app, error = %e, "the app did not take an upgrade request");
            return unreachable();
        }
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = match sender
        .send_request(hyper::Request::from_parts(parts, body))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(app = %ctx.listener.app, error = %e, "the app did not answer an upgrade request");
            return unreachable();
        }
    };
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        // The app declined (or answered the request itself): an ordinary response.
        let (mut p, b) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        return hyper::Response::from_parts(p, b.boxed());
    }
    let app_side = hyper::upgrade::on(&mut resp);
    let idle = ctx.cfg.idle_timeout;
    let app = ctx.listener.app;
    tokio::spawn(async move {
        match (client_side.await, app_side.await) {
            (Ok(client), Ok(upstream)) => {
                if crate::copy::splice_idle(
                    TokioIo::new(client),
                    TokioIo::new(upstream),
                    Some(idle),
                )
                .await
                {
                    tracing::debug!(%app, "closed an idle upgraded connection");
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::info!(%app, error = %e, "an upgrade did not complete");
            }
        }
    });
    // 101 with the app's headers (Upgrade, Connection, Sec-WebSocket-Accept ...), no body.
    let (p, _) = resp.into_parts();
    hyper::Response::from_parts(p, Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
}
