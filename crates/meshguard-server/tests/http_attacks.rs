//! Attacks on HTTP forward-auth mode that once got through (issue 12), kept as tests: a client
//! that writes its own X-Forwarded-For line or an unparsable entry to dodge `remoteIpBlocks`, a
//! DENY rule on ports that forward-auth could not see, malformed workload names, and duplicate
//! lines of the headers that describe the original request.

mod common;

use std::time::Duration;

use common::*;

const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-doc-net, namespace: edge}
spec:
  action: DENY
  rules:
  - from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-port, namespace: edge}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: [\"9000\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: edge}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-only, namespace: vault}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/admin/sa/root]}}]
";

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A forward-auth request for `GET /` on `gw.example:8080` from the edge workload, with
    /// extra header lines (a name given twice is sent as two lines).
    async fn status(&self, extra: &[(&str, &str)]) -> (u16, String) {
        let mut r = self
            .http
            .get(format!("{}/auth", self.base))
            .header("x-original-uri", "/")
            .header("x-original-method", "GET");
        if !extra.iter().any(|(k, _)| *k == "x-meshguard-workload") {
            r = r.header("x-meshguard-workload", "edge/app=gw");
        }
        if !extra.iter().any(|(k, _)| *k == "x-original-host") {
            r = r.header("x-original-host", "gw.example:8080");
        }
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

async fn setup(tag: &str) -> (Running, Client) {
    setup_with(tag, false).await
}

async fn setup_with(tag: &str, trust_xfcc: bool) -> (Running, Client) {
    let dir = std::env::temp_dir().join(format!(
        "meshguard-http-attacks-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("edge.yaml"), POLICIES).expect("write");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.trust_forwarded_client_cert = trust_xfcc
    })
    .await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    (
        srv,
        Client {
            base,
            http: reqwest::Client::new(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_cannot_be_dodged() {
    let (srv, c) = setup("xff").await;
    // Baseline: a client outside the blocked network passes, one inside is denied.
    assert_eq!(
        c.status(&[("x-forwarded-for", "198.51.100.7")]).await.0,
        200
    );
    assert_eq!(c.status(&[("x-forwarded-for", "203.0.113.5")]).await.0, 403);
    // The client writes the first line, the proxy appends the real address as a second line:
    // both lines are one list, read from the right.
    assert_eq!(
        c.status(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "203.0.113.5")
        ])
        .await
        .0,
        403,
        "a second X-Forwarded-For line is read"
    );
    // An unparsable right-most entry is never skipped (that would let the client's entry to its
    // left decide): the request is refused.
    for bad in [
        "203.0.113.5:4711",
        "[203.0.113.5]",
        "203.0.113.5 junk",
        "unknown",
        "",
    ] {
        let xff = format!("198.51.100.7, {bad}");
        let (status, body) = c.status(&[("x-forwarded-for", &xff)]).await;
        assert_eq!(status, 403, "X-Forwarded-For `{xff}` -> {status} {body}");
    }
    // IPv4-mapped IPv6 is the IPv4 address.
    assert_eq!(
        c.status(&[("x-forwarded-for", "::ffff:203.0.113.5")])
            .await
            .0,
        403
    );
    // Our own proxies at the right are skipped; the client to their left decides.
    assert_eq!(
        c.status(&[("x-forwarded-for", "203.0.113.5, 127.0.0.1")])
            .await
            .0,
        403
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_on_ports_are_not_skipped_in_forward_auth() {
    let (srv, c) = setup("port").await;
    // The port comes from X-Forwarded-Port, or from the Host.
    assert_eq!(c.status(&[("x-forwarded-port", "8080")]).await.0, 200);
    assert_eq!(c.status(&[("x-forwarded-port", "9000")]).await.0, 403);
    assert_eq!(
        c.status(&[("x-original-host", "gw.example:9000")]).await.0,
        403
    );
    assert_eq!(
        c.status(&[("x-original-host", "gw.example:8080")]).await.0,
        200
    );
    // Unknown port: the DENY rule that tests it denies rather than being skipped.
    assert_eq!(c.status(&[("x-original-host", "gw.example")]).await.0, 403);
    // A port that is not a number, or two X-Forwarded-Port lines, are refused.
    assert_eq!(c.status(&[("x-forwarded-port", "80abc")]).await.0, 403);
    assert_eq!(
        c.status(&[("x-forwarded-port", "8080"), ("x-forwarded-port", "9000")])
            .await
            .0,
        403
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_workloads_and_duplicate_request_lines_are_refused() {
    let (srv, c) = setup("wl").await;
    assert_eq!(c.status(&[]).await.0, 200);
    for bad in [
        "garbage!",
        "Edge",
        "edge/app",
        "edge/app=gw,version",
        "edge/",
        "/app=gw",
    ] {
        let (status, _) = c.status(&[("x-meshguard-workload", bad)]).await;
        assert_eq!(status, 403, "X-Meshguard-Workload `{bad}`");
    }
    // Two lines of a header that describes the original request: which one the proxy wrote is
    // unknowable, so neither is used.
    for (name, a, b) in [
        ("x-original-uri", "/", "/admin"),
        ("x-original-method", "GET", "DELETE"),
        ("x-original-host", "gw.example:8080", "gw.example:9000"),
        ("x-meshguard-workload", "edge/app=gw", "other/app=gw"),
    ] {
        let (status, _) = c.status(&[(name, a), (name, b)]).await;
        assert_eq!(status, 403, "two `{name}` lines");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_cannot_be_forged_with_quotes_or_duplicates() {
    let (srv, c) = setup_with("xfcc", true).await;
    let wl = ("x-meshguard-workload", "vault/app=v");
    let root =
        "By=spiffe://cluster.local/ns/vault/sa/v;URI=spiffe://cluster.local/ns/admin/sa/root";
    assert_eq!(
        c.status(&[wl, ("x-forwarded-client-cert", root)]).await.0,
        200,
        "the real caller"
    );
    let web = "URI=spiffe://cluster.local/ns/web/sa/web";
    assert_eq!(
        c.status(&[wl, ("x-forwarded-client-cert", web)]).await.0,
        403
    );
    // A quoted Subject that holds `,URI=...` (split on commas it looked like a nearer element).
    let quoted = "By=spiffe://x;URI=spiffe://cluster.local/ns/web/sa/web;Subject=\"CN=x,URI=spiffe://cluster.local/ns/admin/sa/root\"";
    assert_eq!(
        c.status(&[wl, ("x-forwarded-client-cert", quoted)]).await.0,
        403,
        "quoted Subject"
    );
    // Two URI fields, two header lines, an unterminated quote: refused.
    let two =
        "URI=spiffe://cluster.local/ns/admin/sa/root;URI=spiffe://cluster.local/ns/web/sa/web";
    assert_eq!(
        c.status(&[wl, ("x-forwarded-client-cert", two)]).await.0,
        403,
        "two URIs"
    );
    assert_eq!(
        c.status(&[
            wl,
            ("x-forwarded-client-cert", web),
            ("x-forwarded-client-cert", root)
        ])
        .await
        .0,
        403,
        "two XFCC lines"
    );
    let open = "Subject=\"CN=x;URI=spiffe://cluster.local/ns/admin/sa/root";
    assert_eq!(
        c.status(&[wl, ("x-forwarded-client-cert", open)]).await.0,
        403,
        "unterminated quote"
    );
    srv.stop().await;
}

/// Credentials in a jwksUri never show in /config, /metrics, /readyz or the refusal a client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_credentials_are_never_shown() {
    let dir = std::env::temp_dir().join(format!(
        "meshguard-http-attacks-jwks-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("jwt.yaml"),
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: edge}
spec:
  jwtRules:
  - issuer: https://idp.test
    jwksUri: http://operator:s3cretpw@127.0.0.1:9/keys?api_key=t0psecret
",
    )
    .expect("write");
    let srv = start(&dir, Duration::ZERO).await;
    let base = format!("http://{}", srv.bound.http.expect("http"));
    let admin = format!("http://{}", srv.bound.admin.expect("admin"));
    // A token makes meshguard try the (unreachable) JWKS, so the error paths run too.
    let r = reqwest::Client::new()
        .get(format!("{base}/auth"))
        .header("x-original-uri", "/")
        .header("x-original-method", "GET")
        .header("x-meshguard-workload", "edge/app=gw")
        .header(
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lkcC50ZXN0In0.c2ln",
        )
        .send()
        .await
        .expect("request");
    let head = format!("{:?}", r.headers());
    let refusal = format!("{head} {}", r.text().await.unwrap_or_default());
    let mut seen = refusal;
    for path in ["/config", "/metrics", "/readyz"] {
        let body = reqwest::get(format!("{admin}{path}"))
            .await
            .expect("admin")
            .text()
            .await
            .unwrap_or_default();
        seen.push_str(&body);
    }
    assert!(
        seen.contains("127.0.0.1:9/keys"),
        "the JWKS source is still named: {seen}"
    );
    assert!(
        !seen.contains("s3cretpw") && !seen.contains("t0psecret"),
        "credentials leaked: {seen}"
    );
    srv.stop().await;
}

/// Idle and slow clients cannot hold the HTTP or admin listener: headers must arrive within the
/// header-read timeout, and beyond the connection limit new connections are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_bounded() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!(
        "meshguard-http-attacks-slow-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("edge.yaml"), POLICIES).expect("write");
    let srv = start_with(&dir, Duration::ZERO, |c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.max_connections = 4;
    })
    .await;
    let http = srv.bound.http.expect("http");
    let admin = srv.bound.admin.expect("admin");
    // Closed by the server (read returns 0 or an error) within `within`.
    let closed_within = |addr: std::net::SocketAddr, send: &'static [u8], within: Duration| {
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(send).expect("write");
            s.set_read_timeout(Some(within)).expect("timeout");
            let mut b = [0u8; 64];
            matches!(s.read(&mut b), Ok(0)) || matches!(s.read(&mut b), Ok(0))
        })
        .join()
        .expect("thread")
    };
    for addr in [http, admin] {
        assert!(
            closed_within(addr, b"", Duration::from_secs(3)),
            "an idle connection is closed"
        );
        assert!(
            closed_within(
                addr,
                b"GET / HTTP/1.1\r\nHost: a\r\nx-slow",
                Duration::from_secs(3)
            ),
            "headers that never finish are cut off"
        );
    }
    // Fill the HTTP listener's four slots with connections that keep sending header bytes slowly
    // enough to stay open, then a fifth is closed at once.
    let holders: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(http).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        closed_within(
            http,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Duration::from_millis(250)
        ),
        "over the limit: closed at once, not queued"
    );
    drop(holders);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Slots free again: an ordinary forward-auth request is answered.
    let c = Client {
        base: format!("http://{http}"),
        http: reqwest::Client::new(),
    };
    assert_eq!(c.status(&[]).await.0, 200);
    srv.stop().await;
}
