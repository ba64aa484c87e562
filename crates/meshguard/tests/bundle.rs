//! Policy bundles end to end: `meshguard bundle build` packs and signs a directory (policies, a
//! Rego module under configmaps/), real nginx serves it, `meshguard serve --bundle URL` polls it
//! with If-None-Match (nginx answers 304 while nothing changes), applies a new bundle, and refuses
//! a tampered, unsigned, foreign-signed or uncompilable one while the last good bundle keeps
//! deciding; a bundle server outage keeps the last good set too.

mod cmd;
mod snippets;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cmd::{http_get, serve_command, Serve, BIN};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn nginx() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("nginx is not installed; scripts/test.sh installs it (apt-get install nginx)");
        }
        eprintln!("SKIPPED: nginx is not installed (run scripts/test.sh, which installs it)");
    }
    found
}

/// nginx serving `www` on `port` (static files: ETag and If-None-Match as nginx does them), with
/// an access log of statuses.
fn start_nginx(bin: &Path, dir: &Path, port: u16) -> Kill {
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  log_format st '$status $request_uri';
  access_log {d}/access.log st;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
  }}
}}
",
        d = dir.display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let k = Kill(
        Command::new(bin)
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-e", &dir.join("error.log").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    k
}

fn sh(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn decide(s: &Serve, method: &str, path: &str, extra: &[(&str, &str)]) -> u16 {
    let mut h = vec![
        ("X-Original-Method", method),
        ("X-Original-URI", path),
        ("X-Meshguard-Workload", "shop/app=web"),
    ];
    h.extend_from_slice(extra);
    http_get(&s.http, "/auth", &h).0
}

fn readyz(s: &Serve) -> String {
    http_get(&s.admin, "/readyz", &[]).1
}

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [METHODS], paths: [\"/public/*\", \"/rego/*\"]}}]
";

const AUTHCONFIG: &str = "apiVersion: enterprise.gloo.solo.io/v1
kind: AuthConfig
metadata: {name: rego, namespace: shop}
spec:
  configs:
  - name: opa
    opaAuth:
      modules: [{name: rego-policy, namespace: shop}]
      query: data.shop.allow == true
";

const REGO: &str = "package shop

import rego.v1

default allow := false

allow if input.http_request.headers[\"x-team\"] == \"blue\"
";

/// Writes the policy directory with the ALLOW policy's methods.
fn policy_dir(dir: &Path, methods: &str) {
    std::fs::create_dir_all(dir.join("configmaps/shop/rego-policy")).expect("dirs");
    std::fs::write(dir.join("web.yaml"), POLICY.replace("METHODS", methods)).expect("write");
    std::fs::write(dir.join("authconfig.yaml"), AUTHCONFIG).expect("write");
    std::fs::write(dir.join("configmaps/shop/rego-policy/policy.rego"), REGO).expect("write");
}

fn build(work: &Path, src: &Path, out: &Path, key: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.current_dir(work)
        .args(["bundle", "build"])
        .arg(src)
        .arg("-o")
        .arg(out);
    if let Some(k) = key {
        c.args(["--signing-key", k]);
    }
    c.output().expect("bundle build")
}

/// Replaces the served bundle atomically (nginx never serves a half-written file).
fn publish(www: &Path, bytes: &[u8]) {
    let tmp = www.join(".bundle.tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, www.join("bundle.tar.gz")).expect("rename");
}

/// The entries of a tar.gz.
fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = Vec::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b).expect("read");
        out.push((name, b));
    }
    out
}

fn pack(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        for (n, b) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(b.len() as u64);
            h.set_mode(0o644);
            t.append_data(&mut h, n, b.as_slice()).expect("append");
        }
        t.into_inner().expect("tar").finish().expect("gz");
    }
    out
}

#[test]
fn signed_bundles_over_nginx_with_etag_tampering_and_outage() {
    let Some(nginx_bin) = nginx() else {
        return;
    };
    let work = std::env::temp_dir().join(format!("meshguard-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let www = work.join("www");
    std::fs::create_dir_all(&www).expect("www");
    sh(
        &work,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "key.pem",
        ],
    );
    sh(
        &work,
        &[
            "openssl", "pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem",
        ],
    );
    sh(
        &work,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "other.pem",
        ],
    );

    // v1: GET only.
    let v1 = work.join("v1");
    policy_dir(&v1, "\"GET\"");
    let out = build(&work, &v1, &work.join("v1.tar.gz"), Some("key.pem"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("signed (key id default)") && said.contains("3 file(s)"),
        "{said}"
    );
    let v1_bytes = std::fs::read(work.join("v1.tar.gz")).expect("v1");
    publish(&www, &v1_bytes);

    // `bundle inspect` verifies with the public key and refuses with another.
    let inspect = Command::new(BIN)
        .current_dir(&work)
        .args([
            "bundle",
            "inspect",
            "v1.tar.gz",
            "--verification-key",
            "pub.pem",
        ])
        .output()
        .expect("inspect");
    let listing = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success() && listing.contains("signature: verified"),
        "{listing}"
    );
    assert!(
        listing.contains("configmaps/shop/rego-policy/policy.rego"),
        "{listing}"
    );
    sh(
        &work,
        &[
            "openssl",
            "pkey",
            "-in",
            "other.pem",
            "-pubout",
            "-out",
            "other-pub.pem",
        ],
    );
    let wrong = Command::new(BIN)
        .current_dir(&work)
        .args([
            "bundle",
            "inspect",
            "v1.tar.gz",
            "--verification-key",
            "other-pub.pem",
        ])
        .output()
        .expect("inspect");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    let port = free_port();
    let server = start_nginx(&nginx_bin, &work, port);
    let url = format!("http://127.0.0.1:{port}/bundle.tar.gz");
    let mut c = Command::new(BIN);
    c.current_dir(&work).args([
        "serve",
        "--bundle",
        &url,
        "--bundle-verification-key",
        "pub.pem",
        "--bundle-poll",
        "200ms",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--decision-log",
        "off",
        "--auth-binding",
        "/rego=shop.rego",
    ]);
    let s = serve_command(c);
    assert!(
        s.banner
            .contains(&format!("from the bundle {url} (signature verified)")),
        "{}",
        s.banner
    );
    assert_eq!(decide(&s, "GET", "/public/a", &[]), 200);
    assert_eq!(decide(&s, "POST", "/public/a", &[]), 403);
    // The Rego module shipped as a plain .rego file under configmaps/ decides /rego.
    assert_eq!(decide(&s, "GET", "/rego/x", &[("x-team", "blue")]), 200);
    assert_eq!(decide(&s, "GET", "/rego/x", &[("x-team", "red")]), 403);

    // Unchanged: nginx answers the polls 304 (If-None-Match), and only the first was a download.
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(work.join("access.log")).expect("access log");
    let downloads = log.lines().filter(|l| l.starts_with("200 ")).count();
    let not_modified = log.lines().filter(|l| l.starts_with("304 ")).count();
    assert_eq!(downloads, 1, "{log}");
    assert!(not_modified >= 2, "polls should be answered 304:\n{log}");

    // v2: POST too, published: applied without a restart.
    let v2 = work.join("v2");
    policy_dir(&v2, "\"GET\", \"POST\"");
    assert!(build(&work, &v2, &work.join("v2.tar.gz"), Some("key.pem"))
        .status
        .success());
    let v2_bytes = std::fs::read(work.join("v2.tar.gz")).expect("v2");
    publish(&www, &v2_bytes);
    eventually("v2 applied", || {
        (decide(&s, "POST", "/public/a", &[]) == 200).then_some(())
    });
    assert!(!readyz(&s).contains("degraded"), "{}", readyz(&s));

    // Tampered: v2 with its policy rewritten to allow every method, the signature kept.
    let tampered: Vec<(String, Vec<u8>)> = unpack(&v2_bytes)
        .into_iter()
        .map(|(n, b)| {
            if n == "web.yaml" {
                let t = String::from_utf8(b)
                    .expect("utf8")
                    .replace("methods: [\"GET\", \"POST\"], ", "");
                (n, t.into_bytes())
            } else {
                (n, b)
            }
        })
        .collect();
    publish(&www, &pack(&tampered));
    let r = eventually("tampered bundle refused", || {
        let r = readyz(&s);
        r.contains("degraded").then_some(r)
    });
    assert!(r.contains("web.yaml: digest mismatch"), "{r}");
    assert_eq!(
        decide(&s, "DELETE", "/public/a", &[]),
        403,
        "the tampered policy must not apply"
    );
    assert_eq!(
        decide(&s, "POST", "/public/a", &[]),
        200,
        "v2 keeps deciding"
    );

    // A file added that the signature does not list.
    let mut extra = unpack(&v2_bytes);
    extra.push((
        "sneaky.yaml".into(),
        POLICY
            .replace("METHODS", "\"DELETE\"")
            .replace("name: web", "name: sneaky")
            .into_bytes(),
    ));
    publish(&www, &pack(&extra));
    eventually("an unlisted file refused", || {
        readyz(&s)
            .contains("sneaky.yaml: not included in the bundle signature")
            .then_some(())
    });
    assert_eq!(decide(&s, "DELETE", "/public/a", &[]), 403);

    // Unsigned, and signed with another key: refused.
    assert!(build(&work, &v2, &work.join("unsigned.tar.gz"), None)
        .status
        .success());
    publish(
        &www,
        &std::fs::read(work.join("unsigned.tar.gz")).expect("unsigned"),
    );
    eventually("an unsigned bundle refused", || {
        readyz(&s).contains("has no .signatures.json").then_some(())
    });
    assert!(
        build(&work, &v2, &work.join("foreign.tar.gz"), Some("other.pem"))
            .status
            .success()
    );
    publish(
        &www,
        &std::fs::read(work.join("foreign.tar.gz")).expect("foreign"),
    );
    eventually("a foreign-signed bundle refused", || {
        readyz(&s)
            .contains("does not verify with the configured key")
            .then_some(())
    });

    // Signed correctly but not a valid policy set: the engine refuses it, v2 stays.
    let bad = meshguard_engine::bundle::build(
        &[meshguard_engine::bundle::BundleFile {
            name: "web.yaml".into(),
            bytes: POLICY.replace("ALLOW", "ALOW").into_bytes(),
        }],
        None,
        Some(
            &meshguard_engine::bundle::SigningKey::from_pem(
                &std::fs::read(work.join("key.pem")).expect("key"),
                "default",
            )
            .expect("signing key"),
        ),
    )
    .expect("build");
    publish(&www, &bad);
    eventually("an uncompilable bundle refused", || {
        let r = readyz(&s);
        (r.contains("bundle/web.yaml") && r.contains("spec.action")).then_some(())
    });
    assert_eq!(decide(&s, "POST", "/public/a", &[]), 200);

    // Outage: the bundle server goes away; v2 keeps deciding; back, and v1 published: applied.
    publish(&www, &v1_bytes);
    eventually("v1 again", || {
        (decide(&s, "POST", "/public/a", &[]) == 403).then_some(())
    });
    drop(server);
    eventually("outage reported", || {
        readyz(&s).contains("cannot fetch the bundle").then_some(())
    });
    assert_eq!(decide(&s, "GET", "/public/a", &[]), 200);
    assert_eq!(decide(&s, "POST", "/public/a", &[]), 403);
    publish(&www, &v2_bytes);
    let server = start_nginx(&nginx_bin, &work, port);
    eventually("v2 after the outage", || {
        (decide(&s, "POST", "/public/a", &[]) == 200).then_some(())
    });
    eventually("no longer degraded", || {
        (!readyz(&s).contains("degraded")).then_some(())
    });
    drop(server);
}

/// `bundle build` refuses a directory that `serve` would refuse, naming the file, line and field,
/// and writes nothing.
#[test]
fn bundle_build_refuses_a_bad_directory() {
    let work = std::env::temp_dir().join(format!("meshguard-bundle-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let src = work.join("src");
    std::fs::create_dir_all(&src).expect("dir");
    std::fs::write(
        src.join("web.yaml"),
        POLICY
            .replace("METHODS", "\"GET\"")
            .replace("ALLOW", "ALOW"),
    )
    .expect("write");
    std::fs::write(src.join("stray.rego"), REGO).expect("write");
    let out = build(&work, &src, &work.join("b.tar.gz"), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("web.yaml:6") && err.contains("spec.action"),
        "{err}"
    );
    assert!(
        err.contains("stray.rego") && err.contains("configmaps/<namespace>/<configmap>"),
        "{err}"
    );
    assert!(!work.join("b.tar.gz").exists());
}

/// The README's bundle commands, as written (run in a scratch directory holding `policies/`;
/// the example URL replaced by a local nginx serving what `bundle build` wrote).
#[test]
fn readme_bundle_commands_run_as_written() {
    let Some(nginx_bin) = nginx() else {
        return;
    };
    let work = std::env::temp_dir().join(format!("meshguard-bundle-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www")).expect("www");
    policy_dir(&work.join("policies"), "\"GET\"");
    let block = snippets::block("bundle");
    for args in snippets::commands(&block, "openssl") {
        let mut all = vec!["openssl"];
        all.extend(args.iter().map(String::as_str));
        sh(&work, &all);
    }
    let port = free_port();
    let server = start_nginx(&nginx_bin, &work, port);
    let mut served = None;
    for args in snippets::commands(&block, "meshguard") {
        if args.first().map(String::as_str) == Some("serve") {
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    if a.starts_with("https://") {
                        format!("http://127.0.0.1:{port}/bundle.tar.gz")
                    } else {
                        a.clone()
                    }
                })
                .collect();
            std::fs::copy(work.join("bundle.tar.gz"), work.join("www/bundle.tar.gz"))
                .expect("copy");
            let mut c = Command::new(BIN);
            c.current_dir(&work).args(&args).args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--decision-log",
                "off",
            ]);
            served = Some(serve_command(c));
            continue;
        }
        let out = Command::new(BIN)
            .current_dir(&work)
            .args(&args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "meshguard {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if args.first().map(String::as_str) == Some("inspect")
            || args.get(1).map(String::as_str) == Some("inspect")
        {
            assert!(String::from_utf8_lossy(&out.stdout).contains("signature: verified"));
        }
    }
    let s = served.expect("the block runs serve");
    assert!(s.banner.contains("(signature verified)"), "{}", s.banner);
    assert_eq!(decide(&s, "GET", "/public/a", &[]), 200);
    assert_eq!(decide(&s, "POST", "/public/a", &[]), 403);
    drop(server);
}

/// The OPA-Envoy plugin binary (OPA's CLI with the plugin) that scripts/peers/opa-envoy.sh
/// builds; under CI=true its absence fails.
fn opa() -> Option<PathBuf> {
    let version = include_str!("../../../scripts/peers/opa-envoy.version").trim();
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/peers"))
        .join(format!("opa-envoy-{version}"));
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} missing; scripts/peers/opa-envoy.sh builds it",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} missing (bash scripts/peers/opa-envoy.sh)",
        p.display()
    );
    None
}

/// `opa run --server` on a bundle with a verification key: Ok(data at `path`) once it serves, or
/// Err(what it printed) when it refuses the bundle and exits.
fn opa_loads(opa: &Path, dir: &Path, bundle: &Path, path: &str) -> Result<String, String> {
    let port = free_port();
    let mut child = Kill(
        Command::new(opa)
            .current_dir(dir)
            .args([
                "run",
                "--server",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--bundle",
            ])
            .arg(bundle)
            .args(["--verification-key", "pub.pem", "--signing-alg", "ES256"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start opa"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            if let Some(mut o) = child.0.stdout.take() {
                let _ = o.read_to_string(&mut err);
            }
            return Err(err);
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (code, body) = http_get(&format!("127.0.0.1:{port}"), path, &[]);
            if code == 200 {
                return Ok(body);
            }
        }
        assert!(Instant::now() < deadline, "opa neither served nor exited");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// meshguard's signatures and OPA's are one format: the real OPA verifies what `meshguard bundle
/// build` signed (and refuses it tampered), and meshguard verifies what `opa sign` signed (and
/// refuses it tampered), with a data.json whose structured hash needs sorted keys and Go's string
/// escaping (U+2028, <&> unescaped).
#[test]
fn opa_and_meshguard_verify_each_others_bundle_signatures() {
    let Some(opa) = opa() else {
        return;
    };
    let work = std::env::temp_dir().join(format!("meshguard-bundle-opa-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("dir");
    sh(
        &work,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "key.pem",
        ],
    );
    sh(
        &work,
        &[
            "openssl", "pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem",
        ],
    );
    let data = "{\"z\": 1, \"a\": {\"y\": [true, null, \"line\\u2028sep <&>\"]}}";

    // meshguard signs; OPA verifies and serves the data.
    let src = work.join("mg");
    policy_dir(&src, "\"GET\"");
    std::fs::write(src.join("configmaps/shop/rego-policy/data.json"), data).expect("write");
    assert!(build(&work, &src, &work.join("mg.tar.gz"), Some("key.pem"))
        .status
        .success());
    let served = opa_loads(
        &opa,
        &work,
        &work.join("mg.tar.gz"),
        "/v1/data/configmaps/shop/rego-policy/a",
    )
    .expect("OPA accepts meshguard's signature");
    // (OPA's HTTP answer escapes HTML characters itself.)
    assert!(served.contains("line\\u2028sep"), "{served}");
    let bytes = std::fs::read(work.join("mg.tar.gz")).expect("read");
    let tampered: Vec<(String, Vec<u8>)> = unpack(&bytes)
        .into_iter()
        .map(|(n, b)| {
            if n.ends_with("data.json") {
                (n, b"{\"z\": 2}".to_vec())
            } else {
                (n, b)
            }
        })
        .collect();
    std::fs::write(work.join("mg-tampered.tar.gz"), pack(&tampered)).expect("write");
    let err = opa_loads(&opa, &work, &work.join("mg-tampered.tar.gz"), "/v1/data")
        .expect_err("OPA refuses the tampered bundle");
    assert!(err.contains("data.json: digest mismatch"), "{err}");

    // OPA signs; meshguard verifies.
    let ob = work.join("ob");
    std::fs::create_dir_all(&ob).expect("dir");
    std::fs::write(ob.join("policy.rego"), REGO).expect("write");
    std::fs::write(ob.join("data.json"), data).expect("write");
    std::fs::write(
        ob.join(".manifest"),
        "{\"revision\": \"r7\", \"roots\": [\"\"]}",
    )
    .expect("write");
    let out = Command::new(&opa)
        .current_dir(&ob)
        .args([
            "sign",
            "--signing-key",
            "../key.pem",
            "--signing-alg",
            "ES256",
            "--bundle",
            ".",
        ])
        .output()
        .expect("opa sign");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<(String, Vec<u8>)> =
        [".signatures.json", ".manifest", "data.json", "policy.rego"]
            .iter()
            .map(|n| ((*n).to_owned(), std::fs::read(ob.join(n)).expect("read")))
            .collect();
    std::fs::write(work.join("opa.tar.gz"), pack(&entries)).expect("write");
    let inspect = |file: &str| {
        Command::new(BIN)
            .current_dir(&work)
            .args(["bundle", "inspect", file, "--verification-key", "pub.pem"])
            .output()
            .expect("inspect")
    };
    let ok = inspect("opa.tar.gz");
    let listing = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && listing.contains("signature: verified"),
        "{listing}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(listing.contains("revision: r7"), "{listing}");
    let mut bad = entries.clone();
    bad[2].1 = b"{\"z\": 1, \"a\": {}}".to_vec();
    std::fs::write(work.join("opa-tampered.tar.gz"), pack(&bad)).expect("write");
    let refused = inspect("opa-tampered.tar.gz");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("data.json: digest mismatch"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
