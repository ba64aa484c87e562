//! Outbound: the local app connects in plaintext; the proxy originates mTLS to the upstream
//! proxy, which must present the expected SPIFFE ID, and pumps bytes.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::Outbound;
use crate::copy::splice_idle;

pub(crate) async fn outbound_conn(
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
