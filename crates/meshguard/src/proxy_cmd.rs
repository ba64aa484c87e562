//! `meshguard proxy`: reads one YAML file and runs the mTLS sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use meshguard_engine::dlog::Sink;
use std::sync::Arc;

use meshguard_engine::{Files, PolicySource, State, Workload};
use meshguard_identity::SpiffeId;
use meshguard_policy::yaml::{Node, NodeKind};
use meshguard_policy::MeshConfig;
use meshguard_proxy::source::{SvidFiles, WorkloadApi};
use meshguard_proxy::{Inbound, Outbound, Protocol, ProxyConfig, SvidStore};

#[derive(Args)]
pub struct ProxyArgs {
    /// The proxy's YAML configuration: workload, identity, policies, inbound and outbound
    /// listeners. See README.md ("meshguard proxy") for every key; errors name file and line.
    #[arg(long, env = "MESHGUARD_PROXY_CONFIG")]
    config: PathBuf,
    /// Operational log level (error, warn, info, debug), written to stderr.
    #[arg(long, env = "MESHGUARD_LOG", default_value = "info")]
    log_level: String,
}

enum IdentitySource {
    Files(SvidFiles),
    Api(WorkloadApi),
}

struct Parsed {
    cfg: ProxyConfig,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/config`), served beside the proxy.
    admin: Option<std::net::SocketAddr>,
    identity: IdentitySource,
    policies: Vec<PathBuf>,
    root_namespace: Option<String>,
}

struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, n: &Node, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{}:{}: {what}", self.path.display(), n.line)
    }

    fn text(&self, n: &Node, key: &str) -> Result<String> {
        match &n.kind {
            NodeKind::Str(s) => Ok(s.clone()),
            NodeKind::Int(i) => Ok(i.to_string()),
            NodeKind::Bool(b) => Ok(b.to_string()),
            _ => Err(self.err(n, &format!("`{key}` must be a string"))),
        }
    }

    fn map<'n>(
        &self,
        n: &'n Node,
        key: &str,
        known: &[&str],
    ) -> Result<&'n [(meshguard_policy::yaml::Key, Node)]> {
        let m = n
            .as_map()
            .ok_or_else(|| self.err(n, &format!("`{key}` must be a mapping")))?;
        for (k, _) in m {
            if !known.contains(&k.text.as_str()) {
                bail!(
                    "{}:{}: unknown key `{}` in `{key}` (known: {})",
                    self.path.display(),
                    k.line,
                    k.text,
                    known.join(", ")
                );
            }
        }
        Ok(m)
    }

    fn required<'n>(&self, parent: &'n Node, key: &str, field: &str) -> Result<&'n Node> {
        parent
            .get(field)
            .ok_or_else(|| self.err(parent, &format!("`{key}.{field}` is required")))
    }

    fn addr(&self, n: &Node, key: &str) -> Result<SocketAddr> {
        let t = self.text(n, key)?;
        t.parse().map_err(|_| {
            self.err(
                n,
                &format!("`{key}`: `{t}` is not an address like 127.0.0.1:15006"),
            )
        })
    }

    fn file(&self, n: &Node, key: &str) -> Result<PathBuf> {
        let base = self.path.parent().map(PathBuf::from).unwrap_or_default();
        Ok(base.join(self.text(n, key)?))
    }

    fn duration(&self, n: &Node, key: &str) -> Result<Duration> {
        let t = self.text(n, key)?;
        meshguard_policy::resource::parse_duration(&t).ok_or_else(|| {
            self.err(
                n,
                &format!("`{key}`: `{t}` is not a duration like 2s or 500ms"),
            )
        })
    }

    fn list<'n>(&self, n: &'n Node, key: &str) -> Result<&'n [Node]> {
        match &n.kind {
            NodeKind::Seq(items) => Ok(items),
            _ => Err(self.err(n, &format!("`{key}` must be a list"))),
        }
    }
}

fn parse(path: &Path) -> Result<Parsed> {
    let docs = crate::read_yaml(path, "proxy config")?;
    let Some(doc) = docs.first() else {
        bail!("{}: the file is empty", path.display())
    };
    let r = Reader { path };
    r.map(
        doc,
        "(top level)",
        &[
            "workload",
            "identity",
            "policies",
            "rootNamespace",
            "inbound",
            "outbound",
            "defaultDeny",
            "admin",
            "decisionLog",
            "reloadInterval",
            "detectTimeout",
            "idleTimeout",
        ],
    )?;
    let wl = r.required(doc, "(top level)", "workload")?;
    r.map(wl, "workload", &["namespace", "labels"])?;
    let namespace = r.text(
        r.required(wl, "workload", "namespace")?,
        "workload.namespace",
    )?;
    let mut labels = std::collections::BTreeMap::new();
    if let Some(l) = wl.get("labels") {
        for (k, v) in l
            .as_map()
            .ok_or_else(|| r.err(l, "`workload.labels` must be a mapping"))?
        {
            labels.insert(k.text.clone(), r.text(v, "workload.labels")?);
        }
    }
    let mut cfg = ProxyConfig::new(Workload { namespace, labels });

    let id = r.required(doc, "(top level)", "identity")?;
    r.map(id, "identity", &["workloadApi", "files", "spiffeId"])?;
    let identity = match (id.get("workloadApi"), id.get("files")) {
        (Some(sock), None) => {
            let s = r.text(sock, "identity.workloadApi")?;
            let socket = s
                .strip_prefix("unix://")
                .or_else(|| s.strip_prefix("unix:"))
                .unwrap_or(&s);
            let spiffe_id = match id.get("spiffeId") {
                Some(n) => Some(
                    SpiffeId::parse_workload(&r.text(n, "identity.spiffeId")?)
                        .map_err(|e| r.err(n, &format!("`identity.spiffeId`: {e}")))?,
                ),
                None => None,
            };
            IdentitySource::Api(WorkloadApi {
                socket: PathBuf::from(socket),
                spiffe_id,
            })
        }
        (None, Some(f)) => {
            r.map(f, "identity.files", &["cert", "key", "bundle"])?;
            IdentitySource::Files(SvidFiles {
                cert: r.file(r.required(f, "identity.files", "cert")?, "identity.files.cert")?,
                key: r.file(r.required(f, "identity.files", "key")?, "identity.files.key")?,
                bundle: r.file(r.required(f, "identity.files", "bundle")?, "identity.files.bundle")?,
            })
        }
        _ => bail!(
            "{}:{}: `identity` needs exactly one of `workloadApi: unix:/path/agent.sock` or `files: {{cert, key, bundle}}`",
            path.display(),
            id.line
        ),
    };

    let mut policies = Vec::new();
    if let Some(p) = doc.get("policies") {
        for item in r.list(p, "policies")? {
            policies.push(r.file(item, "policies")?);
        }
    }
    let root_namespace = doc
        .get("rootNamespace")
        .map(|n| r.text(n, "rootNamespace"))
        .transpose()?;
    if let Some(n) = doc.get("inbound") {
        for (i, l) in r.list(n, "inbound")?.iter().enumerate() {
            let key = format!("inbound[{i}]");
            r.map(l, &key, &["name", "listen", "port", "app", "protocol"])?;
            let protocol = match l
                .get("protocol")
                .map(|p| r.text(p, "protocol"))
                .transpose()?
                .as_deref()
            {
                None | Some("http") => Protocol::Http,
                Some("tcp") => Protocol::Tcp,
                Some(other) => {
                    return Err(r.err(
                        l,
                        &format!("`{key}.protocol`: `{other}` is not http or tcp"),
                    ))
                }
            };
            let port_node = r.required(l, &key, "port")?;
            let port = match port_node.kind {
                NodeKind::Int(p) if (1..=65535).contains(&p) => p as u16,
                _ => {
                    return Err(r.err(
                        port_node,
                        &format!(
                            "`{key}.port` must be a port number (the workload port policies name)"
                        ),
                    ))
                }
            };
            cfg.inbound.push(Inbound {
                name: l
                    .get("name")
                    .map(|n| r.text(n, "name"))
                    .transpose()?
                    .unwrap_or_else(|| key.clone()),
                listen: r.addr(r.required(l, &key, "listen")?, &format!("{key}.listen"))?,
                port,
                app: r.addr(r.required(l, &key, "app")?, &format!("{key}.app"))?,
                protocol,
            });
        }
    }
    if let Some(n) = doc.get("outbound") {
        for (i, o) in r.list(n, "outbound")?.iter().enumerate() {
            let key = format!("outbound[{i}]");
            r.map(o, &key, &["name", "listen", "upstream", "spiffeId"])?;
            let idn = r.required(o, &key, "spiffeId")?;
            cfg.outbound.push(Outbound {
                name: o
                    .get("name")
                    .map(|n| r.text(n, "name"))
                    .transpose()?
                    .unwrap_or_else(|| key.clone()),
                listen: r.addr(r.required(o, &key, "listen")?, &format!("{key}.listen"))?,
                upstream: r.addr(r.required(o, &key, "upstream")?, &format!("{key}.upstream"))?,
                spiffe_id: SpiffeId::parse_workload(&r.text(idn, "spiffeId")?)
                    .map_err(|e| r.err(idn, &format!("`{key}.spiffeId`: {e}")))?,
            });
        }
    }
    for o in &cfg.outbound {
        if !o.listen.ip().is_loopback() {
            eprintln!(
                "meshguard proxy: warning: outbound listener {} ({}) is not on loopback: anyone who reaches it can call {} with this workload's identity",
                o.name, o.listen, o.spiffe_id
            );
        }
    }
    if cfg.inbound.is_empty() && cfg.outbound.is_empty() {
        bail!(
            "{}: no `inbound` or `outbound` listeners; nothing to proxy",
            path.display()
        );
    }
    if let Some(n) = doc.get("defaultDeny") {
        cfg.default_deny = match n.kind {
            NodeKind::Bool(b) => b,
            _ => return Err(r.err(n, "`defaultDeny` must be true or false")),
        };
    }
    let admin = match doc.get("admin") {
        Some(n) => Some(r.addr(n, "admin")?),
        None => None,
    };
    if let Some(n) = doc.get("decisionLog") {
        cfg.decision_log = Sink::parse(&r.text(n, "decisionLog")?);
    }
    if let Some(n) = doc.get("reloadInterval") {
        cfg.reload_interval = r.duration(n, "reloadInterval")?;
    }
    if let Some(n) = doc.get("detectTimeout") {
        cfg.detect_timeout = r.duration(n, "detectTimeout")?;
    }
    if let Some(n) = doc.get("idleTimeout") {
        cfg.idle_timeout = r.duration(n, "idleTimeout")?;
    }
    Ok(Parsed {
        cfg,
        admin,
        identity,
        policies,
        root_namespace,
    })
}

pub fn run(a: ProxyArgs) -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log_level)
        .with_context(|| format!("--log-level `{}`", a.log_level))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let p = parse(&a.config)?;
    let mut mesh = MeshConfig::default();
    if let Some(r) = &p.root_namespace {
        mesh.root_namespace = r.clone();
    }
    let (source, describe) = if p.policies.is_empty() {
        (
            Arc::new(crate::embedded_source()) as Arc<dyn PolicySource>,
            "the embedded example policies".to_owned(),
        )
    } else {
        let list = p
            .policies
            .iter()
            .map(|x| x.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        (
            Arc::new(Files(p.policies.clone())) as Arc<dyn PolicySource>,
            list,
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .build()
            .context("building the HTTP client for JWKS")?;
        let state = State::new(source, mesh, client).map_err(|e| {
            anyhow::anyhow!("the policies do not load, so nothing is proxied:\n{e}")
        })?;
        let store = match p.identity {
            IdentitySource::Files(f) => {
                let m = f.load()?;
                let store = SvidStore::new(m)?;
                tokio::spawn(f.watch(store.clone(), Duration::from_secs(2)));
                store
            }
            IdentitySource::Api(api) => {
                let (m, stream) = tokio::time::timeout(Duration::from_secs(30), api.first())
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "no SVID from the Workload API at {} within 30s",
                            api.socket.display()
                        )
                    })??;
                let store = SvidStore::new(m)?;
                tokio::spawn(api.follow(store.clone(), stream));
                store
            }
        };
        let cfg = p.cfg.clone();
        let me = store.id();
        let (stop_admin, admin_stop) = tokio::sync::watch::channel(false);
        let admin = match p.admin {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} (admin)"))?;
                let bound = l.local_addr().ok();
                tokio::spawn(meshguard_server::serve_admin(l, state.clone(), admin_stop));
                bound
            }
            None => None,
        };
        let labels = cfg
            .workload
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let ran = meshguard_proxy::run(state, store, p.cfg, crate::shutdown_signal(), |b| {
            eprintln!(
                "meshguard proxy: {me} for workload {}/{labels}; policies from {describe}; default {}",
                cfg.workload.namespace,
                if cfg.default_deny {
                    "deny"
                } else {
                    "allow (Istio)"
                }
            );
            for (l, addr) in cfg.inbound.iter().zip(&b.inbound) {
                let protocol = match l.protocol {
                    meshguard_proxy::Protocol::Http => "http",
                    meshguard_proxy::Protocol::Tcp => "tcp",
                };
                eprintln!(
                    "  inbound {}: {addr} -> app {} ({protocol}, workload port {})",
                    l.name, l.app, l.port
                );
            }
            for (o, addr) in cfg.outbound.iter().zip(&b.outbound) {
                eprintln!(
                    "  outbound {}: {addr} -> mTLS to {} (must be {})",
                    o.name, o.upstream, o.spiffe_id
                );
            }
            if let Some(ad) = admin {
                eprintln!("  admin: http://{ad}/metrics  /healthz  /readyz  /config");
            }
        })
        .await;
        let _ = stop_admin.send(true);
        ran?;
        Ok(ExitCode::SUCCESS)
    })
}
