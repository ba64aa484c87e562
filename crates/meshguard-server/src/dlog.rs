//! The decision log: one JSON object per line, written off the request path. Tokens, passwords,
//! API keys and query strings are never logged.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

impl Sink {
    pub fn parse(s: &str) -> Sink {
        match s {
            "off" | "none" | "" => Sink::Off,
            "stdout" | "-" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            path => Sink::File(path.into()),
        }
    }
}

/// A handle to the log writer.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Option<mpsc::Sender<String>>,
    metrics: Arc<crate::state::State>,
}

impl DecisionLog {
    /// Starts the writer thread. Lines that cannot be queued (writer too slow) are counted and
    /// dropped rather than slowing decisions down.
    pub fn start(sink: Sink, state: Arc<crate::state::State>) -> std::io::Result<DecisionLog> {
        if sink == Sink::Off {
            return Ok(DecisionLog {
                tx: None,
                metrics: state,
            });
        }
        let mut out: Box<dyn Write + Send> = match &sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            Sink::Off => Box::new(std::io::sink()),
        };
        let (tx, mut rx) = mpsc::channel::<String>(8192);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    let _ = writeln!(out, "{line}");
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
            })?;
        Ok(DecisionLog {
            tx: Some(tx),
            metrics: state,
        })
    }

    /// Whether lines are written at all (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, entry: serde_json::Value) {
        if let Some(tx) = &self.tx {
            if tx.try_send(entry.to_string()).is_err() {
                let m: &Metrics = &self.metrics.metrics;
                m.decision_log_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
