//! `meshguard`: the zero-trust security layer of a service mesh, in one binary.

#![forbid(unsafe_code)]

#[macro_use]
mod out;
mod agent_cmd;
mod bundle_cmd;
mod ca_cmd;
mod completions;
mod embedded;
mod errors;
mod inspect_cmd;
mod logging;
mod proxy_cmd;
mod recommend_cmd;
mod request_input;
mod secret_cmd;
mod serve;
mod simulate_cmd;
mod test_cmd;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use meshguard_engine::source::load_paths;
use meshguard_engine::{
    Decision, DecisionLog, Embedded, Engine, Files, LoadError, Settings, Sink, State,
};
use meshguard_policy::load::parse_mesh_config;
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::{Diagnostic, MeshConfig, PathNormalization, Request, Severity};

/// Exit code when the request is denied (`check`).
const EXIT_DENIED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "meshguard",
    version = env!("MESHGUARD_VERSION"),
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
    /// Print the bundled example policies (the embedded default), or write every bundled
    /// example (policies, AuthConfigs with their Secrets, requests, `meshguard test` files) to a
    /// folder to start your own set from.
    Examples(ExamplesArgs),
    /// A SPIFFE certificate authority: create one, issue X.509-SVIDs and JWT-SVIDs, print the
    /// trust bundle (PEM or SPIFFE JWK Set).
    Ca(ca_cmd::CaArgs),
    /// Serve the SPIFFE Workload API (X.509-SVIDs with rotation, JWT-SVIDs) on a Unix socket.
    Agent(agent_cmd::AgentArgs),
    /// Run the mTLS sidecar: inbound listeners terminate mTLS and enforce PeerAuthentication and
    /// AuthorizationPolicy (per connection for TCP, per request for HTTP) in front of the app;
    /// outbound listeners take the app's plaintext and originate mTLS to upstream proxies.
    Proxy(proxy_cmd::ProxyArgs),
    /// Replay a decision log against candidate policies: every recorded request whose outcome
    /// would change (allow -> deny, deny -> allow, status), grouped by source -> destination and
    /// by the policy responsible.
    ///
    /// Exit status: 0 nothing changes, 2 some request would be decided differently (a CI gate),
    /// 1 bad input.
    Simulate(simulate_cmd::SimulateArgs),
    /// Write least-privilege AuthorizationPolicies from a decision log: per workload one ALLOW
    /// rule per caller with the methods, paths (ids as `{*}`) and ports it used, request
    /// principals where tokens were used, and an allow-nothing policy per namespace; then replay
    /// the log against them and say what they would deny.
    Recommend(recommend_cmd::RecommendArgs),
    /// Run policy unit tests: YAML files of requests and the verdicts they must get, decided by
    /// the same engine as `check`.
    ///
    /// Exit status: 0 when every case passes, 1 when any fails or a test file cannot be run.
    Test(test_cmd::TestArgs),
    /// Which AuthorizationPolicies, PeerAuthentications and RequestAuthentications select a
    /// workload, and why (mesh-wide, namespace-wide, selector, targetRef).
    PoliciesFor(inspect_cmd::PoliciesForArgs),
    /// Which callers can reach a workload: per ALLOW rule the principals, namespaces, IP blocks,
    /// paths and methods it admits, and the DENY and CUSTOM rules that come first.
    WhoCan(inspect_cmd::WhoCanArgs),
    /// Write the Kubernetes Secrets Gloo AuthConfigs read: API keys (`apiKeyAuth`) and htpasswd
    /// users (`basicAuth.htpasswdSecretRef`).
    Secret(secret_cmd::SecretArgs),
    /// Policy bundles for `serve --bundle URL`: build one from a directory (optionally signed in
    /// OPA's format), or inspect and verify one.
    Bundle(bundle_cmd::BundleArgs),
    /// Print shell completions (bash, zsh, fish), generated from this binary's flags.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff), or write one page per command with `--dir`.
    Man(completions::ManArgs),
}

#[derive(Args)]
pub(crate) struct PolicyArgs {
    /// Policy files or directories (searched recursively for *.yaml, *.yml, *.json). Multi-document
    /// YAML and `kind: List` are accepted. Default: the bundled example policies.
    #[arg(
        long = "policies",
        short = 'p',
        env = "MESHGUARD_POLICIES",
        value_delimiter = ',',
        num_args = 1..
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
    /// Allow requests to workloads that no ALLOW policy selects, as Istio does. Without it
    /// meshguard denies them (default deny), and says so in the decision.
    #[arg(long, env = "MESHGUARD_DEFAULT_ALLOW")]
    pub(crate) default_allow: bool,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Normalization {
    None,
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl From<PathNormalization> for Normalization {
    fn from(p: PathNormalization) -> Self {
        match p {
            PathNormalization::None => Normalization::None,
            PathNormalization::Base => Normalization::Base,
            PathNormalization::MergeSlashes => Normalization::MergeSlashes,
            PathNormalization::DecodeAndMergeSlashes => Normalization::DecodeAndMergeSlashes,
        }
    }
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
    /// Also run the AuthConfigs that decided once more, step by step, and show each step's
    /// verdict; for Rego steps (opaAuth, opaEnvoy) every rule of the policy with its value and
    /// the lines evaluation did not reach (the `why:` lines; `why` in JSON).
    #[arg(long)]
    explain: bool,
}

#[derive(Args)]
struct ExamplesArgs {
    /// Write the examples under DIR (policies/, extauth/, requests/, tests/) instead of
    /// printing the policies. Existing files are never overwritten.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
}

fn examples(a: ExamplesArgs) -> Result<ExitCode> {
    let Some(dir) = a.write else {
        for (name, text) in embedded::POLICIES {
            println!("# ---- examples/policies/{name}");
            println!("{}", text.trim_end());
            println!("---");
        }
        return Ok(ExitCode::SUCCESS);
    };
    // Refuse before writing anything, so a second run does not leave a half-updated folder.
    for (folder, files) in embedded::ALL {
        for (name, _) in *files {
            let p = dir.join(folder).join(name);
            if p.exists() {
                bail!(
                    "{} exists; meshguard examples --write never overwrites (choose an empty folder)",
                    p.display()
                );
            }
        }
    }
    let mut n = 0;
    for (folder, files) in embedded::ALL {
        let d = dir.join(folder);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        for (name, text) in *files {
            let p = d.join(name);
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
            n += 1;
        }
    }
    eprintln!(
        "wrote {n} files under {d}: demo material to start from, not production policy.\n  meshguard lint {d}/policies {d}/extauth\n  meshguard test {d}/tests\n  meshguard serve --policies {d}/policies,{d}/extauth",
        d = dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct LintArgs {
    /// Policy files or directories to validate. Default: the embedded example policies.
    paths: Vec<PathBuf>,
    /// Mesh settings to lint against (see `check --help`). Without it, Istio's defaults: path
    /// normalisation BASE and no extension providers, so CUSTOM providers that do not exist and
    /// DENY path rules that `//admin` slips past are reported.
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
        Command::Simulate(a) => simulate_cmd::run(a),
        Command::Recommend(a) => recommend_cmd::run(a),
        Command::Lint(a) => lint(a),
        Command::Test(a) => test_cmd::run(a),
        Command::PoliciesFor(a) => inspect_cmd::policies_for(a),
        Command::WhoCan(a) => inspect_cmd::who_can(a),
        Command::Secret(a) => secret_cmd::run(a),
        Command::Bundle(a) => bundle_cmd::run(a),
        Command::Completions(a) => completions::completions(a),
        Command::Man(a) => completions::man(a),
        Command::Examples(a) => examples(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", errors::render(&e));
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
                Some(d) => parse_mesh_config(d).map_err(|e| {
                    meshguard_policy::read::ConfigError::field(&path.display().to_string(), e)
                })?,
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

fn print_diagnostics(diags: &[Diagnostic], min: Severity) {
    for d in diags.iter().filter(|d| d.severity <= min) {
        eprintln!("{d}");
    }
}

/// The engine `check`, `test` and `simulate` decide with: the same one `serve` and `proxy`
/// use. The policies are loaded and compiled, the AuthConfigs built (Secrets resolved, Rego
/// compiled); steps that call out (LDAP, introspection, pass-through, OIDC discovery) and remote
/// JWKS do so when a request needs them. No decision log; default deny unless --default-allow.
/// `what` completes "nothing was ..." when the policies do not load.
pub(crate) fn offline_engine(
    a: &PolicyArgs,
    rt: &tokio::runtime::Runtime,
    what: &str,
) -> Result<Engine> {
    let mesh = mesh_config(a)?;
    let client = reqwest::Client::builder()
        .build()
        .context("building the HTTP client (JWKS, AuthConfig steps)")?;
    let loaded = rt.block_on(async {
        if a.policies.is_empty() {
            State::new(embedded_source(), mesh, client)
        } else {
            State::new(Files(a.policies.clone()), mesh, client)
        }
    });
    let state = match loaded {
        Ok(s) => s,
        Err(LoadError::Invalid(diags)) => {
            print_diagnostics(&diags, Severity::Error);
            let n = diags.len();
            bail!("{n} error(s) in the policies; nothing was {what} (run `meshguard lint` for warnings too)");
        }
        Err(e) => return Err(anyhow::anyhow!("{e}")).context("loading the policies"),
    };
    let log = DecisionLog::start(Sink::Off, state.clone()).context("decision log")?;
    let settings = Settings {
        default_deny: !a.default_allow,
        ..Settings::default()
    };
    Ok(Engine::new(state, log, settings))
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let engine = offline_engine(&a.policy, &rt, "decided")?;
    let state = engine.state().clone();
    let g = state.current();
    let set = &g.set;

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
    let many = requests.len() > 1;
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
        let req =
            request_input::build(doc, set.mesh()).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let d = rt.block_on(engine.evaluate(&req));
        all_allowed &= d.allowed;
        let mut why = if d.no_allow_matched {
            set.explain_no_match(&req, &d.identity)
        } else {
            Vec::new()
        };
        if a.explain {
            why.extend(rt.block_on(explain_auth_configs(&engine, &d, &req)));
        }
        print_decision(a.output, name, many, &d, &req, &why, &engine);
    }
    Ok(if all_allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    })
}

/// The bundled example policies, as `serve`, `proxy` and `check` load them without `--policies`.
pub(crate) fn embedded_source() -> Embedded {
    Embedded(
        embedded::POLICIES
            .iter()
            .map(|(n, t)| (format!("<embedded>/examples/policies/{n}"), (*t).to_owned()))
            .collect(),
    )
}

/// Prints one decision of `check`: a verdict line, then what a user needs to understand it.
/// The AuthConfigs of a decision, run again with a trace (`check --explain`).
async fn explain_auth_configs(engine: &Engine, d: &Decision, req: &Request) -> Vec<String> {
    let Some(names) = &d.auth_config else {
        return Vec::new();
    };
    let g = engine.state().current();
    let mut out = Vec::new();
    for name in names.split(',') {
        let Some(chain) = g.chains.get(name) else {
            out.push(format!("AuthConfig {name}: not loaded"));
            continue;
        };
        let (o, trace) = chain.run_explained(req, &d.identity).await;
        out.push(format!(
            "AuthConfig {name}: {} ({})",
            if o.allowed { "allowed" } else { "denied" },
            o.reason
        ));
        out.extend(trace);
    }
    out
}

fn print_decision(
    output: Output,
    name: &str,
    many: bool,
    d: &Decision,
    req: &Request,
    why: &[String],
    engine: &Engine,
) {
    let settings = engine.settings();
    let g = engine.state().current();
    let mesh = g.set.mesh();
    if output == Output::Json {
        let mut j = d.to_json();
        if d.by_default && d.auth_config.is_none() {
            j["default"] = if settings.default_deny {
                "deny"
            } else {
                "allow"
            }
            .into();
        }
        if !why.is_empty() {
            j["why"] = why.into();
        }
        if many {
            j["request"] = name.into();
        }
        println!("{j}");
        return;
    }
    if many {
        println!("== {name}");
    }
    let verdict = if d.allowed { "ALLOW" } else { "DENY" };
    println!("{verdict} {} {}", d.status, d.reason);
    for line in why {
        println!("  why: {line}");
    }
    for (p, pct, enforced) in &d.gradual {
        let bucket = d.caller_bucket.unwrap_or(0);
        if *enforced {
            println!("  gradual: {p} is enforced for {pct}% of callers; this caller (bucket {bucket}) is one of them");
        } else {
            println!("  gradual: {p} is enforced for {pct}% of callers; this caller (bucket {bucket}) is not: dry-run for it");
        }
    }
    if d.by_default && d.auth_config.is_none() {
        if settings.default_deny {
            println!("  default: deny (no ALLOW policy selects the workload; --default-allow gives Istio's allow)");
        } else {
            println!("  default: allow (--default-allow, as Istio: no ALLOW policy selects the workload)");
        }
    }
    if let Some(c) = &d.auth_config {
        println!("  AuthConfig: {c}");
        if let Some(p) = &d.policy {
            println!("  policy: {p} ({})", d.action.unwrap_or("-"));
        }
    }
    println!("  mTLS mode: {}", d.mtls_mode);
    match (&d.request_principal, &d.request_authentication) {
        (Some(p), Some(rule)) => {
            println!("  request principal: {p} (token verified by RequestAuthentication {rule})")
        }
        (Some(p), None) => println!("  request principal: {p}"),
        (None, Some(rule)) => println!("  RequestAuthentication: {rule}"),
        (None, None) => {}
    }
    for (k, v) in &d.headers_to_add {
        println!("  header to add: {k}: {v}");
    }
    for k in &d.headers_to_remove {
        println!("  header to remove: {k}");
    }
    for k in &d.query_params_to_remove {
        println!("  query parameter to remove: {k}");
    }
    if let Some(w) = &d.www_authenticate {
        println!("  response header: www-authenticate: {w}");
    }
    for (k, v) in &d.response_headers {
        println!("  response header: {k}: {v}");
    }
    if !d.allowed && d.auth_config.is_some() && !d.body().is_empty() {
        println!("  body: {}", d.body());
    }
    match &req.http {
        Some(h) => {
            if let Some(p) = h.normalized_path() {
                if p != h.raw_path {
                    println!(
                        "  path: {} -> {p} ({})",
                        h.raw_path,
                        mesh.path_normalization.as_str()
                    );
                }
            }
        }
        None => {
            println!("  TCP connection (no HTTP request): HTTP-only policy fields do not apply")
        }
    }
    for a in &d.audit {
        println!("  audit: matched AUDIT policy {a}");
    }
    if let Some(s) = &d.dry_run {
        let what = if s.allowed { "allow" } else { "deny" };
        match (&s.policy, s.rule) {
            (Some(p), Some(r)) => {
                println!("  dry-run: the dry-run policies would {what} (policy {p} rule {r})")
            }
            _ => {
                println!("  dry-run: the dry-run policies would {what} (no dry-run policy matched)")
            }
        }
    }
}

fn lint(a: LintArgs) -> Result<ExitCode> {
    let mut loaded = if a.paths.is_empty() {
        eprintln!("meshguard lint: no paths given; linting the embedded example policies");
        meshguard_engine::PolicySource::read(&embedded_source())
    } else {
        load_paths(&a.paths)
    };
    // Without --mesh-config the mesh is Istio's default (path normalisation BASE, no extension
    // providers), which is what the policies get in a mesh that sets nothing.
    let mesh = mesh_config(&PolicyArgs {
        policies: Vec::new(),
        mesh_config: a.mesh_config.clone(),
        root_namespace: None,
        path_normalization: None,
        providers: Vec::new(),
        default_allow: false,
    })?;
    let extra = meshguard_policy::load::mesh_warnings(&loaded.resources, &mesh);
    loaded.diagnostics.extend(extra);
    // AuthConfigs are checked as the server builds them: referenced Secrets and ConfigMaps
    // must be loaded, Rego must parse.
    if loaded.errors().count() == 0 && !loaded.resources.is_empty() {
        if let Ok(set) = meshguard_policy::PolicySet::compile(
            loaded.resources.clone(),
            meshguard_policy::MeshConfig::default(),
        ) {
            for (c, e) in meshguard_authn::extauth::Chains::problems(&set) {
                // An ExtAuthPolicy's inline glooAuth carries the policy's own name and place.
                let inline = set.ext_auth_policies().iter().any(|p| p.origin == c.origin);
                let (kind, field) = if inline {
                    ("ExtAuthPolicy", "spec.config.glooAuth.configs")
                } else {
                    ("AuthConfig", "spec.configs")
                };
                loaded.diagnostics.push(meshguard_policy::Diagnostic {
                    severity: Severity::Error,
                    file: c.origin.file.clone(),
                    line: c.origin.line,
                    col: 1,
                    resource: Some(format!("{kind} {}/{}", c.meta.namespace, c.meta.name)),
                    field: field.into(),
                    message: e.to_string(),
                });
            }
        }
    }
    loaded
        .diagnostics
        .sort_by(|x, y| (&x.file, x.line, x.col).cmp(&(&y.file, y.line, y.col)));
    // Each problem once, however many checks found it.
    loaded.diagnostics.dedup();
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
    if loaded.files.is_empty() && errors == 0 && !a.paths.is_empty() {
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
