//! The CLI as a user drives it: exit codes, text and JSON output, errors that name what to fix.

use std::process::{Command, Output};

mod cmd;
use cmd::{run_stdin, BIN};
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run meshguard")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every bundled example request says what it expects on its first line; the embedded policies
/// must decide it that way, through the real binary.
#[test]
fn bundled_examples_decide_as_documented() {
    let dir = format!("{EXAMPLES}/requests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().unwrap_or("");
        let expect_allowed = first.starts_with("# expect: allowed");
        assert!(
            first.starts_with("# expect: "),
            "{} needs a `# expect:` line",
            path.display()
        );
        let name = path.file_name().and_then(|f| f.to_str()).expect("name");
        // Embedded default (no --policies) and the same files from disk must agree.
        for extra in [
            vec![],
            vec!["--policies".to_owned(), format!("{EXAMPLES}/policies")],
        ] {
            let mut args = vec!["check", "--example", name, "--output", "json"];
            args.extend(extra.iter().map(String::as_str));
            let o = run(&args);
            let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
            assert_eq!(v["allowed"], expect_allowed, "{name}: {v}");
            assert_eq!(
                o.status.code(),
                Some(if expect_allowed { 0 } else { 3 }),
                "{name}"
            );
            let status = if expect_allowed {
                200
            } else if first.contains("(401") {
                401
            } else {
                403
            };
            assert_eq!(v["status"], status, "{name}: {v}");
        }
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn check_reports_policy_rule_and_reason() {
    let o = run(&[
        "check",
        "--request",
        &format!("{EXAMPLES}/requests/frontend-admin-bypass.yaml"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["policy"], "production/deny-admin");
    assert_eq!(v["rule"], 0);
    assert_eq!(v["action"], "DENY");
    assert_eq!(v["mtls_mode"], "STRICT");
    assert_eq!(o.status.code(), Some(3));

    let o = run(&["check", "--example", "frontend-legacy-write", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["audit"], serde_json::json!(["production/audit-writes"]));
    assert_eq!(v["dry_run"]["allowed"], false);
    assert_eq!(v["dry_run"]["policy"], "production/deny-legacy-api");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn check_explains_why_nothing_matched() {
    let o = run(&["check", "--example", "api-with-jwt"]);
    let out = stdout(&o);
    assert!(out.contains("production/require-jwt rule 0"), "{out}");
    assert!(out.contains("request.auth.claims[exp]"), "{out}");
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn check_reads_json_from_stdin() {
    let req = r#"{"destination": {"namespace": "production", "labels": {"app": "backend"}, "port": 8080},
                  "source": {"principal": "cluster.local/ns/production/sa/frontend", "ip": "10.0.0.1"},
                  "request": {"method": "POST", "host": "backend", "path": "/api/orders"}}"#;
    let o = run_stdin(&["check", "--request", "-", "-o", "json"], req);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn bad_request_is_exit_1_and_names_the_field() {
    let o = run_stdin(
        &["check", "-r", "-"],
        "destination: {namespace: production, port: 99999}\n",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("destination.port"), "{}", stderr(&o));
    let o = run_stdin(&["check", "-r", "-"], "destinaton: {}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown field `destinaton`"),
        "{}",
        stderr(&o)
    );
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = dir.join("policy.yaml");
    std::fs::write(&p, text).expect("write");
    dir
}

const BAD: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: [\"10.0.0.0/33\"]
        notPrincipls: [\"x\"]
    to:
    - operation:
        ports: [\"*\"]
";

#[test]
fn lint_reports_every_error_with_file_line_field() {
    let dir = write_temp("lint", BAD);
    let o = run(&["lint", dir.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("policy.yaml:9:20: error: spec.rules[0].from[0].source.ipBlocks[0]"),
        "{out}"
    );
    assert!(
        out.contains(
            "policy.yaml:10:9: error: spec.rules[0].from[0].source.notPrincipls: unknown field"
        ),
        "{out}"
    );
    assert!(out.contains("did you mean `notPrincipals`"), "{out}");
    assert!(
        out.contains("policy.yaml:13:17: error: spec.rules[0].to[0].operation.ports[0]"),
        "{out}"
    );

    let o = run(&["lint", "-o", "json", dir.to_str().expect("utf8")]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v[0]["line"], 9);

    // check refuses to decide with a broken policy set, and says where.
    let o = run(&[
        "check",
        "-p",
        dir.to_str().expect("utf8"),
        "--example",
        "frontend-reads-users",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("policy.yaml:9:20"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lint_warns_but_passes_on_the_bundled_examples() {
    let o = run(&["lint", &format!("{EXAMPLES}/policies")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("numeric claim"), "{}", stdout(&o));
    let o = run(&["lint", "--deny-warnings", &format!("{EXAMPLES}/policies")]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn help_explains_commands() {
    let o = run(&["--help"]);
    let out = stdout(&o);
    for cmd in ["check", "lint", "examples"] {
        assert!(out.contains(cmd), "{out}");
    }
    let o = run(&["check", "--help"]);
    assert!(stdout(&o).contains("Exit status: 0 allowed, 3 denied, 1 bad input"));
}

#[test]
fn serve_explains_bad_settings() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cfg = dir.join("meshguard.yaml");
    std::fs::write(&cfg, "grpcListen: 127.0.0.1:0\nhttpListn: 127.0.0.1:0\n").expect("write");
    let o = run(&["serve", "--config", cfg.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("httpListn: unknown field `httpListn` (did you mean `httpListen`?)"),
        "{}",
        stderr(&o)
    );
    let o = run(&["serve", "--grpc-listen", "nonsense"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--grpc-listen `nonsense`"),
        "{}",
        stderr(&o)
    );
    // Policies that do not load: nothing is served, and the errors say where.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("p.yaml"), BAD).expect("write");
    let o = run(&[
        "serve",
        "--policies",
        bad.to_str().expect("utf8"),
        "--grpc-listen",
        "off",
        "--http-listen",
        "off",
        "--admin-listen",
        "off",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("p.yaml:9:20"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ca_init_issue_show() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    let o = run(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        ca.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = dir.join("web");
    let o = run(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().expect("utf8"),
        "--spiffe-id",
        "spiffe://cluster.local/ns/prod/sa/web",
        "--ttl",
        "10m",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(out.join("svid.pem"))
        .expect("svid")
        .contains("BEGIN CERTIFICATE"));
    let o = run(&["ca", "show", "--dir", ca.to_str().expect("utf8")]);
    assert!(stdout(&o).contains("BEGIN CERTIFICATE"));
    // The SPIFFE bundle format: the root as a use=x509-svid JWK with x5c, the JWT authority
    // as a use=jwt-svid JWK with a kid.
    let o = run(&[
        "ca",
        "show",
        "--dir",
        ca.to_str().expect("utf8"),
        "--format",
        "spiffe",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bundle: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON bundle");
    let keys = bundle["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["use"], "x509-svid");
    assert_eq!(keys[0]["x5c"].as_array().map(Vec::len), Some(1));
    assert_eq!(keys[1]["use"], "jwt-svid");
    let kid = keys[1]["kid"].as_str().expect("kid").to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca.join("jwt.key"))
            .expect("jwt.key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An operator-issued JWT-SVID carries that kid, the subject and the audiences.
    let o = run(&[
        "ca",
        "issue-jwt",
        "--dir",
        ca.to_str().expect("utf8"),
        "--spiffe-id",
        "spiffe://cluster.local/ns/prod/sa/web",
        "--audience",
        "backend",
        "--audience",
        "billing",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let token = stdout(&o);
    let part = |i: usize| -> serde_json::Value {
        let seg = token.trim().split('.').nth(i).expect("segment");
        let bytes = base64_url_decode(seg);
        serde_json::from_slice(&bytes).expect("json")
    };
    assert_eq!(part(0)["kid"], kid);
    assert_eq!(part(1)["sub"], "spiffe://cluster.local/ns/prod/sa/web");
    assert_eq!(part(1)["aud"], serde_json::json!(["backend", "billing"]));
    // A second init into the same directory is refused; a bad SPIFFE ID says why.
    let o = run(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        ca.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = run(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().expect("utf8"),
        "--spiffe-id",
        "spiffe://cluster.local/a//b",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty segment"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn agent_refuses_bad_registration_entries() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    assert_eq!(
        run(&[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--dir",
            ca.to_str().expect("utf8")
        ])
        .status
        .code(),
        Some(0)
    );
    let entries = dir.join("entries.yaml");
    std::fs::write(
        &entries,
        "entries:\n- spiffeId: spiffe://cluster.local/ns/a/sa/b\n  selectors: [\"unix:shoe:1\"]\n",
    )
    .expect("write");
    let o = run(&[
        "agent",
        "--ca-dir",
        ca.to_str().expect("utf8"),
        "--entries",
        entries.to_str().expect("utf8"),
        "--socket",
        dir.join("s.sock").to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("entries.yaml:3") && stderr(&o).contains("unix:uid"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// base64url without padding (RFC 7515), enough to read a token in a test.
fn base64_url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn lint_checks_auth_configs_fields_expressions_and_references() {
    let dir = write_temp(
        "authconfig",
        "apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: a, namespace: gloo-system}
spec:
  booleanExpr: \"one && tw\"
  configs:
  - name: one
    apiKeyAuth:
      labelSelector: {team: x}
      headerNme: x
  - name: two
    hmacAuth: {}
",
    );
    let o = run(&["lint", dir.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("policy.yaml:5:16") && out.contains("`tw` is not the name of a config"),
        "{out}"
    );
    assert!(
        out.contains("policy.yaml:10:7") && out.contains("did you mean `headerName`"),
        "{out}"
    );
    assert!(
        out.contains("policy.yaml:11:5") && out.contains("does not run yet"),
        "{out}"
    );
    // Well-formed, but its Rego module is in no loaded ConfigMap: found by lint too.
    let dir = write_temp(
        "authconfig-ref",
        "apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: b, namespace: gloo-system}
spec:
  configs:
  - name: opa
    opaAuth: {modules: [{name: nope}], query: \"data.x.allow == true\"}
",
    );
    let o = run(&["lint", dir.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("ConfigMap gloo-system/nope is not loaded"),
        "{}",
        stdout(&o)
    );
    // The bundled extauth examples lint clean.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/extauth");
    let o = run(&["lint", examples]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn lint_refuses_rego_that_parses_but_cannot_run() {
    // `y` is never bound: the module parses, but no evaluation could schedule it.
    let dir = write_temp(
        "rego-unsafe",
        "apiVersion: v1
kind: ConfigMap
metadata: {name: unsafe, namespace: gloo-system}
data:
  policy.rego: |
    package x
    import rego.v1
    allow if { y > 1 }
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: unsafe, namespace: gloo-system}
spec:
  configs:
  - name: opa
    opaAuth: {modules: [{name: unsafe}], query: \"data.x.allow == true\"}
",
    );
    let o = run(&["lint", dir.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("AuthConfig gloo-system/unsafe")
            && stdout(&o).contains("do not compile"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn lint_checks_oidc_session_and_end_session_settings() {
    let dir = write_temp(
        "oidc-settings",
        "apiVersion: v1
kind: Secret
metadata: {name: oidc, namespace: gloo-system}
stringData: {client-secret: a-long-client-secret}
---
apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: login, namespace: gloo-system}
spec:
  configs:
  - name: oidc
    oauth2:
      oidcAuthorizationCode:
        clientId: app
        clientSecretRef: {name: oidc}
        issuerUrl: https://idp.test
        appUrl: https://app.test
        session: {cookie: {allowRefreshing: true, keyPrefix: 'a b', targetDomain: x.test}}
        endSessionProperties: {methodType: PostMethod}
",
    );
    let o = run(&["lint", dir.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("policy.yaml:19:44") && out.contains("`PostMethod` is not supported"),
        "{out}"
    );
    assert!(
        out.contains("session.cookie.keyPrefix") && out.contains("part of the cookie name"),
        "{out}"
    );
    assert!(
        out.contains("session.cookie.targetDomain") && out.contains("ignored"),
        "{out}"
    );
}

/// `check` runs AuthConfigs as the server does: one named by the request (`authConfig`, Envoy's
/// per-route config_id) before the Istio policies, and one a CUSTOM policy calls.
#[test]
fn check_runs_auth_configs_named_by_the_request_or_by_custom_policies() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/extauth");
    let key = "N2YwMDIxZTEtNGUzNS1jNzgzLTRkYjAtYjE2YzRkZGVmNjcy";
    let named = |key: &str| {
        format!(
            "destination: {{namespace: shop, labels: {{app: api}}}}
authConfig: gloo-system.api-keys
request: {{method: GET, host: shop.test, path: /api/orders, headers: {{api-key: {key}}}}}
"
        )
    };
    let o = run_stdin(
        &["check", "--policies", examples, "--request", "-"],
        &named(key),
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.starts_with("ALLOW 200"), "{out}");
    assert!(out.contains("AuthConfig: gloo-system.api-keys"), "{out}");
    assert!(
        out.contains("header to add: x-user-email: infra@example.com"),
        "{out}"
    );
    let o = run_stdin(
        &[
            "check",
            "--policies",
            examples,
            "-o",
            "json",
            "--request",
            "-",
        ],
        &named("wrong-key"),
    );
    assert_eq!(o.status.code(), Some(3), "denied: {}", stdout(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(j["allowed"], false);
    assert_eq!(j["status"], 401);
    assert_eq!(j["auth_config"], "gloo-system.api-keys");

    // The shop's CUSTOM policy calls gloo-system.shop-auth (API key || basic) for /api/*.
    let custom = |auth: &str| {
        format!(
            "destination: {{namespace: shop, labels: {{app: web}}}}
request: {{method: GET, host: shop.test, path: /api/cart, headers: {{authorization: '{auth}'}}}}
"
        )
    };
    let o = run_stdin(
        &["check", "--policies", examples, "--request", "-"],
        &custom("Basic dXNlcjpwYXNzd29yZA=="),
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("AuthConfig: gloo-system.shop-auth"), "{out}");
    let o = run_stdin(
        &["check", "--policies", examples, "--request", "-"],
        &custom("Basic dXNlcjp3cm9uZw=="),
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.starts_with("DENY 401"), "{out}");
    assert!(out.contains("www-authenticate"), "{out}");
}

/// `meshguard check --example all | head -1`: a reader that goes away ends the output quietly.
#[test]
fn a_closed_pipe_ends_output_without_a_panic() {
    let mut child = Command::new(BIN)
        .args(["check", "--example", "all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The reader is gone before the first line is written.
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(0), "{err}");
}

/// deploy/ca.yaml mounts the CA's key from a Secret, which the kubelet writes root-owned, with
/// the pod's fsGroup as group and `defaultMode: 0440`; the CA running as a non-root user in that
/// group must load it, and must still refuse a key other users can read or a group it is not in.
/// Needs root to make such files (chown) and setpriv to drop to the pod's user; as another user
/// it is skipped, since no unprivileged run can make a root-owned file.
#[test]
fn ca_loads_its_key_from_a_kubernetes_secret_volume() {
    let me = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if me.ok() != Some(0) {
        eprintln!("skipping: making root-owned Secret-volume files needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("meshguard-ca-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca");
    let o = run(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        ca.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bin = dir.join("meshguard");
    std::fs::copy(BIN, &bin).expect("copy binary");
    let sh = |script: &str| {
        let o = Command::new("sh")
            .args(["-c", script])
            .current_dir(&dir)
            .output()
            .expect("sh");
        assert!(o.status.success(), "{script}: {}", stderr(&o));
    };
    // As the kubelet lays out a Secret volume with fsGroup 65532.
    sh("chmod 0755 . meshguard && chown -R 0:65532 ca && chmod 0750 ca && chmod 0440 ca/*");
    // The pod's user: uid 65532, primary group 65533, fsGroup 65532 as a supplementary group.
    let show = || {
        Command::new("setpriv")
            .args(["--reuid=65532", "--regid=65533", "--groups=65532"])
            .arg(&bin)
            .args(["ca", "show", "--dir"])
            .arg(&ca)
            .output()
            .expect("setpriv (util-linux)")
    };
    let o = show();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("BEGIN CERTIFICATE"), "{}", stdout(&o));
    // Readable by everyone: refused, with what to do.
    sh("chmod 0444 ca/ca.key");
    let o = show();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    // A group the process is not in: refused.
    sh("chmod 0440 ca/ca.key && chown 0:65534 ca/ca.key");
    let o = show();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("mode 440"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
