//! The live service graph: every decision, as its decision-log line, counted on its edge
//! (caller identity -> destination workload, grouped as `simulate` groups them): allowed,
//! denied, would-be-denied (dry-run policies and audit mode), mTLS vs plaintext, and the most
//! recent decisions with their reasons. The recent lines are also what the "what if" view
//! replays against a candidate policy set, with the same [`crate::simulate`] as the CLI.
//!
//! Bounded: at most [`MAX_EDGES`] edges (decisions on further edges are counted as dropped) and
//! [`RECENT`] recent lines of at most [`MAX_LINE_BYTES`] per edge (about 400 MB at the very
//! worst; a few MB for a real mesh).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use meshguard_engine::{Engine, Observer};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::record::Recorded;
use crate::simulate::{simulate, Options, Report, SimulateError};

pub const MAX_EDGES: usize = 2000;
pub const RECENT: usize = 50;
/// Recent lines longer than this are counted but not kept (long hosts, paths, headers).
pub const MAX_LINE_BYTES: usize = 4096;

#[derive(Debug, Default)]
struct Edge {
    allowed: u64,
    denied: u64,
    would_deny: u64,
    mtls: u64,
    plaintext: u64,
    /// Newest last: the decision-log lines.
    recent: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Inner {
    edges: HashMap<(String, String), Edge>,
    dropped: u64,
}

/// The graph [`Observer`]: give it to [`meshguard_engine::State::set_observer`].
#[derive(Debug, Default)]
pub struct Graph {
    inner: Mutex<Inner>,
}

/// Whether a line records a decision that was allowed but would have been denied: a dry-run
/// policy that would deny, or audit mode's would-be denial.
fn would_deny(line: &Value) -> bool {
    line.get("dry_run")
        .and_then(|d| d.get("allowed"))
        .and_then(Value::as_bool)
        == Some(false)
        || line.get("audit_mode").is_some()
}

impl Observer for Graph {
    fn observe(&self, line: &Value) {
        let Ok(r) = Recorded::deserialize(line) else {
            return;
        };
        let key = r.edge();
        let would = would_deny(line);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !g.edges.contains_key(&key) && g.edges.len() >= MAX_EDGES {
            g.dropped += 1;
            return;
        }
        let e = g.edges.entry(key).or_default();
        if r.allowed {
            e.allowed += 1;
        } else {
            e.denied += 1;
        }
        if would {
            e.would_deny += 1;
        }
        if r.source_principal.is_some() {
            e.mtls += 1;
        } else {
            e.plaintext += 1;
        }
        let text = line.to_string();
        if text.len() <= MAX_LINE_BYTES {
            if e.recent.len() == RECENT {
                e.recent.pop_front();
            }
            e.recent.push_back(text);
        }
    }
}

/// What a page shows of one recent decision.
fn summary(line: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let pick = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "time": pick("time"),
        "id": pick("id"),
        "method": pick("method"),
        "host": pick("host"),
        "path": pick("path"),
        "port": pick("port"),
        "allowed": pick("allowed"),
        "status": pick("status"),
        "reason": pick("reason"),
        "policy": pick("policy"),
        "would_deny": would_deny(&v),
        "dry_run": pick("dry_run"),
        "audit_mode": pick("audit_mode"),
    })
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The graph as JSON: `nodes` (with their role), `edges` (counts and recent decisions,
    /// newest first), `dropped`.
    pub fn snapshot(&self) -> Value {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&(String, String)> = g.edges.keys().collect();
        keys.sort();
        let mut nodes: std::collections::BTreeMap<&str, (bool, bool)> = Default::default();
        let edges: Vec<Value> = keys
            .iter()
            .map(|k| {
                let e = &g.edges[*k];
                nodes.entry(&k.0).or_default().0 = true;
                nodes.entry(&k.1).or_default().1 = true;
                json!({
                    "source": k.0,
                    "destination": k.1,
                    "allowed": e.allowed,
                    "denied": e.denied,
                    "would_deny": e.would_deny,
                    "mtls": e.mtls,
                    "plaintext": e.plaintext,
                    "recent": e.recent.iter().rev().map(|l| summary(l)).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "nodes": nodes.iter().map(|(n, (calls, called))| json!({
                "id": n, "caller": calls, "called": called,
            })).collect::<Vec<_>>(),
            "edges": edges,
            "dropped": g.dropped,
        })
    }

    /// The recent decisions of every edge, as decision-log lines (oldest first per edge).
    pub fn recent_lines(&self) -> String {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&(String, String)> = g.edges.keys().collect();
        keys.sort();
        let mut out = String::new();
        for k in keys {
            for l in &g.edges[k].recent {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// "What if": the recent decisions replayed with `candidate` (an engine on the candidate
    /// policy set), as `simulate` reports it.
    pub fn what_if(&self, candidate: &Engine) -> Result<Report, SimulateError> {
        let lines = self.recent_lines();
        let opts = Options {
            threads: 1,
            examples: 5,
        };
        simulate(std::io::Cursor::new(lines), candidate, &opts, &|_| {})
    }
}
