//! End to end with a real nginx (`auth_request`) in front of a small upstream, meshguard's HTTP
//! mode deciding with the bundled example policies plus a JWT-protected demo workload. Every
//! process runs on loopback ports this test picks. Under CI=true a missing nginx fails the test.

mod snippets;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshguard");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A raw HTTP/1.1 request; returns (status, headers+body text).
fn http(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// An upstream that answers 200 with the request head it received (so the test sees headers).
fn start_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&got).to_string();
            let body = format!("UPSTREAM\n{head}");
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

fn wait_for(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, path, &[]).0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing answered 200 on 127.0.0.1:{port}{path}");
}

fn token(name: &str) -> String {
    let text = std::fs::read_to_string(format!(
        "{ROOT}/crates/meshguard-authn/tests/data/tokens.json"
    ))
    .expect("tokens");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["tokens"][name].as_str().expect("token").to_owned()
}

fn demo_policy(dir: &Path) {
    let jwks = std::fs::read_to_string(format!(
        "{ROOT}/crates/meshguard-authn/tests/data/jwks.json"
    ))
    .expect("jwks")
    .replace('\n', " ");
    std::fs::write(
        dir.join("demo.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: demo-jwt, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  jwtRules:
  - issuer: https://issuer.test
    jwks: '{jwks}'
    outputClaimToHeaders:
    - {{header: x-role, claim: role}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins-only, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: shop}}}}
  rules:
  - from:
    - source: {{requestPrincipals: [\"https://issuer.test/*\"]}}
    when:
    - key: request.auth.claims[role]
      values: [\"admin\"]
"
        ),
    )
    .expect("write demo policy");
}

fn auth_location(name: &str, mg: u16, workload: &str, extra: &str) -> String {
    format!(
        "    location = /{name} {{
      internal;
      proxy_pass http://127.0.0.1:{mg}/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length \"\";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Meshguard-Workload \"{workload}\";
{extra}    }}
"
    )
}

/// nginx in the foreground with `servers` as its `http {}` body and every path under `dir`.
fn start_nginx(nginx: &Path, dir: &Path, servers: &str) -> Kill {
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{servers}}}
",
        d = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    Kill(
        Command::new(nginx)
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &conf_path.display().to_string(),
                "-e",
                &dir.join("error.log").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    )
}

fn nginx_or_fail() -> Option<PathBuf> {
    let found = nginx_binary();
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("nginx is not installed; scripts/test.sh installs it (apt-get install nginx)");
        }
        eprintln!("SKIPPED: nginx is not installed (run scripts/test.sh, which installs it)");
    }
    found
}

/// The README's nginx snippet, as written (the app and meshguard's address moved to this
/// test's ports), in front of `meshguard serve --trust-forwarded-client-cert` on the bundled
/// examples: the answers the README gives.
#[test]
fn readme_nginx_snippet_gives_the_answers_the_readme_says() {
    let Some(nginx) = nginx_or_fail() else { return };
    let dir = std::env::temp_dir().join(format!("meshguard-nginx-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let upstream = start_upstream();
    let (mg_http, mg_admin, front) = (free_port(), free_port(), free_port());
    let _mg = Kill(
        Command::new(BIN)
            .args([
                "serve",
                "--trust-forwarded-client-cert",
                "--grpc-listen",
                "off",
            ])
            .args(["--decision-log", "off", "--log-level", "warn"])
            .args(["--http-listen", &format!("127.0.0.1:{mg_http}")])
            .args(["--admin-listen", &format!("127.0.0.1:{mg_admin}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start meshguard"),
    );
    wait_for(mg_admin, "/readyz");
    let snippet = snippets::block("nginx");
    assert!(snippet.contains("http://app") && snippet.contains("127.0.0.1:9192"));
    let as_written = snippet
        .replace("http://app", &format!("http://127.0.0.1:{upstream}"))
        .replace("127.0.0.1:9192", &format!("127.0.0.1:{mg_http}"));
    let no_identity = as_written.replace(
        "X-Forwarded-Client-Cert \"URI=spiffe://cluster.local/ns/production/sa/frontend\"",
        "X-Forwarded-Client-Cert \"\"",
    );
    assert_ne!(
        no_identity, as_written,
        "the snippet sets the caller's identity"
    );
    let front_none = free_port();
    let servers = format!(
        "server {{\n listen 127.0.0.1:{front};\n{as_written}}}\nserver {{\n listen 127.0.0.1:{front_none};\n{no_identity}}}\n"
    );
    let _nginx = start_nginx(&nginx, &dir, &servers);
    wait_for(front, "/api/v1/users");

    let (s, body) = http(front, "/api/v1/users", &[]);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("UPSTREAM"), "{body}");
    let (s, body) = http(front, "/api/admin", &[]);
    assert_eq!(s, 403, "{body}");
    assert!(!body.contains("UPSTREAM"));
    // A client's own identity header is replaced by the one nginx sets.
    let (s, _) = http(
        front_none,
        "/api/v1/users",
        &[(
            "X-Forwarded-Client-Cert",
            "URI=spiffe://cluster.local/ns/production/sa/frontend",
        )],
    );
    assert_eq!(
        s, 403,
        "no mesh identity under STRICT: every request is 403"
    );
    let (s, _) = http(front_none, "/api/v1/users", &[]);
    assert_eq!(s, 403);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nginx_auth_request_in_front_of_an_upstream() {
    let Some(nginx) = nginx_or_fail() else { return };
    let dir = std::env::temp_dir().join(format!("meshguard-nginx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).expect("mkdir");
    demo_policy(&dir.join("policies"));

    let upstream = start_upstream();
    let (mg_http, mg_admin, front_backend, front_shop) =
        (free_port(), free_port(), free_port(), free_port());
    let _mg = Kill(
        Command::new(BIN)
            .args([
                "serve",
                "--grpc-listen",
                "off",
                "--decision-log",
                "off",
                "--log-level",
                "warn",
                "--trust-forwarded-client-cert",
            ])
            .args([
                "--http-listen",
                &format!("127.0.0.1:{mg_http}"),
                "--admin-listen",
                &format!("127.0.0.1:{mg_admin}"),
            ])
            .args([
                "--policies",
                &format!("{ROOT}/examples/policies"),
                "--policies",
                &dir.join("policies").display().to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start meshguard"),
    );
    wait_for(mg_admin, "/readyz");

    let frontend_identity = "      proxy_set_header X-Forwarded-Client-Cert \"URI=spiffe://cluster.local/ns/production/sa/frontend\";\n";
    // The shop location clears any client-supplied identity header.
    let no_identity = "      proxy_set_header X-Forwarded-Client-Cert \"\";\n";
    let servers = format!(
        "  server {{
    listen 127.0.0.1:{front_backend};
    location / {{
      auth_request /_auth;
      proxy_pass http://127.0.0.1:{upstream};
    }}
{auth_backend}  }}
  server {{
    listen 127.0.0.1:{front_shop};
    location / {{
      auth_request /_auth;
      auth_request_set $role $upstream_http_x_role;
      proxy_set_header X-Role $role;
      proxy_pass http://127.0.0.1:{upstream};
    }}
{auth_shop}  }}
",
        auth_backend = auth_location(
            "_auth",
            mg_http,
            "production/app=backend",
            frontend_identity
        ),
        auth_shop = auth_location("_auth", mg_http, "demo/app=shop", no_identity),
    );
    let _nginx = start_nginx(&nginx, &dir, &servers);
    wait_for(front_backend, "/api/v1/users");

    // The seed policies through nginx: frontend -> backend API allowed, admin API denied,
    // including the `..` bypass attempt.
    let (s, body) = http(front_backend, "/api/v1/users?page=2", &[]);
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("UPSTREAM") && body.contains("GET /api/v1/users?page=2"),
        "{body}"
    );
    let (s, body) = http(front_backend, "/api/admin", &[]);
    assert_eq!(s, 403, "{body}");
    assert!(!body.contains("UPSTREAM"));
    let (s, _) = http(front_backend, "/api/v1/../admin", &[]);
    assert_eq!(s, 403);
    let (s, _) = http(front_backend, "/metrics", &[]);
    assert_eq!(s, 403, "not under /api/*: no ALLOW rule matches");

    // JWT: a valid token reaches the upstream with the claim header meshguard returned.
    let bearer = format!("Bearer {}", token("RS256"));
    let (s, body) = http(front_shop, "/cart", &[("Authorization", &bearer)]);
    assert_eq!(s, 200, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-role: admin"),
        "the upstream must see the header meshguard added: {body}"
    );
    // A forged token gets 401 with WWW-Authenticate; an expired one too.
    for bad in ["tampered_payload", "expired", "alg_none"] {
        let forged = format!("Bearer {}", token(bad));
        let (s, body) = http(front_shop, "/cart", &[("Authorization", &forged)]);
        assert_eq!(s, 401, "{bad}: {body}");
        assert!(
            body.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{bad}: {body}"
        );
        assert!(!body.contains("UPSTREAM"));
    }
    // A client that sends its own mesh identity header gets nowhere: nginx clears it.
    let (s, _) = http(
        front_shop,
        "/cart",
        &[(
            "X-Forwarded-Client-Cert",
            "URI=spiffe://cluster.local/ns/demo/sa/admin",
        )],
    );
    assert_eq!(s, 403);
    // No token: no request principal, and the ALLOW policy then denies with 403 (Istio's
    // semantics: a missing JWT is not a 401).
    let (s, _) = http(front_shop, "/cart", &[]);
    assert_eq!(s, 403);
    let _ = std::fs::remove_dir_all(&dir);
}
