//! Outbound: the local app connects in plaintext; the proxy originates mTLS to the upstream
//! proxy, which must present the expected SPIFFE ID, and pumps bytes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Outbound;
use crate::copy::splice_idle;

pub(crate) async fn outbound_conn(
    state: Arc<meshguard_engine::State>,
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
            let why = format!("cannot reach the upstream proxy {}", o.upstream);
            answer_app(local, &why).await;
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(o.upstream.ip().into());
    let tls = match tokio::time::timeout(timeout, connector.connect(name, up)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state
                .metrics
                .proxy
                .outbound_handshake_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(upstream = %o.upstream, expected = %o.spiffe_id, error = %e, "upstream refused: mTLS handshake failed");
            let why = format!("mTLS to the upstream proxy {} failed: {e}", o.upstream);
            answer_app(local, &why).await;
            return;
        }
        Err(_) => {
            tracing::warn!(upstream = %o.upstream, "upstream handshake timed out");
            let why = format!("the mTLS handshake with {} timed out", o.upstream);
            answer_app(local, &why).await;
            return;
        }
    };
    splice_idle(local, tls, Some(idle)).await;
}

/// How long the app has to start its request before a failed upstream is reported by closing.
const FIRST_BYTES: Duration = Duration::from_millis(500);

/// The upstream cannot be used. An app speaking HTTP/1 (its first bytes are a request line) is
/// answered `503` with the reason, as Envoy answers an upstream connect failure, instead of a
/// connection reset it cannot explain; anything else is closed.
async fn answer_app(mut local: TcpStream, why: &str) {
    let mut first = [0u8; 16];
    let n = match tokio::time::timeout(FIRST_BYTES, local.read(&mut first)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    if !looks_like_http1(&first[..n]) {
        return;
    }
    let body = format!("meshguard: {why}\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(FIRST_BYTES, local.write_all(answer.as_bytes())).await;
    let _ = local.shutdown().await;
}

/// An HTTP/1 request line starts with an upper-case token and a space (`GET `, `POST `); the
/// HTTP/2 preface (`PRI * HTTP/2.0`) is not answered in HTTP/1.
fn looks_like_http1(b: &[u8]) -> bool {
    let token = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    token > 0 && b.get(token) == Some(&b' ') && !b.starts_with(b"PRI ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn http1_request_lines_are_told_apart() {
        assert!(super::looks_like_http1(b"GET /orders HTTP"));
        assert!(super::looks_like_http1(b"DELETE /x"));
        assert!(!super::looks_like_http1(b"PRI * HTTP/2.0\r\n"));
        assert!(!super::looks_like_http1(b"\x16\x03\x01"));
        assert!(!super::looks_like_http1(b"hello"));
        assert!(!super::looks_like_http1(b""));
    }
}
