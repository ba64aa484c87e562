//! Prometheus metrics, rendered in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Upper bounds (seconds) of the decision latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// (front end, allowed, HTTP status)
type Outcome = (&'static str, bool, u16);

#[derive(Debug, Default)]
pub struct Metrics {
    /// outcome -> deciding policy -> count (lookups by `&str`, no allocation once a row exists)
    decisions: RwLock<HashMap<Outcome, HashMap<String, AtomicU64>>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    pub reload_ok: AtomicU64,
    pub reload_failed: AtomicU64,
    pub generation: AtomicU64,
    pub last_reload_ok: AtomicU64,
    pub decision_log_dropped: AtomicU64,
    /// Lines lost to write errors, and the error while it lasts.
    pub decision_log: crate::dlog::LogHealth,
    pub internal_errors: AtomicU64,
    /// CheckRequests refused before decoding because they exceed --grpc-max-message-bytes.
    pub grpc_too_large: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.last_reload_ok.store(1, Ordering::Relaxed);
        m
    }

    pub fn record_decision(
        &self,
        mode: &'static str,
        allowed: bool,
        status: u16,
        policy: Option<&str>,
        latency: Duration,
    ) {
        let policy = policy.unwrap_or("");
        let key = (mode, allowed, status);
        let found = {
            let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
            match map.get(&key).and_then(|m| m.get(policy)) {
                Some(c) => {
                    c.fetch_add(1, Ordering::Relaxed);
                    true
                }
                None => false,
            }
        };
        if !found {
            let mut map = self.decisions.write().unwrap_or_else(|e| e.into_inner());
            map.entry(key)
                .or_default()
                .entry(policy.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The text exposition; `jwks` holds (issuer/uri, ok, failed) per remote key set.
    pub fn render(&self, jwks: &[(String, u64, u64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP meshguard_decisions_total Authorization decisions by result, HTTP status and deciding policy (empty: no single policy decided).");
        let _ = writeln!(out, "# TYPE meshguard_decisions_total counter");
        let map = self.decisions.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(&Outcome, &String, u64)> = map
            .iter()
            .flat_map(|(k, m)| {
                m.iter()
                    .map(move |(p, c)| (k, p, c.load(Ordering::Relaxed)))
            })
            .collect();
        rows.sort();
        for ((mode, allowed, status), policy, count) in rows {
            let _ = writeln!(
                out,
                "meshguard_decisions_total{{mode=\"{mode}\",result=\"{}\",status=\"{status}\",policy=\"{}\"}} {count}",
                if *allowed { "allow" } else { "deny" },
                escape(policy),
            );
        }
        let _ = writeln!(out, "# HELP meshguard_decision_duration_seconds Time to decide one request, from receipt to answer.");
        let _ = writeln!(out, "# TYPE meshguard_decision_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "meshguard_decision_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "meshguard_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "meshguard_decision_duration_seconds_sum {}",
            self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "meshguard_decision_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP meshguard_reloads_total Policy reloads by result."
        );
        let _ = writeln!(out, "# TYPE meshguard_reloads_total counter");
        let _ = writeln!(
            out,
            "meshguard_reloads_total{{result=\"success\"}} {}",
            self.reload_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "meshguard_reloads_total{{result=\"failure\"}} {}",
            self.reload_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP meshguard_policy_generation Generation number of the active policy set."
        );
        let _ = writeln!(out, "# TYPE meshguard_policy_generation gauge");
        let _ = writeln!(
            out,
            "meshguard_policy_generation {}",
            self.generation.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_last_reload_success 1 if the last reload attempt succeeded, 0 if it was refused (the previous set is still active).");
        let _ = writeln!(out, "# TYPE meshguard_last_reload_success gauge");
        let _ = writeln!(
            out,
            "meshguard_last_reload_success {}",
            self.last_reload_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP meshguard_jwks_fetch_total Remote JWKS fetches by key set and result."
        );
        let _ = writeln!(out, "# TYPE meshguard_jwks_fetch_total counter");
        for (src, ok, failed) in jwks {
            let _ = writeln!(
                out,
                "meshguard_jwks_fetch_total{{jwks=\"{}\",result=\"success\"}} {ok}",
                escape(src)
            );
            let _ = writeln!(
                out,
                "meshguard_jwks_fetch_total{{jwks=\"{}\",result=\"failure\"}} {failed}",
                escape(src)
            );
        }
        let _ = writeln!(out, "# HELP meshguard_decision_log_dropped_total Decision log lines dropped because the writer fell behind.");
        let _ = writeln!(out, "# TYPE meshguard_decision_log_dropped_total counter");
        let _ = writeln!(
            out,
            "meshguard_decision_log_dropped_total {}",
            self.decision_log_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_decision_log_lost_total Decision log lines lost because writing failed (a full disk, a closed pipe).");
        let _ = writeln!(out, "# TYPE meshguard_decision_log_lost_total counter");
        let _ = writeln!(
            out,
            "meshguard_decision_log_lost_total {}",
            self.decision_log.lost.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_decision_log_write_ok Whether the last decision log write succeeded (1) or failed (0).");
        let _ = writeln!(out, "# TYPE meshguard_decision_log_write_ok gauge");
        let _ = writeln!(
            out,
            "meshguard_decision_log_write_ok {}",
            u8::from(
                self.decision_log
                    .error
                    .lock()
                    .map(|e| e.is_none())
                    .unwrap_or(false)
            )
        );
        let _ = writeln!(out, "# HELP meshguard_internal_errors_total Requests denied because of an internal error (fail closed).");
        let _ = writeln!(out, "# TYPE meshguard_internal_errors_total counter");
        let _ = writeln!(
            out,
            "meshguard_internal_errors_total {}",
            self.internal_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_grpc_messages_too_large_total CheckRequests refused because they exceed --grpc-max-message-bytes (Envoy denies them).");
        let _ = writeln!(
            out,
            "# TYPE meshguard_grpc_messages_too_large_total counter"
        );
        let _ = writeln!(
            out,
            "meshguard_grpc_messages_too_large_total {}",
            self.grpc_too_large.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
