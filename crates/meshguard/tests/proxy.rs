//! `meshguard proxy` as users run it: SVIDs from `meshguard ca issue`, one YAML file per proxy,
//! two proxies in separate processes between a client and an app on loopback; WebSocket and
//! gRPC through them (real Python peers).

mod cmd;

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

/// Two `meshguard proxy` processes in `dir` (which holds `policies/`): SVIDs from
/// `meshguard ca`, a server proxy (workload backend/app=api, `inbound` port 8080 in front of
/// `app` with `protocol`, plus `server_extra` lines) and a client proxy whose outbound listener
/// originates mTLS to it.
struct Pair {
    _server: Kill,
    _client: Kill,
    inbound: u16,
    outbound: u16,
}

fn pair(dir: &Path, app: u16, protocol: &str, server_extra: &str) -> Pair {
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
    let (inbound, outbound) = (free_port(), free_port());
    std::fs::write(
        dir.join("server.yaml"),
        format!(
            "workload: {{namespace: backend, labels: {{app: api}}}}
identity:
  files: {{cert: server/svid.pem, key: server/svid.key, bundle: server/bundle.pem}}
policies: [policies]
{server_extra}inbound:
- name: api
  listen: 127.0.0.1:{inbound}
  port: 8080
  app: 127.0.0.1:{app}
  protocol: {protocol}
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
decisionLog: off
outbound:
- name: api
  listen: 127.0.0.1:{outbound}
  upstream: 127.0.0.1:{inbound}
  spiffeId: spiffe://cluster.local/ns/backend/sa/api
"
        ),
    )
    .expect("config");
    let server = start(&dir.join("server.yaml"), &dir.join("server.log"));
    let client = start(&dir.join("client.yaml"), &dir.join("client.log"));
    wait_for(inbound);
    wait_for(outbound);
    Pair {
        _server: server,
        _client: client,
        inbound,
        outbound,
    }
}

#[test]
fn two_proxy_processes_carry_an_allowed_call_and_refuse_plaintext() {
    let dir = std::env::temp_dir().join(format!("meshguard-cli-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).expect("dir");
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
    let admin = free_port();
    let p = pair(
        &dir,
        app(),
        "http",
        &format!("meshConfig: mesh.yaml\ndecisionLog: off\nadmin: 127.0.0.1:{admin}\n"),
    );
    let (inbound, outbound) = (p.inbound, p.outbound);

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
    // The proxy's admin port draws what it decided (README "The live service graph"), with the
    // decision log off: the mTLS caller's edge to the workload, two allowed and two denied.
    let admin = format!("127.0.0.1:{admin}");
    let (status, page) = cmd::http_get(&admin, "/graph", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("/graph.js"), "{page}");
    let (status, body) = cmd::http_get(&admin, "/graph.json", &[]);
    assert_eq!(status, 200, "{body}");
    let g: serde_json::Value = serde_json::from_str(&body).expect("graph json");
    let edge = g["edges"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["source"] == "frontend/web" && e["destination"] == "backend/api")
        })
        .unwrap_or_else(|| panic!("no frontend/web -> backend/api edge: {body}"));
    assert_eq!(
        (&edge["allowed"], &edge["denied"], &edge["mtls"]),
        (&2.into(), &2.into(), &4.into()),
        "{edge}"
    );
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

// The proxy speaks what apps speak, with real peers through two `meshguard proxy` processes:
// - WebSocket: Python's `websockets` server as the app and its client; the upgrade request is
//   decided once (an allowed path echoes both ways, a denied path never reaches the app), then
//   bytes are pumped; h2c smuggling and HTTP/1.0 upgrades are refused;
// - gRPC end to end: `meshguard serve`'s gRPC port (tonic, HTTP/2 only) as the app behind a
//   `protocol: grpc` listener, called by Python grpcio: server reflection (a bidirectional
//   stream) and a unary Check, with grpc-status trailers arriving; a method no policy allows is
//   PERMISSION_DENIED (HTTP 403 from the proxy, mapped by the gRPC client).
// Python (target/pyenv, from scripts/test.sh) with `websockets` and `grpcio-reflection`; under
// CI=true a missing one fails.

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    let ok = Command::new(&p)
        .args(["-c", "import websockets, grpc_reflection"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "target/pyenv lacks websockets or grpcio-reflection (run scripts/test.sh)"
    );
    eprintln!("skipped: target/pyenv lacks websockets or grpcio-reflection");
    None
}

const PROTOCOL_POLICIES: &str = "apiVersion: security.istio.io/v1
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
    to:
    - operation: {methods: [GET], paths: [/chat, /chat/*]}
    - operation:
        methods: [POST]
        paths: [/envoy.service.auth.v3.Authorization/Check, /grpc.reflection.v1alpha.ServerReflection/*]
";

/// A directory with the protocol tests' policies.
fn protocols_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("meshguard-protocols-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).expect("dir");
    std::fs::write(dir.join("policies/backend.yaml"), PROTOCOL_POLICIES).expect("policy");
    dir
}

/// Runs `script` with `args`; its stdout parsed as JSON.
fn run_py(py: &Path, script: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

const WS_SERVER: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send("echo " + ws.request.path + ": " + message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1])):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

const WS_CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

async def main():
    try:
        async with connect(sys.argv[1], open_timeout=10) as ws:
            got = []
            for m in ["one", "two", "x" * 100000]:
                await ws.send(m)
                got.append(await ws.recv())
            print(json.dumps({"status": 101, "got": [g[:40] for g in got], "sizes": [len(g) for g in got]}))
    except InvalidStatus as e:
        print(json.dumps({"status": e.response.status_code}))

asyncio.run(main())
"#;

#[test]
fn websockets_are_decided_at_the_upgrade_then_pumped() {
    let Some(py) = python() else { return };
    let app = free_port();
    let _app = Kill(
        Command::new(&py)
            .arg("-c")
            .arg(WS_SERVER)
            .arg(app.to_string())
            .spawn()
            .expect("websocket app"),
    );
    wait_for(app);
    let dir = protocols_dir("ws");
    let log_file = dir.join("decisions.jsonl");
    let p = pair(
        &dir,
        app,
        "http",
        &format!("decisionLog: {}\n", log_file.display()),
    );
    let url = |path: &str| format!("ws://127.0.0.1:{}{path}", p.outbound);

    let v = run_py(&py, WS_CLIENT, &[&url("/chat/room1")]);
    assert_eq!(v["status"], 101, "{v}");
    assert_eq!(v["got"][0], "echo /chat/room1: one", "{v}");
    assert_eq!(v["got"][1], "echo /chat/room1: two", "{v}");
    assert_eq!(v["sizes"][2], 100000 + "echo /chat/room1: ".len(), "{v}");

    // A path no policy allows: the upgrade is refused before the app sees it.
    let v = run_py(&py, WS_CLIENT, &[&url("/admin/socket")]);
    assert_eq!(v["status"], 403, "{v}");
    // h2c smuggling (an `Upgrade: h2c` request meant to turn the connection into an unchecked
    // HTTP/2 one): the upgrade is dropped, the request is decided and forwarded as plain
    // HTTP/1.1, so the app never switches. An upgrade over HTTP/1.0 is refused.
    let h2c = "GET /chat/x HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let status = raw_status(p.outbound, h2c);
    assert!(status != 101 && status != 0, "h2c upgrade -> {status}");
    // h2c hidden in a list of protocols: not honoured either.
    let listed = "GET /chat/x HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, close\r\nUpgrade: websocket, h2c\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let status = raw_status(p.outbound, listed);
    assert!(status != 101 && status != 0, "websocket, h2c -> {status}");
    let old =
        "GET /chat/x HTTP/1.0\r\nHost: api\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(raw_status(p.outbound, old), 501, "an upgrade over HTTP/1.0");

    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("/admin/socket") && l.contains("\"allowed\":false")),
        "the denied upgrade is in the decision log: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("/chat/room1") && l.contains("\"allowed\":true")),
        "{log}"
    );
}

/// The status code of the answer to one raw request (0: none).
fn raw_status(port: u16, raw: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(raw.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

const GRPC_CLIENT: &str = r#"
import json, sys
import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
out = {}
# Reflection is a bidirectional stream.
out["services"] = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
ident = lambda b: b
check = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check",
                            request_serializer=ident, response_deserializer=ident)
resp, call = check.with_call(b"", timeout=10)
out["check_bytes"] = len(resp)
out["check_code"] = call.code().name
other = channel.unary_unary("/envoy.service.auth.v2.Authorization/Check",
                            request_serializer=ident, response_deserializer=ident)
try:
    other(b"", timeout=10)
    out["other"] = "OK"
except grpc.RpcError as e:
    out["other"] = e.code().name
print(json.dumps(out))
"#;

#[test]
fn grpc_runs_end_to_end_over_http2_to_the_app() {
    let Some(py) = python() else { return };
    let grpc_app = cmd::serve([
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "off",
        "--admin-listen",
        "off",
        "--decision-log",
        "off",
    ]);
    let app: u16 = grpc_app
        .grpc
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no gRPC port in {}", grpc_app.banner));
    let dir = protocols_dir("grpc");
    let p = pair(&dir, app, "grpc", "decisionLog: off\n");
    let v = run_py(&py, GRPC_CLIENT, &[&format!("127.0.0.1:{}", p.outbound)]);
    assert!(
        v["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "envoy.service.auth.v3.Authorization")),
        "{v}"
    );
    assert_eq!(v["check_code"], "OK", "{v}");
    assert!(v["check_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["other"], "PERMISSION_DENIED", "{v}");
}
