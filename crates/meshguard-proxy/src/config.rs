//! The proxy's configuration: inbound and outbound listeners, identity, limits, the errors that
//! stop it from starting, and the `meshguard proxy --config` file that describes it all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshguard_engine::dlog::Sink;
use meshguard_engine::Workload;
use meshguard_identity::SpiffeId;
use meshguard_policy::read::{first_document, ConfigError, Field, FieldError};
use meshguard_policy::yaml::{Node, NodeKind};

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
    /// HTTP/1.1 or HTTP/2 from clients (detected per connection), one decision per request;
    /// HTTP/1.1 to the app. WebSocket and other HTTP/1.1 upgrades are decided at the upgrade
    /// request, then bytes are pumped.
    Http,
    /// As `Http`, but HTTP/2 to the app without TLS (h2c with prior knowledge): gRPC servers
    /// and other HTTP/2-only apps. Istio's port names `grpc`/`http2` (`protocol: grpc` or
    /// `http2` here) give the same upstream protocol.
    Http2,
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
    /// Audit mode: every request is decided and logged, none is denied by policy (mTLS is still
    /// required where PeerAuthentication says STRICT).
    pub audit: bool,
    /// PERMISSIVE: how long to wait for a client's first byte before treating it as plaintext
    /// (server-first protocols send nothing).
    pub detect_timeout: Duration,
    /// Bound on a TLS handshake and on a connection to the app or upstream.
    pub connect_timeout: Duration,
    /// Bound on one decision (remote JWKS fetches included); exceeding it denies.
    pub decision_timeout: Duration,
    pub reload_interval: Duration,
    pub decision_log: Sink,
    /// Size bound of a decision log file.
    pub decision_log_rotation: meshguard_engine::dlog::Rotation,
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
            audit: false,
            detect_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            decision_timeout: Duration::from_secs(5),
            reload_interval: Duration::from_secs(2),
            decision_log: Sink::Off,
            decision_log_rotation: meshguard_engine::dlog::Rotation {
                max_bytes: Some(256 * 1024 * 1024),
                keep: 3,
            },
            max_connections: 16_384,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Where the proxy gets its SVID.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    Files(crate::source::SvidFiles),
    Api(crate::source::WorkloadApi),
}

/// A `meshguard proxy --config` file, read: the proxy's settings and what the binary wires
/// around it (admin listener, identity, where policies come from).
#[derive(Debug, Clone)]
pub struct ProxyFile {
    pub cfg: ProxyConfig,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/config`), served beside the proxy.
    pub admin: Option<SocketAddr>,
    pub identity: IdentitySource,
    /// Policy files and directories, relative paths resolved against the config file's folder;
    /// empty for the embedded examples.
    pub policies: Vec<PathBuf>,
    pub root_namespace: Option<String>,
    /// A meshConfig file (relative to the config file): path normalisation, trust domain,
    /// extensionProviders that CUSTOM policies call.
    pub mesh_config: Option<PathBuf>,
    /// Things that work but deserve a word (an outbound listener off loopback).
    pub warnings: Vec<String>,
}

const TOP_LEVEL: &[&str] = &[
    "workload",
    "identity",
    "policies",
    "rootNamespace",
    "meshConfig",
    "inbound",
    "outbound",
    "defaultDeny",
    "audit",
    "admin",
    "decisionLog",
    "decisionLogMaxBytes",
    "reloadInterval",
    "detectTimeout",
    "idleTimeout",
];

impl ProxyFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<ProxyFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::read("the proxy config", path, &e))?;
        ProxyFile::parse(&text, path)
    }

    /// Parses a config text; `path` names it in errors and anchors relative file paths.
    pub fn parse(text: &str, path: &Path) -> Result<ProxyFile, ConfigError> {
        let file = path.display().to_string();
        let whole = |message: &str| ConfigError::File {
            file: file.clone(),
            message: message.to_owned(),
        };
        let doc = first_document(text, &file)?.ok_or_else(|| whole("the file is empty"))?;
        let base = path.parent().map(PathBuf::from).unwrap_or_default();
        let mut p = read_doc(&doc, &base).map_err(|e| ConfigError::field(&file, e))?;
        if p.cfg.inbound.is_empty() && p.cfg.outbound.is_empty() {
            return Err(whole(
                "no `inbound` or `outbound` listeners; nothing to proxy",
            ));
        }
        for o in &p.cfg.outbound {
            if !o.listen.ip().is_loopback() {
                p.warnings.push(format!(
                    "outbound listener {} ({}) is not on loopback: anyone who reaches it can call {} with this workload's identity",
                    o.name, o.listen, o.spiffe_id
                ));
            }
        }
        Ok(p)
    }
}

fn addr(f: &Field<'_, '_>) -> Result<SocketAddr, FieldError> {
    f.parse("an address like 127.0.0.1:15006")
}

fn spiffe_id(f: &Field<'_, '_>) -> Result<SpiffeId, FieldError> {
    SpiffeId::parse_workload(&f.text()?).map_err(|e| f.error(e.to_string()))
}

fn read_doc(doc: &Node, base: &Path) -> Result<ProxyFile, FieldError> {
    let root = Field::root(doc);
    root.mapping(TOP_LEVEL)?;
    let wl = root.required("workload")?;
    wl.mapping(&["namespace", "labels"])?;
    let namespace = wl.required("namespace")?.text()?;
    let labels = match wl.get("labels") {
        Some(l) => {
            let mut m = std::collections::BTreeMap::new();
            for (k, v) in l.entries()? {
                m.insert(k.text.clone(), Field::named(v, "workload.labels").text()?);
            }
            m
        }
        None => Default::default(),
    };
    let mut cfg = ProxyConfig::new(Workload { namespace, labels });

    let id = root.required("identity")?;
    id.mapping(&["workloadApi", "files", "spiffeId"])?;
    let identity = match (id.get("workloadApi"), id.get("files")) {
        (Some(sock), None) => {
            let s = sock.text()?;
            let socket = s
                .strip_prefix("unix://")
                .or_else(|| s.strip_prefix("unix:"))
                .unwrap_or(&s);
            IdentitySource::Api(crate::source::WorkloadApi {
                socket: PathBuf::from(socket),
                spiffe_id: id.get("spiffeId").map(|n| spiffe_id(&n)).transpose()?,
            })
        }
        (None, Some(f)) => {
            f.mapping(&["cert", "key", "bundle"])?;
            let file = |k: &str| -> Result<PathBuf, FieldError> {
                Ok(base.join(f.required(k)?.text()?))
            };
            IdentitySource::Files(crate::source::SvidFiles {
                cert: file("cert")?,
                key: file("key")?,
                bundle: file("bundle")?,
            })
        }
        _ => {
            return Err(id.error(
                "needs exactly one of `workloadApi: unix:/path/agent.sock` or `files: {cert, key, bundle}`",
            ))
        }
    };

    let mut policies = Vec::new();
    if let Some(p) = root.get("policies") {
        for item in p.items()? {
            policies.push(base.join(item.text()?));
        }
    }
    let root_namespace = root.get("rootNamespace").map(|n| n.text()).transpose()?;
    let mesh_config = root
        .get("meshConfig")
        .map(|n| n.text().map(|t| base.join(t)))
        .transpose()?;
    if let Some(n) = root.get("inbound") {
        for (i, l) in n.items()?.iter().enumerate() {
            l.mapping(&["name", "listen", "port", "app", "protocol"])?;
            let protocol = match l.get("protocol").map(|p| p.text()).transpose()?.as_deref() {
                None | Some("http") => Protocol::Http,
                Some("http2") | Some("grpc") => Protocol::Http2,
                Some("tcp") => Protocol::Tcp,
                Some(other) => {
                    return Err(l.required("protocol")?.error(format!(
                        "`{other}` is not http, http2 (or grpc: HTTP/2 to the app) or tcp"
                    )))
                }
            };
            let port = l.required("port")?;
            let port = match port.node.kind {
                NodeKind::Int(_) => port.port()?,
                _ => {
                    return Err(
                        port.error("must be a port number (the workload port policies name)")
                    )
                }
            };
            cfg.inbound.push(Inbound {
                name: match l.get("name") {
                    Some(n) => n.text()?,
                    None => format!("inbound[{i}]"),
                },
                listen: addr(&l.required("listen")?)?,
                port,
                app: addr(&l.required("app")?)?,
                protocol,
            });
        }
    }
    if let Some(n) = root.get("outbound") {
        for (i, o) in n.items()?.iter().enumerate() {
            o.mapping(&["name", "listen", "upstream", "spiffeId"])?;
            cfg.outbound.push(Outbound {
                name: match o.get("name") {
                    Some(n) => n.text()?,
                    None => format!("outbound[{i}]"),
                },
                listen: addr(&o.required("listen")?)?,
                upstream: addr(&o.required("upstream")?)?,
                spiffe_id: spiffe_id(&o.required("spiffeId")?)?,
            });
        }
    }
    if let Some(n) = root.get("defaultDeny") {
        cfg.default_deny = n.bool()?;
    }
    if let Some(n) = root.get("audit") {
        cfg.audit = n.bool()?;
    }
    let admin = root.get("admin").map(|n| addr(&n)).transpose()?;
    if let Some(n) = root.get("decisionLog") {
        cfg.decision_log = Sink::parse(&n.text()?);
    }
    if let Some(n) = root.get("decisionLogMaxBytes") {
        let max: u64 = n.parse("a number of bytes (0: never rotate)")?;
        cfg.decision_log_rotation.max_bytes = (max > 0).then_some(max);
    }
    if let Some(n) = root.get("reloadInterval") {
        cfg.reload_interval = n.duration()?;
    }
    if let Some(n) = root.get("detectTimeout") {
        cfg.detect_timeout = n.duration()?;
    }
    if let Some(n) = root.get("idleTimeout") {
        cfg.idle_timeout = n.duration()?;
    }
    Ok(ProxyFile {
        cfg,
        admin,
        identity,
        policies,
        root_namespace,
        mesh_config,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "workload: {namespace: backend, labels: {app: api}}
identity: {files: {cert: svid.pem, key: svid.key, bundle: bundle.pem}}
policies: [policies/]
inbound:
- {listen: 127.0.0.1:15006, port: 8080, app: 127.0.0.1:8080}
outbound:
- {name: api, listen: 0.0.0.0:15001, upstream: 127.0.0.1:15006, spiffeId: spiffe://cluster.local/ns/backend/sa/api}
idleTimeout: 10m
";

    #[test]
    fn a_config_file_reads_whole_with_paths_relative_to_it() {
        let p = ProxyFile::parse(GOOD, Path::new("/etc/mg/proxy.yaml")).unwrap();
        assert_eq!(p.policies, [PathBuf::from("/etc/mg/policies/")]);
        match &p.identity {
            IdentitySource::Files(f) => assert_eq!(f.cert, PathBuf::from("/etc/mg/svid.pem")),
            IdentitySource::Api(_) => panic!("files expected"),
        }
        assert_eq!(p.cfg.inbound[0].name, "inbound[0]");
        assert_eq!(p.cfg.idle_timeout, Duration::from_secs(600));
        assert!(p.cfg.default_deny);
        assert!(
            p.warnings[0].contains("not on loopback"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn mistakes_name_file_line_and_field() {
        let cases = [
            (
                "listen: 127.0.0.1:15006",
                "listen: nowhere",
                "p.yaml:5: inbound[0].listen: `nowhere` is not an address like 127.0.0.1:15006",
            ),
            (
                "port: 8080",
                "port: \"8080\"",
                "p.yaml:5: inbound[0].port: must be a port number",
            ),
            (
                "idleTimeout: 10m",
                "idleTimeout: soon",
                "p.yaml:8: idleTimeout: `soon` is not a duration",
            ),
            (
                "idleTimeout: 10m",
                "idleTimout: 10m",
                "p.yaml:8: idleTimout: unknown field `idleTimout` (did you mean `idleTimeout`?)",
            ),
            (
                "spiffeId: spiffe://cluster.local/ns/backend/sa/api",
                "spiffeId: http://x",
                "p.yaml:7: outbound[0].spiffeId: ",
            ),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replace(from, to);
            let e = ProxyFile::parse(&text, Path::new("p.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{to}: {e}");
        }
        let e = ProxyFile::parse("", Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "p.yaml: the file is empty");
        let no_listeners = "workload: {namespace: a}\nidentity: {workloadApi: unix:/s}\n";
        let e = ProxyFile::parse(no_listeners, Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to proxy"), "{e}");
    }
}
