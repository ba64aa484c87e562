//! The proxy's configuration: inbound and outbound listeners, identity, limits, and the errors
//! that stop it from starting.

use std::net::SocketAddr;
use std::time::Duration;

use meshguard_engine::dlog::Sink;
use meshguard_engine::Workload;
use meshguard_identity::SpiffeId;

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
pub(crate) const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

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
