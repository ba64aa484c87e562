//! `meshguard proxy`: reads one YAML file (parsed by `meshguard_proxy::ProxyFile`) and runs
//! the mTLS sidecar.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use std::sync::Arc;

use meshguard_engine::{Files, PolicySource, State};
use meshguard_proxy::{IdentitySource, ProxyFile, SvidStore};

#[derive(Args)]
pub struct ProxyArgs {
    /// The proxy's YAML configuration: workload, identity, policies, inbound and outbound
    /// listeners. See README.md ("meshguard proxy") for every key; errors name file and line.
    #[arg(long, env = "MESHGUARD_PROXY_CONFIG")]
    config: PathBuf,
    /// Operational log level (error, warn, info, debug), written to stderr.
    #[arg(long, env = "MESHGUARD_LOG", default_value = "info")]
    log_level: String,
    /// Operational log format: text (colours only on a terminal) or json (one object per line).
    #[arg(long, env = "MESHGUARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

pub fn run(a: ProxyArgs) -> Result<ExitCode> {
    crate::logging::init_logging_as(&a.log_level, &a.log_format)?;
    let p = ProxyFile::load(&a.config)?;
    for w in &p.warnings {
        eprintln!("meshguard proxy: warning: {w}");
    }
    // The mesh config (rootNamespace, trustDomain, pathNormalization, extensionProviders for
    // CUSTOM policies that call an external authorizer), read as `serve --mesh-config` reads it.
    let mesh = crate::mesh_config(&crate::PolicyArgs {
        policies: Vec::new(),
        mesh_config: p.mesh_config.clone(),
        root_namespace: p.root_namespace.clone(),
        path_normalization: None,
        providers: Vec::new(),
        default_allow: false,
    })?;
    let (source, describe) = if p.policies.is_empty() {
        (
            Arc::new(crate::embedded_source()) as Arc<dyn PolicySource>,
            "the embedded example policies (demo material, not for production; set `policies:`)"
                .to_owned(),
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
                    meshguard_proxy::Protocol::Http2 => "http2",
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
                eprintln!("  admin: http://{ad}/metrics  /healthz  /readyz  /config  /graph");
            }
        })
        .await;
        let _ = stop_admin.send(true);
        ran?;
        Ok(ExitCode::SUCCESS)
    })
}
