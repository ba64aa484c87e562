//! Admin endpoints: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/config`, and the live
//! service graph (`/graph`, its data `/graph.json`, and `POST /graph/what-if`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use meshguard_policy::Resource;
use serde_json::json;

type Shared = std::sync::Arc<meshguard_engine::State>;
use meshguard_engine::state::State;

fn text(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// The active configuration, with secrets redacted (inline JWKS may hold symmetric keys).
pub fn config_dump(state: &Shared) -> serde_json::Value {
    let g = state.current();
    let resources: Vec<serde_json::Value> = g
        .set
        .resources()
        .iter()
        .map(|r| {
            let m = r.meta();
            let mut o = json!({
                "kind": r.kind(),
                "namespace": m.namespace,
                "name": m.name,
                "file": r.origin().file,
                "line": r.origin().line,
            });
            match r {
                Resource::AuthorizationPolicy(p) => {
                    o["action"] = p.action.as_str().into();
                    o["rules"] = p.rules.len().into();
                    o["dry_run"] = p.dry_run.into();
                    o["selector"] = json!(p.selector);
                    if let Some(pr) = &p.provider {
                        o["provider"] = pr.clone().into();
                    }
                }
                Resource::PeerAuthentication(p) => {
                    o["mode"] = p.mode.as_str().into();
                    o["selector"] = json!(p.selector);
                    o["port_level"] = json!(p
                        .port_level
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.as_str()))
                        .collect::<std::collections::BTreeMap<_, _>>());
                }
                Resource::RequestAuthentication(p) => {
                    o["selector"] = json!(p.selector);
                    o["jwt_rules"] = p
                        .jwt_rules
                        .iter()
                        .map(|j| {
                            json!({
                                "issuer": j.issuer,
                                "audiences": j.audiences,
                                "jwks_uri": j.jwks_uri.as_deref().map(meshguard_authn::remote::redact_url),
                                "jwks": j.jwks.as_ref().map(|_| "<redacted>"),
                                "forward_original_token": j.forward_original_token,
                            })
                        })
                        .collect();
                }
                Resource::AuthConfig(c) => {
                    o["steps"] = c
                        .steps
                        .iter()
                        .map(|s| json!({"name": s.name, "model": s.model.key()}))
                        .collect();
                    o["boolean_expr"] = c.boolean_expr.is_some().into();
                }
                Resource::ExtAuthPolicy(p) => {
                    o["apply_to_routes"] = p
                        .routes
                        .iter()
                        .map(|r| json!({"labels": r.labels, "namespace": r.namespace}))
                        .collect();
                    o["apply_to_destinations"] = p
                        .destinations
                        .iter()
                        .map(|d| {
                            json!({"labels": d.labels, "namespace": d.namespace, "port": d.port})
                        })
                        .collect();
                    o["server"] = json!(p.server.as_ref().map(|s| &s.name));
                    match &p.action {
                        meshguard_policy::extauth::ExtAuthAction::Gloo(c) => {
                            o["gloo_auth"] = c
                                .steps
                                .iter()
                                .map(|s| json!({"name": s.name, "model": s.model.key()}))
                                .collect();
                        }
                        meshguard_policy::extauth::ExtAuthAction::Custom {
                            context_extensions,
                        } => {
                            o["custom_auth"] = json!({"context_extensions": context_extensions});
                        }
                    }
                }
                // Secret values never leave the process; only which keys exist.
                Resource::Secret(x) => {
                    o["type"] = x.secret_type.clone().into();
                    o["keys"] = json!(x.data.keys().collect::<Vec<_>>());
                }
                Resource::ConfigMap(x) => {
                    o["keys"] = json!(x.data.keys().collect::<Vec<_>>());
                }
            }
            o
        })
        .collect();
    let mesh = g.set.mesh();
    json!({
        "generation": g.id,
        "digest": g.digest,
        "loaded_at": g.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "files": g.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "warnings": g.warnings,
        "mesh": {
            "root_namespace": mesh.root_namespace,
            "trust_domain": mesh.trust_domain,
            "path_normalization": mesh.path_normalization.as_str(),
            "extension_providers": mesh.extension_providers,
        },
        "last_reload_error": state.last_error.lock().ok().and_then(|e| e.clone()),
        "reload_running_seconds": state.reload_running().map(|(d, _)| d.as_secs_f64()),
        "decision_log": {
            "lost_lines": state.metrics.decision_log.lost.load(Ordering::Relaxed),
            "write_error": state.metrics.decision_log.error.lock().ok().and_then(|e| e.clone()),
        },
        "resources": resources,
    })
}

/// What is wrong but keeps the server serving: a refused reload (the last good set serves), a
/// decision log that loses lines. Shown on `/healthz` and `/readyz`, which stay 200 for it, so
/// one bad policy file does not take every replica out of the load balancer at once.
fn degraded(state: &State) -> Vec<String> {
    let generation = state.metrics.generation.load(Ordering::Relaxed);
    let mut out = Vec::new();
    if let Some(e) = state.last_error.lock().ok().and_then(|e| e.clone()) {
        out.push(format!(
            "degraded: the last policy reload was refused; generation {generation} (the last good set) is still serving\n{e}"
        ));
    }
    for p in state.source.problems() {
        out.push(format!(
            "degraded: {p}; generation {generation} (the last good set) is still serving"
        ));
    }
    if let Some(p) = state.metrics.decision_log.problem() {
        out.push(format!("warning: {p}"));
    }
    out
}

/// `/healthz`: the process serves. `ok`, or `ok (degraded)` with what is wrong.
fn healthz(state: &State) -> Response<Full<Bytes>> {
    let d = degraded(state);
    let mut body = if d.is_empty() {
        "ok\n".to_owned()
    } else {
        "ok (degraded)\n".to_owned()
    };
    for line in d {
        body.push_str(&line);
        body.push('\n');
    }
    text(StatusCode::OK, "text/plain", body)
}

/// Ready unless a reload is stuck (the serving set may be out of date and nothing says when it
/// will be current). A refused reload keeps the server ready on its last good set and is shown
/// as degraded.
fn readyz(state: &State) -> Response<Full<Bytes>> {
    let generation = state.metrics.generation.load(Ordering::Relaxed);
    let mut body = String::new();
    let mut ready = true;
    if let Some((running, why)) = state.reload_stalled() {
        ready = false;
        body.push_str(&format!(
            "a policy reload (trigger: {why}) has been running for {} s without finishing; generation {generation} is still serving\n",
            running.as_secs()
        ));
    }
    if ready {
        body.insert_str(0, &format!("ready: policy generation {generation}\n"));
    }
    for line in degraded(state) {
        body.push_str(&line);
        body.push('\n');
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "text/plain", body)
}

/// The graph page's own files; served with a policy that runs no script but `/graph.js`.
const GRAPH_HTML: &str = include_str!("graph_page/graph.html");
const GRAPH_JS: &str = include_str!("graph_page/graph.js");
/// The largest candidate policy set `/graph/what-if` takes.
const WHAT_IF_MAX_BYTES: usize = 1 << 20;

fn page(ctype: &str, body: &str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, ctype, body.to_owned());
    r.headers_mut().insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'",
        ),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", format!("{v}\n"))
}

/// Replays the graph's recent decisions against the candidate policy set in the request body.
async fn what_if(
    state: &Shared,
    graph: Option<std::sync::Arc<meshguard_rollout::Graph>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let Some(graph) = graph else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "the service graph is off (MESHGUARD_GRAPH=off)"}),
        );
    };
    if req.method() != hyper::Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "POST the candidate policies (YAML) to /graph/what-if"}),
        );
    }
    // A header no cross-origin page can send without a CORS preflight (which this port never
    // answers): another site open in the operator's browser cannot start replays here.
    if req.headers().get("x-meshguard-what-if").is_none() {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": "send the header X-Meshguard-What-If: 1 (the page does)"}),
        );
    }
    // One replay at a time: each compiles a policy set and decides up to 100,000 requests.
    static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": "a what-if replay is already running; try again when it ends"}),
        );
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }
    let _done = Done;
    let body = match http_body_util::Limited::new(req.into_body(), WHAT_IF_MAX_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": format!("a candidate set is at most {WHAT_IF_MAX_BYTES} bytes")}),
            )
        }
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the candidate policies are not UTF-8 text"}),
        );
    };
    let mesh = state.mesh.clone();
    let client = state.client.clone();
    // Compiling and replaying is CPU work: off the async workers.
    let done = tokio::task::spawn_blocking(move || {
        let source = meshguard_engine::Embedded(vec![("candidate.yaml".to_owned(), text)]);
        let candidate = match State::new(source, mesh, client) {
            Ok(s) => s,
            Err(meshguard_engine::LoadError::Invalid(diags)) => {
                let errors: Vec<String> = diags
                    .iter()
                    .filter(|d| d.severity == meshguard_policy::Severity::Error)
                    .map(|d| d.to_string())
                    .collect();
                return (StatusCode::BAD_REQUEST, json!({"errors": errors}));
            }
            Err(e) => return (StatusCode::BAD_REQUEST, json!({"errors": [e.to_string()]})),
        };
        let log = match meshguard_engine::DecisionLog::start(
            meshguard_engine::Sink::Off,
            candidate.clone(),
        ) {
            Ok(l) => l,
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                )
            }
        };
        // serve's and proxy's default (deny what no ALLOW policy covers).
        let settings = meshguard_engine::Settings {
            default_deny: true,
            ..meshguard_engine::Settings::default()
        };
        let engine = meshguard_engine::Engine::new(candidate, log, settings);
        match graph.what_if(&engine) {
            Ok(r) => (StatusCode::OK, meshguard_rollout::report::json(&r)),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": e.to_string()}),
            ),
        }
    })
    .await;
    match done {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": format!("the replay failed: {e}")}),
        ),
    }
}

pub async fn handle(
    state: Shared,
    graph: Option<std::sync::Arc<meshguard_rollout::Graph>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/graph" => match graph {
            Some(_) => page("text/html; charset=utf-8", GRAPH_HTML),
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "the service graph is off (MESHGUARD_GRAPH=off)\n".to_owned(),
            ),
        },
        "/graph.js" => page("text/javascript; charset=utf-8", GRAPH_JS),
        // Browsers ask for one with every page; nothing to show.
        "/favicon.ico" => text(StatusCode::NO_CONTENT, "image/x-icon", String::new()),
        "/graph.json" => match graph {
            Some(g) => json_response(StatusCode::OK, &g.snapshot()),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "the service graph is off (MESHGUARD_GRAPH=off)"}),
            ),
        },
        "/graph/what-if" => what_if(&state, graph, req).await,
        "/healthz" => healthz(&state),
        "/readyz" => readyz(&state),
        "/metrics" => {
            let g = state.current();
            let jwks: Vec<(String, u64, u64)> = g
                .authn
                .remotes()
                .iter()
                .map(|r| {
                    (
                        r.uri()
                            .map(meshguard_authn::remote::redact_url)
                            .unwrap_or_else(|| "<oidc discovery>".to_owned()),
                        r.stats.ok.load(Ordering::Relaxed),
                        r.stats.failed.load(Ordering::Relaxed),
                    )
                })
                .collect();
            text(StatusCode::OK, "text/plain; version=0.0.4", {
                let mut out = state.metrics.render(&jwks);
                let running = state.reload_running().map(|(d, _)| d.as_secs_f64());
                out.push_str("# HELP meshguard_policy_reload_running_seconds How long the reload in progress has run (0: none running).\n# TYPE meshguard_policy_reload_running_seconds gauge\n");
                out.push_str(&format!(
                    "meshguard_policy_reload_running_seconds {}\n",
                    running.unwrap_or(0.0)
                ));
                out
            })
        }
        "/config" => text(
            StatusCode::OK,
            "application/json",
            format!("{:#}\n", config_dump(&state)),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /config, /graph\n".to_owned(),
        ),
    })
}
