//! Replay: every recorded decision decided again against a candidate policy set, the changes
//! counted by edge and by the policy responsible. Lines stream through in batches to one worker
//! per core; memory stays bounded by the batches in flight and the examples kept.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::{mpsc, Arc, Mutex};

use meshguard_engine::Engine;
use meshguard_policy::{Action, Resource};

use crate::record::{NotReplayable, Recorded};

/// Lines per batch handed to a worker.
const BATCH: usize = 2048;

#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (default: the cores available).
    pub threads: usize,
    /// Examples kept per group.
    pub examples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            examples: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("reading the decision log: {0}")]
    Read(#[from] std::io::Error),
    #[error("starting a replay worker: {0}")]
    Worker(String),
}

/// How an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    AllowToDeny,
    DenyToAllow,
    /// Still denied (or allowed) but with another status (403 -> 401, say).
    Status,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::AllowToDeny => "allow -> deny",
            Change::DenyToAllow => "deny -> allow",
            Change::Status => "status change",
        }
    }
}

/// One changed request, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// 1-based line in the log.
    pub line: u64,
    pub id: String,
    pub request: String,
    pub before: String,
    pub after: String,
}

/// Changes of one edge or one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub counts: BTreeMap<Change, u64>,
    pub examples: Vec<Example>,
}

impl Group {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    fn add(&mut self, c: Change, e: &Example, keep: usize) {
        *self.counts.entry(c).or_default() += 1;
        if self.examples.len() < keep {
            self.examples.push(e.clone());
        }
    }

    fn merge(&mut self, o: Group, keep: usize) {
        for (c, n) in o.counts {
            *self.counts.entry(c).or_default() += n;
        }
        for e in o.examples {
            if self.examples.len() < keep {
                self.examples.push(e);
            }
        }
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: u64,
    pub replayed: u64,
    pub unchanged: u64,
    /// Lines that are not decisions (bad JSON, another schema), with the first few reasons.
    pub unreadable: u64,
    pub unreadable_examples: Vec<String>,
    /// Decisions that cannot be decided again (a refused token, a fail-closed denial): kept as
    /// recorded.
    pub not_replayable: u64,
    pub changes: BTreeMap<Change, u64>,
    /// `(source, destination)` -> changes.
    pub by_edge: BTreeMap<(String, String), Group>,
    /// The policy and rule that decides the new outcome (or the new decision's reason when no
    /// single rule does) -> changes.
    pub by_policy: BTreeMap<String, Group>,
}

impl Report {
    pub fn changed(&self) -> u64 {
        self.changes.values().sum()
    }

    fn merge(&mut self, o: Report, keep: usize) {
        self.lines += o.lines;
        self.replayed += o.replayed;
        self.unchanged += o.unchanged;
        self.unreadable += o.unreadable;
        for u in o.unreadable_examples {
            if self.unreadable_examples.len() < keep {
                self.unreadable_examples.push(u);
            }
        }
        self.not_replayable += o.not_replayable;
        for (c, n) in o.changes {
            *self.changes.entry(c).or_default() += n;
        }
        for (k, g) in o.by_edge {
            self.by_edge.entry(k).or_default().merge(g, keep);
        }
        for (k, g) in o.by_policy {
            self.by_policy.entry(k).or_default().merge(g, keep);
        }
    }
}

/// The CUSTOM providers the engine's policy set names.
fn custom_providers(engine: &Engine) -> Vec<String> {
    let g = engine.state().current();
    let mut out: Vec<String> = g
        .set
        .resources()
        .iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p) if p.action == Action::Custom => p.provider.clone(),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn outcome(allowed: bool, status: u16, policy: Option<&str>, rule: Option<usize>) -> String {
    let verdict = if allowed { "allow" } else { "deny" };
    match (policy, rule) {
        (Some(p), Some(r)) => format!("{verdict} {status} ({p} rule {r})"),
        (Some(p), None) => format!("{verdict} {status} ({p})"),
        _ => format!("{verdict} {status}"),
    }
}

/// Replays every line of `input` with `engine` (built on the candidate policies). `progress`
/// is called with the number of lines read so far, about once per batch.
pub fn simulate(
    input: impl BufRead,
    engine: &Engine,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, SimulateError> {
    let providers = custom_providers(engine);
    let normalization = engine.state().current().set.mesh().path_normalization;
    let threads = opts.threads.max(1);
    let keep = opts.examples;
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<String>)>(threads * 2);
    let rx = Arc::new(Mutex::new(rx));
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let rx = rx.clone();
            let providers = &providers;
            workers.push(scope.spawn(move || -> Result<Report, SimulateError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| SimulateError::Worker(e.to_string()))?;
                let mut report = Report::default();
                loop {
                    let next = rx
                        .lock()
                        .map_err(|_| SimulateError::Worker("a worker panicked".into()))?
                        .recv();
                    let Ok((first, lines)) = next else { break };
                    for (i, line) in lines.iter().enumerate() {
                        replay_line(
                            first + i as u64,
                            line,
                            engine,
                            &rt,
                            normalization,
                            providers,
                            keep,
                            &mut report,
                        );
                    }
                }
                Ok(report)
            }));
        }
        let read = || -> Result<(), SimulateError> {
            let mut batch = Vec::with_capacity(BATCH);
            let mut first = 1u64;
            let mut n = 0u64;
            for line in input.lines() {
                batch.push(line?);
                n += 1;
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send((first, full)).is_err() {
                        break;
                    }
                    first = n + 1;
                    progress(n);
                }
            }
            if !batch.is_empty() {
                let _ = tx.send((first, batch));
            }
            progress(n);
            Ok(())
        };
        let read_result = read();
        drop(tx);
        let mut total = Report::default();
        for w in workers {
            let r = w
                .join()
                .map_err(|_| SimulateError::Worker("a replay worker panicked".into()))??;
            total.merge(r, keep);
        }
        read_result?;
        Ok(total)
    })
}

#[allow(clippy::too_many_arguments)]
fn replay_line(
    line_no: u64,
    line: &str,
    engine: &Engine,
    rt: &tokio::runtime::Runtime,
    normalization: meshguard_policy::PathNormalization,
    providers: &[String],
    keep: usize,
    report: &mut Report,
) {
    report.lines += 1;
    if line.trim().is_empty() {
        report.lines -= 1;
        return;
    }
    let rec = match Recorded::parse(line) {
        Ok(r) if r.v <= meshguard_engine::decide::LOG_SCHEMA => r,
        Ok(r) => {
            report.unreadable += 1;
            if report.unreadable_examples.len() < keep {
                report.unreadable_examples.push(format!(
                    "line {line_no}: schema version {} is newer than this meshguard reads",
                    r.v
                ));
            }
            return;
        }
        Err(e) => {
            report.unreadable += 1;
            if report.unreadable_examples.len() < keep {
                report
                    .unreadable_examples
                    .push(format!("line {line_no}: not a decision line: {e}"));
            }
            return;
        }
    };
    match rec.replayable() {
        Ok(()) => {}
        Err(NotReplayable::TokenRefused | NotReplayable::FailedClosed) => {
            report.not_replayable += 1;
            return;
        }
    }
    let req = rec.request(normalization, providers);
    let d = rt.block_on(engine.evaluate(&req));
    report.replayed += 1;
    let change = match (rec.allowed, d.allowed) {
        (true, false) => Change::AllowToDeny,
        (false, true) => Change::DenyToAllow,
        _ if rec.status != d.status => Change::Status,
        _ => {
            report.unchanged += 1;
            return;
        }
    };
    // The rule that decides the new outcome (the one that now allows, or now denies); the
    // recorded one's when the new decision names none (allowed by default, say).
    let responsible = match (&d.policy, d.rule) {
        (Some(p), Some(r)) => format!("{p} rule {r}"),
        (Some(p), None) => p.clone(),
        _ if change == Change::DenyToAllow => match (&rec.policy, rec.rule) {
            (Some(p), Some(r)) => format!("{p} rule {r} (recorded denial; now: {})", d.reason),
            _ => d.reason.clone(),
        },
        _ => d.reason.clone(),
    };
    let request = match (&rec.method, &rec.path) {
        (Some(m), Some(p)) => format!("{m} {}{p}", rec.host.as_deref().unwrap_or_default()),
        _ => format!(
            "TCP port {}",
            rec.port.map_or("?".to_owned(), |p| p.to_string())
        ),
    };
    let example = Example {
        line: line_no,
        id: rec.id.to_string(),
        request,
        before: outcome(rec.allowed, rec.status, rec.policy.as_deref(), rec.rule),
        after: outcome(d.allowed, d.status, d.policy.as_deref(), d.rule),
    };
    *report.changes.entry(change).or_default() += 1;
    report
        .by_edge
        .entry(rec.edge())
        .or_default()
        .add(change, &example, keep);
    report
        .by_policy
        .entry(responsible)
        .or_default()
        .add(change, &example, keep);
}
