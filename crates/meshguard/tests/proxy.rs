//! `meshguard proxy` as users run it: SVIDs from `meshguard ca issue`, one YAML file per proxy,
//! two proxies in separate processes between a client and an app on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshguard"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn mg(args: &[&str]) {
    let o = Command::new(bin())
        .args(args)
        .output()
        .expect("run meshguard");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A one-thread HTTP app: answers 200 with the XFCC header it received.
fn app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let xfcc = req
                .lines()
                .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
                .unwrap_or("none")
                .to_owned();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xfcc}",
                xfcc.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    port
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
}

fn start(config: &Path, log: &Path) -> Kill {
    Kill(
        Command::new(bin())
            .args(["proxy", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("start proxy"),
    )
}

fn wait_for(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_proxy_processes_carry_an_allowed_call_and_refuse_plaintext() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).expect("dir");
    let d = |p: &str| dir.join(p).to_str().expect("utf8").to_owned();
    mg(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--dir",
        &d("ca"),
    ]);
    for (who, out) in [
        ("ns/backend/sa/api", "server"),
        ("ns/frontend/sa/web", "client"),
    ] {
        mg(&[
            "ca",
            "issue",
            "--dir",
            &d("ca"),
            "--spiffe-id",
            &format!("spiffe://cluster.local/{who}"),
            "--out",
            &d(out),
        ]);
    }
    std::fs::write(
        dir.join("policies/backend.yaml"),
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: backend}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: backend}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
    to: [{operation: {methods: [GET], paths: [/api/*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: backend}
spec:
  selector: {matchLabels: {app: api}}
  action: CUSTOM
  provider: {name: authz}
  rules: [{to: [{operation: {paths: [/api/ext]}}]}]
",
    )
    .expect("policy");
    let (app_port, inbound, outbound) = (app(), free_port(), free_port());
    std::fs::write(
        dir.join("server.yaml"),
        format!(
            "workload: {{namespace: backend, labels: {{app: api}}}}
identity:
  files: {{cert: server/svid.pem, key: server/svid.key, bundle: server/bundle.pem}}
policies: [policies]
meshConfig: mesh.yaml
decisionLog: off
inbound:
- name: api
  listen: 127.0.0.1:{inbound}
  port: 8080
  app: 127.0.0.1:{app_port}
  protocol: http
"
        ),
    )
    .expect("config");
    std::fs::write(
        dir.join("client.yaml"),
        format!(
            "workload: {{namespace: frontend, labels: {{app: web}}}}
identity:
  files: {{cert: client/svid.pem, key: client/svid.key, bundle: client/bundle.pem}}
policies: [policies]
outbound:
- name: api
  listen: 127.0.0.1:{outbound}
  upstream: 127.0.0.1:{inbound}
  spiffeId: spiffe://cluster.local/ns/backend/sa/api
"
        ),
    )
    .expect("config");
    // The CUSTOM policy's external authorizer (an envoyExtAuthzHttp provider of the mesh
    // config): allows when the request carries `x-allow: yes`.
    let authz = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let authz_port = authz.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut c in authz.incoming().map_while(Result::ok) {
            let mut buf = vec![0u8; 8192];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let answer: &[u8] = if req.contains("\r\nx-allow: yes\r\n") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\nconnection: close\r\n\r\nno ext"
            };
            let _ = c.write_all(answer);
        }
    });
    std::fs::write(
        dir.join("mesh.yaml"),
        format!("extensionProviders:\n- name: authz\n  envoyExtAuthzHttp: {{service: 127.0.0.1, port: {authz_port}, includeRequestHeadersInCheck: [x-allow]}}\n"),
    )
    .expect("mesh config");
    let _server = start(&dir.join("server.yaml"), &dir.join("server.log"));
    let _client = start(&dir.join("client.yaml"), &dir.join("client.log"));
    wait_for(inbound);
    wait_for(outbound);

    let (status, body) = get(outbound, "/api/orders").expect("answer");
    assert_eq!(
        status,
        200,
        "{}",
        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    );
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/frontend/sa/web"),
        "{body}"
    );
    assert_eq!(get(outbound, "/admin").map(|r| r.0), Some(403));
    // CUSTOM through the proxy command: the mesh config's provider is called for real.
    let ext = |allow: bool| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", outbound)).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .ok();
        let extra = if allow { "x-allow: yes\r\n" } else { "" };
        let req = format!("GET /api/ext HTTP/1.1\r\nHost: api\r\n{extra}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let allowed = ext(true);
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let denied = ext(false);
    assert!(
        denied.starts_with("HTTP/1.1 403") && denied.ends_with("no ext"),
        "the provider's answer reaches the client: {denied}"
    );
    // Plaintext straight to the server proxy: STRICT closes it.
    assert_eq!(get(inbound, "/api/orders"), None);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    assert!(log.contains("inbound api"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_proxy_config_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-proxy-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("proxy.yaml");
    std::fs::write(
        &cfg,
        "workload: {namespace: a}\nidentity: {workloadApi: unix:/x.sock}\ninbound:\n- listen: 127.0.0.1:1\n  port: 80\n  app: 127.0.0.1:2\n  protocl: tcp\n",
    )
    .expect("write");
    let o = Command::new(bin())
        .args(["proxy", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("proxy.yaml:7") && err.contains("protocl"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
