//! Time from a rotation to every connected Workload API stream holding the new X.509-SVID.
//!
//! Starts an agent on a Unix socket, opens N FetchX509SVID streams (one connection each, as N
//! workloads would), waits for every first message, then forces a rotation and records when
//! each stream receives the new certificate. Repeats for several rounds.
//!
//! Run: cargo run --release -p meshguard-identity --example rotation_fanout -- [streams] [rounds]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use meshguard_identity::agent::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshguard_identity::agent::pb::X509svidRequest;
use meshguard_identity::agent::{Agent, Entry, Selector};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use tonic::transport::Endpoint;

fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("meshguard-fanout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::init(&dir.join("ca"), "cluster.local", KeyType::EcdsaP256)?;
    let id = SpiffeId::istio("cluster.local", "bench", "workload")?;
    let agent = Agent::new(
        ca,
        vec![Entry {
            spiffe_id: id,
            selectors: vec![Selector::Uid(uid())],
        }],
        Duration::from_secs(3600),
    )?;
    let sock = dir.join("agent.sock");
    let (a, s) = (agent.clone(), sock.clone());
    tokio::spawn(async move {
        let _ = a.serve_uds(&s, std::future::pending()).await;
    });
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // One connection and stream per simulated workload.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, Vec<u8>)>();
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let opened = Instant::now();
    for i in 0..n {
        let (sock, tx, ready) = (sock.clone(), tx.clone(), ready.clone());
        tokio::spawn(async move {
            let ch = Endpoint::try_from("http://localhost")?
                .connect_with_connector(tower::service_fn(move |_| {
                    let s = sock.clone();
                    async move { tokio::net::UnixStream::connect(s).await.map(TokioIo::new) }
                }))
                .await?;
            let mut c = SpiffeWorkloadApiClient::new(ch);
            let mut r = tonic::Request::new(X509svidRequest {});
            r.metadata_mut()
                .insert("workload.spiffe.io", "true".parse()?);
            let mut stream = c.fetch_x509svid(r).await?.into_inner();
            stream.message().await?;
            ready.wait().await;
            while let Some(m) = stream.message().await? {
                let leaf = m
                    .svids
                    .first()
                    .map(|s| s.x509_svid.clone())
                    .unwrap_or_default();
                let _ = tx.send((i, Instant::now(), leaf));
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    ready.wait().await;
    println!(
        "{n} streams connected and holding their first SVID after {:?}",
        opened.elapsed()
    );
    println!("round  all_streams_updated  p50_stream  p99_stream  reissue_only");
    let mut totals = Vec::new();
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        agent.rotate_all();
        let reissue = t0.elapsed();
        let mut lat = Vec::with_capacity(n);
        let mut seen = vec![false; n];
        while lat.len() < n {
            let (i, at, _leaf) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .ok_or("streams closed")?;
            if !seen[i] {
                seen[i] = true;
                lat.push(at - t0);
            }
        }
        let all = *lat.iter().max().unwrap_or(&Duration::ZERO);
        totals.push(all);
        println!(
            "{round:>5}  {:>19.2?}  {:>10.2?}  {:>10.2?}  {:>12.2?}",
            all,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            reissue
        );
    }
    println!(
        "median over rounds: every one of {n} streams updated {:.2?} after the rotation",
        pct(&mut totals, 0.5)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
