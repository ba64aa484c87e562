//! `meshguard simulate` on traffic recorded by a real `meshguard serve`: the decision log
//! carries what replay needs (principal, workload, path, the headers policies read, never
//! credentials), and a candidate policy set's changes are reported by edge and policy, with the
//! exit status as a CI gate.

use std::process::Command;
use std::time::{Duration, Instant};

mod cmd;
use cmd::{http_get, serve, BIN};

const LIVE: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/web/sa/frontend]}}]
    to: [{operation: {methods: [GET], paths: [/orders, /orders/*]}}]
  - to: [{operation: {paths: [/health]}}]
  - when: [{key: 'request.headers[x-tenant]', values: [gold]}]
";

fn ask(http: &str, path: &str, caller: Option<&str>, extra: &[(&str, &str)]) -> u16 {
    let xfcc = caller.map(|c| format!("URI=spiffe://cluster.local/ns/{c}"));
    let mut headers = vec![
        ("X-Original-Method", "GET"),
        ("X-Original-URI", path),
        ("X-Meshguard-Workload", "shop/app=api"),
    ];
    if let Some(x) = &xfcc {
        headers.push(("X-Forwarded-Client-Cert", x));
    }
    headers.extend_from_slice(extra);
    http_get(http, "/auth", &headers).0
}

/// `meshguard simulate --log LOG --policies DIR [extra...]`.
fn simulate(
    log: &std::path::Path,
    policies: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(BIN)
        .arg("simulate")
        .arg("--log")
        .arg(log)
        .arg("--policies")
        .arg(policies)
        .args(extra)
        .output()
        .expect("simulate")
}

#[test]
fn recorded_traffic_replays_against_a_candidate_set() {
    let dir = std::env::temp_dir().join(format!("meshguard-simulate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("live")).expect("mkdir");
    std::fs::create_dir_all(dir.join("candidate")).expect("mkdir");
    std::fs::write(dir.join("live/shop.yaml"), LIVE).expect("write");
    let log = dir.join("decisions.jsonl");
    let live = dir.join("live");
    let srv = serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--admin-listen".as_ref(),
        "off".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--trust-forwarded-client-cert".as_ref(),
        "--policies".as_ref(),
        live.as_os_str(),
        "--decision-log".as_ref(),
        log.as_os_str(),
    ]);
    let http = srv.http.clone();
    let frontend = Some("web/sa/frontend");
    let traffic = [
        (ask(&http, "/orders/17", frontend, &[]), 200),
        (
            ask(
                &http,
                "/orders",
                frontend,
                &[("Authorization", "Bearer secret-token")],
            ),
            200,
        ),
        (ask(&http, "/health", None, &[]), 200),
        (ask(&http, "/orders", Some("web/sa/intruder"), &[]), 403),
        (
            ask(
                &http,
                "/reports",
                Some("web/sa/partner"),
                &[("X-Tenant", "gold")],
            ),
            200,
        ),
    ];
    for (i, (got, want)) in traffic.iter().enumerate() {
        assert_eq!(got, want, "request {i}");
    }
    // Wait for the five lines, then stop the server.
    let until = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count()
        < 5
    {
        assert!(Instant::now() < until, "decision lines not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(srv);
    let recorded = std::fs::read_to_string(&log).expect("log");
    assert!(
        !recorded.contains("secret-token"),
        "credentials are never logged"
    );
    assert!(
        recorded.contains("\"x-tenant\":[\"gold\"]"),
        "the header a policy reads is: {recorded}"
    );

    // The same set replays with no change (exit 0).
    let o = simulate(&log, &dir.join("live"), &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("5 replayed, 5 unchanged, 0 changed"), "{out}");

    // A candidate that narrows the frontend to /orders, drops /health and the tenant rule, and
    // lets the intruder in.
    let candidate = LIVE
        .replace("paths: [/orders, /orders/*]", "paths: [/orders]")
        .replace("  - to: [{operation: {paths: [/health]}}]\n", "")
        .replace("values: [gold]", "values: [platinum]")
        .replace(
            "principals: [cluster.local/ns/web/sa/frontend]",
            "principals: [cluster.local/ns/web/sa/frontend, cluster.local/ns/web/sa/intruder]",
        )
        .replace("methods: [GET], paths", "paths");
    std::fs::write(dir.join("candidate/shop.yaml"), candidate).expect("write");
    let o = simulate(&log, &dir.join("candidate"), &["--format", "json"]);
    assert_eq!(o.status.code(), Some(2), "changes: exit 2 (a CI gate)");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(r["replayed"], 5);
    assert_eq!(r["changes"]["allow -> deny"], 3, "{r:#}");
    assert_eq!(r["changes"]["deny -> allow"], 1, "{r:#}");
    let edges: Vec<String> = r["by_edge"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            format!(
                "{} -> {}: {}",
                e["source"].as_str().unwrap_or(""),
                e["destination"].as_str().unwrap_or(""),
                e["total"]
            )
        })
        .collect();
    assert!(
        edges.contains(&"web/frontend -> shop/api: 1".to_owned()),
        "{edges:?}"
    );
    assert!(
        edges.contains(&"web/intruder -> shop/api: 1".to_owned()),
        "{edges:?}"
    );
    assert!(
        edges
            .iter()
            .any(|e| e.starts_with("plaintext 127.0.0.1 -> shop/api: 1")),
        "{edges:?}"
    );
    let policies: Vec<&str> = r["by_policy"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["policy"].as_str())
        .collect();
    assert!(
        policies.iter().any(|p| p.contains("none matched")),
        "{policies:?}"
    );
    assert!(policies.contains(&"shop/shop-api rule 0"), "{policies:?}");

    let o = simulate(&log, &dir.join("candidate"), &["--format", "markdown"]);
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(
        md.contains("| web/intruder | shop/api | 0 | 1 | 0 |"),
        "{md}"
    );
    // recommend: least privilege from the same log, lint-clean, and replaying the log against
    // it denies nothing that was allowed.
    let rec = dir.join("recommended.yaml");
    let o = Command::new(BIN)
        .arg("recommend")
        .arg("--log")
        .arg(&log)
        .arg("-o")
        .arg(&rec)
        .output()
        .expect("recommend");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("0 observed allowed request(s) would be denied"),
        "{err}"
    );
    let yaml = std::fs::read_to_string(&rec).expect("recommendation");
    assert!(yaml.contains("\"/orders/{*}\""), "ids generalised: {yaml}");
    assert!(yaml.contains("cluster.local/ns/web/sa/frontend"), "{yaml}");
    assert!(
        !yaml.contains("intruder"),
        "denied callers get nothing: {yaml}"
    );
    assert!(yaml.contains("name: allow-nothing"), "{yaml}");
    let o = Command::new(BIN)
        .args(["lint", "--deny-warnings"])
        .arg(&rec)
        .output()
        .expect("lint");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = simulate(&log, &rec, &["--format", "json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(
        r["changes"]["allow -> deny"],
        serde_json::Value::Null,
        "{r:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
