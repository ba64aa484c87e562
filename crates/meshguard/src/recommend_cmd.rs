//! `meshguard recommend`: least-privilege policies from a decision log, checked by replaying the
//! same log against them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use meshguard_rollout::recommend::{recommend, Filter, Stage};
use meshguard_rollout::{simulate, Change, Options};

#[derive(Args)]
pub struct RecommendArgs {
    /// The decision log (JSON lines as `serve` and `proxy` write them).
    #[arg(long)]
    log: PathBuf,
    /// Only lines at or after this RFC 3339 time (as the log writes it, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only lines before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Only this namespace's workloads.
    #[arg(long)]
    namespace: Option<String>,
    /// Callers seen fewer times than this on a workload get no rule.
    #[arg(long, default_value_t = 1)]
    min_count: u64,
    /// Write the policies here instead of standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Write the policies in dry-run (`istio.io/dry-run: "true"`): evaluated and logged with
    /// what they would do, never enforced. The replay proof is made as if enforced.
    #[arg(long, conflicts_with = "enforce_percent")]
    dry_run: bool,
    /// Write the policies enforced for this share of callers (0-100) and in dry-run for the
    /// rest (`meshguard.io/enforce-percent`; a caller's share is a stable hash of its identity).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    enforce_percent: Option<u8>,
}

pub fn run(a: RecommendArgs) -> Result<ExitCode> {
    let open = || {
        std::fs::File::open(&a.log)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("cannot read the decision log {}", a.log.display()))
    };
    let f = Filter {
        since: a.since.clone(),
        until: a.until.clone(),
        namespace: a.namespace.clone(),
        min_count: a.min_count,
    };
    let r = recommend(open()?, &f).context("reading the decision log")?;
    eprintln!(
        "recommend: {} line(s), {} allowed request(s) used: {} rule(s) for {} workload(s){}",
        r.lines,
        r.used,
        r.rules,
        r.workloads,
        if r.rare > 0 {
            format!(
                ", {} request(s) of callers seen fewer than {} times left out",
                r.rare, a.min_count
            )
        } else {
            String::new()
        }
    );
    // Proof: replay the same log against the recommendation alone.
    let dir = std::env::temp_dir().join(format!("meshguard-recommend-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("temporary folder")?;
    let file = dir.join("recommended.yaml");
    std::fs::write(&file, &r.yaml).context("writing the recommendation")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let policy = crate::PolicyArgs {
        policies: vec![file.clone()],
        mesh_config: None,
        root_namespace: None,
        path_normalization: None,
        providers: Vec::new(),
        default_allow: false,
    };
    let engine = crate::offline_engine(&policy, &rt, "checked");
    let _ = std::fs::remove_dir_all(&dir);
    let engine = engine?;
    let report = simulate(open()?, &engine, &Options::default(), &|_| {})
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let broken = report
        .changes
        .get(&Change::AllowToDeny)
        .copied()
        .unwrap_or(0);
    let opened = report
        .changes
        .get(&Change::DenyToAllow)
        .copied()
        .unwrap_or(0);
    eprintln!(
        "simulate: {} replayed against the recommendation: {broken} observed allowed request(s) would be denied, {opened} recorded denial(s) would be allowed",
        report.replayed
    );
    let stage = match (a.dry_run, a.enforce_percent) {
        (true, _) => Stage::DryRun,
        (false, Some(p)) => Stage::Percent(p),
        (false, None) => Stage::Enforce,
    };
    let yaml = r.yaml_for(stage);
    match stage {
        Stage::Enforce => {}
        Stage::DryRun => eprintln!(
            "recommend: written in dry-run (istio.io/dry-run): logged with what they would do, not enforced"
        ),
        Stage::Percent(p) => eprintln!(
            "recommend: written enforced for {p}% of callers (meshguard.io/enforce-percent), dry-run for the rest"
        ),
    }
    match &a.output {
        Some(p) => {
            std::fs::write(p, &yaml).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{yaml}"),
    }
    Ok(
        if broken > 0 && a.min_count <= 1 && a.since.is_none() && a.until.is_none() {
            // Every allowed request shaped the rules, so none may be denied: a bug if one is.
            eprintln!("error: the recommendation denies requests it was built from");
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}
