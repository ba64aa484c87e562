//! The operator tools, run as a user runs them: `meshguard test`, `policies-for`, `who-can`,
//! `secret`, `completions`, `man`, `--version`, `--log-level`.

mod snippets;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run meshguard")
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run meshguard")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

/// A fresh directory under the target dir, removed first if a previous run left it.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

// ---- meshguard test ----

/// The bundled example requests carry their expectations in examples/tests; they pass with the
/// embedded policies and with the same policies from disk, and every example request is covered.
#[test]
fn bundled_example_requests_pass_their_tests() {
    let tests = format!("{EXAMPLES}/tests");
    let o = run(&["test", tests.as_str()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("15 passed, 0 failed"), "{}", stdout(&o));
    // The request examples against the same policies from disk.
    let file = format!("{tests}/requests.test.yaml");
    let o = run(&[
        "test",
        file.as_str(),
        "--policies",
        &format!("{EXAMPLES}/policies"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("8 passed, 0 failed"), "{}", stdout(&o));
    let text = std::fs::read_to_string(format!("{tests}/requests.test.yaml")).expect("read");
    for entry in std::fs::read_dir(format!("{EXAMPLES}/requests")).expect("requests") {
        let name = entry.expect("entry").file_name();
        let name = name.to_str().expect("name");
        assert!(
            text.contains(&format!("requestFile: ../requests/{name}")),
            "examples/tests/requests.test.yaml has no case for examples/requests/{name}"
        );
    }
}

/// `meshguard test` decides as `meshguard check` does: the JSON decision of every bundled case
/// is the one `check --example` prints.
#[test]
fn test_decides_as_check_does() {
    let o = run(&[
        "test",
        &format!("{EXAMPLES}/tests/requests.test.yaml"),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["passed"], 8);
    assert_eq!(v["failed"], 0);
    let cases = v["files"][0]["cases"].as_array().expect("cases");
    let text =
        std::fs::read_to_string(format!("{EXAMPLES}/tests/requests.test.yaml")).expect("read");
    let files: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("requestFile: ../requests/"))
        .collect();
    assert_eq!(files.len(), cases.len());
    for (case, file) in cases.iter().zip(files) {
        let c = run(&["check", "--example", file, "--output", "json"]);
        let mut from_check = json(&c);
        let mut from_test = case["decision"].clone();
        for j in [&mut from_check, &mut from_test] {
            j.as_object_mut().expect("object").remove("why");
        }
        assert_eq!(from_test, from_check, "{file}");
    }
}

#[test]
fn failing_cases_say_why_and_exit_1() {
    let d = scratch("test-failing");
    write(
        &d,
        "policy.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-readers, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {namespaces: [shop]}}]
    to: [{operation: {methods: [GET]}}]
"#,
    );
    write(
        &d,
        "shop.test.yaml",
        r#"policies: [policy.yaml]
cases:
- name: same namespace reads
  request:
    destination: {namespace: shop, labels: {app: web}, port: 80}
    source: {principal: cluster.local/ns/shop/sa/a}
    request: {method: GET, path: /}
  expect: {decision: allow, policy: shop/web-readers, rule: 0, action: ALLOW}
- name: wrong on purpose
  request:
    destination: {namespace: shop, labels: {app: web}, port: 80}
    source: {principal: cluster.local/ns/other/sa/a}
    request: {method: GET, path: /}
  expect: allow
- name: status mismatch
  request:
    destination: {namespace: shop, labels: {app: web}, port: 80}
    source: {principal: cluster.local/ns/shop/sa/a}
    request: {method: DELETE, path: /}
  expect: {decision: deny, status: 401}
- name: a typo in the request
  request: {destination: {namespace: shop, lables: {app: web}}}
  expect: deny
"#,
    );
    // Found by directory search from the current directory.
    let o = run_in(&d, &["test"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(out.contains("PASS  same namespace reads"), "{out}");
    assert!(out.contains("FAIL  wrong on purpose"), "{out}");
    assert!(out.contains("expected allow, got deny"), "{out}");
    assert!(
        out.contains("why: shop/web-readers rule 0: no `from` entry matched"),
        "{out}"
    );
    assert!(out.contains("expected status 401, got 403"), "{out}");
    assert!(
        out.contains("destination.lables: unknown field `lables`"),
        "{out}"
    );
    assert!(out.contains("1 passed, 3 failed"), "{out}");
    assert!(!out.contains("Some("), "{out}");

    let o = run_in(&d, &["test", "--format", "json", "--run", "wrong"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["passed"], 0);
    assert_eq!(v["failed"], 1);
    let c = &v["files"][0]["cases"][0];
    assert_eq!(c["name"], "wrong on purpose");
    assert_eq!(c["passed"], false);
    assert_eq!(c["decision"]["allowed"], false);
    assert_eq!(c["failures"][0], "expected allow, got deny");

    let o = run_in(&d, &["test", "--run", "same"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn test_file_mistakes_name_the_line_and_the_fix() {
    let d = scratch("test-mistakes");
    let f = write(
        &d,
        "a.test.yaml",
        "cases:\n- request: {destination: {namespace: x}}\n  expect: {decision: maybe}\n- request: {destination: {namespace: x}}\n  expect: {decision: allow, stauts: 200}\n",
    );
    let o = run(&["test", f.to_str().expect("path")]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out.contains("line 3: cases[0].expect.decision: must be `allow` or `deny`, found `maybe`"),
        "{out}"
    );
    assert!(
        out.contains("cases[1].expect.stauts: unknown field; expected one of: decision, status"),
        "{out}"
    );
    let f = write(&d, "b.test.yaml", "policies: missing-dir\ncases: []\n");
    let o = run(&["test", f.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("ERROR the policies do not load"),
        "{}",
        stdout(&o)
    );
    let o = run_in(&scratch("test-none"), &["test"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no test files found"), "{}", stderr(&o));
}

/// Mesh settings and default deny in the test file change the verdicts as they change `serve`'s.
#[test]
fn test_file_mesh_config_and_default_deny() {
    let d = scratch("test-mesh");
    write(
        &d,
        "deny.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"#,
    );
    write(
        &d,
        "m.test.yaml",
        r#"policies: [deny.yaml]
meshConfig: {pathNormalization: MERGE_SLASHES}
defaultDeny: false
cases:
- name: double slash is merged, so denied
  request: {destination: {namespace: shop}, source: {principal: cluster.local/ns/a/sa/b}, request: {path: //admin}}
  expect: {decision: deny, policy: shop/deny-admin}
- name: no ALLOW policy, Istio allows
  request: {destination: {namespace: shop}, source: {principal: cluster.local/ns/a/sa/b}, request: {path: /x}}
  expect: allow
"#,
    );
    write(
        &d,
        "n.test.yaml",
        r#"policies: [deny.yaml]
cases:
- name: default deny, as check and serve
  request: {destination: {namespace: shop}, source: {principal: cluster.local/ns/a/sa/b}, request: {path: /x}}
  expect: {decision: deny, reasonContains: no ALLOW AuthorizationPolicy applies}
"#,
    );
    let o = run(&["test", d.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("3 passed, 0 failed"), "{}", stdout(&o));
}

// ---- --log-level ----

#[test]
fn unknown_log_levels_are_refused_with_the_valid_ones() {
    let o = run(&[
        "test",
        &format!("{EXAMPLES}/tests"),
        "--log-level",
        "verbose",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("unknown level `verbose`"), "{e}");
    assert!(e.contains("error, warn, info, debug, trace"), "{e}");
    assert_eq!(e.lines().count(), 1, "one line, said once: {e}");
    let o = run(&[
        "test",
        &format!("{EXAMPLES}/tests"),
        "--log-level",
        "info,meshguard_engine=debug",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

// ---- completions, man page, --version ----

#[test]
fn version_names_the_commit() {
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    let v = stdout(&o);
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = git.unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        v.trim(),
        format!("meshguard {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_for_each_shell_know_the_commands() {
    for (shell, marker) in [
        ("bash", "complete -F _meshguard"),
        ("zsh", "#compdef meshguard"),
        ("fish", "complete -c meshguard"),
    ] {
        let o = run(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let s = stdout(&o);
        assert!(s.contains(marker), "{shell}");
        for cmd in [
            "serve",
            "check",
            "test",
            "policies-for",
            "who-can",
            "secret",
            "completions",
            "man",
        ] {
            assert!(s.contains(cmd), "{shell} completions lack `{cmd}`");
        }
    }
    // bash loads it and registers the completion.
    let bash = Command::new("bash")
        .args([
            "-c",
            &format!("source <({BIN} completions bash) && complete -p meshguard"),
        ])
        .output();
    if let Ok(b) = bash {
        assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
        assert!(String::from_utf8_lossy(&b.stdout).contains("_meshguard"));
    }
    let o = run(&["completions", "powershell-ish"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("possible values: bash, zsh, fish"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn man_page_and_pages_per_command() {
    let o = run(&["man"]);
    assert_eq!(o.status.code(), Some(0));
    let page = stdout(&o);
    assert!(page.contains(".TH meshguard 1"), "{page}");
    assert!(page.contains("meshguard\\-who\\-can(1)"), "{page}");
    let d = scratch("man");
    let o = run(&["man", "--dir", d.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for f in [
        "meshguard.1",
        "meshguard-serve.1",
        "meshguard-ca-init.1",
        "meshguard-test.1",
    ] {
        let text = std::fs::read_to_string(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains(".SH SYNOPSIS"), "{f}");
    }
    // `man` renders it, where man is installed.
    if let Ok(m) = Command::new("man")
        .args(["-l", d.join("meshguard-test.1").to_str().expect("p")])
        .env("MANPAGER", "cat")
        .output()
    {
        if m.status.success() {
            assert!(String::from_utf8_lossy(&m.stdout).contains("--format"));
        }
    }
}

// ---- meshguard secret ----

fn run_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

/// `check` with the policies in `dir`, deciding `request`; returns the JSON decision.
fn check_in(dir: &Path, request: &str) -> serde_json::Value {
    let req = write(dir, "request.yaml", request);
    let o = run(&[
        "check",
        "--policies",
        dir.join("policies").to_str().expect("path"),
        "--request",
        req.to_str().expect("path"),
        "--output",
        "json",
    ]);
    json(&o)
}

#[test]
fn apikey_secret_is_read_by_api_key_auth() {
    let d = scratch("secret-apikey");
    let p = d.join("policies");
    std::fs::create_dir_all(&p).expect("mkdir");
    let secret = p.join("secret.yaml");
    let o = run(&[
        "secret",
        "apikey",
        "--name",
        "ci-bot",
        "--namespace",
        "gloo-system",
        "--key",
        "s3cr3t-key-0123",
        "--label",
        "team=ci",
        "--metadata",
        "user-email=ci@example.com",
        "-o",
        secret.to_str().expect("path"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Never overwritten.
    let again = run(&[
        "secret",
        "apikey",
        "--name",
        "x",
        "--namespace",
        "a",
        "-o",
        secret.to_str().expect("path"),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("an existing file is not overwritten"),
        "{}",
        stderr(&again)
    );
    write(
        &p,
        "authconfig.yaml",
        r#"apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: keys, namespace: gloo-system}
spec:
  configs:
  - apiKeyAuth:
      labelSelector: {team: ci}
      headersFromMetadataEntry:
        x-user-email: {name: user-email, required: true}
"#,
    );
    let o = run(&["lint", p.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let req = |key: &str| {
        format!(
            "destination: {{namespace: shop, labels: {{app: web}}}}\nsource: {{principal: cluster.local/ns/shop/sa/a}}\nrequest: {{path: /api, headers: {{api-key: {key}}}}}\nauthConfig: gloo-system.keys\n"
        )
    };
    let v = check_in(&d, &req("s3cr3t-key-0123"));
    assert_eq!(v["allowed"], true, "{v}");
    let added = v["headers_to_add"].to_string();
    assert!(added.contains("[\"x-user-id\",\"ci-bot\"]"), "{v}");
    assert!(
        added.contains("[\"x-user-email\",\"ci@example.com\"]"),
        "{v}"
    );
    let v = check_in(&d, &req("wrong-key"));
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["status"], 401, "{v}");

    // A generated key is printed on stderr and is the one in the Secret.
    let o = run(&[
        "secret",
        "apikey",
        "--name",
        "gen",
        "--namespace",
        "gloo-system",
        "--label",
        "team=ci",
        "--metadata",
        "user-email=gen@example.com",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let key = stderr(&o)
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "generated API key (send it in the AuthConfig's headerName, default `api-key`): ",
            )
        })
        .map(str::to_owned)
        .expect("generated key on stderr");
    assert!(key.len() >= 43, "{key}");
    std::fs::write(p.join("generated.yaml"), stdout(&o)).expect("write");
    let v = check_in(&d, &req(&key));
    assert_eq!(v["allowed"], true, "{v}");
    assert!(
        v["headers_to_add"]
            .to_string()
            .contains("[\"x-user-id\",\"gen\"]"),
        "{v}"
    );
    // From stdin, too.
    let o = run_stdin(
        &[
            "secret",
            "apikey",
            "--name",
            "s",
            "--namespace",
            "gloo-system",
            "--key-stdin",
        ],
        "k-from-stdin\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"api-key\": \"ay1mcm9tLXN0ZGlu\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn htpasswd_secret_is_read_by_basic_auth() {
    let d = scratch("secret-htpasswd");
    let p = d.join("policies");
    std::fs::create_dir_all(&p).expect("mkdir");
    let o = run_stdin(
        &[
            "secret",
            "htpasswd",
            "--name",
            "users",
            "--namespace",
            "gloo-system",
            "--user",
            "alice",
            "--password-stdin",
            "--cost",
            "4",
        ],
        "correct horse\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::write(p.join("secret.yaml"), stdout(&o)).expect("write");
    write(
        &p,
        "authconfig.yaml",
        r#"apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: basic, namespace: gloo-system}
spec:
  configs:
  - basicAuth:
      realm: shop
      htpasswdSecretRef: {name: users}
"#,
    );
    use base64::Engine as _;
    let req = |cred: &str| {
        let b = base64::engine::general_purpose::STANDARD.encode(cred);
        format!(
            "destination: {{namespace: shop}}\nsource: {{principal: cluster.local/ns/shop/sa/a}}\nrequest: {{path: /, headers: {{authorization: Basic {b}}}}}\nauthConfig: gloo-system.basic\n"
        )
    };
    let v = check_in(&d, &req("alice:correct horse"));
    assert_eq!(v["allowed"], true, "{v}");
    let v = check_in(&d, &req("alice:wrong"));
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["status"], 401, "{v}");
    assert_eq!(v["www_authenticate"], "Basic realm=\"shop\"", "{v}");

    // Mistakes say what to do.
    let o = run(&["secret", "htpasswd", "--name", "users", "--user", "alice"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--password-stdin"), "{}", stderr(&o));
    let o = run_stdin(
        &[
            "secret",
            "htpasswd",
            "--name",
            "users",
            "--user",
            "a:b",
            "--password-stdin",
        ],
        "x\n",
    );
    assert!(stderr(&o).contains("without `:`"), "{}", stderr(&o));
    let o = run_stdin(
        &[
            "secret",
            "htpasswd",
            "--name",
            "users",
            "--user",
            "a",
            "--password-stdin",
            "--cost",
            "13",
        ],
        "x\n",
    );
    assert!(stderr(&o).contains("use 4 to 12"), "{}", stderr(&o));
    let o = run_stdin(
        &[
            "secret",
            "htpasswd",
            "--name",
            "Users",
            "--user",
            "a",
            "--password-stdin",
        ],
        "x\n",
    );
    assert!(
        stderr(&o).contains("is not a Kubernetes object name"),
        "{}",
        stderr(&o)
    );
    let o = run_stdin(
        &[
            "secret",
            "htpasswd",
            "--name",
            "users",
            "--user",
            "a",
            "--password-stdin",
        ],
        "",
    );
    assert!(
        stderr(&o).contains("password on standard input is empty"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "secret",
        "apikey",
        "--name",
        "k",
        "--namespace",
        "x",
        "--label",
        "team",
    ]);
    assert!(
        stderr(&o).contains("labels are written key=value"),
        "{}",
        stderr(&o)
    );
}

// ---- policies-for, who-can ----

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/who-can.yaml");

fn names(list: &serde_json::Value, applies: bool) -> Vec<String> {
    list.as_array()
        .expect("list")
        .iter()
        .filter(|s| s["applies"] == applies)
        .map(|s| {
            format!(
                "{}/{}",
                s["namespace"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn policies_for_says_which_policies_select_a_workload_and_why() {
    let o = run(&[
        "policies-for",
        "--namespace",
        "shop",
        "--labels",
        "app=web",
        "--policies",
        FIXTURE,
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        names(&v["authorizationPolicies"], true),
        [
            "istio-system/allow-prometheus",
            "istio-system/deny-blocked-ips",
            "shop/allow-shop",
            "shop/deny-delete"
        ]
    );
    assert_eq!(
        names(&v["authorizationPolicies"], false),
        ["shop/db-only", "shop/gateway-policy"]
    );
    let why = |name: &str| {
        v["authorizationPolicies"]
            .as_array()
            .expect("list")
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["why"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert!(
        why("allow-prometheus").contains("root namespace istio-system: selector app=web matches")
    );
    assert!(why("deny-blocked-ips").starts_with("mesh-wide"));
    assert!(why("allow-shop").starts_with("namespace-wide"));
    assert_eq!(why("deny-delete"), "selector app=web matches");
    assert!(why("db-only").contains("selector app=db does not match"));
    assert!(why("gateway-policy").contains("targetRef"));
    assert!(
        !v.to_string().contains("elsewhere"),
        "other namespaces are not listed"
    );
    assert_eq!(
        names(&v["peerAuthentications"], true),
        ["istio-system/default", "shop/web"]
    );
    assert_eq!(
        names(&v["requestAuthentications"], true),
        ["istio-system/idp"]
    );
    assert_eq!(v["mtlsMode"], "STRICT");

    // Port-level mTLS.
    let o = run(&[
        "policies-for",
        "-n",
        "shop",
        "-l",
        "app=web",
        "--port",
        "9090",
        "-p",
        FIXTURE,
        "--format",
        "json",
    ]);
    assert_eq!(json(&o)["mtlsMode"], "DISABLE");

    // Another workload in the namespace: the selector policies drop out.
    let o = run(&["policies-for", "-n", "shop", "-l", "app=db", "-p", FIXTURE]);
    let out = stdout(&o);
    assert!(out.contains("applies shop/db-only"), "{out}");
    assert!(
        out.contains("not     istio-system/allow-prometheus"),
        "{out}"
    );
    assert!(!out.contains("Some("), "{out}");

    // The bundled examples by default; mistakes say what to fix.
    let o = run(&["policies-for", "-n", "production", "-l", "app=backend"]);
    assert!(
        stdout(&o).contains("applies production/frontend-to-backend"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("the bundled example policies"));
    let o = run(&["policies-for", "-n", "Shop"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a namespace name"),
        "{}",
        stderr(&o)
    );
    let o = run(&["policies-for", "-n", "shop", "-l", "app"]);
    assert!(
        stderr(&o).contains("labels are written key=value"),
        "{}",
        stderr(&o)
    );
}

fn rules(v: &serde_json::Value, part: &str) -> Vec<String> {
    v[part]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| format!("{} {}", r["policy"].as_str().unwrap_or(""), r["rule"]))
        .collect()
}

#[test]
fn who_can_lists_callers_per_allow_rule_minus_deny() {
    let o = run(&[
        "who-can", "-n", "shop", "-l", "app=web", "-p", FIXTURE, "--format", "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        rules(&v, "deny"),
        ["istio-system/deny-blocked-ips 0", "shop/deny-delete 0"]
    );
    assert_eq!(
        rules(&v, "allow"),
        [
            "istio-system/allow-prometheus 0",
            "shop/allow-shop 0",
            "shop/allow-shop 1"
        ]
    );
    let allow = v["allow"].as_array().expect("allow");
    // GET/POST rules cannot be hit by the DELETE denial; the port rule can.
    let minus = |i: usize| allow[i]["minus"].to_string();
    assert!(!minus(0).contains("deny-delete"), "{}", minus(0));
    assert!(!minus(1).contains("deny-delete"), "{}", minus(1));
    assert!(minus(2).contains("deny-delete"), "{}", minus(2));
    assert!(minus(1).contains("deny-blocked-ips"), "{}", minus(1));
    assert_eq!(
        allow[1]["callers"],
        "principals [cluster.local/ns/shop/sa/frontend] or requestPrincipals [https://idp.example.com/*]"
    );
    assert_eq!(allow[2]["callers"], "remoteIpBlocks [10.0.0.0/8]");
    assert_eq!(allow[2]["from"][0][0]["values"][0], "10.0.0.0/8");
    assert_eq!(v["noAllowPolicy"], false);
    assert!(v["defaultDecision"].is_null());
    assert!(v["approximate"]
        .to_string()
        .contains("overlap is ruled out only on literal"));

    // For one request: rules that cannot match it drop out, and under the port's DISABLE
    // mode a namespace rule never matches.
    let o = run(&[
        "who-can", "-n", "shop", "-l", "app=web", "-p", FIXTURE, "--port", "9090", "--method",
        "GET", "--path", "/metrics", "--format", "json",
    ]);
    let v = json(&o);
    assert_eq!(v["mtlsMode"], "DISABLE");
    assert_eq!(rules(&v, "allow"), ["shop/allow-shop 1"]);
    assert_eq!(rules(&v, "deny"), ["istio-system/deny-blocked-ips 0"]);
    assert!(
        v["neverMatch"]
            .to_string()
            .contains("istio-system/allow-prometheus rule 0"),
        "{v}"
    );
    assert!(
        v["notForThisRequest"]
            .to_string()
            .contains("shop/allow-shop rule 0 (ALLOW)"),
        "{v}"
    );

    // Text for people.
    let o = run(&[
        "who-can",
        "-n",
        "production",
        "-l",
        "app=backend",
        "--method",
        "GET",
        "--path",
        "/api/v1/../admin",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        out.contains("/api/v1/../admin (matched as /api/admin)"),
        "{out}"
    );
    assert!(out.contains("production/deny-admin rule 0"), "{out}");
    assert!(out.contains("callers:    notNamespaces [ops]"), "{out}");
    assert!(
        out.contains("minus:      requests denied by production/deny-admin rule 0"),
        "{out}"
    );
    assert!(out.contains("production/audit-writes (AUDIT)"), "{out}");
    assert!(!out.contains("Some(") && !out.contains("None"), "{out}");
    // The bundled require-jwt policy can never match (a `when` on the numeric `exp` claim).
    let v = json(&run(&[
        "who-can",
        "-n",
        "production",
        "-l",
        "app=api",
        "--format",
        "json",
    ]));
    assert!(rules(&v, "allow").is_empty(), "{v}");
    assert!(
        v["neverMatch"].to_string().contains("production/require-jwt rule 0 (ALLOW): condition `request.auth.claims[exp]` tests a numeric claim"),
        "{v}"
    );
    // No ALLOW policy: said plainly.
    let o = run(&["who-can", "-n", "other-ns", "-p", FIXTURE]);
    assert!(
        stdout(&o).contains("ALLOW: nobody by default. No ALLOW policy selects this workload"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "who-can",
        "-n",
        "other-ns",
        "-p",
        FIXTURE,
        "--default-allow",
        "--format",
        "json",
    ]);
    assert_eq!(json(&o)["defaultDecision"], "allow");
    let o = run(&["who-can", "-n", "shop", "--path", "api"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must start with `/`"), "{}", stderr(&o));
}

/// who-can agrees with the engine: for concrete requests, a request `check` allows by a rule
/// is one who-can lists for that port, method and path, and a request that no listed ALLOW
/// rule can admit is denied by `check`.
#[test]
fn who_can_agrees_with_check() {
    let d = scratch("who-can-check");
    let cases = [
        (
            "cluster.local/ns/shop/sa/frontend",
            None,
            "GET",
            "/api/orders",
            "10.1.2.3",
        ),
        (
            "cluster.local/ns/shop/sa/frontend",
            None,
            "DELETE",
            "/api/orders",
            "10.1.2.3",
        ),
        (
            "cluster.local/ns/shop/sa/frontend",
            None,
            "GET",
            "/metrics",
            "10.1.2.3",
        ),
        (
            "cluster.local/ns/monitoring/sa/prom",
            None,
            "GET",
            "/metrics",
            "10.1.2.3",
        ),
        (
            "cluster.local/ns/monitoring/sa/prom",
            None,
            "GET",
            "/metrics",
            "203.0.113.9",
        ),
        (
            "cluster.local/ns/other/sa/x",
            Some(9090),
            "GET",
            "/x",
            "10.1.2.3",
        ),
    ];
    for (principal, port, method, path, ip) in cases {
        let port_line = port.map(|p| format!(", port: {p}")).unwrap_or_default();
        let req = format!(
            "destination: {{namespace: shop, labels: {{app: web}}{port_line}}}\nsource: {{principal: {principal}, ip: {ip}}}\nrequest: {{method: {method}, path: {path}, headers: {{x-team: ops}}}}\n"
        );
        let r = write(&d, "req.yaml", &req);
        let c = json(&run(&[
            "check",
            "-p",
            FIXTURE,
            "--request",
            r.to_str().expect("path"),
            "--output",
            "json",
        ]));
        let mut args = vec![
            "who-can", "-n", "shop", "-l", "app=web", "-p", FIXTURE, "--method", method, "--path",
            path, "--format", "json",
        ];
        let port_s = port.map(|p| p.to_string());
        if let Some(p) = &port_s {
            args.extend(["--port", p.as_str()]);
        }
        let w = json(&run(&args));
        let listed = rules(&w, "allow");
        if c["allowed"] == true && c["action"] == "ALLOW" {
            let by = format!("{} {}", c["policy"].as_str().unwrap_or(""), c["rule"]);
            assert!(
                listed.contains(&by),
                "{req}: check allowed by {by}, who-can lists {listed:?}"
            );
        }
        if listed.is_empty() {
            assert_eq!(
                c["allowed"], false,
                "{req}: who-can lists no ALLOW rule but check allowed: {c}"
            );
        }
        if c["action"] == "DENY" {
            let by = format!("{} {}", c["policy"].as_str().unwrap_or(""), c["rule"]);
            assert!(
                rules(&w, "deny").contains(&by),
                "{req}: denied by {by}, who-can shows {:?}",
                rules(&w, "deny")
            );
        }
    }
}

// ---- error polish ----

/// A cause is said once: a port in use, a SPIFFE ID of another trust domain.
#[test]
fn errors_say_each_cause_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let o = run(&[
        "serve",
        "--grpc-listen",
        &addr,
        "--http-listen",
        "off",
        "--admin-listen",
        "off",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let line = e.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    assert!(line.contains(&format!("cannot listen on {addr}")), "{e}");
    assert_eq!(line.matches("in use").count(), 1, "{e}");

    let d = scratch("ca-errors");
    let ca = d.join("ca");
    let o = run(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        ca.to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().expect("p"),
        "--spiffe-id",
        "spiffe://other.example/ns/prod/sa/web",
        "--out",
        d.join("svid").to_str().expect("p"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "error: `spiffe://other.example/ns/prod/sa/web` is not in this CA's trust domain: it issues only spiffe://cluster.local/... IDs"
    );
    // A zero lifetime is refused, not quietly turned into one second.
    let o = run(&[
        "ca",
        "issue-jwt",
        "--dir",
        ca.to_str().expect("p"),
        "--spiffe-id",
        "spiffe://cluster.local/ns/prod/sa/web",
        "--audience",
        "x",
        "--ttl",
        "0s",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty(), "no token: {}", stdout(&o));
    assert!(
        stderr(&o).contains("--ttl `0s` is too short"),
        "{}",
        stderr(&o)
    );
}

// ---- the README's blocks for these tools ----

#[test]
fn readme_test_file_and_commands_work_as_written() {
    let d = scratch("readme-test");
    let f = write(&d, "backend.test.yaml", &snippets::block("test-file"));
    let o = run(&["test", f.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"), "{}", stdout(&o));

    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let mut ran = 0;
    for args in snippets::commands(&snippets::block("test-commands"), "meshguard") {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_in(root, &args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "`meshguard {}`: {}{}",
            args.join(" "),
            stdout(&o),
            stderr(&o)
        );
        ran += 1;
    }
    assert_eq!(ran, 2, "the block's two commands");
}

/// Expectations beyond the verdict: headers added upstream, AUDIT matches, the dry-run verdict.
#[test]
fn test_expects_headers_audit_and_dry_run() {
    let d = scratch("test-extra");
    let legacy = format!("{EXAMPLES}/requests/frontend-legacy-write.yaml");
    let f = write(
        &d,
        "x.test.yaml",
        &format!(
            "cases:\n- name: right\n  requestFile: {legacy}\n  expect: {{decision: allow, audit: [production/audit-writes], dryRun: deny}}\n- name: wrong\n  requestFile: {legacy}\n  expect: {{decision: allow, audit: [], dryRun: allow, headers: {{x-user-id: someone}}}}\n"
        ),
    );
    let o = run(&["test", f.to_str().expect("path")]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("PASS  right"), "{out}");
    assert!(
        out.contains("expected header x-user-id: someone, got no x-user-id header"),
        "{out}"
    );
    assert!(
        out.contains("expected AUDIT policies none, got production/audit-writes"),
        "{out}"
    );
    assert!(
        out.contains("expected the dry-run policies to allow, they would deny"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

/// build.rs outside a git checkout (or without git) says `unknown`; packagers can name the
/// commit. The script is compiled and run on its own, as cargo would run it.
#[test]
fn build_script_falls_back_to_unknown() {
    let d = scratch("build-script");
    let exe = d.join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let c = Command::new(rustc)
        .args(["--edition", "2021", "-o"])
        .arg(&exe)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/build.rs"))
        .env("CARGO_MANIFEST_DIR", &d)
        .output()
        .expect("rustc");
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let run_script = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(&exe);
        cmd.env("CARGO_PKG_VERSION", "9.9.9")
            .env("GIT_DIR", d.join("not-a-repo"))
            .env_remove("MESHGUARD_GIT_COMMIT");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run build script");
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(run_script(&[]).contains("cargo:rustc-env=MESHGUARD_VERSION=9.9.9 (unknown)"));
    assert!(run_script(&[("MESHGUARD_GIT_COMMIT", "abc1234")])
        .contains("cargo:rustc-env=MESHGUARD_VERSION=9.9.9 (abc1234)"));
}

/// An existing htpasswd file is taken over (checked as basicAuth checks it) and a user added.
#[test]
fn htpasswd_secret_from_an_existing_file() {
    let d = scratch("secret-htpasswd-file");
    let p = d.join("policies");
    std::fs::create_dir_all(&p).expect("mkdir");
    // Gloo's guide user (`user` / `password`, apr1) and a comment.
    let file = write(
        &d,
        "htpasswd",
        "# team\nuser:$apr1$TYiryv0/$8BvzLUO9IfGPGGsPnAgSu1\n",
    );
    let o = run_stdin(
        &[
            "secret",
            "htpasswd",
            "--name",
            "users",
            "--namespace",
            "gloo-system",
            "--from-file",
            file.to_str().expect("path"),
            "--user",
            "bob",
            "--password-stdin",
            "--cost",
            "4",
        ],
        "bob's secret\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("users: user, bob."), "{}", stdout(&o));
    std::fs::write(p.join("secret.yaml"), stdout(&o)).expect("write");
    write(
        &p,
        "authconfig.yaml",
        "apiVersion: enterprise.gloo.solo.io/v1\nkind: AuthConfig\nmetadata: {name: basic, namespace: gloo-system}\nspec:\n  configs:\n  - basicAuth: {realm: shop, htpasswdSecretRef: {name: users}}\n",
    );
    use base64::Engine as _;
    let req = |cred: &str| {
        let b = base64::engine::general_purpose::STANDARD.encode(cred);
        format!("destination: {{namespace: shop}}\nrequest: {{path: /, headers: {{authorization: Basic {b}}}}}\nauthConfig: gloo-system.basic\n")
    };
    assert_eq!(check_in(&d, &req("user:password"))["allowed"], true);
    assert_eq!(check_in(&d, &req("bob:bob's secret"))["allowed"], true);
    assert_eq!(check_in(&d, &req("bob:password"))["allowed"], false);

    // Only file: no stdin needed.
    let o = run(&[
        "secret",
        "htpasswd",
        "--name",
        "users",
        "--from-file",
        file.to_str().expect("path"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Hash kinds basicAuth refuses are refused here, with the line.
    let weak = write(
        &d,
        "weak",
        "ok:$apr1$TYiryv0/$8BvzLUO9IfGPGGsPnAgSu1\nold:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
    );
    let o = run(&[
        "secret",
        "htpasswd",
        "--name",
        "users",
        "--from-file",
        weak.to_str().expect("path"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("weak:2: user old: only bcrypt"),
        "{}",
        stderr(&o)
    );
    let o = run(&["secret", "htpasswd", "--name", "users"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "clap: --user or --from-file is required"
    );
}

/// `meshguard who-can ... | head` and friends: a reader that goes away is no panic (out.rs:
/// the program ends quietly).
#[test]
fn closed_stdout_is_not_a_panic() {
    for args in [
        vec!["who-can", "-n", "production", "-l", "app=backend"],
        vec!["policies-for", "-n", "production", "-l", "app=backend"],
        vec![
            "test",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tests"),
        ],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait");
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{args:?}: {e}");
        assert!(
            matches!(o.status.code(), Some(0) | Some(141)),
            "{args:?}: {:?} {e}",
            o.status
        );
    }
}

/// Policies as `kubectl get ... -A -o yaml` prints them from a cluster (a List with
/// server-set metadata) are read as they are.
#[test]
fn who_can_reads_kubectl_output() {
    let f = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubectl-list.yaml"
    );
    let v = json(&run(&[
        "who-can",
        "-n",
        "production",
        "-l",
        "app=backend",
        "-p",
        f,
        "--format",
        "json",
    ]));
    assert_eq!(rules(&v, "allow"), ["production/frontend-to-backend 0"]);
    assert_eq!(v["mtlsMode"], "STRICT");
    let v = json(&run(&[
        "policies-for",
        "-n",
        "production",
        "-l",
        "app=backend",
        "-p",
        f,
        "--format",
        "json",
    ]));
    assert_eq!(
        names(&v["peerAuthentications"], true),
        ["istio-system/default"]
    );
}

/// `--format junit` for CI report viewers: one testcase per case, failures with their reasons,
/// names escaped.
#[test]
fn test_junit_report() {
    let d = scratch("test-junit");
    let legacy = format!("{EXAMPLES}/requests/frontend-legacy-write.yaml");
    write(
        &d,
        "j.test.yaml",
        &format!(
            "cases:\n- name: 'ok <&> \"quoted\"'\n  requestFile: {legacy}\n  expect: allow\n- name: wrong\n  requestFile: {legacy}\n  expect: deny\n"
        ),
    );
    write(&d, "broken.test.yaml", "cases: 1\n");
    let o = run(&["test", d.to_str().expect("path"), "--format", "junit"]);
    assert_eq!(o.status.code(), Some(1));
    let x = stdout(&o);
    assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"meshguard test\" tests=\"3\" failures=\"1\" errors=\"1\">"), "{x}");
    assert_eq!(x.matches("<testsuite ").count(), 2, "{x}");
    assert_eq!(x.matches("<testcase ").count(), 3, "{x}");
    assert!(
        x.contains("name=\"ok &lt;&amp;&gt; &quot;quoted&quot;\""),
        "{x}"
    );
    assert!(
        x.contains("<failure message=\"expected deny, got allow\">"),
        "{x}"
    );
    assert!(
        x.contains("<error message=\"line 1: cases: must be a list, found an integer\">"),
        "{x}"
    );
    assert!(x.trim_end().ends_with("</testsuites>"), "{x}");
}

/// `check --explain` on the opaEnvoy example: every rule with its value, the rules undefined
/// for the input, and the policy lines where evaluation stopped; in text and in JSON.
#[test]
fn check_explain_shows_rego_rules_and_where_evaluation_stopped() {
    let d = scratch("explain");
    let req = |auth: &str| {
        format!(
            "destination: {{namespace: shop, labels: {{app: orders}}, port: 8080}}\nauthConfig: gloo-system.orders-opa\nrequest:\n  method: GET\n  path: /post\n  headers: {{content-type: application/json{auth}}}\n  body: '{{\"item\": \"book\", \"quantity\": 2}}'\n"
        )
    };
    let none = write(&d, "none.yaml", &req(""));
    let policies = format!("{EXAMPLES}/extauth");
    let o = run(&[
        "check",
        "--policies",
        &policies,
        "--request",
        none.to_str().expect("path"),
        "--explain",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(3), "{out}{}", stderr(&o));
    assert!(
        out.contains("why:   data.envoy.authz.allow = false"),
        "{out}"
    );
    assert!(
        out.contains("data.envoy.authz: undefined for this input: token, claims"),
        "no Authorization header: neither token nor claims is defined\n{out}"
    );
    assert!(
        out.contains("orders-policy/policy.rego:9: startswith(auth, \"Bearer \")"),
        "{out}"
    );
    // The README's example: the command as shown, with this request as orders.yaml; every
    // line it shows is in the output.
    let shown = snippets::block("check-explain");
    let mut lines = shown.lines();
    let command = lines
        .next()
        .and_then(|l| l.strip_prefix("$ meshguard "))
        .expect("the block starts with the command");
    std::fs::write(d.join("orders.yaml"), req("")).expect("write");
    let args: Vec<String> = command
        .split_whitespace()
        .map(|a| a.replace("examples/", &format!("{EXAMPLES}/")))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_in(&d, &args);
    let got = stdout(&o);
    for line in lines.filter(|l| l.trim() != "...") {
        assert!(
            got.contains(line),
            "README line `{line}` is not in the output:\n{got}"
        );
    }
    // Without --explain, none of it.
    let o = run(&[
        "check",
        "--policies",
        &policies,
        "--request",
        none.to_str().expect("path"),
    ]);
    assert!(!stdout(&o).contains("why:"), "{}", stdout(&o));

    // A token that is not a JWT: `token` has a value, `claims` stays undefined.
    let bad = write(&d, "bad.yaml", &req(", authorization: Bearer not-a-jwt"));
    let o = run(&[
        "check",
        "--policies",
        &policies,
        "--request",
        bad.to_str().expect("path"),
        "--explain",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
    let why: Vec<&str> = v["why"]
        .as_array()
        .expect("why")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        why.contains(&"  data.envoy.authz.token = \"not-a-jwt\""),
        "{why:#?}"
    );
    assert!(
        why.contains(&"  data.envoy.authz: undefined for this input: claims"),
        "{why:#?}"
    );
    assert_eq!(v["allowed"], false);
}
