//! Load client for `Authorization/Check`: closed loop at a fixed number of concurrent streams
//! (throughput), or paced at a fixed rate (latency percentiles). Prints one JSON line.
//!
//! bench_check ADDR closed CONCURRENCY SECONDS TOKEN
//! bench_check ADDR paced  RPS         SECONDS TOKEN
//!
//! The request is the bundled example "api-with-token": production/app=api from the frontend
//! principal, GET /v1/orders with `Authorization: Bearer TOKEN`. With `BENCH_CONFIG_ID` set, the
//! route also names that AuthConfig (context extension `config_id`) and the request carries
//! `BENCH_HEADER` (`name: value`), e.g. an API key. `BENCH_METHOD`, `BENCH_PATH` and
//! `BENCH_BODY` (sent as `application/json`) replace the request line and add a body. Answers
//! other than OK are counted as `denied`: a comparison is only fair if every server allows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use tonic::transport::Channel;

fn request(token: &str) -> CheckRequest {
    let mut ext = HashMap::from([
        ("namespace".to_owned(), "production".to_owned()),
        ("labels".to_owned(), "app=api".to_owned()),
    ]);
    if let Ok(id) = std::env::var("BENCH_CONFIG_ID") {
        ext.insert("config_id".to_owned(), id);
    }
    let mut headers = HashMap::from([
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("user-agent".to_owned(), "bench".to_owned()),
        (
            "x-request-id".to_owned(),
            "0f6c5e9e-1b1a-4f7e-9a51-0b9d3c6a2f10".to_owned(),
        ),
    ]);
    if let Some((k, v)) = std::env::var("BENCH_HEADER")
        .ok()
        .as_deref()
        .and_then(|h| h.split_once(": "))
    {
        headers.insert(k.to_ascii_lowercase(), v.to_owned());
    }
    let body = std::env::var("BENCH_BODY").unwrap_or_default();
    if !body.is_empty() {
        headers.insert("content-type".to_owned(), "application/json".to_owned());
        headers.insert("content-length".to_owned(), body.len().to_string());
    }
    let method = std::env::var("BENCH_METHOD").unwrap_or_else(|_| "GET".to_owned());
    let path = std::env::var("BENCH_PATH").unwrap_or_else(|_| "/v1/orders?page=1".to_owned());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://cluster.local/ns/production/sa/frontend".to_owned(),
                ..Default::default()
            }),
            destination: Some(Peer::default()),
            request: Some(Request {
                http: Some(HttpRequest {
                    size: i64::try_from(body.len()).unwrap_or(-1),
                    method,
                    path,
                    host: "api.company.com".to_owned(),
                    headers,
                    body,
                    protocol: "HTTP/1.1".to_owned(),
                    scheme: "http".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: bench_check ADDR closed|paced CONCURRENCY|RPS SECONDS TOKEN");
        std::process::exit(2);
    }
    let (addr, mode, n, secs, token) = (
        &args[1],
        args[2].as_str(),
        args[3].parse::<u64>()?,
        args[4].parse::<u64>()?,
        args[5].clone(),
    );
    let ch = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let req = request(&token);
    // Warm up (first JWT verification, connection).
    let mut c = AuthorizationClient::new(ch.clone());
    for _ in 0..200 {
        let status = c.check(req.clone()).await?.into_inner().status;
        if let Some(s) = status.filter(|s| s.code != 0) {
            eprintln!(
                "bench_check: the server denies the request (code {}): {}",
                s.code, s.message
            );
            std::process::exit(1);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    match mode {
        "closed" => {
            for _ in 0..n {
                let (mut c, req, stop) = (
                    AuthorizationClient::new(ch.clone()),
                    req.clone(),
                    stop.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    let mut denied = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match c.check(req.clone()).await {
                            Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code != 0) => {
                                denied += 1
                            }
                            Ok(_) => {}
                            Err(_) => errors += 1,
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    (lat, errors, denied)
                }));
            }
        }
        _ => {
            // Paced: 32 workers on the one connection, each sending at RPS/32 on its own
            // schedule. Latency is measured from the actual send (tokio timers have 1 ms
            // granularity, which would otherwise dominate); a worker that falls behind sends
            // again at once, so the rate holds unless the server stalls (visible in `rps`).
            let workers = 32u64;
            let period = Duration::from_secs_f64(workers as f64 / n.max(1) as f64);
            for w in 0..workers {
                let (mut c, req, stop) = (
                    AuthorizationClient::new(ch.clone()),
                    req.clone(),
                    stop.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    let mut denied = 0u64;
                    let offset = period.mul_f64(w as f64 / workers as f64);
                    let mut next = tokio::time::Instant::now() + offset;
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep_until(next).await;
                        let t = Instant::now();
                        match c.check(req.clone()).await {
                            Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code != 0) => {
                                denied += 1
                            }
                            Ok(_) => {}
                            Err(_) => errors += 1,
                        }
                        lat.push(t.elapsed().as_micros() as u64);
                        next += period;
                    }
                    (lat, errors, denied)
                }));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut errors, mut denied) = (0, 0);
    for t in tasks {
        let (l, e, d) = t.await?;
        all.extend(l);
        errors += e;
        denied += d;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{{\"mode\":\"{mode}\",\"param\":{n},\"requests\":{},\"errors\":{errors},\"denied\":{denied},\"rps\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99)
    );
    Ok(())
}
