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
    /// Requests denied because the front end could not describe them (no workload, a malformed
    /// CheckRequest): the caller's or its configuration's mistake, not ours.
    pub bad_requests: AtomicU64,
    /// CheckRequests refused before decoding because they exceed --grpc-max-message-bytes.
    pub grpc_too_large: AtomicU64,
    /// Unix time (seconds) of the last reload attempt, 0 before the first.
    pub last_reload_at: AtomicU64,
    /// AuthConfig chain -> (allowed, denied) of the decisions it took part in.
    auth_configs: RwLock<HashMap<String, [AtomicU64; 2]>>,
    /// (dry-run action, would-be result, deciding dry-run policy) -> decisions.
    dry_runs: RwLock<HashMap<(&'static str, bool, String), AtomicU64>>,
    /// Requests an audit-mode workload let through that its policies would have denied, by the
    /// policy that would have denied them (empty: no single policy).
    pub(crate) audit_would_deny: RwLock<HashMap<String, AtomicU64>>,
    /// Filled by the mTLS proxy: connections accepted and handshakes refused, by direction.
    pub proxy: ProxyMetrics,
}

/// Distinct (port, transport, source) rows kept for mTLS readiness; beyond it new sources are
/// counted under `source="other"` so a scan of many addresses cannot grow memory.
const READINESS_ROWS: usize = 1024;

/// What the mTLS proxy counts (zero in `serve`).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// mTLS readiness on PERMISSIVE ports: (port, mTLS?, source) -> connections. The source is
    /// the caller's SPIFFE ID over mTLS and its IP in plaintext: the plaintext rows are the
    /// callers STRICT would break.
    permissive: RwLock<HashMap<(u16, bool, String), AtomicU64>>,
    pub inbound_connections: AtomicU64,
    pub outbound_connections: AtomicU64,
    pub open_connections: AtomicU64,
    pub inbound_handshake_failures: AtomicU64,
    pub outbound_handshake_failures: AtomicU64,
    /// Unix time (seconds) when the current SVID expires, 0 when there is none.
    pub svid_expiry: AtomicU64,
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

    /// Counts one decision an AuthConfig chain (or several, comma-joined) took part in.
    pub fn record_auth_config(&self, chains: &str, allowed: bool) {
        for chain in chains.split(',') {
            let i = usize::from(!allowed);
            let hit = {
                let map = self.auth_configs.read().unwrap_or_else(|e| e.into_inner());
                map.get(chain)
                    .map(|c| c[i].fetch_add(1, Ordering::Relaxed))
                    .is_some()
            };
            if !hit {
                let mut map = self.auth_configs.write().unwrap_or_else(|e| e.into_inner());
                map.entry(chain.to_owned()).or_default()[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts one decision dry-run policies took part in.
    pub fn record_dry_run(&self, action: &'static str, allowed: bool, policy: Option<&str>) {
        let policy = policy.unwrap_or("");
        let hit = {
            let map = self.dry_runs.read().unwrap_or_else(|e| e.into_inner());
            map.get(&(action, allowed, policy.to_owned()))
                .map(|c| c.fetch_add(1, Ordering::Relaxed))
                .is_some()
        };
        if !hit {
            let mut map = self.dry_runs.write().unwrap_or_else(|e| e.into_inner());
            map.entry((action, allowed, policy.to_owned()))
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one request audit mode let through that would have been denied.
    pub fn record_audit_would_deny(&self, policy: Option<&str>) {
        let policy = policy.unwrap_or("");
        let hit = {
            let map = self
                .audit_would_deny
                .read()
                .unwrap_or_else(|e| e.into_inner());
            map.get(policy)
                .map(|c| c.fetch_add(1, Ordering::Relaxed))
                .is_some()
        };
        if !hit {
            let mut map = self
                .audit_would_deny
                .write()
                .unwrap_or_else(|e| e.into_inner());
            map.entry(policy.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition; `jwks` holds (issuer/uri, ok, failed) per remote key set.
    pub fn render(&self, jwks: &[(String, u64, u64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP meshguard_build_info The running build (always 1)."
        );
        let _ = writeln!(out, "# TYPE meshguard_build_info gauge");
        let _ = writeln!(
            out,
            "meshguard_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process_metrics(&mut out);
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
        let _ = writeln!(out, "# HELP meshguard_bad_requests_total Requests denied because they could not be described (no workload, a malformed CheckRequest): a client or configuration mistake.");
        let _ = writeln!(out, "# TYPE meshguard_bad_requests_total counter");
        let _ = writeln!(
            out,
            "meshguard_bad_requests_total {}",
            self.bad_requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_last_reload_timestamp_seconds Unix time of the last reload attempt (0: none yet); its result is meshguard_last_reload_success.");
        let _ = writeln!(out, "# TYPE meshguard_last_reload_timestamp_seconds gauge");
        let _ = writeln!(
            out,
            "meshguard_last_reload_timestamp_seconds {}",
            self.last_reload_at.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_auth_config_decisions_total Decisions an AuthConfig chain took part in, by result.");
        let _ = writeln!(out, "# TYPE meshguard_auth_config_decisions_total counter");
        {
            let map = self.auth_configs.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (chain, c) in rows {
                for (i, result) in ["allow", "deny"].iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "meshguard_auth_config_decisions_total{{auth_config=\"{}\",result=\"{result}\"}} {}",
                        escape(chain),
                        c[i].load(Ordering::Relaxed)
                    );
                }
            }
        }
        let _ = writeln!(out, "# HELP meshguard_authz_dry_run_total Decisions dry-run policies (istio.io/dry-run, and meshguard.io/enforce-percent outside its share) took part in: what they would have decided, by the deciding dry-run policy (Istio's authz_dry_run_action and authz_dry_run_result).");
        let _ = writeln!(out, "# TYPE meshguard_authz_dry_run_total counter");
        {
            let map = self.dry_runs.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((action, allowed, policy), c) in rows {
                let _ = writeln!(
                    out,
                    "meshguard_authz_dry_run_total{{authz_dry_run_action=\"{action}\",authz_dry_run_result=\"{}\",policy=\"{}\"}} {}",
                    if *allowed { "allowed" } else { "denied" },
                    escape(policy),
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP meshguard_audit_mode_would_deny_total Requests an audit-mode workload let through that its policies would have denied, by the policy that would have denied them.");
        let _ = writeln!(out, "# TYPE meshguard_audit_mode_would_deny_total counter");
        {
            let map = self
                .audit_would_deny
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (policy, c) in rows {
                let _ = writeln!(
                    out,
                    "meshguard_audit_mode_would_deny_total{{policy=\"{}\"}} {}",
                    escape(policy),
                    c.load(Ordering::Relaxed)
                );
            }
        }
        self.proxy.render(&mut out);
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

impl ProxyMetrics {
    /// Counts one connection accepted on a PERMISSIVE port.
    pub fn record_permissive(&self, port: u16, mtls: bool, source: &str) {
        {
            let map = self.permissive.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(&(port, mtls, source.to_owned())) {
                c.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.permissive.write().unwrap_or_else(|e| e.into_inner());
        let key = if map.len() < READINESS_ROWS {
            (port, mtls, source.to_owned())
        } else {
            (port, mtls, "other".to_owned())
        };
        map.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let connections = self.inbound_connections.load(Ordering::Relaxed)
            + self.outbound_connections.load(Ordering::Relaxed);
        if connections == 0 && self.svid_expiry.load(Ordering::Relaxed) == 0 {
            return; // not a proxy
        }
        let _ = writeln!(out, "# HELP meshguard_proxy_connections_total Connections the proxy accepted, by direction.");
        let _ = writeln!(out, "# TYPE meshguard_proxy_connections_total counter");
        let _ = writeln!(
            out,
            "meshguard_proxy_connections_total{{direction=\"inbound\"}} {}",
            self.inbound_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "meshguard_proxy_connections_total{{direction=\"outbound\"}} {}",
            self.outbound_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP meshguard_proxy_open_connections Connections open now."
        );
        let _ = writeln!(out, "# TYPE meshguard_proxy_open_connections gauge");
        let _ = writeln!(
            out,
            "meshguard_proxy_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_proxy_handshake_failures_total mTLS handshakes that failed (inbound: a client refused; outbound: the upstream refused or presented another identity).");
        let _ = writeln!(
            out,
            "# TYPE meshguard_proxy_handshake_failures_total counter"
        );
        let _ = writeln!(
            out,
            "meshguard_proxy_handshake_failures_total{{direction=\"inbound\"}} {}",
            self.inbound_handshake_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "meshguard_proxy_handshake_failures_total{{direction=\"outbound\"}} {}",
            self.outbound_handshake_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP meshguard_permissive_connections_total Connections on PERMISSIVE ports by transport and source (SPIFFE ID over mTLS, IP in plaintext): the plaintext sources are the callers STRICT would refuse.");
        let _ = writeln!(out, "# TYPE meshguard_permissive_connections_total counter");
        {
            let map = self.permissive.read().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((port, mtls, source), c) in rows {
                let _ = writeln!(
                    out,
                    "meshguard_permissive_connections_total{{port=\"{port}\",transport=\"{}\",source=\"{}\"}} {}",
                    if *mtls { "mtls" } else { "plaintext" },
                    escape(source),
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP meshguard_svid_expiry_timestamp_seconds Unix time when the proxy's current X.509-SVID expires.");
        let _ = writeln!(out, "# TYPE meshguard_svid_expiry_timestamp_seconds gauge");
        let _ = writeln!(
            out,
            "meshguard_svid_expiry_timestamp_seconds {}",
            self.svid_expiry.load(Ordering::Relaxed)
        );
    }
}

/// The standard `process_*` metrics from /proc (Linux; absent elsewhere).
fn process_metrics(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // /proc/[pid]/stat: utime is field 14, stime 15, starttime 22, rss 24 (1-based); `rest`
    // starts at field 3.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    if let (Some(u), Some(s)) = (num(14), num(15)) {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds."
        );
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(out, "process_cpu_seconds_total {}", (u + s) as f64 / ticks);
    }
    if let Some(rss) = num(24) {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(out, "process_resident_memory_bytes {}", rss as f64 * page);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(start), Some(boot)) = (num(22), boot) {
        let _ = writeln!(out, "# HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds.");
        let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
        let _ = writeln!(
            out,
            "process_start_time_seconds {}",
            boot as f64 + start as f64 / ticks
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors."
        );
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
