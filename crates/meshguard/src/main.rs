//! `meshguard`: the zero-trust security layer of a service mesh, in one binary.

#![forbid(unsafe_code)]

mod agent_cmd;
mod ca_cmd;
mod embedded;
mod proxy_cmd;
mod serve;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use meshguard_authn::{Authenticator, AuthnOutcome, AuthnSettings, Rejected};
use meshguard_policy::load::{load_paths, parse_mesh_config, parse_request, Loaded};
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::{
    Diagnostic, Identity, MeshConfig, PathNormalization, PolicySet, Request, Severity,
};

/// Exit code when the request is denied (`check`).
const EXIT_DENIED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "meshguard",
    version,
    about = "Zero-trust security for a service mesh: Istio AuthorizationPolicy, PeerAuthentication and RequestAuthentication, decided exactly as Istio decides.",
    long_about = None,
    after_help = "Start here:\n  meshguard serve                        run the authorization server on the bundled example policies
  meshguard check --example all          decide the bundled example requests against the bundled policies\n  meshguard check --request req.yaml     decide one request (see README for the request format)\n  meshguard lint policies/               validate policies as istiod would, with file:line:field errors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the authorization server: Envoy ext_authz gRPC, HTTP forward-auth and admin endpoints,
    /// deciding with the policies (default: the bundled examples), reloading them on change.
    Serve(Box<serve::ServeArgs>),
    /// Decide one request (or the bundled examples) and explain the decision.
    ///
    /// Exit status: 0 allowed, 3 denied, 1 bad input (policies that do not load, a malformed request).
    Check(CheckArgs),
    /// Validate policy files as strictly as istiod, reporting every problem with file, line and field.
    ///
    /// Warns (without failing) about rules Istio accepts but that can never match. Exit status: 0 when
    /// there are no errors, 1 otherwise.
    Lint(LintArgs),
    /// Print the bundled example policies (the embedded default), e.g. to start your own set.
    Examples,
    /// A SPIFFE certificate authority: create one, issue X.509-SVIDs and JWT-SVIDs, print the
    /// trust bundle (PEM or SPIFFE JWK Set).
    Ca(ca_cmd::CaArgs),
    /// Serve the SPIFFE Workload API (X.509-SVIDs with rotation, JWT-SVIDs) on a Unix socket.
    Agent(agent_cmd::AgentArgs),
    /// Run the mTLS sidecar: inbound listeners terminate mTLS and enforce PeerAuthentication and
    /// AuthorizationPolicy (per connection for TCP, per request for HTTP) in front of the app;
    /// outbound listeners take the app's plaintext and originate mTLS to upstream proxies.
    Proxy(proxy_cmd::ProxyArgs),
}

#[derive(Args)]
pub(crate) struct PolicyArgs {
    /// Policy files or directories (searched recursively for *.yaml, *.yml, *.json). Multi-document
    /// YAML and `kind: List` are accepted. Default: the bundled example policies.
    #[arg(
        long = "policies",
        short = 'p',
        env = "MESHGUARD_POLICIES",
        value_delimiter = ','
    )]
    pub(crate) policies: Vec<PathBuf>,
    /// A MeshConfig YAML (rootNamespace, trustDomain, trustDomainAliases, pathNormalization,
    /// extensionProviders). Flags below override it.
    #[arg(long, env = "MESHGUARD_MESH_CONFIG")]
    pub(crate) mesh_config: Option<PathBuf>,
    /// The root namespace: policies there apply mesh-wide.
    #[arg(long, env = "MESHGUARD_ROOT_NAMESPACE")]
    pub(crate) root_namespace: Option<String>,
    /// Path normalisation applied before matching `paths` (Istio's meshConfig.pathNormalization).
    #[arg(long, env = "MESHGUARD_PATH_NORMALIZATION", value_enum)]
    pub(crate) path_normalization: Option<Normalization>,
    /// Name of an ext_authz provider that exists (meshConfig.extensionProviders); repeatable.
    /// CUSTOM policies naming any other provider act as DENY, as in Istio.
    #[arg(long = "provider", env = "MESHGUARD_PROVIDERS", value_delimiter = ',')]
    pub(crate) providers: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Normalization {
    None,
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// The request to decide, YAML or JSON (`-` for standard input). See README "Request format".
    #[arg(long, short = 'r', conflicts_with = "example")]
    request: Option<String>,
    /// Decide a bundled example request by file name, or `all` of them.
    #[arg(long)]
    example: Option<String>,
    /// Output format: human text, or one JSON object per request.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Output,
}

#[derive(Args)]
struct LintArgs {
    /// Policy files or directories to validate.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Mesh settings to lint against (see `check --help`): enables warnings about CUSTOM
    /// providers that do not exist and path rules weakened by the path normalisation.
    #[arg(long, env = "MESHGUARD_MESH_CONFIG")]
    mesh_config: Option<PathBuf>,
    /// Output format: `file:line:col: severity: field: message` lines, or a JSON array.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: Output,
    /// Treat warnings as errors (exit 1 when there are any).
    #[arg(long)]
    deny_warnings: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Check(a) => check(a),
        Command::Ca(a) => ca_cmd::run(a),
        Command::Agent(a) => agent_cmd::run(a),
        Command::Proxy(a) => proxy_cmd::run(a),
        Command::Lint(a) => lint(a),
        Command::Examples => {
            for (name, text) in embedded::POLICIES {
                println!("# ---- examples/policies/{name}");
                println!("{}", text.trim_end());
                println!("---");
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads a YAML (or JSON) file into documents; errors name the file, line and column.
pub(crate) fn read_yaml(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<meshguard_policy::yaml::Node>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    parse_documents(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: invalid YAML: {}",
            path.display(),
            e.line,
            e.col,
            e.message
        )
    })
}

pub(crate) fn mesh_config(a: &PolicyArgs) -> Result<MeshConfig> {
    let mut mesh = match &a.mesh_config {
        Some(path) => {
            let docs = read_yaml(path, "mesh config")?;
            match docs.first() {
                Some(d) => {
                    parse_mesh_config(d).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                None => MeshConfig::default(),
            }
        }
        None => MeshConfig::default(),
    };
    if let Some(ns) = &a.root_namespace {
        mesh.root_namespace.clone_from(ns);
    }
    if let Some(n) = a.path_normalization {
        mesh.path_normalization = match n {
            Normalization::None => PathNormalization::None,
            Normalization::Base => PathNormalization::Base,
            Normalization::MergeSlashes => PathNormalization::MergeSlashes,
            Normalization::DecodeAndMergeSlashes => PathNormalization::DecodeAndMergeSlashes,
        };
    }
    mesh.extension_providers.extend(a.providers.iter().cloned());
    Ok(mesh)
}

fn load_policies(a: &PolicyArgs) -> Loaded {
    if a.policies.is_empty() {
        let mut l = Loaded::default();
        for (name, text) in embedded::POLICIES {
            l.add_text(text, &format!("<embedded>/examples/policies/{name}"));
        }
        l
    } else {
        load_paths(&a.policies)
    }
}

fn print_diagnostics(diags: &[Diagnostic], min: Severity) {
    for d in diags.iter().filter(|d| d.severity <= min) {
        eprintln!("{d}");
    }
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    let mesh = mesh_config(&a.policy)?;
    let loaded = load_policies(&a.policy);
    if loaded.has_errors() {
        print_diagnostics(&loaded.diagnostics, Severity::Error);
        let n = loaded.errors().count();
        bail!("{n} error(s) in the policies; nothing was decided (run `meshguard lint` for warnings too)");
    }
    let set = PolicySet::compile(loaded.resources, mesh).context("compiling policies")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = reqwest::Client::builder()
        .build()
        .context("building the HTTP client (JWKS, AuthConfig steps)")?;
    // AuthConfigs are built as the server builds them (Secrets resolved, Rego compiled); steps
    // that call out (LDAP, introspection, pass-through, OIDC discovery) do so when a request
    // runs them. Raw tokens are verified against the RequestAuthentication resources; remote
    // JWKS are fetched on first use, once.
    let chains = rt
        .block_on(async { meshguard_authn::extauth::Chains::build(&set, &client) })
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("building the AuthConfigs")?;
    let has_request_authn = set
        .resources()
        .iter()
        .any(|r| matches!(r, meshguard_policy::Resource::RequestAuthentication(_)));
    let g = meshguard_engine::state::Generation {
        id: 1,
        authn: Authenticator::new(&set, client.clone(), AuthnSettings::default()),
        chains,
        set,
        loaded_at: std::time::SystemTime::now(),
        files: Vec::new(),
        warnings: Vec::new(),
    };
    let set = &g.set;
    let authn = has_request_authn.then_some(&g.authn);

    let requests: Vec<(String, String)> = match (&a.request, &a.example) {
        (Some(r), _) if r == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the request from standard input")?;
            vec![("<stdin>".to_owned(), s)]
        }
        (Some(r), _) => vec![(
            r.clone(),
            std::fs::read_to_string(r).with_context(|| format!("cannot read request file {r}"))?,
        )],
        (None, Some(e)) => {
            let picked: Vec<(String, String)> = embedded::REQUESTS
                .iter()
                .filter(|(n, _)| {
                    e == "all" || *n == e.as_str() || n.trim_end_matches(".yaml") == e.as_str()
                })
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect();
            if picked.is_empty() {
                let names: Vec<&str> = embedded::REQUESTS.iter().map(|(n, _)| *n).collect();
                bail!(
                    "no bundled example request `{e}`; choose `all` or one of: {}",
                    names.join(", ")
                );
            }
            picked
        }
        (None, None) => {
            bail!("give the request to decide: --request FILE (or - for stdin), or --example all")
        }
    };

    let mut all_allowed = true;
    for (name, text) in &requests {
        let docs = parse_documents(text).map_err(|e| {
            anyhow::anyhow!(
                "{name}:{}:{}: invalid YAML/JSON: {}",
                e.line,
                e.col,
                e.message
            )
        })?;
        let Some(doc) = docs.first() else {
            bail!("{name}: the request is empty")
        };
        let (mut req, mut id) = parse_request(doc, set.mesh().path_normalization)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        // remote.ip as the sidecar's Envoy derives it from X-Forwarded-For.
        req.derive_remote_ip(set.mesh().xff_trusted_hops);
        // An AuthConfig named by the request (as Envoy's per-route config_id), or one a CUSTOM
        // policy calls: decided on the server's own path (AuthConfig, then Istio policies).
        let bound = doc
            .get("authConfig")
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        let mut extra = meshguard_authn::extauth::CheckExtra {
            body: doc
                .get("request")
                .and_then(|r| r.get("body"))
                .and_then(|b| b.as_str())
                .map(|b| b.as_bytes().to_vec()),
            ..Default::default()
        };
        if let Some(b) = &bound {
            extra
                .context_extensions
                .insert("config_id".to_owned(), b.clone());
        }
        let run_ext = |id: Identity| {
            rt.block_on(meshguard_engine::decide::decide_ext(
                &g,
                &req,
                id,
                &extra,
                bound.as_deref(),
            ))
        };
        if bound.is_some() {
            let o = run_ext(id);
            all_allowed &= o.allowed;
            print_outcome(a.output, name, requests.len() > 1, &o);
            continue;
        }
        let unauthenticated = id.clone();
        let mut authenticated = None;
        match authenticate(&rt, authn, set, &req, &id) {
            Some(AuthnOutcome::Rejected(r)) => {
                all_allowed = false;
                print_authn_rejection(a.output, name, requests.len() > 1, &r);
                continue;
            }
            Some(AuthnOutcome::Authenticated(au)) => {
                id.jwt = Some(au.identity.clone());
                authenticated = Some(au);
            }
            Some(AuthnOutcome::NoToken) | None => {}
        }
        let d = set.evaluate(&req, &id);
        if matches!(d.reason, meshguard_policy::Reason::CustomPending { .. })
            && !g.chains.is_empty()
        {
            let o = run_ext(unauthenticated);
            all_allowed &= o.allowed;
            print_outcome(a.output, name, requests.len() > 1, &o);
            continue;
        }
        all_allowed &= d.allowed;
        match a.output {
            Output::Json => {
                let mut j = d.to_json();
                if matches!(d.reason, meshguard_policy::Reason::NoAllowMatched) {
                    j["why"] = set.explain_no_match(&req, &id).into();
                }
                if let Some(au) = &authenticated {
                    j["request_principal"] = au.identity.principal.clone().into();
                    j["request_authentication"] = au.rule.clone().into();
                    j["headers_to_add"] = au
                        .headers_to_add
                        .iter()
                        .map(|(k, v)| serde_json::json!([k, v]))
                        .collect();
                    j["headers_to_remove"] = au.headers_to_remove.clone().into();
                }
                if requests.len() > 1 {
                    j["request"] = name.clone().into();
                }
                println!("{j}");
            }
            Output::Text => {
                if requests.len() > 1 {
                    println!("== {name}");
                }
                let verdict = if d.allowed { "ALLOW" } else { "DENY" };
                println!("{verdict} {} {}", d.status, d.reason);
                if matches!(d.reason, meshguard_policy::Reason::NoAllowMatched) {
                    for line in set.explain_no_match(&req, &id) {
                        println!("  why: {line}");
                    }
                }
                println!("  mTLS mode: {}", d.mtls_mode.as_str());
                if let Some(au) = &authenticated {
                    println!(
                        "  request principal: {} (token verified by RequestAuthentication {})",
                        au.identity.principal, au.rule
                    );
                    for (k, v) in &au.headers_to_add {
                        println!("  header to add: {k}: {v}");
                    }
                    for k in &au.headers_to_remove {
                        println!("  header to remove: {k}");
                    }
                }
                if let Some(h) = &req.http {
                    if let Some(p) = h.normalized_path() {
                        if p != h.raw_path {
                            println!(
                                "  path: {} -> {p} ({})",
                                h.raw_path,
                                set.mesh().path_normalization.as_str()
                            );
                        }
                    }
                } else {
                    println!(
                        "  TCP connection (no HTTP request): HTTP-only policy fields do not apply"
                    );
                }
                for au in &d.audit {
                    println!(
                        "  audit: matched AUDIT policy {} rule {}",
                        au.name(),
                        au.rule
                    );
                }
                if let Some(s) = &d.dry_run {
                    let what = if s.allowed { "allow" } else { "deny" };
                    match s.policy {
                        Some(p) => println!("  dry-run: the dry-run policies would {what} (policy {} rule {})", p.name(), p.rule),
                        None => println!("  dry-run: the dry-run policies would {what} (no dry-run policy matched)"),
                    }
                }
            }
        }
    }
    Ok(if all_allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    })
}

/// Prints a decision made on the server's path (an AuthConfig ran).
fn print_outcome(output: Output, name: &str, many: bool, o: &meshguard_engine::decide::Outcome) {
    let pairs = |v: &[(String, String)]| -> Vec<serde_json::Value> {
        v.iter().map(|(k, v)| serde_json::json!([k, v])).collect()
    };
    match output {
        Output::Json => {
            let mut j = serde_json::json!({
                "allowed": o.allowed,
                "status": o.status,
                "reason": o.reason,
                "policy": o.policy,
                "action": o.action,
                "auth_config": o.auth_config,
                "request_principal": o.request_principal,
                "headers_to_add": pairs(&o.headers_to_add),
                "headers_to_remove": o.headers_to_remove,
                "query_params_to_remove": o.query_params_to_remove,
                "response_headers": pairs(&o.response_headers),
                "www_authenticate": o.www_authenticate,
                "dynamic_metadata": o.dynamic_metadata,
            });
            if !o.allowed {
                j["body"] = o.body().into();
            }
            if many {
                j["request"] = name.into();
            }
            println!("{j}");
        }
        Output::Text => {
            if many {
                println!("== {name}");
            }
            let verdict = if o.allowed { "ALLOW" } else { "DENY" };
            println!("{verdict} {} {}", o.status, o.reason);
            if let Some(c) = &o.auth_config {
                println!("  AuthConfig: {c}");
            }
            if let Some(p) = &o.policy {
                println!("  policy: {p} ({})", o.action.unwrap_or("-"));
            }
            if let Some(p) = &o.request_principal {
                println!("  request principal: {p}");
            }
            for (k, v) in &o.headers_to_add {
                println!("  header to add: {k}: {v}");
            }
            for k in &o.headers_to_remove {
                println!("  header to remove: {k}");
            }
            for k in &o.query_params_to_remove {
                println!("  query parameter to remove: {k}");
            }
            if let Some(w) = &o.www_authenticate {
                println!("  response header: www-authenticate: {w}");
            }
            for (k, v) in &o.response_headers {
                println!("  response header: {k}: {v}");
            }
            if !o.allowed && !o.body().is_empty() {
                println!("  body: {}", o.body());
            }
        }
    }
}

/// Runs request authentication where the policy set has RequestAuthentication resources.
fn authenticate(
    rt: &tokio::runtime::Runtime,
    authn: Option<&Authenticator>,
    set: &PolicySet,
    req: &Request,
    id: &Identity,
) -> Option<AuthnOutcome> {
    let a = authn?;
    Some(rt.block_on(a.authenticate_request(set, req, id)))
}

fn print_authn_rejection(output: Output, name: &str, many: bool, r: &Rejected) {
    let reason = match &r.error {
        meshguard_authn::TokenError::JwksUnavailable(detail) => format!("{}: {detail}", r.error),
        e => e.to_string(),
    };
    match output {
        Output::Json => {
            let mut j = serde_json::json!({
                "allowed": false,
                "status": r.status,
                "reason": format!("request authentication failed: {reason}"),
            });
            if let Some(w) = &r.www_authenticate {
                j["www_authenticate"] = w.clone().into();
            }
            if let Some(rule) = &r.rule {
                j["request_authentication"] = rule.clone().into();
            }
            if many {
                j["request"] = name.into();
            }
            println!("{j}");
        }
        Output::Text => {
            if many {
                println!("== {name}");
            }
            println!("DENY {} request authentication failed: {reason}", r.status);
            if let Some(rule) = &r.rule {
                println!("  RequestAuthentication: {rule}");
            }
            if let Some(w) = &r.www_authenticate {
                println!("  WWW-Authenticate: {w}");
            }
        }
    }
}

fn lint(a: LintArgs) -> Result<ExitCode> {
    let mut loaded = load_paths(&a.paths);
    if let Some(path) = &a.mesh_config {
        let mesh = mesh_config(&PolicyArgs {
            policies: Vec::new(),
            mesh_config: Some(path.clone()),
            root_namespace: None,
            path_normalization: None,
            providers: Vec::new(),
        })?;
        let extra = meshguard_policy::load::mesh_warnings(&loaded.resources, &mesh);
        loaded.diagnostics.extend(extra);
    }
    // AuthConfigs are checked as the server builds them: referenced Secrets and ConfigMaps
    // must be loaded, Rego must parse.
    if loaded.errors().count() == 0 && !loaded.resources.is_empty() {
        if let Ok(set) = meshguard_policy::PolicySet::compile(
            loaded.resources.clone(),
            meshguard_policy::MeshConfig::default(),
        ) {
            for (c, e) in meshguard_authn::extauth::Chains::problems(&set) {
                loaded.diagnostics.push(meshguard_policy::Diagnostic {
                    severity: Severity::Error,
                    file: c.origin.file.clone(),
                    line: c.origin.line,
                    col: 1,
                    resource: Some(format!("AuthConfig {}/{}", c.meta.namespace, c.meta.name)),
                    field: "spec.configs".into(),
                    message: e,
                });
            }
        }
    }
    loaded
        .diagnostics
        .sort_by(|x, y| (&x.file, x.line, x.col).cmp(&(&y.file, y.line, y.col)));
    let errors = loaded.errors().count();
    let warnings = loaded.diagnostics.len() - errors;
    match a.output {
        Output::Json => {
            let items: Vec<serde_json::Value> = loaded
                .diagnostics
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "severity": if d.severity == Severity::Error { "error" } else { "warning" },
                        "file": d.file, "line": d.line, "column": d.col,
                        "resource": d.resource, "field": d.field, "message": d.message,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(items));
        }
        Output::Text => {
            for d in &loaded.diagnostics {
                println!("{d}");
            }
            eprintln!(
                "{} file(s), {} resource(s): {errors} error(s), {warnings} warning(s)",
                loaded.files.len(),
                loaded.resources.len()
            );
        }
    }
    if loaded.files.is_empty() && errors == 0 {
        bail!("no policy files found (looked for *.yaml, *.yml, *.json)");
    }
    let fail = errors > 0 || (a.deny_warnings && warnings > 0);
    Ok(if fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
