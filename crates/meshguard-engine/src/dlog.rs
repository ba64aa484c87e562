//! The decision log: one JSON object per line, written off the request path. Tokens, passwords,
//! API keys and query strings are never logged.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Bytes gathered from the queue before one write.
const BATCH: usize = 64 * 1024;

/// What the writer could not write: counted, exposed on /metrics and /readyz.
#[derive(Debug, Default)]
pub struct LogHealth {
    /// Lines lost to write errors (full disk, closed pipe).
    pub lost: AtomicU64,
    /// Set on SIGHUP: a file sink is reopened before the next write (logrotate moved it).
    pub reopen: std::sync::atomic::AtomicBool,
    /// The last write error while it persists (cleared by the next successful write).
    pub error: std::sync::Mutex<Option<String>>,
}

impl LogHealth {
    fn written(&self) {
        if let Ok(mut e) = self.error.lock() {
            if e.is_some() {
                tracing::info!("decision log writable again");
                *e = None;
            }
        }
    }

    fn lost(&self, lines: u64, err: &std::io::Error) {
        let total = self.lost.fetch_add(lines, Ordering::Relaxed) + lines;
        if let Ok(mut e) = self.error.lock() {
            if e.is_none() {
                tracing::error!(error = %err, lost_lines = total, "decision log write failed; lines are being lost (decisions continue)");
            }
            *e = Some(err.to_string());
        }
    }

    /// A line for /readyz when lines are being lost, `None` when the log is healthy.
    pub fn problem(&self) -> Option<String> {
        let lost = self.lost.load(Ordering::Relaxed);
        let err = self.error.lock().ok().and_then(|e| e.clone());
        match err {
            Some(e) => Some(format!(
                "decision log: cannot write ({e}); {lost} line(s) lost so far; decisions continue"
            )),
            None if lost > 0 => Some(format!(
                "decision log: {lost} line(s) were lost to write errors earlier; writing again"
            )),
            None => None,
        }
    }
}

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

/// Size-bounded rotation of a decision log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds this many bytes; `None`: never.
    pub max_bytes: Option<u64>,
    /// Rotated files kept (`<file>.1` newest).
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: None,
            keep: 3,
        }
    }
}

/// `<file>.<keep-1>` -> `<file>.<keep>`, ..., `<file>` -> `<file>.1`.
fn rotate(path: &std::path::Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        std::path::PathBuf::from(s)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

fn open(sink: &Sink) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::Stderr => Box::new(std::io::stderr()),
        Sink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        Sink::Off => Box::new(std::io::sink()),
    })
}

/// `2026-12-02T16:26:13.123456Z`: RFC 3339 in UTC with microseconds, as log pipelines parse it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
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
        DecisionLog::start_rotating(sink, state, Rotation::default())
    }

    /// [`DecisionLog::start`] with a size bound for a file sink: past `rotation.max_bytes` the
    /// file is renamed to `<file>.1` (older ones shift to `.2` ... `.keep`, the oldest dropped)
    /// and a new one is started.
    pub fn start_rotating(
        sink: Sink,
        state: Arc<crate::state::State>,
        rotation: Rotation,
    ) -> std::io::Result<DecisionLog> {
        if sink == Sink::Off {
            return Ok(DecisionLog {
                tx: None,
                metrics: state,
            });
        }
        let mut out = open(&sink)?;
        let mut written = match &sink {
            Sink::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
            _ => 0,
        };
        let (tx, mut rx) = mpsc::channel::<String>(8192);
        let st = state.clone();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                // Lines are written in batches (whatever is queued, up to BATCH bytes) with one
                // write_all each; a batch that fails is counted line by line as lost, and the
                // error is kept for /readyz (a full disk, say). Decisions never wait for it.
                let mut batch: Vec<u8> = Vec::with_capacity(BATCH);
                while let Some(line) = rx.blocking_recv() {
                    if st.metrics.decision_log.reopen.swap(false, Ordering::Relaxed) {
                        match open(&sink) {
                            Ok(o) => {
                                out = o;
                                written = match &sink {
                                    Sink::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
                                    _ => 0,
                                };
                                tracing::info!("decision log reopened (SIGHUP)");
                            }
                            Err(e) => tracing::error!(error = %e, "decision log: cannot reopen the file after SIGHUP; writing to the old one"),
                        }
                    }
                    if let (Sink::File(p), Some(max)) = (&sink, rotation.max_bytes) {
                        if written >= max {
                            match rotate(p, rotation.keep).and_then(|()| open(&sink)) {
                                Ok(o) => {
                                    out = o;
                                    written = 0;
                                }
                                Err(e) => tracing::error!(error = %e, "decision log: cannot rotate the file; writing on"),
                            }
                        }
                    }
                    batch.clear();
                    let mut lines = 0u64;
                    let mut next = Some(line);
                    while let Some(l) = next.take() {
                        batch.extend_from_slice(l.as_bytes());
                        batch.push(b'\n');
                        lines += 1;
                        if batch.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    match out.write_all(&batch).and_then(|()| out.flush()) {
                        Ok(()) => {
                            written += batch.len() as u64;
                            st.metrics.decision_log.written()
                        }
                        Err(e) => st.metrics.decision_log.lost(lines, &e),
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

    /// Reopens a file sink before the next line (SIGHUP, after logrotate moved the file).
    pub fn reopen(&self) {
        self.metrics
            .metrics
            .decision_log
            .reopen
            .store(true, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_rfc3339_utc() {
        let t = |s: u64, us: u64| {
            super::rfc3339(UNIX_EPOCH + Duration::from_micros(s * 1_000_000 + us))
        };
        assert_eq!(t(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(t(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(t(1_795_969_573, 123_456), "2026-11-29T16:26:13.123456Z");
        assert_eq!(t(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }
}
