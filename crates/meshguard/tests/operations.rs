//! What an operator relies on from a running `meshguard serve`: decision log lines that join
//! with access logs (RFC 3339 time, decision id, client IP), the log file reopened on SIGHUP for
//! logrotate, and metrics that tell client mistakes from internal errors.

use std::process::Command;
use std::time::{Duration, Instant};

mod cmd;
use cmd::{http_get as request, serve, BIN};

/// The lines of a file once it has at least `n` of them.
fn lines_of(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= n || Instant::now() > until {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    t.len() == 27
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && t.ends_with('Z')
        && t[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
}

#[test]
fn decision_log_lines_join_rotate_and_metrics_tell_mistakes_apart() {
    let dir = std::env::temp_dir().join(format!("meshguard-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let log = dir.join("decisions.jsonl");
    let srv = serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--reload-interval".as_ref(),
        "0s".as_ref(),
        "--decision-log".as_ref(),
        log.as_os_str(),
    ]);
    let pid = srv.child.id().to_string();
    let (http, admin) = (srv.http.clone(), srv.admin.clone());
    assert!(!http.is_empty() && !admin.is_empty(), "{http} {admin}");

    let backend = [
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/api/v1/users?token=secret"),
        ("X-Meshguard-Workload", "production/app=backend"),
        ("X-Forwarded-For", "203.0.113.7"),
    ];
    let mut with_id = backend.to_vec();
    with_id.push(("X-Request-Id", "req-42"));
    request(&http, "/auth", &with_id);
    request(&http, "/auth", &backend);
    let got = lines_of(&log, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    for l in &got {
        let t = l["time"].as_str().expect("time is a string");
        assert!(is_rfc3339_utc(t), "{t}");
        assert_eq!(l["client_ip"], "203.0.113.7", "{l}");
        assert!(!l.to_string().contains("secret"), "no query strings: {l}");
    }
    assert_eq!(got[0]["id"], "req-42");
    let made = got[1]["id"].as_str().expect("id");
    assert!(made.starts_with("mg-") && made.len() == 31, "{made}");

    // logrotate: move the file away, SIGHUP, and the next line goes to a new file.
    let rotated = dir.join("decisions.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let hup = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    request(&http, "/auth", &with_id);
    let fresh = lines_of(&log, 1);
    assert_eq!(fresh.len(), 1, "a new file after SIGHUP");
    assert_eq!(
        lines_of(&rotated, 2).len(),
        2,
        "the rotated file is left alone"
    );

    // A request that names no workload is the client's mistake, not an internal error.
    let (status, _) = request(
        &http,
        "/auth",
        &[("X-Original-Method", "GET"), ("X-Original-URI", "/")],
    );
    assert_eq!(status, 403);
    let (_, metrics) = request(&admin, "/metrics", &[]);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(value("meshguard_bad_requests_total "), 1.0);
    assert_eq!(value("meshguard_internal_errors_total "), 0.0);
    assert!(
        value("meshguard_last_reload_timestamp_seconds ") > 1.7e9,
        "SIGHUP reloaded"
    );
    assert!(value("process_cpu_seconds_total ") > 0.0);
    assert!(value("process_resident_memory_bytes ") > 1e6);
    assert!(
        metrics.contains("meshguard_build_info{version=\""),
        "{metrics}"
    );
    let (status, health) = request(&admin, "/healthz", &[]);
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_level_and_format_are_checked_and_json_logs_are_json() {
    let o = Command::new(BIN)
        .args(["serve", "--log-level", "verbose", "--grpc-listen", "off"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown level `verbose`"), "{err}");
    let o = Command::new(BIN)
        .args(["proxy", "--log-format", "xml", "--config", "/nonexistent"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--log-format `xml`: use text or json"),
        "{err}"
    );
    // JSON operational logs: a warning logged while serving is one JSON object per line.
    let srv = serve([
        "--log-format",
        "json",
        "--grpc-listen",
        "off",
        "--admin-listen",
        "off",
        "--http-listen",
        "127.0.0.1:0",
        "--decision-log",
        "off",
    ]);
    let http = srv.http.clone();
    // A namespace without ALLOW policies: the default-deny warning, logged as JSON.
    request(
        &http,
        "/auth",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/"),
            ("X-Meshguard-Workload", "nowhere/app=x"),
        ],
    );
    let warning = std::iter::from_fn(|| srv.log.recv_timeout(Duration::from_secs(10)).ok())
        .find(|l| l.contains("no ALLOW AuthorizationPolicy"))
        .expect("the warning");
    drop(srv);
    let j: serde_json::Value = serde_json::from_str(&warning).expect("a JSON log line");
    assert_eq!(j["level"], "WARN", "{j}");
    assert_eq!(j["fields"]["namespace"], "nowhere", "{j}");
}

/// `meshguard.io/enforce-percent` through a running serve: a stable share of callers is denied,
/// each caller always the same way, and every decision line says whether the policy was
/// enforced for that caller.
#[test]
fn gradual_enforcement_through_serve() {
    let dir = std::env::temp_dir().join(format!("meshguard-gradual-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("p")).expect("mkdir");
    std::fs::write(
        dir.join("p/shop.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {action: ALLOW, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-legacy
  namespace: shop
  annotations: {meshguard.io/enforce-percent: \"50\"}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/legacy]}}]}]
",
    )
    .expect("write");
    let log = dir.join("d.jsonl");
    let policies = dir.join("p");
    let srv = serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--admin-listen".as_ref(),
        "off".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--trust-forwarded-client-cert".as_ref(),
        "--policies".as_ref(),
        policies.as_os_str(),
        "--decision-log".as_ref(),
        log.as_os_str(),
    ]);
    let http = srv.http.clone();
    let call = |i: usize| {
        let xfcc = format!("URI=spiffe://cluster.local/ns/shop/sa/caller-{i}");
        request(
            &http,
            "/auth",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/legacy"),
                ("X-Meshguard-Workload", "shop/app=web"),
                ("X-Forwarded-Client-Cert", &xfcc),
            ],
        )
        .0
    };
    let first: Vec<u16> = (0..40).map(call).collect();
    let second: Vec<u16> = (0..40).map(call).collect();
    assert_eq!(
        first, second,
        "each caller is decided the same way every time"
    );
    let denied = first.iter().filter(|s| **s == 403).count();
    assert!((8..=32).contains(&denied), "{denied} of 40 denied at 50%");
    let recorded = lines_of(&log, 80);
    drop(srv);
    assert_eq!(recorded.len(), 80);
    for l in &recorded {
        let g = &l["gradual"][0];
        assert_eq!(g["policy"], "shop/deny-legacy", "{l}");
        assert_eq!(g["percent"], 50);
        assert_eq!(g["enforced"].as_bool(), Some(l["status"] == 403), "{l}");
        assert!(l["caller_bucket"].as_u64().is_some_and(|b| b < 100), "{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Audit mode for one workload: its requests are decided and logged, never denied; the log and
/// the metrics say what would have been denied. Dry-run policies are counted with Istio's
/// labels.
#[test]
fn audit_mode_and_dry_run_are_observed_not_enforced() {
    let dir = std::env::temp_dir().join(format!("meshguard-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("p")).expect("mkdir");
    std::fs::write(
        dir.join("p/shop.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ok, namespace: shop}
spec: {action: ALLOW, rules: [{to: [{operation: {paths: [/ok, /x]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-x
  namespace: shop
  annotations: {istio.io/dry-run: \"true\"}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/x]}}]}]}
",
    )
    .expect("write");
    let log = dir.join("d.jsonl");
    let policies = dir.join("p");
    let srv = serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--admin-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--audit".as_ref(),
        "shop/app=web".as_ref(),
        "--policies".as_ref(),
        policies.as_os_str(),
        "--decision-log".as_ref(),
        log.as_os_str(),
    ]);
    let (http, admin, banner) = (srv.http.clone(), srv.admin.clone(), srv.banner.clone());
    assert!(banner.contains("AUDIT MODE for shop/app=web"), "{banner}");
    let ask = |path: &str, workload: &str| {
        request(
            &http,
            "/auth",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", path),
                ("X-Meshguard-Workload", workload),
            ],
        )
        .0
    };
    assert_eq!(
        ask("/forbidden", "shop/app=web"),
        200,
        "audit mode never denies"
    );
    assert_eq!(ask("/ok", "shop/app=web"), 200);
    assert_eq!(
        ask("/x", "shop/app=web"),
        200,
        "dry-run DENY is not enforced"
    );
    assert_eq!(
        ask("/forbidden", "shop/app=db"),
        403,
        "other workloads are enforced"
    );
    let got = lines_of(&log, 4);
    let audited: Vec<&serde_json::Value> = got
        .iter()
        .filter(|l| l.get("audit_mode").is_some())
        .collect();
    assert_eq!(audited.len(), 1, "{got:?}");
    assert_eq!(audited[0]["path"], "/forbidden");
    assert_eq!(audited[0]["audit_mode"]["would_status"], 403);
    assert!(audited[0]["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("allowed (audit mode): would be denied 403")));
    let x = got.iter().find(|l| l["path"] == "/x").expect("/x");
    assert_eq!(x["dry_run"]["allowed"], false, "{x}");
    let (_, metrics) = request(&admin, "/metrics", &[]);
    drop(srv);
    assert!(
        metrics.contains("meshguard_audit_mode_would_deny_total{policy=\"\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshguard_authz_dry_run_total{authz_dry_run_action=\"deny\",authz_dry_run_result=\"denied\",policy=\"shop/deny-x\"} 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The decision log file is bounded: past --decision-log-max-bytes it is rotated to .1, .2, .3
/// and the oldest is dropped.
#[test]
fn the_decision_log_rotates_by_size() {
    let dir = std::env::temp_dir().join(format!("meshguard-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let log = dir.join("d.jsonl");
    let srv = serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--admin-listen".as_ref(),
        "off".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--decision-log-max-bytes".as_ref(),
        "2000".as_ref(),
        "--decision-log".as_ref(),
        log.as_os_str(),
    ]);
    let http = srv.http.clone();
    for i in 0..40 {
        let id = format!("req-{i}");
        request(
            &http,
            "/auth",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/api/v1/users"),
                ("X-Meshguard-Workload", "production/app=backend"),
                ("X-Request-Id", &id),
            ],
        );
        // One line per batch: each request's line is written before the next is sent.
        let until = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&id)
        {
            assert!(Instant::now() < until, "line {i} not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(srv);
    let rotated = |n: u32| dir.join(format!("d.jsonl.{n}"));
    for f in [log.clone(), rotated(1), rotated(2), rotated(3)] {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0 && len < 3000, "{}: {len} bytes", f.display());
    }
    assert!(!rotated(4).exists(), "only three rotated files are kept");
    let newest = std::fs::read_to_string(&log).expect("log");
    assert!(newest.contains("req-39"), "{newest}");
    let _ = std::fs::remove_dir_all(&dir);
}
