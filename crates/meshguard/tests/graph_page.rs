//! The live service graph on the admin port (`/graph`), end to end in a real headless browser:
//! Debian's Chromium driven by `playwright-core` (npm, target/playwright-node, from
//! scripts/test.sh). The test drives traffic through `serve` (callers by mTLS identity from a
//! trusted proxy's XFCC, and a plaintext caller), loads the page, checks the edges and their
//! counts, opens an edge's recent decisions, runs "what if" with a candidate policy set, checks
//! that request data is shown as text (a path carrying markup injects nothing), and saves a
//! screenshot (target/graph-page.png; the README shows a copy, docs/graph.png).
//!
//! Under CI=true a missing Chromium or playwright-core fails the test.

mod cmd;

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-reads, namespace: backend}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
    to: [{operation: {methods: [GET], paths: [/api/*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: retire-legacy
  namespace: backend
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/api/legacy/*]}}]
"#;

/// The candidate set the page's "what if" runs: batch may read too.
const CANDIDATE: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-reads, namespace: backend}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web, cluster.local/ns/jobs/sa/batch]}}]
    to: [{operation: {methods: [GET], paths: [/api/*]}}]
"#;

const DRIVER: &str = r##"
// `node -e`: argv[0] is node, the arguments follow.
const [pw, url, candidate, shot] = process.argv.slice(1);
const { chromium } = require(pw);
(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--headless", "--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1400, height: 760 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("dialog", async (d) => { errors.push("dialog: " + d.message()); await d.dismiss(); });
  await page.goto(url + "/graph");
  await page.waitForSelector("g.edge", { timeout: 15000 });
  const edges = await page.$$eval("g.edge", (gs) => gs.map((g) => ({
    source: g.dataset.source, destination: g.dataset.destination,
    cls: g.getAttribute("class"), label: g.querySelector("text").textContent })));
  const totals = await page.textContent("#totals");
  await page.click('g.edge[data-source="frontend/web"] text');
  await page.waitForSelector("#recent tr.decision");
  const rows = await page.$$eval("#recent tr.decision", (trs) => trs.map((t) => t.textContent));
  const title = await page.textContent("#edge-title");
  await page.fill("#candidate", candidate);
  await page.click("#run-what-if");
  await page.waitForSelector("#what-if tr.change", { timeout: 15000 });
  const changes = await page.$$eval("#what-if tr.change", (trs) => trs.map((t) => t.textContent));
  const summary = await page.textContent("#what-if-summary");
  const changed = await page.$$eval("g.edge.changed", (gs) => gs.map((g) => g.dataset.source));
  const scripts = await page.$$eval("script", (s) => s.length);
  const images = await page.$$eval("img", (s) => s.length);
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ edges, totals, rows, title, changes, summary, changed, scripts, images, errors }));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
"##;

fn playwright() -> Option<PathBuf> {
    let pw = Path::new(ROOT).join("target/playwright-node/node_modules/playwright-core");
    if pw.is_dir() && Path::new("/usr/bin/chromium").exists() {
        return Some(pw);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Chromium or playwright-core is missing (run scripts/test.sh)"
    );
    eprintln!("skipped: Chromium or playwright-core is missing (run scripts/test.sh)");
    None
}

#[test]
fn the_graph_page_shows_edges_decisions_and_what_if() {
    let Some(pw) = playwright() else { return };
    let dir = std::env::temp_dir().join(format!("meshguard-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("p.yaml"), POLICIES).expect("policies");
    let s = cmd::serve([
        "--grpc-listen".as_ref(),
        "off".as_ref(),
        "--http-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--decision-log".as_ref(),
        "off".as_ref(),
        "--trust-forwarded-client-cert".as_ref(),
        "--policies".as_ref(),
        dir.join("p.yaml").as_os_str(),
    ]);
    let ask_at = |caller: Option<&str>, path: &str, host: Option<&str>| {
        let xfcc = caller.map(|c| {
            format!("By=spiffe://cluster.local/ns/backend/sa/api;URI=spiffe://cluster.local/{c}")
        });
        let mut h = vec![
            ("X-Original-Method", "GET"),
            ("X-Original-URI", path),
            ("X-Meshguard-Workload", "backend/app=api"),
        ];
        if let Some(x) = &xfcc {
            h.push(("X-Forwarded-Client-Cert", x));
        }
        if let Some(host) = host {
            h.push(("X-Original-Host", host));
        }
        cmd::http_get(&s.http, "/auth", &h).0
    };
    let ask = |caller: Option<&str>, path: &str| ask_at(caller, path, None);
    let web = Some("ns/frontend/sa/web");
    for _ in 0..3 {
        assert_eq!(ask(web, "/api/orders"), 200);
    }
    assert_eq!(
        ask(web, "/api/legacy/export"),
        200,
        "dry-run DENY: allowed, logged"
    );
    // Request data that is markup (a client chooses its Host): shown as text, never parsed.
    assert_eq!(
        ask_at(web, "/api/orders", Some("<img src=x onerror=alert(1)>")),
        200
    );
    assert_eq!(ask(Some("ns/jobs/sa/batch"), "/api/orders"), 403);
    assert_eq!(ask(None, "/api/orders"), 403);

    let shot = Path::new(ROOT).join("target/graph-page.png");
    let _ = std::fs::remove_file(&shot);
    let o = Command::new("node")
        .arg("-e")
        .arg(DRIVER)
        .arg(&pw)
        .arg(format!("http://{}", s.admin))
        .arg(CANDIDATE)
        .arg(&shot)
        .output()
        .expect("node");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");

    let edge = |src: &str| {
        v["edges"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["source"] == src))
            .cloned()
            .unwrap_or_else(|| panic!("no edge from {src}: {v}"))
    };
    // allowed / denied / would-deny, mTLS / plaintext
    let w = edge("frontend/web");
    assert_eq!(w["destination"], "backend/api");
    assert_eq!(w["label"], "5 / 0 / 1, 5 / 0", "{w}");
    assert!(
        w["cls"].as_str().is_some_and(|c| c.contains("would")),
        "{w}"
    );
    let b = edge("jobs/batch");
    assert_eq!(b["label"], "0 / 1 / 0, 1 / 0", "{b}");
    assert!(
        b["cls"].as_str().is_some_and(|c| c.contains("denied")),
        "{b}"
    );
    let p = edge("plaintext 127.0.0.1");
    assert_eq!(p["label"], "0 / 1 / 0, 0 / 1", "{p}");
    assert!(
        p["cls"].as_str().is_some_and(|c| c.contains("plain")),
        "{p}"
    );
    assert!(
        v["totals"].as_str().is_some_and(|t| t.contains("3 edges")
            && t.contains("5 allowed")
            && t.contains("2 denied")
            && t.contains("1 would be denied")),
        "{v}"
    );

    // The web edge's recent decisions, newest first, with reasons; the markup in a path is text.
    assert_eq!(v["title"], "frontend/web \u{2192} backend/api");
    let rows: Vec<&str> = v["rows"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.contains("/api/legacy/export") && r.contains("would deny")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("<img src=x onerror=alert(1)>")),
        "{rows:?}"
    );
    assert_eq!(v["scripts"], 1, "only the page's own script: {v}");
    assert_eq!(v["images"], 0, "no element injected from request data: {v}");

    // What if batch may read: its denial would become an allow.
    let changes = v["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "{v}");
    let c = changes[0].as_str().unwrap_or("");
    assert!(
        c.contains("jobs/batch") && c.contains("1 deny -> allow"),
        "{c}"
    );
    assert_eq!(v["changed"], serde_json::json!(["jobs/batch"]), "{v}");
    assert!(
        v["summary"]
            .as_str()
            .is_some_and(|t| t.contains("would change")),
        "{v}"
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot was saved ({size} bytes)");
}

/// What the page reads, without a browser: the JSON, a refused candidate with file:line, the
/// size bound, and the page's Content-Security-Policy.
#[test]
fn graph_endpoints_answer_and_refuse_bad_candidates() {
    let s = cmd::serve([
        "--grpc-listen",
        "off",
        "--http-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--decision-log",
        "off",
    ]);
    let (status, body) = cmd::http_get(&s.admin, "/graph.json", &[]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["edges"].is_array(), "{v}");
    let post_with = |header: &str, body: &str| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&s.admin).expect("connect");
        let req = format!(
            "POST /graph/what-if HTTP/1.1\r\nHost: x\r\n{header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    let post = |body: &str| post_with("X-Meshguard-What-If: 1\r\n", body);
    // Without the header (what a cross-origin form could send): refused.
    let forged = post_with("", "");
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    let bad = post("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: y}\nspec: {acton: DENY}\n");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("candidate.yaml:4"), "{bad}");
    let big = post(&"#".repeat((1 << 20) + 10));
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    let page = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&s.admin).expect("connect");
        c.write_all(b"GET /graph HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
}
