//! HTTP forward-auth mode (nginx auth_request, Traefik/Caddy forwardAuth, Envoy HTTP ext_authz):
//! the headers that describe the original request (X-Original-*/X-Forwarded-*, X-Forwarded-For
//! over several lines, ports, X-Meshguard-Workload, XFCC) turned into the engine's request, then
//! decided with the bundled example policies.
//!
//! Input: the first byte picks the style and XFCC trust; then lines `name: value` (the first
//! line, without a colon, is the request target).
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;

use common::state;
use libfuzzer_sys::fuzz_target;
use meshguard_engine::dlog::{DecisionLog, Sink};
use meshguard_engine::{Engine, Settings};
use meshguard_server::http::{ForwardStyle, HttpMode};

fn mode(style: ForwardStyle, trust_client_cert: bool) -> HttpMode {
    let st = state().clone();
    let log = DecisionLog::start(Sink::Off, st.clone()).expect("no log");
    HttpMode {
        engine: Engine::new(st, log, Settings::default()),
        workload: None,
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
        path_prefix: "/check".to_owned(),
        style,
        trust_client_cert,
        bindings: Vec::new(),
        routes: vec![meshguard_server::http::RouteBinding::parse(
            "/ratings=route=ratings;tier=gold",
        )
        .expect("fixed route binding")],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let style = match first % 3 {
        0 => ForwardStyle::Nginx,
        1 => ForwardStyle::Forwarded,
        _ => ForwardStyle::Envoy,
    };
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let mut b = hyper::Request::builder().method("GET").uri(target);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            b = b.header(k.trim(), v.trim_start());
        }
    }
    // Lines hyper itself would refuse never reach meshguard.
    let Ok(req) = b.body(()) else {
        return;
    };
    let m = mode(style, first & 0x80 != 0);
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    if let Ok(r) = m.to_request(&req, peer) {
        let g = state().current();
        let _ = g.set.evaluate(&r, &r.identity());
    }
});
