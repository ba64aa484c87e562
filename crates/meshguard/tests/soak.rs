//! Soak drill (issue 12): `meshguard serve` (gRPC ext_authz and HTTP forward-auth) and
//! `meshguard proxy` under sustained load while the policies are rewritten and reloaded every
//! second (SIGHUP), the JWKS endpoint flaps (down 2 s of every 5), and the LDAP server is stopped
//! for 3 s of every 10 and started again.
//!
//! Asserted: no wrong decision (an allow that should be a deny, ever; a deny that should be an
//! allow outside the LDAP outage windows, for LDAP requests), no failed request (every call gets
//! an answer), every reload applied, and memory that does not grow (RSS of serve and proxy at
//! the start and end, printed). `MESHGUARD_SOAK_SECONDS` sets the length (20 s in the test
//! command; BENCHMARKS.md records a longer run).

mod envoy;
#[path = "../../meshguard-server/tests/slapd/mod.rs"]
mod slapd;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy::{free_port, mg};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

const AUTHN_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../meshguard-authn/tests/data");

fn token() -> String {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{AUTHN_DATA}/tokens.json")).expect("tokens"),
    )
    .expect("json");
    v["tokens"]["RS256"].as_str().expect("token").to_owned()
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// A JWKS endpoint that answers while `up`, and closes connections at once while down.
fn jwks_server(up: Arc<AtomicBool>, served: Arc<AtomicU64>) -> u16 {
    let body = std::fs::read_to_string(format!("{AUTHN_DATA}/jwks.json")).expect("jwks");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            if !up.load(Ordering::Relaxed) {
                continue; // dropped: connection closed without an answer
            }
            let body = body.clone();
            let served = served.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                served.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    port
}

fn policies(jwks_port: u16, ldap_port: u16) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: soak}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: soak}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    audiences: [api.test]
    jwksUri: http://127.0.0.1:{jwks_port}/jwks
    timeout: 1s
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-paths, namespace: soak}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/deny/*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: soak}}
spec:
  rules:
  - to: [{{operation: {{paths: [/ok/*, /ldap/*]}}}}]
  - from: [{{source: {{requestPrincipals: [\"https://issuer.test/*\"]}}}}]
    to: [{{operation: {{paths: [/jwt/*]}}}}]
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {{name: ldap, namespace: gloo-system}}
spec:
  configs:
  - name: ldap
    ldap:
      address: ldap://127.0.0.1:{ldap_port}
      userDnTemplate: uid=%s,ou=people,dc=example,dc=org
      membershipAttributeName: memberOf
      allowedGroups: [\"cn=managers,ou=groups,dc=example,dc=org\"]
      pool: {{maxSize: 4, initialSize: 1}}
"
    )
}

/// A policy file rewritten before every reload: its content changes, its effect does not.
fn churn(n: u64) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: churn, namespace: soak, annotations: {{revision: \"{n}\"}}}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/never/{n}]}}}}]}}]
"
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn metric(admin: u16, name: &str) -> u64 {
    let mut s = match TcpStream::connect(("127.0.0.1", admin)) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// What a request must get: always this answer, or (for LDAP requests during an outage window)
/// this answer or a denial.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    Allow,
    Deny,
}

/// Tallies, by front end and case.
#[derive(Default)]
struct Tally {
    ok: HashMap<String, u64>,
    wrong: Vec<String>,
    failed: Vec<String>,
    in_outage: u64,
}

/// The LDAP outage windows (stop, restart + grace), in time since the start.
#[derive(Default)]
struct Windows(Mutex<Vec<(Duration, Option<Duration>)>>);

impl Windows {
    fn covers(&self, sent: Duration, answered: Duration) -> bool {
        let grace = Duration::from_secs(2);
        self.0.lock().map_or(true, |w| {
            w.iter()
                .any(|(from, to)| answered >= *from && to.is_none_or(|t| sent <= t + grace))
        })
    }
}

/// Where answers are judged: the tallies, the outage windows and the clock they share.
struct Judge {
    tally: Mutex<Tally>,
    windows: Windows,
    start: Instant,
}

impl Judge {
    fn record(&self, sent: Duration, what: &str, want: Want, ldap: bool, got: Option<bool>) {
        let (tally, windows) = (&self.tally, &self.windows);
        let answered = self.start.elapsed();
        let mut t = tally.lock().expect("tally");
        match got {
            None => t
                .failed
                .push(format!("{what} at {:.1}s: no answer", sent.as_secs_f64())),
            Some(allowed) => {
                let good = (want == Want::Allow) == allowed;
                if good {
                    *t.ok.entry(what.to_owned()).or_default() += 1;
                } else if ldap && want == Want::Allow && windows.covers(sent, answered) {
                    t.in_outage += 1;
                } else {
                    t.wrong.push(format!(
                        "{what} at {:.1}s: {} but wanted {want:?}",
                        sent.as_secs_f64(),
                        if allowed { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }
}

fn check(path: &str, headers: &[(&str, &str)], config_id: Option<&str>) -> CheckRequest {
    let mut ext = HashMap::new();
    ext.insert("namespace".to_owned(), "soak".to_owned());
    ext.insert("labels".to_owned(), "app=api".to_owned());
    if let Some(c) = config_id {
        ext.insert("config_id".to_owned(), c.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "api.soak".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

/// One HTTP/1.1 request on a fresh connection: the status, `None` without an answer.
fn http_status(port: u16, raw: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

#[test]
fn soak_with_reloads_flapping_jwks_and_an_ldap_outage() {
    let seconds: u64 = std::env::var("MESHGUARD_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = envoy::temp_dir("soak");
    let Some((slapd, ldap_port)) = slapd::start_slapd(&dir.join("slapd")) else {
        return;
    };
    let jwks_up = Arc::new(AtomicBool::new(true));
    let jwks_served = Arc::new(AtomicU64::new(0));
    let jwks_port = jwks_server(jwks_up.clone(), jwks_served.clone());
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol).expect("dir");
    std::fs::write(pol.join("soak.yaml"), policies(jwks_port, ldap_port)).expect("write");
    std::fs::write(pol.join("churn.yaml"), churn(0)).expect("write");

    // serve
    let polarg = pol.display().to_string();
    let (serve, grpc, http, admin) =
        envoy::start_serve_admin(&dir, "soak", &["--policies", &polarg]);

    // proxy, in front of an echo app, with an SVID from `meshguard ca`
    let d = |p: &str| dir.join(p).display().to_string();
    mg(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        &d("ca"),
    ]);
    mg(&[
        "ca",
        "issue",
        "--dir",
        &d("ca"),
        "--spiffe-id",
        "spiffe://cluster.local/ns/soak/sa/api",
        "--out",
        &d("svid"),
    ]);
    let (listen, proxy_admin, echo) = (free_port(), free_port(), envoy::echo_app());
    let proxy = envoy::start_proxy(
        &dir,
        "soak",
        &format!(
            "workload: {{namespace: soak, labels: {{app: api}}}}
identity:
  files: {{cert: {s}/svid.pem, key: {s}/svid.key, bundle: {s}/bundle.pem}}
policies: [{pol}]
decisionLog: off
admin: 127.0.0.1:{proxy_admin}
inbound:
- name: http
  listen: 127.0.0.1:{listen}
  port: 8080
  app: 127.0.0.1:{echo}
  protocol: http
",
            s = d("svid"),
            pol = pol.display()
        ),
        listen,
    );
    let (serve_pid, proxy_pid) = (serve.0.id(), proxy.0.id());

    let tok = token();
    let bearer = format!("Bearer {tok}");
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let judge = Arc::new(Judge {
        tally: Mutex::new(Tally::default()),
        windows: Windows::default(),
        start,
    });
    let stop = Arc::new(AtomicBool::new(false));

    // Warm up (first JWKS fetch, first LDAP pool connection), then record the starting RSS.
    std::thread::sleep(Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut threads = Vec::new();
    // Reloads: rewrite churn.yaml and SIGHUP both every second.
    let reloads = Arc::new(AtomicU64::new(0));
    {
        let (pol, stop, reloads) = (pol.clone(), stop.clone(), reloads.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                std::fs::write(pol.join("churn.yaml"), churn(n)).expect("rewrite");
                for pid in [serve_pid, proxy_pid] {
                    let _ = Command::new("kill")
                        .args(["-HUP", &pid.to_string()])
                        .status();
                }
                reloads.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    // JWKS flapping: down 2 s of every 5.
    {
        let (up, stop) = (jwks_up.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(3));
                up.store(false, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(2));
                up.store(true, Ordering::Relaxed);
            }
        }));
    }
    // LDAP outage: stopped 3 s of every 10 (from 4 s in), then started again on the same port.
    let ldap_dir = dir.join("slapd");
    let ldap = {
        let (stop, judge, ldap_dir) = (stop.clone(), judge.clone(), ldap_dir.clone());
        std::thread::spawn(move || {
            let mut running = Some(slapd);
            let mut outages = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(4));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                judge
                    .windows
                    .0
                    .lock()
                    .expect("w")
                    .push((start.elapsed(), None));
                drop(running.take());
                std::thread::sleep(Duration::from_secs(3));
                running = Some(slapd::restart_slapd(&ldap_dir, ldap_port));
                if let Some(w) = judge.windows.0.lock().expect("w").last_mut() {
                    w.1 = Some(start.elapsed());
                }
                outages += 1;
                std::thread::sleep(Duration::from_secs(3));
            }
            (running, outages)
        })
    };

    let rss_start = (rss_kib(serve_pid), rss_kib(proxy_pid));

    // HTTP mode and proxy load: blocking threads.
    for front in ["http", "proxy"] {
        for worker in 0..2 {
            let (judge, stop) = (judge.clone(), stop.clone());
            let bearer = bearer.clone();
            threads.push(std::thread::spawn(move || {
                let cases: [(&str, &str, Want); 4] = [
                    ("/ok/a", "", Want::Allow),
                    ("/deny/a", "", Want::Deny),
                    ("/jwt/a", bearer.as_str(), Want::Allow),
                    ("/jwt/a", "", Want::Deny),
                ];
                let mut i = worker;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let (path, auth, want) = cases[i % cases.len()];
                    i += 1;
                    let auth_line = if auth.is_empty() {
                        String::new()
                    } else {
                        format!("authorization: {auth}\r\n")
                    };
                    let sent = start.elapsed();
                    let status = if front == "http" {
                        http_status(
                            http,
                            &format!("GET /auth HTTP/1.1\r\nhost: auth\r\nx-original-uri: {path}\r\nx-original-method: GET\r\nx-original-host: api.soak\r\nx-meshguard-workload: soak/app=api\r\n{auth_line}connection: close\r\n\r\n"),
                        )
                    } else {
                        http_status(
                            listen,
                            &format!("GET {path} HTTP/1.1\r\nhost: api.soak\r\n{auth_line}connection: close\r\n\r\n"),
                        )
                    };
                    let what = format!("{front} {path}{}", if auth.is_empty() { "" } else { " +token" });
                    judge.record(sent, &what, want, false, status.map(|s| s == 200));
                }
            }));
        }
    }

    // gRPC load: four concurrent clients on one channel.
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut tasks = Vec::new();
        for worker in 0..4usize {
            let mut c = AuthorizationClient::new(ch.clone());
            let judge = judge.clone();
            let (bearer, alice, bob) = (bearer.clone(), alice.clone(), bob.clone());
            tasks.push(tokio::spawn(async move {
                let cases: Vec<(&str, CheckRequest, Want, bool)> = vec![
                    ("grpc /ok", check("/ok/a", &[], None), Want::Allow, false),
                    ("grpc /deny", check("/deny/a", &[], None), Want::Deny, false),
                    (
                        "grpc /jwt +token",
                        check("/jwt/a", &[("authorization", &bearer)], None),
                        Want::Allow,
                        false,
                    ),
                    ("grpc /jwt", check("/jwt/a", &[], None), Want::Deny, false),
                    (
                        "grpc ldap alice",
                        check(
                            "/ldap/a",
                            &[("authorization", &alice)],
                            Some("gloo-system.ldap"),
                        ),
                        Want::Allow,
                        true,
                    ),
                    (
                        "grpc ldap bob",
                        check(
                            "/ldap/a",
                            &[("authorization", &bob)],
                            Some("gloo-system.ldap"),
                        ),
                        Want::Deny,
                        true,
                    ),
                ];
                let mut i = worker;
                while Instant::now() < until {
                    let (what, req, want, ldap) = &cases[i % cases.len()];
                    i += 1;
                    let sent = start.elapsed();
                    let got = match c.check(req.clone()).await {
                        Ok(r) => Some(r.into_inner().status.map_or(-1, |s| s.code) == 0),
                        Err(_) => None,
                    };
                    judge.record(sent, what, *want, *ldap, got);
                }
            }));
        }
        for t in tasks {
            t.await.expect("grpc worker");
        }
    });
    stop.store(true, Ordering::Relaxed);
    let rss_end = (rss_kib(serve_pid), rss_kib(proxy_pid));
    for t in threads {
        t.join().expect("worker");
    }
    let (_slapd, outages) = ldap.join().expect("ldap drill");
    let serve_reloads = metric(admin, "meshguard_reloads_total{result=\"success\"}");
    let serve_refused = metric(admin, "meshguard_reloads_total{result=\"failure\"}");
    let proxy_reloads = metric(proxy_admin, "meshguard_reloads_total{result=\"success\"}");

    let t = judge.tally.lock().expect("tally");
    let total: u64 = t.ok.values().sum::<u64>() + t.in_outage;
    println!(
        "soak: {seconds} s, {total} decisions ({:.0}/s), {} denied inside LDAP outage windows ({outages} outages), {} SIGHUP reloads sent, serve applied {serve_reloads} ({serve_refused} refused), proxy applied {proxy_reloads}, JWKS answered {} fetches",
        total as f64 / seconds as f64,
        t.in_outage,
        reloads.load(Ordering::Relaxed),
        jwks_served.load(Ordering::Relaxed)
    );
    let mut by_case: Vec<_> = t.ok.iter().collect();
    by_case.sort();
    for (k, v) in by_case {
        println!("    {k:<22} {v:>8} correct");
    }
    println!(
        "soak RSS: serve {} -> {} KiB, proxy {} -> {} KiB",
        rss_start.0, rss_end.0, rss_start.1, rss_end.1
    );
    assert!(
        t.wrong.is_empty(),
        "{} wrong decisions, e.g. {:?}",
        t.wrong.len(),
        &t.wrong[..t.wrong.len().min(10)]
    );
    assert!(
        t.failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        t.failed.len(),
        &t.failed[..t.failed.len().min(10)]
    );
    assert!(outages >= 1, "the LDAP drill ran");
    let sent = reloads.load(Ordering::Relaxed);
    assert!(serve_refused == 0, "no reload was refused");
    assert!(
        serve_reloads * 10 >= sent * 8,
        "serve applied {serve_reloads} of {sent} reloads"
    );
    assert!(
        proxy_reloads * 10 >= sent * 8,
        "proxy applied {proxy_reloads} of {sent} reloads"
    );
    for c in [
        "grpc ldap alice",
        "grpc /jwt +token",
        "proxy /jwt/a +token",
        "http /jwt/a +token",
    ] {
        assert!(
            t.ok.get(c).copied().unwrap_or(0) > 0,
            "{c} was decided correctly at least once"
        );
    }
    // Memory does not grow with the number of requests and reloads: a bound generous enough
    // for allocator noise, far below what a leak per request or per reload would show.
    for (name, a, b) in [
        ("serve", rss_start.0, rss_end.0),
        ("proxy", rss_start.1, rss_end.1),
    ] {
        assert!(
            b <= a * 2 + 16 * 1024,
            "{name} RSS grew from {a} KiB to {b} KiB"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
