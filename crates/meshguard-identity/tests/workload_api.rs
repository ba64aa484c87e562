//! The SPIFFE Workload API over a Unix socket, through a real gRPC client: the security header,
//! kernel attestation, the X.509-SVID stream and its rotation pushes, bundles, and refusals.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshguard_identity::agent::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshguard_identity::agent::pb::{X509BundlesRequest, X509svidRequest};
use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use tonic::transport::{Channel, Endpoint};
use x509_parser::prelude::*;

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("uid")
}

async fn start(
    tag: &str,
    entries_uid: u32,
    ttl: Duration,
) -> (PathBuf, Agent, tokio::sync::oneshot::Sender<()>) {
    let dir = std::env::temp_dir().join(format!("meshguard-agent-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256).expect("ca");
    let entries = vec![Entry {
        spiffe_id: SpiffeId::istio("cluster.local", "test", "me").expect("id"),
        selectors: vec![Selector::Uid(entries_uid)],
    }];
    let agent = Agent::new(ca, entries, ttl);
    let sock = dir.join("agent.sock");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (a, s) = (agent.clone(), sock.clone());
    tokio::spawn(async move {
        a.serve_uds(&s, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (sock, agent, tx)
}

async fn client(sock: PathBuf) -> SpiffeWorkloadApiClient<Channel> {
    let ch = Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let s = sock.clone();
            async move { tokio::net::UnixStream::connect(s).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect");
    SpiffeWorkloadApiClient::new(ch)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("header"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_stream_header_attestation_and_rotation() {
    let (sock, agent, stop) = start("main", my_uid(), Duration::from_secs(4)).await;
    let mut c = client(sock.clone()).await;

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
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_registration_gets_no_identity() {
    // Entries only for another uid: this process matches none.
    let (sock, _agent, stop) = start(
        "other",
        my_uid().wrapping_add(4242),
        Duration::from_secs(3600),
    )
    .await;
    let mut c = client(sock).await;
    let Err(e) = c.fetch_x509svid(with_header(X509svidRequest {})).await else {
        panic!("must be refused")
    };
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let _ = stop.send(());
}
