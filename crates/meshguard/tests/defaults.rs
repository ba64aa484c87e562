//! Safe defaults as a new user meets them: `serve` and `check` deny what no ALLOW policy covers
//! unless told otherwise, say so, and the start-up banner's examples give the answers it prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod cmd;
use cmd::{http_get, run_stdin, BIN};

struct Serve {
    child: Child,
    /// The start-up banner and everything logged after it (stderr).
    lines: std::sync::mpsc::Receiver<String>,
    http: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshguard serve` on loopback ports it picks and reads the banner up to its last line.
fn serve(args: &[&str]) -> (Serve, Vec<String>) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args([
            "--grpc-listen",
            "off",
            "--admin-listen",
            "off",
            "--http-listen",
            "127.0.0.1:0",
            "--decision-log",
            "off",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshguard serve");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("serve did not finish its banner: {banner:#?}"));
        let last = line.starts_with("stop with Ctrl-C");
        banner.push(line);
        if last {
            break;
        }
    }
    let http = banner
        .iter()
        .find_map(|l| {
            l.split("http://")
                .nth(1)
                .filter(|_| l.contains("forward-auth"))
        })
        .map(|s| s.trim().to_owned())
        .expect("HTTP listener in the banner");
    (
        Serve {
            child,
            lines: rx,
            http,
        },
        banner,
    )
}

/// One HTTP/1.1 request; returns the status code.
fn get(addr: &str, path: &str, headers: &[(String, String)]) -> u16 {
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    http_get(addr, path, &hs).0
}

/// Runs a banner line `curl -i http://ADDR/PATH -H 'K: V' ...   # 200...` as curl would and
/// returns (status, expected status).
fn run_curl_line(line: &str) -> (u16, u16) {
    let (cmd, comment) = line.split_once('#').expect("expected status after #");
    let expected: u16 = comment
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|c| c.parse().ok())
        .expect("status code in the comment");
    let url = cmd
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("URL");
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let headers = cmd
        .split(" -H '")
        .skip(1)
        .map(|h| {
            let h = h.split('\'').next().expect("quoted header");
            let (k, v) = h.split_once(": ").expect("header");
            (k.to_owned(), v.to_owned())
        })
        .collect::<Vec<_>>();
    (get(addr, path, &headers), expected)
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("meshguard-defaults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn wl(ns: &str) -> Vec<(String, String)> {
    vec![
        ("X-Original-Method".into(), "GET".into()),
        ("X-Original-URI".into(), "/anything".into()),
        ("X-Meshguard-Workload".into(), format!("{ns}/app=web")),
    ]
}

#[test]
fn serve_denies_what_no_allow_policy_covers_and_says_so() {
    let dir = temp_dir("serve");
    // A set with a PeerAuthentication only: no ALLOW policy anywhere.
    std::fs::write(
        dir.join("peer.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: PERMISSIVE\n",
    )
    .expect("write");
    let policies = dir.to_str().expect("utf8");
    let (s, banner) = serve(&["--policies", policies]);
    assert!(
        banner.iter().any(|l| l.contains("default deny")),
        "{banner:#?}"
    );
    assert_eq!(get(&s.http, "/auth", &wl("shop")), 403);
    // A typo in the namespace is denied too, and the log says why, once per namespace.
    assert_eq!(get(&s.http, "/auth", &wl("shpo")), 403);
    assert_eq!(get(&s.http, "/auth", &wl("shpo")), 403);
    let mut warned = Vec::new();
    while let Ok(l) = s.lines.recv_timeout(Duration::from_secs(2)) {
        if l.contains("no ALLOW AuthorizationPolicy selects this workload") {
            warned.push(l);
        }
    }
    assert_eq!(warned.len(), 2, "one warning per namespace: {warned:#?}");
    assert!(warned.iter().any(|l| l.contains("shpo")), "{warned:#?}");
    drop(s);

    // Istio's rule on request, in a flag or in the config file.
    let (s, banner) = serve(&["--policies", policies, "--default-allow"]);
    assert!(
        banner.iter().any(|l| l.contains("default allow")),
        "{banner:#?}"
    );
    assert_eq!(get(&s.http, "/auth", &wl("shop")), 200);
    drop(s);
    let cfg = dir.join("serve.yaml");
    std::fs::write(&cfg, "policies: [peer.yaml]\ndefaultDeny: false\n").expect("write");
    let (s, _) = serve(&["--config", cfg.to_str().expect("utf8")]);
    assert_eq!(get(&s.http, "/auth", &wl("shop")), 200);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_banner_examples_give_the_answers_they_print() {
    for extra in [&[][..], &["--trust-forwarded-client-cert"][..]] {
        let (s, banner) = serve(extra);
        assert!(
            banner
                .iter()
                .any(|l| l.contains("embedded example policies") && l.contains("demo")),
            "the banner says the examples are demo material: {banner:#?}"
        );
        let curls: Vec<&String> = banner
            .iter()
            .filter(|l| l.trim_start().starts_with("curl "))
            .collect();
        assert!(!curls.is_empty(), "{banner:#?}");
        for line in curls {
            let (got, expected) = run_curl_line(line);
            assert_eq!(got, expected, "banner line {line}");
        }
        drop(s);
    }
}

fn check(args: &[&str], request: &str) -> Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--request", "-"]);
    run_stdin(&all, request)
}

#[test]
fn check_follows_the_same_default_and_says_which_applies() {
    let req =
        "destination: {namespace: nowhere, labels: {app: web}}\nrequest: {method: GET, path: /}\n";
    let o = check(&[], req);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.starts_with("DENY 403"), "{out}");
    assert!(out.contains("default: deny"), "{out}");
    let o = check(&["--default-allow"], req);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("default: allow"), "{out}");
    let o = check(&["--output", "json"], req);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["default"], "deny");
    assert_eq!(j["allowed"], false);
}

#[test]
fn policies_take_several_paths_after_one_flag() {
    let dir = temp_dir("paths");
    let a = dir.join("a.yaml");
    let b = dir.join("b.yaml");
    std::fs::write(&a, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-get\n  namespace: shop\nspec:\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n").expect("write");
    std::fs::write(&b, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-admin\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/admin]\n").expect("write");
    let (a, b) = (a.to_str().expect("utf8"), b.to_str().expect("utf8"));
    let ok = "destination: {namespace: shop}\nrequest: {method: GET, path: /}\n";
    let admin = "destination: {namespace: shop}\nrequest: {method: GET, path: /admin}\n";
    assert_eq!(check(&["--policies", a, b], ok).status.code(), Some(0));
    let o = check(&["--policies", a, b], admin);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("deny-admin"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lint_without_paths_lints_the_embedded_set_under_istio_defaults() {
    let o = Command::new(BIN).arg("lint").output().expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.contains("embedded example policies"), "{err}");
    // The `//admin` bypass of the bundled deny-admin policy under BASE normalisation.
    let bypass: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("deny-admin.yaml") && l.contains("//admin"))
        .collect();
    assert_eq!(bypass.len(), 1, "reported once: {out}");
    assert!(err.contains("7 file(s), 7 resource(s)"), "{err}");

    let dir = temp_dir("lint");
    std::fs::write(dir.join("empty.yaml"), "# nothing yet\n").expect("write");
    std::fs::write(dir.join("binary.yaml"), b"kind: x\nname: \xff\xfe\n").expect("write");
    let o = Command::new(BIN)
        .arg("lint")
        .arg(&dir)
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("empty.yaml:1:1: warning") && out.contains("empty"),
        "{out}"
    );
    assert!(out.contains("binary.yaml:2:7: error: not UTF-8"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn examples_write_a_starting_set_that_lints_and_passes_its_tests() {
    let dir = temp_dir("examples");
    let out = dir.join("start");
    let o = Command::new(BIN)
        .args(["examples", "--write"])
        .arg(&out)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("demo material"), "{err}");
    // The commands it suggests work as printed.
    for line in err.lines().filter(|l| {
        l.trim_start().starts_with("meshguard lint") || l.trim_start().starts_with("meshguard test")
    }) {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let o = Command::new(BIN).args(&args).output().expect("run");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{line}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A second run refuses instead of overwriting.
    let o = Command::new(BIN)
        .args(["examples", "--write"])
        .arg(&out)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwrites"));
    let _ = std::fs::remove_dir_all(dir);
}
