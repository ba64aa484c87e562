//! `meshguard serve`: wiring from flags, environment and config file to the server crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use meshguard_engine::dlog::Sink;
use std::sync::Arc;

use meshguard_engine::{Files, PolicySource, State, Workload};
use meshguard_server::config::ServeFile;
use meshguard_server::ServeConfig;

use crate::{mesh_config, PolicyArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// A YAML config file; its keys mirror these flags in camelCase (grpcListen, httpListen,
    /// adminListen, policies, meshConfig, rootNamespace, pathNormalization, providers, workload,
    /// trustedProxies, httpPathPrefix, decisionLog, reloadInterval, logLevel). Flags and
    /// environment variables override it.
    #[arg(long, env = "MESHGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Envoy ext_authz gRPC listener (`off` to disable). [default: 127.0.0.1:9191]
    #[arg(long, env = "MESHGUARD_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// HTTP forward-auth listener for nginx auth_request, Traefik, Caddy, Envoy HTTP ext_authz
    /// (`off` to disable). [default: 127.0.0.1:9192]
    #[arg(long, env = "MESHGUARD_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Admin listener: /metrics, /healthz, /readyz, /config (`off` to disable). [default: 127.0.0.1:9193]
    #[arg(long, env = "MESHGUARD_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// The destination workload when a request does not name one, as `namespace/app=name,version=v1`
    /// (for a meshguard deployed beside one workload).
    #[arg(long, env = "MESHGUARD_WORKLOAD")]
    pub workload: Option<String>,
    /// Peers (CIDRs) whose X-Original-*/X-Forwarded-*/X-Meshguard-Workload headers are believed in
    /// HTTP mode. [default: 127.0.0.1/32,::1/128]
    #[arg(long, env = "MESHGUARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Which headers describe the original request in HTTP mode: `nginx` (X-Original-Method,
    /// X-Original-URI, X-Original-Host), `forwarded` (Traefik/Caddy: X-Forwarded-Method,
    /// X-Forwarded-Uri, X-Forwarded-Host) or `envoy` (the request line). [default: nginx]
    #[arg(long, env = "MESHGUARD_FORWARD_AUTH")]
    pub forward_auth: Option<String>,
    /// Believe X-Forwarded-Client-Cert (URI=spiffe://...) from the trusted proxies as the caller's
    /// mesh identity. Only safe when the proxy sets or clears that header on every request.
    #[arg(long, env = "MESHGUARD_TRUST_FORWARDED_CLIENT_CERT")]
    pub trust_forwarded_client_cert: bool,
    /// HTTP mode: run an AuthConfig for requests to a host and path prefix, as
    /// `[host]/path=authconfig` (e.g. `shop.example.com/api=gloo-system.api-keys`, `/admin=basic`).
    /// gRPC callers name the AuthConfig per route in context_extensions `config_id` instead.
    #[arg(
        long = "auth-binding",
        env = "MESHGUARD_AUTH_BINDINGS",
        value_delimiter = ','
    )]
    pub auth_bindings: Vec<String>,
    /// HTTP mode: the labels of the route a host and path prefix stand for, as
    /// `[host]/path=key=value;key=value` (e.g. `/ratings=route=ratings`). Gloo ExtAuthPolicies
    /// select routes by them (`applyToRoutes[].route.labels`); gRPC callers send them per route
    /// as context extensions `route_label.<key>` instead.
    #[arg(
        long = "route-labels",
        env = "MESHGUARD_ROUTE_LABELS",
        value_delimiter = ','
    )]
    pub route_labels: Vec<String>,
    /// Path prefix to strip in HTTP mode (Envoy HTTP ext_authz `path_prefix`).
    #[arg(long, env = "MESHGUARD_HTTP_PATH_PREFIX")]
    pub http_path_prefix: Option<String>,
    /// Where decision lines (JSON) go: stdout, stderr, off, or a file path. [default: stdout]
    #[arg(long, env = "MESHGUARD_DECISION_LOG")]
    pub decision_log: Option<String>,
    /// Rotate a decision log file past this many bytes (to FILE.1, FILE.2, FILE.3; `0`: never).
    /// [default: 268435456]
    #[arg(long, env = "MESHGUARD_DECISION_LOG_MAX_BYTES")]
    pub decision_log_max_bytes: Option<u64>,
    /// How often policy files are checked for changes (`0s`: only on SIGHUP). [default: 2s]
    #[arg(long, env = "MESHGUARD_RELOAD_INTERVAL")]
    pub reload_interval: Option<String>,
    /// Operational log level (error, warn, info, debug), written to stderr. [default: info]
    #[arg(long, env = "MESHGUARD_LOG")]
    pub log_level: Option<String>,
    /// Audit mode for a workload, `namespace` or `namespace/app=name,...` (repeatable): its
    /// requests are decided and logged but never denied; the decision log and
    /// meshguard_audit_mode_would_deny_total say what would have been denied and by which policy.
    #[arg(long = "audit", value_name = "WORKLOAD")]
    pub audit: Vec<String>,
    /// Operational log format: text (colours only on a terminal) or json (one object per line).
    #[arg(long, env = "MESHGUARD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Largest CheckRequest accepted on gRPC, in bytes (larger ones are refused with
    /// OUT_OF_RANGE, which Envoy turns into a denial; logged and counted). [default: 4194304, as OPA-Envoy]
    #[arg(long, env = "MESHGUARD_GRPC_MAX_MESSAGE_BYTES")]
    pub grpc_max_message_bytes: Option<usize>,
    /// Read the policies from the Kubernetes API instead of files: list and watch Istio's
    /// AuthorizationPolicy, PeerAuthentication and RequestAuthentication (security.istio.io v1,
    /// else v1beta1), Gloo AuthConfigs, and the Secrets and ConfigMaps those name. Not ready until
    /// the first full read; a bad object is refused (a Warning Event on it, /readyz degraded)
    /// and the last good set stays. The cluster comes from --kubeconfig, KUBECONFIG, or the pod's
    /// service account.
    #[arg(long, env = "MESHGUARD_KUBERNETES", conflicts_with = "policies")]
    pub kubernetes: bool,
    /// The kubeconfig file for --kubernetes (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "MESHGUARD_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes, read only these namespaces (repeatable; for teams without cluster-wide
    /// rights: a Role in each namespace is enough). [default: all namespaces]
    #[arg(
        long = "kubernetes-namespace",
        env = "MESHGUARD_KUBERNETES_NAMESPACES",
        value_delimiter = ',',
        requires = "kubernetes"
    )]
    pub kubernetes_namespaces: Vec<String>,
    /// Read the policies from a bundle URL (a tar.gz that `meshguard bundle build` makes) instead
    /// of files: polled with If-None-Match; a bundle that cannot be fetched, read or verified is
    /// refused and the last good one stays (/readyz says degraded). Not ready until the first
    /// good bundle.
    #[arg(long, env = "MESHGUARD_BUNDLE", conflicts_with_all = ["policies", "kubernetes"])]
    pub bundle: Option<String>,
    /// Refuse bundles not signed (OPA's .signatures.json) with the private key of this PEM
    /// public key (RSA or EC).
    #[arg(long, env = "MESHGUARD_BUNDLE_VERIFICATION_KEY", requires = "bundle")]
    pub bundle_verification_key: Option<PathBuf>,
    /// The verification key's id (OPA's signing.keyid; with one key, as OPA, the token's kid is
    /// not compared). [default: default]
    #[arg(
        long,
        env = "MESHGUARD_BUNDLE_KEY_ID",
        requires = "bundle_verification_key"
    )]
    pub bundle_key_id: Option<String>,
    /// The scope bundle signatures must carry (OPA's scope). [default: none]
    #[arg(
        long,
        env = "MESHGUARD_BUNDLE_SCOPE",
        requires = "bundle_verification_key"
    )]
    pub bundle_scope: Option<String>,
    /// How often the bundle URL is polled. [default: 30s]
    #[arg(long, env = "MESHGUARD_BUNDLE_POLL", requires = "bundle")]
    pub bundle_poll: Option<String>,
}

/// Reads the config file into flag defaults (flags and environment variables win).
fn apply_config_file(a: &mut ServeArgs) -> Result<()> {
    let Some(path) = a.config.clone() else {
        return Ok(());
    };
    let f = ServeFile::load(&path)?;
    fn or<T>(flag: &mut Option<T>, file: Option<T>) {
        if flag.is_none() {
            *flag = file;
        }
    }
    fn or_list<T>(flag: &mut Vec<T>, file: Vec<T>) {
        if flag.is_empty() {
            *flag = file;
        }
    }
    or(&mut a.grpc_listen, f.grpc_listen);
    or(&mut a.http_listen, f.http_listen);
    or(&mut a.admin_listen, f.admin_listen);
    or(&mut a.workload, f.workload);
    or(&mut a.http_path_prefix, f.http_path_prefix);
    or(&mut a.decision_log, f.decision_log);
    or(&mut a.decision_log_max_bytes, f.decision_log_max_bytes);
    or(&mut a.reload_interval, f.reload_interval);
    or(&mut a.log_level, f.log_level);
    or(&mut a.grpc_max_message_bytes, f.grpc_max_message_bytes);
    or(&mut a.forward_auth, f.forward_auth);
    a.trust_forwarded_client_cert |= f.trust_forwarded_client_cert.unwrap_or(false);
    a.policy.default_allow |= f.default_deny == Some(false);
    or(&mut a.policy.root_namespace, f.root_namespace);
    or(&mut a.policy.mesh_config, f.mesh_config);
    or(
        &mut a.policy.path_normalization,
        f.path_normalization.map(crate::Normalization::from),
    );
    or_list(&mut a.trusted_proxies, f.trusted_proxies);
    or_list(&mut a.auth_bindings, f.auth_bindings);
    or_list(&mut a.route_labels, f.route_labels);
    or_list(&mut a.policy.providers, f.providers);
    or_list(&mut a.policy.policies, f.policies);
    or_list(&mut a.audit, f.audit);
    Ok(())
}

/// `namespace` or `namespace/labels` (a bare namespace puts every workload there in audit mode).
fn audit_scope(w: &str) -> std::result::Result<Workload, String> {
    if w.contains('/') {
        Workload::parse(w).map_err(|e| e.to_string())
    } else {
        meshguard_engine::state::check_namespace(w).map_err(|e| e.to_string())?;
        Ok(Workload {
            namespace: w.to_owned(),
            labels: Default::default(),
        })
    }
}

fn listen(v: Option<&str>, default: &str, what: &str) -> Result<Option<SocketAddr>> {
    let v = v.unwrap_or(default);
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).with_context(|| {
        format!("--{what}-listen `{v}` is not an address like 127.0.0.1:9191 (or `off`)")
    })
}

pub fn run(mut a: ServeArgs) -> Result<ExitCode> {
    apply_config_file(&mut a)?;
    let level = a.log_level.clone().unwrap_or_else(|| "info".to_owned());
    crate::logging::init_logging_as(&level, &a.log_format)?;

    let mesh = mesh_config(&a.policy)?;
    for ns in &a.kubernetes_namespaces {
        meshguard_engine::state::check_namespace(ns)
            .map_err(|e| anyhow::anyhow!("--kubernetes-namespace {e}"))?;
    }
    let kubernetes = a.kubernetes;
    let origin = if let Some(url) = &a.bundle {
        Origin::Bundle(bundle_options(&a, url)?)
    } else if kubernetes {
        Origin::Kubernetes
    } else if a.policy.policies.is_empty() {
        Origin::Local(
            Arc::new(crate::embedded_source()),
            "the embedded example policies (examples/policies: demo material, not for production; give --policies)".to_owned(),
        )
    } else {
        let list = a
            .policy
            .policies
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Origin::Local(Arc::new(Files(a.policy.policies.clone())), list)
    };
    let remote_source = !matches!(origin, Origin::Local(..));
    let mut cfg = ServeConfig {
        grpc: listen(a.grpc_listen.as_deref(), "127.0.0.1:9191", "grpc")?,
        http: listen(a.http_listen.as_deref(), "127.0.0.1:9192", "http")?,
        admin: listen(a.admin_listen.as_deref(), "127.0.0.1:9193", "admin")?,
        ..ServeConfig::default()
    };
    if let Some(w) = &a.workload {
        cfg.workload = Some(Workload::parse(w).map_err(|e| anyhow::anyhow!("--workload {e}"))?);
    }
    if !a.trusted_proxies.is_empty() {
        cfg.trusted_proxies = a
            .trusted_proxies
            .iter()
            .map(|c| {
                meshguard_policy::resource::parse_ip_block(c.trim()).ok_or_else(|| {
                    anyhow::anyhow!("--trusted-proxies: `{c}` is not an IP address or CIDR")
                })
            })
            .collect::<Result<_>>()?;
    }
    if let Some(p) = &a.http_path_prefix {
        cfg.http_path_prefix = p.clone();
    }
    cfg.auth_bindings = a
        .auth_bindings
        .iter()
        .map(|b| {
            meshguard_server::http::AuthBinding::parse(b.trim())
                .map_err(|e| anyhow::anyhow!("--auth-binding {e}"))
        })
        .collect::<Result<_>>()?;
    cfg.route_bindings = a
        .route_labels
        .iter()
        .map(|b| {
            meshguard_server::http::RouteBinding::parse(b.trim())
                .map_err(|e| anyhow::anyhow!("--route-labels {e}"))
        })
        .collect::<Result<_>>()?;
    if let Some(f) = &a.forward_auth {
        cfg.forward_auth = meshguard_server::http::ForwardStyle::parse(f).ok_or_else(|| {
            anyhow::anyhow!("--forward-auth `{f}`: use nginx, forwarded (Traefik, Caddy) or envoy")
        })?;
    }
    cfg.trust_forwarded_client_cert = a.trust_forwarded_client_cert;
    cfg.default_deny = !a.policy.default_allow;
    cfg.audit = a
        .audit
        .iter()
        .map(|w| audit_scope(w).map_err(|e| anyhow::anyhow!("--audit {e}")))
        .collect::<Result<_>>()?;
    let audit_note = (!cfg.audit.is_empty()).then(|| a.audit.join(", "));
    if let Some(n) = a.grpc_max_message_bytes {
        cfg.max_grpc_message_bytes = n;
    }
    let trust_xfcc = cfg.trust_forwarded_client_cert;
    if let Some(l) = &a.decision_log {
        cfg.decision_log = Sink::parse(l);
    }
    if let Some(n) = a.decision_log_max_bytes {
        cfg.decision_log_rotation.max_bytes = (n > 0).then_some(n);
    }
    if let Some(r) = &a.reload_interval {
        cfg.reload_interval = meshguard_policy::read::parse_duration(r).with_context(|| {
            format!("--reload-interval `{r}` is not a duration like 2s, 500ms or 0s")
        })?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = reqwest::Client::builder().build().context("building the HTTP client for JWKS")?;
        let (state, describe) = match origin {
            Origin::Bundle(options) => {
            let b = meshguard_engine::bundle::BundleSource::start(options, client.clone());
            let describe = b.describe();
            tracing::info!(source = %describe, "reading policies from a bundle; not serving until the first good one");
            b.wait_loaded(std::time::Duration::from_secs(5)).await;
            (first_remote_generation(b, mesh, client).await, describe)
            }
            Origin::Kubernetes => {
            let options = meshguard_kube::KubeOptions {
                namespaces: a.kubernetes_namespaces.clone(),
                instance: std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .unwrap_or_default(),
            };
            let kube = meshguard_kube::KubeSource::start(a.kubeconfig.clone(), options)
                .await
                .map_err(|e| anyhow::anyhow!("--kubernetes: {e}"))?;
            let describe = kube.describe();
            tracing::info!(source = %describe, "reading policies from Kubernetes; not serving until the first full read");
            kube.wait_synced(std::time::Duration::from_secs(5)).await;
            (first_remote_generation(kube, mesh, client).await, describe)
            }
            Origin::Local(source, describe) => match State::new(source, mesh, client) {
                Ok(s) => (s, describe),
                Err(e) => bail!("the policies do not load, so nothing is served:\n{e}"),
            },
        };
        let g = state.current();
        let resources = g.set.resources().len();
        let warnings = g.warnings.len();
        let allow_namespaces = g.namespaces_with_allow();
        drop(g);
        let default_deny = cfg.default_deny;
        let shutdown = crate::shutdown_signal();
        meshguard_server::serve(state, cfg, shutdown, |b| {
            eprintln!("meshguard serve: {resources} resources from {describe} (policy generation 1, {warnings} lint warnings; run `meshguard lint` to see them)");
            if default_deny {
                eprintln!("  default deny: requests to workloads that no ALLOW policy selects are refused (--default-allow for Istio's allow)");
            } else {
                eprintln!("  default allow (Istio): requests to workloads that no ALLOW policy selects are ALLOWED");
            }
            if let Some(a) = &audit_note {
                eprintln!("  AUDIT MODE for {a}: requests there are decided and logged, never denied");
            }
            if allow_namespaces.is_empty() {
                eprintln!("  WARNING: no ALLOW AuthorizationPolicy in this set: {}", if default_deny { "every request is denied" } else { "every request that no DENY policy refuses is allowed" });
            } else {
                eprintln!("  namespaces with ALLOW policies: {}", allow_namespaces.into_iter().collect::<Vec<_>>().join(", "));
            }
            if let Some(g) = b.grpc {
                eprintln!("  Envoy ext_authz gRPC (envoy.service.auth.v3.Authorization/Check, grpc.health.v1, reflection): {g}");
            }
            if let Some(h) = b.http {
                eprintln!("  HTTP forward-auth (nginx auth_request, Traefik, Caddy, Envoy HTTP ext_authz):  http://{h}");
            }
            if let Some(ad) = b.admin {
                eprintln!("  admin: http://{ad}/metrics  /healthz  /readyz  /config  /graph");
            }
            eprintln!("  decision log: {}", match &a.decision_log { Some(s) => s.as_str(), None => "stdout" });
            if let Some(h) = b.http.filter(|_| !remote_source) {
                let id = "-H 'X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/production/sa/frontend'";
                eprintln!("try it (nginx-style forward-auth against the bundled examples):");
                if trust_xfcc {
                    eprintln!("  curl -i http://{h}/auth -H 'X-Original-Method: GET' -H 'X-Original-URI: /api/v1/users' -H 'X-Meshguard-Workload: production/app=backend' {id}   # 200");
                    eprintln!("  curl -i http://{h}/auth -H 'X-Original-Method: GET' -H 'X-Original-URI: /api/admin'    -H 'X-Meshguard-Workload: production/app=backend' {id}   # 403");
                } else {
                    eprintln!("  curl -i http://{h}/auth -H 'X-Original-Method: GET' -H 'X-Original-URI: /api/v1/users' -H 'X-Meshguard-Workload: production/app=backend'   # 403: plaintext under STRICT mTLS");
                    eprintln!("  (restart with --trust-forwarded-client-cert and add {id} to call as the frontend: 200)");
                }
            }
            if kubernetes {
                eprintln!("stop with Ctrl-C or SIGTERM; object changes apply as the API server reports them");
            } else if remote_source {
                eprintln!("stop with Ctrl-C or SIGTERM; a new bundle applies when a poll fetches it");
            } else {
                eprintln!("stop with Ctrl-C or SIGTERM; reload with SIGHUP (files are also watched)");
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Where serve's policies come from.
enum Origin {
    /// Files or the embedded examples, and how to name them in the banner.
    Local(Arc<dyn PolicySource>, String),
    Bundle(meshguard_engine::bundle::BundleOptions),
    Kubernetes,
}

fn bundle_options(a: &ServeArgs, url: &str) -> Result<meshguard_engine::bundle::BundleOptions> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--bundle `{url}` is not an http:// or https:// URL");
    }
    let key = match &a.bundle_verification_key {
        Some(p) => {
            let pem = std::fs::read(p)
                .with_context(|| format!("--bundle-verification-key: reading {}", p.display()))?;
            Some(
                meshguard_engine::bundle::VerificationKey::from_pem(
                    &pem,
                    a.bundle_key_id.as_deref().unwrap_or("default"),
                    a.bundle_scope.as_deref().unwrap_or(""),
                )
                .map_err(|e| anyhow::anyhow!("--bundle-verification-key {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let interval = match &a.bundle_poll {
        Some(p) => meshguard_policy::read::parse_duration(p)
            .filter(|d| !d.is_zero())
            .with_context(|| format!("--bundle-poll `{p}` is not a duration like 30s or 500ms"))?,
        None => std::time::Duration::from_secs(30),
    };
    Ok(meshguard_engine::bundle::BundleOptions {
        url: url.to_owned(),
        key,
        interval,
        timeout: std::time::Duration::from_secs(30),
    })
}

/// The first policy set from a cluster or a bundle. Objects that do not compile are not a
/// reason to exit (every replica would crash-loop on one bad object): the errors are logged (and
/// reported as Events by a Kubernetes source), and the next change is tried until one compiles.
/// Nothing is served meanwhile (not ready).
async fn first_remote_generation<S: PolicySource + Clone + 'static>(
    source: S,
    mesh: meshguard_policy::MeshConfig,
    client: reqwest::Client,
) -> Arc<State> {
    let changed = source.changed();
    loop {
        let notified = changed.as_ref().map(|n| n.notified());
        match State::new(source.clone(), mesh.clone(), client.clone()) {
            Ok(s) => return s,
            Err(e) => {
                source.refused(&e);
                tracing::error!(error = %e, "the Kubernetes objects do not compile; nothing is served until they do (waiting for a change)");
            }
        }
        match notified {
            Some(n) => n.await,
            None => tokio::time::sleep(std::time::Duration::from_secs(2)).await,
        }
        tokio::time::sleep(meshguard_engine::SOURCE_SETTLE).await;
    }
}
