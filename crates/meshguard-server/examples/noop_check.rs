//! Baseline for the serve benchmark: an ext_authz Check server on the same stack (tonic +
//! envoy-types) that answers OK without deciding anything.
//!
//! cargo run --release -p meshguard-server --example noop_check -- 127.0.0.1:9291

#[path = "common/noop.rs"]
mod noop;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use noop::Noop;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9291".to_owned())
        .parse()?;
    eprintln!("noop ext_authz Check server on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}
