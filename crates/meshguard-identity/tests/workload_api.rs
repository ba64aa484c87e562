//! The SPIFFE Workload API over a Unix socket, through a real gRPC client: the security header,
//! kernel attestation, the X.509-SVID stream and its rotation pushes, bundles, and refusals.

mod common;

use std::time::Duration;

use common::{client, entry, my_uid, start, with_header};
use meshguard_identity::agent::pb::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use meshguard_identity::SpiffeId;
use x509_parser::prelude::*;

fn me() -> SpiffeId {
    SpiffeId::istio("cluster.local", "test", "me").expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_stream_header_attestation_and_rotation() {
    let t = start("main", vec![entry(&me(), my_uid())], Duration::from_secs(4)).await;
    let (agent, mut c) = (t.agent.clone(), client(t.sock.clone()).await);

    // No security header: InvalidArgument, as the standard requires.
    let Err(e) = c
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
    else {
        panic!("must be refused")
    };
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let mut stream = c
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("rpc").expect("first message");
    assert_eq!(first.svids.len(), 1);
    let s = &first.svids[0];
    assert_eq!(s.spiffe_id, "spiffe://cluster.local/ns/test/sa/me");
    assert!(!s.x509_svid_key.is_empty() && !s.bundle.is_empty());
    let (_, leaf) = parse_x509_certificate(&s.x509_svid).expect("leaf DER first");
    let old_serial = leaf.raw_serial().to_vec();
    let old_not_after = leaf.validity().not_after.timestamp();

    // Rotation at half-life (2 s of 4 s): the stream pushes a new SVID before the old expires.
    agent.spawn_rotation(Duration::from_millis(200));
    let next = tokio::time::timeout(Duration::from_secs(4), stream.message())
        .await
        .expect("pushed in time")
        .expect("rpc")
        .expect("message");
    let (_, leaf2) = parse_x509_certificate(&next.svids[0].x509_svid).expect("leaf");
    assert_ne!(
        leaf2.raw_serial(),
        old_serial.as_slice(),
        "a new certificate"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(now < old_not_after, "pushed before the old SVID expired");

    let mut b = c
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .expect("bundles")
        .into_inner();
    let bundles = b.message().await.expect("rpc").expect("message");
    assert!(bundles.bundles.contains_key("spiffe://cluster.local"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_registration_gets_no_identity() {
    // Entries only for another uid: this process matches none.
    let t = start(
        "other",
        vec![entry(&me(), my_uid().wrapping_add(4242))],
        Duration::from_secs(3600),
    )
    .await;
    let mut c = client(t.sock.clone()).await;
    let Err(e) = c.fetch_x509svid(with_header(X509svidRequest {})).await else {
        panic!("must be refused")
    };
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_bundles_and_validation() {
    let other = SpiffeId::istio("cluster.local", "test", "someone-else").expect("id");
    let t = start(
        "jwt",
        vec![entry(&me(), my_uid())],
        Duration::from_secs(3600),
    )
    .await;
    let mut c = client(t.sock.clone()).await;

    // No header: InvalidArgument; no audience: InvalidArgument.
    let e = c
        .fetch_jwtsvid(tonic::Request::new(JwtsvidRequest {
            audience: vec!["backend".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("no header");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .expect_err("no audience");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Asking for an identity the caller is not registered for: PermissionDenied, never a token.
    let e = c
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["backend".into()],
            spiffe_id: other.to_string(),
        }))
        .await
        .expect_err("not entitled");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    let resp = c
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["backend".into(), "metrics".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("jwt-svid")
        .into_inner();
    assert_eq!(resp.svids.len(), 1);
    assert_eq!(resp.svids[0].spiffe_id, me().to_string());
    let token = resp.svids[0].svid.clone();

    // The JWT bundle: a JWK Set for the trust domain whose key has use jwt-svid and a kid.
    let mut b = c
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .expect("bundles")
        .into_inner();
    let msg = b.message().await.expect("rpc").expect("message");
    let jwks: serde_json::Value =
        serde_json::from_slice(&msg.bundles["spiffe://cluster.local"]).expect("JWKS json");
    let key = &jwks["keys"][0];
    assert_eq!(key["use"], "jwt-svid");
    assert_eq!(key["kty"], "EC");

    // An independent verifier (jsonwebtoken) accepts the token with that bundle key.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).expect("jwk");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["metrics"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key"),
        &v,
    )
    .expect("verifies with the bundle");
    assert_eq!(data.claims["sub"], me().to_string());
    let exp = data.claims["exp"].as_u64().expect("exp");
    let iat = data.claims["iat"].as_u64().expect("iat");
    assert_eq!(exp - iat, 300, "default JWT-SVID lifetime is 5 minutes");

    // ValidateJWTSVID: right audience -> the SPIFFE ID and claims; wrong audience or a
    // tampered token -> InvalidArgument.
    let ok = c
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "backend".into(),
            svid: token.clone(),
        }))
        .await
        .expect("valid")
        .into_inner();
    assert_eq!(ok.spiffe_id, me().to_string());
    let claims = ok.claims.expect("claims");
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("aud"));
    let e = c
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "nobody".into(),
            svid: token.clone(),
        }))
        .await
        .expect_err("wrong audience");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = serde_json::json!({"sub": other.to_string(), "aud": ["backend"], "exp": exp});
        b.encode(forged.to_string())
    };
    let e = c
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "backend".into(),
            svid: parts.join("."),
        }))
        .await
        .expect_err("forged claims");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("signature"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_entries_reach_open_streams() {
    let second = SpiffeId::istio("cluster.local", "test", "second").expect("id");
    let t = start(
        "reload",
        vec![entry(&me(), my_uid())],
        Duration::from_secs(3600),
    )
    .await;
    let mut c = client(t.sock.clone()).await;
    let mut stream = c
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("rpc").expect("message");
    assert_eq!(first.svids.len(), 1);

    // A second identity for the same caller: the stream pushes both.
    t.agent
        .set_entries(vec![entry(&me(), my_uid()), entry(&second, my_uid())])
        .expect("entries");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("pushed")
        .expect("rpc")
        .expect("message");
    let ids: Vec<&str> = next.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [me().to_string(), second.to_string()]);

    // Every entry for this caller removed: the stream ends with PermissionDenied.
    t.agent
        .set_entries(vec![entry(&me(), my_uid().wrapping_add(1))])
        .expect("entries");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("pushed");
    let e = end.expect_err("identity revoked");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

/// Run in a child process by `a_process_under_another_uid_is_refused`: fetches an X.509-SVID
/// from the socket in MESHGUARD_PROBE_SOCKET and prints the outcome.
#[tokio::test]
#[ignore = "helper run in a child process under another uid"]
async fn probe_child() {
    let sock = std::env::var("MESHGUARD_PROBE_SOCKET").expect("MESHGUARD_PROBE_SOCKET");
    let mut c = client(sock.into()).await;
    match c.fetch_x509svid(with_header(X509svidRequest {})).await {
        Ok(mut s) => match s.get_mut().message().await {
            Ok(Some(m)) => println!("PROBE ok {}", m.svids[0].spiffe_id),
            Ok(None) => println!("PROBE empty"),
            Err(e) => println!("PROBE error {:?}", e.code()),
        },
        Err(e) => println!("PROBE error {:?}", e.code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_under_another_uid_is_refused() {
    // A separate process, identified by the kernel. As root, the child runs as uid 65534
    // (setpriv); otherwise it runs as this user while the entries name only root.
    let nobody = SpiffeId::istio("cluster.local", "test", "nobody").expect("id");
    let root = my_uid() == 0;
    let (registered, child_uid) = if root { (0, 65534) } else { (0, my_uid()) };
    let t = start(
        "uid",
        vec![entry(&me(), registered)],
        Duration::from_secs(3600),
    )
    .await;
    // The child binary must be reachable by the other uid: copy it next to the socket.
    let exe = t.dir.join("probe");
    std::fs::copy(std::env::current_exe().expect("exe"), &exe).expect("copy test binary");
    let run = move |exe: std::path::PathBuf, sock: std::path::PathBuf| {
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                format!("--reuid={child_uid}"),
                format!("--regid={child_uid}"),
                "--clear-groups".into(),
            ])
            .arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        cmd.args(["--ignored", "--exact", "probe_child", "--nocapture"])
            .env("MESHGUARD_PROBE_SOCKET", sock);
        let out = cmd
            .output()
            .expect("run the probe (setpriv is in util-linux)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("PROBE ").map(str::to_owned))
            .unwrap_or_else(|| {
                panic!(
                    "probe printed nothing: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let (e, s) = (exe.clone(), t.sock.clone());
    let got = tokio::task::spawn_blocking(move || run(e, s))
        .await
        .expect("join");
    assert_eq!(got, "error PermissionDenied");

    // Registering the child's uid gives it its own identity, and only that one.
    t.agent
        .set_entries(vec![entry(&me(), registered), entry(&nobody, child_uid)])
        .expect("entries");
    if child_uid != registered {
        let (e, s) = (exe.clone(), t.sock.clone());
        let got = tokio::task::spawn_blocking(move || run(e, s))
            .await
            .expect("join");
        assert_eq!(got, format!("ok {nobody}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_outside_the_trust_domain_are_refused() {
    let t = start(
        "td",
        vec![entry(&me(), my_uid())],
        Duration::from_secs(3600),
    )
    .await;
    let foreign = SpiffeId::parse_workload("spiffe://other.td/ns/x/sa/y").expect("id");
    let e = t
        .agent
        .set_entries(vec![entry(&foreign, my_uid())])
        .expect_err("foreign trust domain");
    assert!(e.to_string().contains("other.td"), "{e}");
    // The previous entries stay.
    let mut c = client(t.sock.clone()).await;
    let mut s = c
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let m = s.message().await.expect("rpc").expect("message");
    assert_eq!(m.svids[0].spiffe_id, me().to_string());
}
