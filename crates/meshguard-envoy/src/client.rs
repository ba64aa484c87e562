//! A client of another Envoy ext_authz v3 gRPC server (`Authorization/Check`).

use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("`{address}` is not a usable address: {reason}")]
    Address { address: String, reason: String },
    /// The call failed (unreachable, timed out, refused): the server's message.
    #[error("{0}")]
    Call(String),
}

/// A lazily connected channel to one ext_authz server (plaintext HTTP/2), cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    channel: tonic::transport::Channel,
}

impl Client {
    /// `host:port`; connecting and each call are bounded by `timeout`.
    pub fn lazy(address: &str, timeout: Duration) -> Result<Client, ClientError> {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError::Address {
                address: address.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(timeout)
            .timeout(timeout);
        Ok(Client {
            channel: ep.connect_lazy(),
        })
    }

    pub async fn check(&self, req: CheckRequest) -> Result<CheckResponse, ClientError> {
        AuthorizationClient::new(self.channel.clone())
            .check(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| ClientError::Call(e.message().to_owned()))
    }
}
