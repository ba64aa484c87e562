//! `meshguard simulate`: replay a decision log against candidate policies (meshguard-rollout).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use meshguard_rollout::{report, simulate, Options};

use crate::PolicyArgs;

/// Exit status when some recorded request would be decided differently.
const EXIT_CHANGED: u8 = 2;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(Args)]
pub struct SimulateArgs {
    /// The decision log to replay (JSON lines as `serve` and `proxy` write them; `-` for
    /// standard input).
    #[arg(long)]
    log: PathBuf,
    /// The candidate policies (files or directories), and the mesh settings they run under.
    #[command(flatten)]
    policy: PolicyArgs,
    /// text (people), json (machines), markdown (a pull-request comment).
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    format: Format,
    /// Worker threads. [default: the cores available]
    #[arg(long)]
    threads: Option<usize>,
    /// Examples shown per edge and per policy.
    #[arg(long, default_value_t = 3)]
    examples: usize,
}

pub fn run(a: SimulateArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let engine = crate::offline_engine(&a.policy, &rt, "replayed")?;
    let opts = Options {
        threads: a.threads.unwrap_or(Options::default().threads),
        examples: a.examples,
    };
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |n: u64| {
        if !tty {
            return;
        }
        if let Ok(mut l) = last.lock() {
            if l.elapsed().as_millis() >= 500 {
                *l = std::time::Instant::now();
                eprint!(
                    "\rsimulate: {n} line(s) read ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    };
    let report = if a.log.as_os_str() == "-" {
        simulate(std::io::stdin().lock(), &engine, &opts, &progress)
    } else {
        let f = std::fs::File::open(&a.log)
            .with_context(|| format!("cannot read the decision log {}", a.log.display()))?;
        simulate(
            std::io::BufReader::with_capacity(1 << 20, f),
            &engine,
            &opts,
            &progress,
        )
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if tty {
        eprintln!();
    }
    match a.format {
        Format::Text => print!("{}", report::text(&report)),
        Format::Json => println!("{}", report::json(&report)),
        Format::Markdown => print!("{}", report::markdown(&report)),
    }
    Ok(if report.changed() > 0 {
        ExitCode::from(EXIT_CHANGED)
    } else {
        ExitCode::SUCCESS
    })
}
