//! The mTLS proxy pair against its baselines, all in one run and one process (2 worker
//! threads shared by clients, servers and proxies, as on the project's 2-core machines):
//!
//! - bulk TCP throughput: direct, through two plaintext forwarding hops (the floor for any
//!   two-proxy design), and app -> client proxy -> (mTLS) -> server proxy -> app;
//! - CPU seconds per GB moved (process CPU time, minus the direct run's, so the client and sink
//!   cost is not counted against the proxies);
//! - small HTTP/1.1 requests: closed-loop requests per second and latency, and latency at a
//!   paced 1,000 requests per second (the load of Istio's published latency figures);
//! - new connections per second (connect, one-byte round trip, close);
//! - memory per idle established connection (RSS growth over 1,000 connections).
//!
//! Run: cargo run --release -p meshguard-proxy --example mesh_bench [-- --gib 2 --secs 5]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use meshguard_engine::{State, Workload};
use meshguard_identity::{Ca, KeyType, SpiffeId};
use meshguard_policy::MeshConfig;
use meshguard_proxy::{Inbound, Outbound, Protocol, ProxyConfig, SvidMaterial, SvidStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bench}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/bench/sa/client]}}]
";

fn cpu_secs() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn listener() -> Result<(TcpListener, SocketAddr), Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Reads and discards; counts bytes.
async fn sink(counter: Arc<AtomicU64>) -> Result<SocketAddr, Error> {
    let (l, a) = listener().await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(a)
}

async fn echo() -> Result<SocketAddr, Error> {
    let (l, a) = listener().await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(a)
}

async fn http_app() -> Result<SocketAddr, Error> {
    let (l, a) = listener().await?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(&[b'x'; 1024]),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(a)
}

/// A plaintext forwarding hop with the same copy loop the proxy uses.
async fn forwarder(to: SocketAddr) -> Result<SocketAddr, Error> {
    let (l, a) = listener().await?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                if let Ok(up) = TcpStream::connect(to).await {
                    let _ = up.set_nodelay(true);
                    meshguard_proxy::splice(s, up).await;
                }
            });
        }
    });
    Ok(a)
}

async fn two_hops(to: SocketAddr) -> Result<SocketAddr, Error> {
    forwarder(forwarder(to).await?).await
}

fn material(ca: &Ca, who: &str) -> Result<SvidMaterial, Error> {
    let svid = ca.issue(
        &SpiffeId::parse_workload(who)?,
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )?;
    Ok(SvidMaterial::from_issued(svid, ca.bundle_pem()))
}

async fn proxy(
    state: Arc<State>,
    store: Arc<SvidStore>,
    cfg: ProxyConfig,
) -> Result<meshguard_proxy::Bound, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = meshguard_proxy::run(state, store, cfg, std::future::pending(), move |b| {
            let _ = tx.send(b.clone());
        })
        .await;
    });
    Ok(rx.await?)
}

struct Paths {
    name: &'static str,
    bulk: SocketAddr,
    echo: SocketAddr,
    http: SocketAddr,
}

async fn bulk(addr: SocketAddr, bytes: u64, counter: &AtomicU64) -> Result<(f64, f64), Error> {
    let start_count = counter.load(Ordering::Relaxed);
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    s.shutdown().await?;
    while counter.load(Ordering::Relaxed) - start_count < sent {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((sent as f64 * 8.0 / secs / 1e9, cpu_secs() - cpu0))
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Closed loop over `conns` keep-alive connections for `secs`; or paced at `rate` requests/s.
async fn http_load(
    addr: SocketAddr,
    conns: usize,
    secs: f64,
    rate: Option<f64>,
) -> Result<(f64, Vec<Duration>), Error> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..conns {
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            let mut lat = Vec::new();
            let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
            let mut next = Instant::now()
                + interval
                    .map(|i| i.mul_f64(w as f64 / conns as f64))
                    .unwrap_or_default();
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    }
                    next += i;
                }
                let req = hyper::Request::builder()
                    .uri("/bench")
                    .header("host", "server.bench")
                    .body(Empty::<Bytes>::new())?;
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                lat.push(t.elapsed());
                if status != 200 {
                    return Err::<Vec<Duration>, Error>(format!("status {status}").into());
                }
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64 / secs, all))
}

async fn conns_per_sec(addr: SocketAddr, workers: usize, secs: f64) -> Result<f64, Error> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                n += 1;
            }
            Ok::<u64, Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / secs)
}

async fn idle_memory(addr: SocketAddr, n: usize) -> Result<f64, Error> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib();
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((after.saturating_sub(before)) as f64 * 1024.0 / n as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let gib = arg("--gib", 2.0);
    let secs = arg("--secs", 5.0);

    let dir = std::env::temp_dir().join(format!("meshguard-mesh-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::init(&dir, "cluster.local", KeyType::EcdsaP256)?;
    let counter = Arc::new(AtomicU64::new(0));
    let (sink_a, echo_a, http_a) = (
        sink(counter.clone()).await?,
        echo().await?,
        http_app().await?,
    );

    let state = |_: ()| {
        State::new(
            meshguard_engine::Embedded(vec![("bench.yaml".into(), POLICY.into())]),
            MeshConfig::default(),
            reqwest::Client::new(),
        )
    };
    let server_store = SvidStore::new(material(&ca, "spiffe://cluster.local/ns/bench/sa/server")?)?;
    let client_store = SvidStore::new(material(&ca, "spiffe://cluster.local/ns/bench/sa/client")?)?;
    let lo: SocketAddr = "127.0.0.1:0".parse()?;
    let mut scfg = ProxyConfig::new(Workload::parse("bench/app=server").map_err(Error::from)?);
    scfg.reload_interval = Duration::ZERO;
    let inbound = |port, app, protocol| Inbound {
        name: format!("{port}"),
        listen: lo,
        port,
        app,
        protocol,
    };
    scfg.inbound = vec![
        inbound(9000, sink_a, Protocol::Tcp),
        inbound(9001, echo_a, Protocol::Tcp),
        inbound(8080, http_a, Protocol::Http),
    ];
    let server = proxy(state(()).map_err(Error::from)?, server_store, scfg).await?;
    let mut ccfg = ProxyConfig::new(Workload::parse("bench/app=client").map_err(Error::from)?);
    ccfg.reload_interval = Duration::ZERO;
    let server_id = SpiffeId::parse_workload("spiffe://cluster.local/ns/bench/sa/server")?;
    ccfg.outbound = server
        .inbound
        .iter()
        .map(|up| Outbound {
            name: up.to_string(),
            listen: lo,
            upstream: *up,
            spiffe_id: server_id.clone(),
        })
        .collect();
    let client = proxy(state(()).map_err(Error::from)?, client_store, ccfg).await?;

    let paths = [
        Paths {
            name: "direct",
            bulk: sink_a,
            echo: echo_a,
            http: http_a,
        },
        Paths {
            name: "2 plaintext hops",
            bulk: two_hops(sink_a).await?,
            echo: two_hops(echo_a).await?,
            http: two_hops(http_a).await?,
        },
        Paths {
            name: "mTLS proxy pair",
            bulk: client.outbound[0],
            echo: client.outbound[1],
            http: client.outbound[2],
        },
    ];
    let bytes = (gib * (1u64 << 30) as f64) as u64;

    println!("## bulk TCP, one connection, {gib} GiB (best of 3)");
    println!("| path | Gbit/s | process CPU s/GB | proxy CPU s/GB (minus direct) |");
    println!("|---|---|---|---|");
    let mut direct_cpu = 0.0;
    let mut bulk_res = Vec::new();
    for p in &paths {
        let mut best = (0.0f64, 0.0f64);
        for _ in 0..3 {
            let (gbps, cpu) = bulk(p.bulk, bytes, &counter).await?;
            if gbps > best.0 {
                best = (gbps, cpu);
            }
        }
        let gb = bytes as f64 / 1e9;
        let per_gb = best.1 / gb;
        if p.name == "direct" {
            direct_cpu = per_gb;
        }
        bulk_res.push(best.0);
        println!(
            "| {} | {:.2} | {:.3} | {:.3} |",
            p.name,
            best.0,
            per_gb,
            per_gb - direct_cpu
        );
    }
    println!(
        "mTLS pair / two plaintext hops throughput: {:.2}\n",
        bulk_res[2] / bulk_res[1]
    );

    println!("## small HTTP/1.1 requests (1 KiB responses), closed loop, 16 connections, {secs} s");
    println!("| path | req/s | p50 | p90 | p99 |");
    println!("|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for p in &paths {
        let (rps, mut lat) = http_load(p.http, 16, secs, None).await?;
        let p50 = pct(&mut lat, 0.5);
        p50s.push(p50);
        println!(
            "| {} | {:.0} | {:.0?} | {:.0?} | {:.0?} |",
            p.name,
            rps,
            p50,
            pct(&mut lat, 0.9),
            pct(&mut lat, 0.99)
        );
    }
    println!();
    println!("## paced 1,000 requests/s over 4 connections, {secs} s");
    println!("| path | p50 | p90 | p99 | added p50 vs direct | added p90 vs direct |");
    println!("|---|---|---|---|---|---|");
    let mut base = (Duration::ZERO, Duration::ZERO);
    for p in &paths {
        let (_, mut lat) = http_load(p.http, 4, secs, Some(1000.0)).await?;
        let (p50, p90, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.9), pct(&mut lat, 0.99));
        if p.name == "direct" {
            base = (p50, p90);
        }
        println!(
            "| {} | {:.0?} | {:.0?} | {:.0?} | {:.0?} | {:.0?} |",
            p.name,
            p50,
            p90,
            p99,
            p50.saturating_sub(base.0),
            p90.saturating_sub(base.1)
        );
    }
    println!();
    println!(
        "## new connections per second (connect, 1-byte round trip, close; 8 workers, {secs} s)"
    );
    println!("| path | connections/s |");
    println!("|---|---|");
    for p in &paths {
        println!(
            "| {} | {:.0} |",
            p.name,
            conns_per_sec(p.echo, 8, secs).await?
        );
    }
    println!();
    println!("## memory per idle established connection (RSS growth over 1,000 connections)");
    println!("| path | bytes per connection (whole process: client, hops, app) |");
    println!("|---|---|");
    for p in &paths {
        println!("| {} | {:.0} |", p.name, idle_memory(p.echo, 1000).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
