//! `meshguard agent`: the SPIFFE Workload API on a Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, SpiffeId};
use meshguard_policy::yaml::{Node, NodeKind};

#[derive(Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    action: Option<AgentAction>,
    /// The CA directory (from `meshguard ca init`).
    #[arg(long, env = "MESHGUARD_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Registration entries (YAML): `entries: [{spiffeId: spiffe://td/ns/x/sa/y, selectors: [unix:uid:1000]}]`.
    /// A caller gets every ID whose selectors all match its kernel credentials.
    #[arg(long, env = "MESHGUARD_ENTRIES")]
    entries: Option<PathBuf>,
    /// The socket to serve on. Workloads use SPIFFE_ENDPOINT_SOCKET=unix:<path>; for Python's grpc
    /// (py-spiffe) run the workload in the socket's directory with `unix:<file name>`.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "/run/meshguard/agent.sock"
    )]
    socket: String,
    /// X.509-SVID lifetime; SVIDs are re-issued and pushed at half-life.
    #[arg(long, env = "MESHGUARD_SVID_TTL", default_value = "1h")]
    ttl: String,
    /// JWT-SVID lifetime (FetchJWTSVID signs a fresh token on every call).
    #[arg(long, env = "MESHGUARD_JWT_SVID_TTL", default_value = "5m")]
    jwt_ttl: String,
    /// How often to check the entries file for changes. A changed file is re-read; open
    /// streams then get the new set of SVIDs, or PermissionDenied when their caller lost every
    /// identity. A file with errors is refused and the last good entries stay.
    #[arg(long, env = "MESHGUARD_ENTRIES_INTERVAL", default_value = "2s")]
    entries_interval: String,
    /// Operational log level (error, warn, info, debug): refused callers are logged at warn
    /// with their uid, gid and pid.
    #[arg(long, env = "MESHGUARD_LOG", default_value = "info")]
    log_level: String,
    /// Operational log format: text or json.
    #[arg(long, env = "MESHGUARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Attest callers by their Kubernetes pod: the pod UID from the caller's cgroup, the pod's
    /// namespace, service account, name, labels and node from the API server (a watch, kept in
    /// memory). Entries may then use `k8s:ns:NS`, `k8s:sa:SA`, `k8s:pod-name:N`, `k8s:pod-uid:U`,
    /// `k8s:node-name:N`, `k8s:pod-label:KEY:VALUE` (SPIRE's names). --entries is optional.
    #[arg(long, env = "MESHGUARD_AGENT_KUBERNETES")]
    kubernetes: bool,
    /// With --kubernetes, give every pod `spiffe://<trust domain>/ns/<ns>/sa/<sa>` (Istio's
    /// identity for its service account) as its first SVID, with no entry.
    #[arg(long, requires = "kubernetes")]
    service_account_identities: bool,
    /// The kubeconfig for --kubernetes (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "MESHGUARD_KUBECONFIG", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Only this node's pods (a DaemonSet sets it from spec.nodeName). [default: every pod]
    #[arg(long, env = "NODE_NAME", requires = "kubernetes")]
    node_name: Option<String>,
    /// Where callers' `<pid>/cgroup` files are: /proc, or the host's /proc mounted into the
    /// agent's container (e.g. /host/proc).
    #[arg(long, default_value = "/proc", requires = "kubernetes")]
    proc_root: PathBuf,
}

fn duration(flag: &str, v: &str) -> Result<Duration> {
    meshguard_policy::resource::parse_duration(v)
        .with_context(|| format!("--{flag} `{v}` is not a duration like 1h, 5m or 2s"))
}

/// What identifies a version of the entries file: size, inode and modification time.
fn stamp(path: &std::path::Path) -> Option<(u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.ino(), m.modified().ok()?))
}

/// The socket's directory must not be writable by other users, or one of them could replace
/// the socket with their own Workload API.
fn check_socket_dir(socket: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    let m = std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
        bail!(
            "{} is writable by other users, who could replace the agent's socket; use a directory only this user can write (e.g. /run/meshguard)",
            dir.display()
        );
    }
    if m.mode() & 0o022 != 0 {
        eprintln!(
            "meshguard agent: warning: {} is writable by other users (sticky); prefer a directory only this user can write, such as /run/meshguard",
            dir.display()
        );
    }
    Ok(())
}

fn load_entries(path: &std::path::Path) -> Result<Vec<Entry>> {
    let docs = crate::read_yaml(path, "registration entries")?;
    let Some(list) = docs.first().and_then(|d| d.get("entries")) else {
        bail!(
            "{}: expected `entries:` with a list of {{spiffeId, selectors}}",
            path.display()
        );
    };
    let NodeKind::Seq(items) = &list.kind else {
        bail!("{}:{}: `entries` must be a list", path.display(), list.line)
    };
    let mut out = Vec::new();
    for (i, e) in items.iter().enumerate() {
        let at =
            |n: &Node, what: &str| format!("{}:{}: entries[{i}].{what}", path.display(), n.line);
        let id = e
            .get("spiffeId")
            .and_then(Node::as_str)
            .ok_or_else(|| anyhow::anyhow!("{}: missing", at(e, "spiffeId")))?;
        let spiffe_id = SpiffeId::parse_workload(id)
            .map_err(|err| anyhow::anyhow!("{}: {err}", at(e, "spiffeId")))?;
        let Some(NodeKind::Seq(sels)) = e.get("selectors").map(|s| &s.kind) else {
            bail!(
                "{}: a non-empty list like [unix:uid:1000] is required",
                at(e, "selectors")
            );
        };
        let selectors = sels
            .iter()
            .map(|s| {
                Selector::parse(s.as_str().unwrap_or(""))
                    .map_err(|err| anyhow::anyhow!("{}: {err}", at(s, "selectors")))
            })
            .collect::<Result<Vec<_>>>()?;
        if selectors.is_empty() {
            bail!("{}: at least one selector is required", at(e, "selectors"));
        }
        out.push(Entry {
            spiffe_id,
            selectors,
        });
    }
    Ok(out)
}

/// Talking to a running agent, as a workload does (what `spire-agent api fetch` and
/// `spire-agent healthcheck` give).
#[derive(Subcommand)]
enum AgentAction {
    /// Fetch this process's SVIDs from the agent: `x509` (SPIFFE IDs and expiry of the
    /// X.509-SVIDs) or `jwt` (JWT-SVIDs for --audience).
    Fetch(FetchArgs),
    /// Exit 0 when an agent answers on the socket (even if it gives this caller no identity),
    /// 1 when none does.
    Healthcheck(SocketArg),
}

#[derive(Args)]
struct SocketArg {
    /// The agent's socket (`unix:/path` or a path).
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "/run/meshguard/agent.sock"
    )]
    socket: String,
}

#[derive(Args)]
struct FetchArgs {
    /// `x509` or `jwt`.
    #[arg(value_parser = ["x509", "jwt"])]
    kind: String,
    #[command(flatten)]
    socket: SocketArg,
    /// JWT-SVID audience (repeatable; required for jwt).
    #[arg(long)]
    audience: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn api(socket: &str) -> meshguard_proxy::source::WorkloadApi {
    let path = socket
        .strip_prefix("unix://")
        .or_else(|| socket.strip_prefix("unix:"))
        .unwrap_or(socket);
    meshguard_proxy::source::WorkloadApi {
        socket: PathBuf::from(path),
        spiffe_id: None,
    }
}

fn client_action(action: AgentAction) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let timeout = Duration::from_secs(10);
    match action {
        AgentAction::Healthcheck(s) => {
            let r = rt.block_on(async {
                tokio::time::timeout(timeout, api(&s.socket).healthcheck()).await
            });
            match r {
                Ok(Ok(msg)) => {
                    println!("agent at {}: {msg}", s.socket);
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Err(e)) => {
                    eprintln!("agent at {}: not healthy: {e}", s.socket);
                    Ok(ExitCode::from(1))
                }
                Err(_) => {
                    eprintln!("agent at {}: no answer within 10 s", s.socket);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AgentAction::Fetch(f) if f.kind == "x509" => {
            let svids = rt
                .block_on(async {
                    tokio::time::timeout(timeout, api(&f.socket.socket).fetch_x509()).await
                })
                .map_err(|_| anyhow::anyhow!("no answer from the agent within 10 s"))??;
            let mut out = Vec::new();
            for (id, secs) in &svids {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(*secs);
                out.push((id.clone(), meshguard_engine::dlog::rfc3339(at)));
            }
            if f.json {
                let v: Vec<serde_json::Value> = out
                    .iter()
                    .map(|(id, exp)| serde_json::json!({"spiffe_id": id, "expires": exp}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("received {} X.509-SVID(s)", out.len());
                for (id, exp) in &out {
                    println!("  {id}  expires {exp}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentAction::Fetch(f) => {
            if f.audience.is_empty() {
                bail!("give the JWT-SVID's audience: --audience NAME (repeatable)");
            }
            let svids = rt
                .block_on(async {
                    tokio::time::timeout(timeout, api(&f.socket.socket).fetch_jwt(&f.audience))
                        .await
                })
                .map_err(|_| anyhow::anyhow!("no answer from the agent within 10 s"))??;
            if f.json {
                let v: Vec<serde_json::Value> = svids
                    .iter()
                    .map(|(id, t)| serde_json::json!({"spiffe_id": id, "token": t}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (id, t) in &svids {
                    println!("{id}\n  {t}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run(a: AgentArgs) -> Result<ExitCode> {
    if let Some(action) = a.action {
        return client_action(action);
    }
    crate::logging::init_logging_as(&a.log_level, &a.log_format)?;
    let (Some(ca_dir), Some(entries_file)) = (
        a.ca_dir.clone(),
        a.entries
            .clone()
            .or_else(|| a.kubernetes.then(PathBuf::new)),
    ) else {
        bail!("serving the Workload API needs --ca-dir DIR (from `meshguard ca init`) and --entries FILE (optional with --kubernetes); `meshguard agent fetch` and `meshguard agent healthcheck` talk to a running agent");
    };
    let no_entries_file = entries_file.as_os_str().is_empty();
    let ca = Ca::load(&ca_dir)?;
    let entries = if no_entries_file {
        Vec::new()
    } else {
        load_entries(&entries_file)?
    };
    let ttl = duration("ttl", &a.ttl)?;
    let jwt_ttl = duration("jwt-ttl", &a.jwt_ttl)?;
    let interval = duration("entries-interval", &a.entries_interval)?;
    for (flag, d) in [("ttl", ttl), ("jwt-ttl", jwt_ttl)] {
        if d < Duration::from_secs(1) {
            bail!("--{flag} must be at least 1s");
        }
    }
    if interval < Duration::from_millis(10) {
        bail!("--entries-interval must be at least 10ms");
    }
    if ca.jwt_signer().is_none() {
        eprintln!(
            "meshguard agent: warning: {} has no jwt.key, so JWT-SVID calls answer Unavailable; create one with `meshguard ca jwt-key --dir {}`",
            ca_dir.display(),
            ca_dir.display()
        );
    }
    let socket = PathBuf::from(
        a.socket
            .strip_prefix("unix://")
            .or_else(|| a.socket.strip_prefix("unix:"))
            .unwrap_or(&a.socket),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let count = entries.len();
    rt.block_on(async move {
        check_socket_dir(&socket)?;
        let agent = Agent::new(ca, entries, ttl).map_err(|e| anyhow::anyhow!("{}: {e}", entries_file.display()))?;
        agent.set_jwt_ttl(jwt_ttl);
        agent.spawn_rotation(Duration::from_secs(1).min(ttl / 4));
        if a.kubernetes {
            let pods = meshguard_kube::attest::PodAttestor::start(
                a.kubeconfig.clone(),
                a.node_name.clone(),
                a.proc_root.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("--kubernetes: {e}"))?;
            pods.wait_synced().await;
            eprintln!(
                "meshguard agent: Kubernetes workload attestation ({} pod(s){}; callers' cgroups under {}){}",
                pods.pods(),
                a.node_name.as_deref().map(|n| format!(" on node {n}")).unwrap_or_default(),
                a.proc_root.display(),
                if a.service_account_identities { "; every pod gets spiffe://<td>/ns/<ns>/sa/<sa>" } else { "" }
            );
            agent.set_workload_attestor(std::sync::Arc::new(pods), a.service_account_identities);
        }
        let (watcher, path) = (agent.clone(), entries_file.clone());
        if !no_entries_file {
        tokio::spawn(async move {
            let mut seen = stamp(&path);
            let mut refused = None;
            loop {
                tokio::time::sleep(interval).await;
                let now = stamp(&path);
                if now == seen || now == refused {
                    continue;
                }
                // Reading /etc/passwd and the file is blocking work: off the runtime threads.
                let p = path.clone();
                let loaded = tokio::task::spawn_blocking(move || load_entries(&p))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .and_then(|r| r)
                    .and_then(|e| {
                        let n = e.len();
                        watcher.set_entries(e).map(|()| n).map_err(|e| anyhow::anyhow!(e))
                    });
                match loaded {
                    Ok(n) => {
                        // Only a version that loaded counts as seen, so a later write in the
                        // same second is never skipped.
                        seen = now;
                        refused = None;
                        eprintln!(
                            "meshguard agent: reloaded {} ({n} registration entries)",
                            path.display()
                        );
                    }
                    Err(e) => {
                        refused = now;
                        eprintln!(
                            "meshguard agent: refused {} ({e:#}); the last good entries stay",
                            path.display()
                        );
                    }
                }
            }
        });
        }
        eprintln!("meshguard agent: SPIFFE Workload API on unix:{} ({} registration entries, SVID TTL {})", socket.display(), count, a.ttl);
        agent
            .serve_uds(&socket, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| anyhow::anyhow!("serving on {}: {e}", socket.display()))?;
        Ok(ExitCode::SUCCESS)
    })
}
