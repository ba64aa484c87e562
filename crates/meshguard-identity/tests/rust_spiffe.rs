//! A second real SPIFFE client, the Rust `spiffe` crate (maxlambrecht/rust-spiffe, the one Rust
//! workloads use), talks to the agent unmodified: X.509-SVID, X.509 bundles, a JWT-SVID whose
//! kid is in the JWT bundle, validation by the agent, and a rotation seen on its stream.

mod common;

use std::time::Duration;

use common::{entry, my_uid, start};
use meshguard_identity::SpiffeId;
use spiffe::{TrustDomain, WorkloadApiClient};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_spiffe_client_fetches_validates_and_sees_rotation() {
    let id = SpiffeId::istio("cluster.local", "rust", "client").expect("id");
    let t = start(
        "rustspiffe",
        vec![entry(&id, my_uid())],
        Duration::from_secs(3600),
    )
    .await;
    let c = WorkloadApiClient::connect_to(format!("unix:{}", t.sock.display()))
        .await
        .expect("connect");
    let td = TrustDomain::new("cluster.local").expect("td");

    let svid = c.fetch_x509_svid().await.expect("x509-svid");
    assert_eq!(svid.spiffe_id().to_string(), id.to_string());
    assert_eq!(svid.cert_chain().len(), 1);
    let bundles = c.fetch_x509_bundles().await.expect("bundles");
    let bundle = bundles.get(&td).expect("bundle for cluster.local");
    assert_eq!(bundle.authorities().len(), 1);
    let root_pem = std::fs::read_to_string(t.dir.join("ca/bundle.crt")).expect("bundle file");
    let root_der = meshguard_identity::ca::pem_to_der(&root_pem);
    assert_eq!(bundle.authorities()[0].as_bytes(), root_der[0].as_slice());

    let jwt = c.fetch_jwt_svid(["backend"], None).await.expect("jwt-svid");
    assert_eq!(jwt.spiffe_id().to_string(), id.to_string());
    assert_eq!(jwt.audience(), ["backend".to_string()]);
    let jwt_bundles = c.fetch_jwt_bundles().await.expect("jwt bundles");
    let jb = jwt_bundles.get(&td).expect("jwt bundle for cluster.local");
    assert!(
        jb.find_jwt_authority(jwt.key_id()).is_some(),
        "the token's kid is in the bundle"
    );
    let validated = c
        .validate_jwt_token("backend", jwt.token())
        .await
        .expect("agent validates its own token");
    assert_eq!(validated.spiffe_id().to_string(), id.to_string());
    assert!(c.validate_jwt_token("other", jwt.token()).await.is_err());

    // A forced rotation reaches the client's stream with a new certificate.
    let mut stream = c.stream_x509_svids().await.expect("stream");
    let first = stream.next().await.expect("first").expect("svid");
    t.agent.rotate_all();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("pushed")
        .expect("message")
        .expect("svid");
    assert_ne!(next.leaf().as_bytes(), first.leaf().as_bytes());
    assert_eq!(next.spiffe_id().to_string(), id.to_string());
}
