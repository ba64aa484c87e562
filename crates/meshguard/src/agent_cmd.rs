//! `meshguard agent`: the SPIFFE Workload API on a Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, SpiffeId};
use meshguard_policy::yaml::{Node, NodeKind};

#[derive(Args)]
pub struct AgentArgs {
    /// The CA directory (from `meshguard ca init`).
    #[arg(long, env = "MESHGUARD_CA_DIR")]
    ca_dir: PathBuf,
    /// Registration entries (YAML): `entries: [{spiffeId: spiffe://td/ns/x/sa/y, selectors: [unix:uid:1000]}]`.
    /// A caller gets every ID whose selectors all match its kernel credentials.
    #[arg(long, env = "MESHGUARD_ENTRIES")]
    entries: PathBuf,
    /// The socket to serve on. Workloads use SPIFFE_ENDPOINT_SOCKET=unix:<path>; for Python's grpc
    /// (py-spiffe) run the workload in the socket's directory with `unix:<file name>`.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "/tmp/meshguard-agent.sock"
    )]
    socket: String,
    /// X.509-SVID lifetime; SVIDs are re-issued and pushed at half-life.
    #[arg(long, env = "MESHGUARD_SVID_TTL", default_value = "1h")]
    ttl: String,
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

pub fn run(a: AgentArgs) -> Result<ExitCode> {
    let ca = Ca::load(&a.ca_dir)?;
    let entries = load_entries(&a.entries)?;
    let ttl = meshguard_policy::resource::parse_duration(&a.ttl)
        .with_context(|| format!("--ttl `{}` is not a duration like 1h", a.ttl))?;
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
        let agent = Agent::new(ca, entries, ttl);
        agent.spawn_rotation(Duration::from_secs(1).min(ttl / 4));
        eprintln!("meshguard agent: SPIFFE Workload API on unix:{} ({} registration entries, SVID TTL {:?})", socket.display(), count, ttl);
        agent
            .serve_uds(&socket, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| anyhow::anyhow!("serving on {}: {e}", socket.display()))?;
        Ok(ExitCode::SUCCESS)
    })
}
