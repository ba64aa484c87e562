//! Gloo `passThroughAuth`: a step delegated to another authorization service.
//!
//! - `grpc`: an Envoy ext_authz v3 server. It receives the request as a CheckRequest (the
//!   AuthConfig choice, `config_id`/`auth_config`, is not forwarded), the chain state under `filter_metadata["solo.auth.passthrough"]` and `config` under
//!   `filter_metadata["solo.auth.passthrough.config"]`; an OK answer allows and its headers and
//!   `dynamic_metadata["solo.auth.passthrough"]` (new state) are taken over.
//! - `http`: a POST to `url` with the allowed request headers (and a JSON body with state, body
//!   and config when asked); 200 allows, anything else denies with that status.
//!
//! A delegate that cannot be reached, times out or answers 5xx denies (503), unless
//! `failureModeAllow` is set.
//!
//! Loops: every delegated request carries [`HOPS_HEADER`] with the number of pass-through hops
//! so far (the incoming value plus one). A step whose request already made [`MAX_HOPS`] hops
//! refuses to delegate again (508 Loop Detected), so meshguard instances that delegate to each
//! other, directly or through a CUSTOM policy on the delegate, stop after a few hops instead of
//! recursing until timeouts. Not an `unavailable` case: `failureModeAllow` does not apply.

use meshguard_envoy as envoy;
use meshguard_policy::extauth::{PassThroughAuth, PassThroughTarget};
use serde_json::{Map, Value};

use super::{BuildError, StepInput, StepOutcome};

const MAX_RESPONSE: usize = 64 * 1024;

/// Request header counting pass-through hops (set on every delegated request).
pub const HOPS_HEADER: &str = "x-meshguard-passthrough-hops";
/// The most pass-through hops one request may make.
pub const MAX_HOPS: u32 = 4;

/// A delegate's 508 is a loop cut further down: it stays an error, so `!step` in a booleanExpr
/// cannot turn the loop into a pass.
fn loop_refused(o: StepOutcome) -> StepOutcome {
    if o.status == 508 && !o.allowed {
        StepOutcome { error: true, ..o }
    } else {
        o
    }
}

/// Hops the request made before reaching this step (a value that is not a number counts 0:
/// only meshguard's own increments matter for stopping a loop).
fn hops(input: &StepInput<'_>) -> u32 {
    input
        .header(HOPS_HEADER)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
}

enum Target {
    Grpc(envoy::Client),
    Http(reqwest::Client),
}

pub struct PassThroughStep {
    cfg: PassThroughAuth,
    target: Target,
}

impl PassThroughStep {
    pub fn build(
        cfg: &PassThroughAuth,
        client: &reqwest::Client,
    ) -> Result<PassThroughStep, BuildError> {
        let target = match &cfg.target {
            PassThroughTarget::Grpc { address } => Target::Grpc(
                envoy::Client::lazy(address, cfg.timeout).map_err(BuildError::GrpcAddress)?,
            ),
            PassThroughTarget::Http { .. } => Target::Http(client.clone()),
        };
        Ok(PassThroughStep {
            cfg: cfg.clone(),
            target,
        })
    }

    fn unavailable(&self, why: String) -> StepOutcome {
        if self.cfg.failure_mode_allow {
            StepOutcome::allow(format!("{why} (failureModeAllow)"))
        } else {
            StepOutcome::failed(503, why)
        }
    }

    pub async fn check(&self, input: &mut StepInput<'_>) -> StepOutcome {
        let hops = hops(input);
        if hops >= MAX_HOPS {
            return StepOutcome::failed(
                508,
                format!(
                    "passThroughAuth loop: the request already went through {hops} pass-through hops ({HOPS_HEADER}); not delegating again"
                ),
            );
        }
        match &self.target {
            Target::Grpc(c) => self.grpc(c, input).await,
            Target::Http(c) => self.http(c, input).await,
        }
    }

    async fn grpc(&self, client: &envoy::Client, input: &mut StepInput<'_>) -> StepOutcome {
        // The request as Envoy would send it, with the hop count, without the AuthConfig
        // choice (the delegate decides with its own), and with the chain state and config as
        // Gloo passes them.
        let mut req = envoy::to_check_request(input.req);
        envoy::set_header(&mut req, HOPS_HEADER, (hops(input) + 1).to_string());
        envoy::drop_context_extensions(&mut req, &["config_id", "auth_config"]);
        if !input.state.is_empty() {
            envoy::set_filter_metadata(&mut req, "solo.auth.passthrough", input.state);
        }
        if let Some(Value::Object(c)) = &self.cfg.config {
            envoy::set_filter_metadata(&mut req, "solo.auth.passthrough.config", c);
        }
        let answer = match client.check(req).await {
            Ok(r) => envoy::from_check_response(&r),
            Err(e) => {
                return self.unavailable(format!("passThroughAuth gRPC delegate failed: {e}"))
            }
        };
        if answer.allowed {
            let mut o = StepOutcome::allow("the gRPC delegate allowed");
            o.headers_to_add = answer.headers_to_add;
            o.headers_to_remove = answer.headers_to_remove;
            o.response_headers = answer.response_headers;
            if let Some(Value::Object(st)) = answer.dynamic_metadata.get("solo.auth.passthrough") {
                for (k, v) in st {
                    input.state.insert(k.clone(), v.clone());
                }
            }
            return o;
        }
        let mut o = StepOutcome::deny(
            answer.status,
            format!("the gRPC delegate denied ({})", answer.status),
        );
        o.response_headers = answer.response_headers;
        o.body = answer.body;
        loop_refused(o)
    }

    async fn http(&self, client: &reqwest::Client, input: &mut StepInput<'_>) -> StepOutcome {
        let PassThroughTarget::Http {
            url,
            allowed_headers,
            headers_to_add,
            pass_state,
            pass_body,
            allowed_upstream_headers,
            allowed_client_headers_on_denied,
            read_state,
        } = &self.cfg.target
        else {
            return StepOutcome::deny(403, "misconfigured passThroughAuth");
        };
        let mut req = client.post(url).timeout(self.cfg.timeout);
        req = req.header(HOPS_HEADER, (hops(input) + 1).to_string());
        for h in allowed_headers
            .iter()
            .filter(|h| !h.eq_ignore_ascii_case(HOPS_HEADER))
        {
            if let Some(v) = input.header(h) {
                req = req.header(h.as_str(), v);
            }
        }
        for (k, v) in headers_to_add
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(HOPS_HEADER))
        {
            req = req.header(k.as_str(), v.as_str());
        }
        if *pass_state || *pass_body || self.cfg.config.is_some() {
            let mut body = Map::new();
            if *pass_state {
                body.insert("state".into(), Value::Object(input.state.clone()));
            }
            if *pass_body {
                if let Some(b) = input.req.http.as_ref().and_then(|h| h.body.as_ref()) {
                    body.insert(
                        "body".into(),
                        Value::String(String::from_utf8_lossy(&b.bytes).into_owned()),
                    );
                }
            }
            if let Some(c) = &self.cfg.config {
                body.insert("config".into(), c.clone());
            }
            req = req
                .header("content-type", "application/json")
                .body(Value::Object(body).to_string());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return self.unavailable(format!("passThroughAuth HTTP delegate unreachable: {e}"))
            }
        };
        let status = resp.status().as_u16();
        // 508 is a meshguard delegate refusing a pass-through loop: a denial, never an outage
        // that failureModeAllow could turn into a pass.
        if status >= 500 && status != 508 {
            return self.unavailable(format!("passThroughAuth HTTP delegate answered {status}"));
        }
        let pick = |names: &[String]| {
            resp.headers()
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n == k.as_str()))
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.as_str().to_owned(), v.to_owned()))
                })
                .collect::<Vec<_>>()
        };
        if status != 200 {
            // A redirect (to a login page) is a denial that sends the browser there; any other
            // non-200 below 400 is refused as 403 rather than passed on as a success code.
            let redirect = (300..400).contains(&status);
            let mut o = StepOutcome::deny(
                if redirect || status >= 400 {
                    status
                } else {
                    403
                },
                format!("the HTTP delegate answered {status}"),
            );
            o.response_headers = pick(allowed_client_headers_on_denied);
            if redirect {
                o.response_headers.extend(pick(&["location".to_owned()]));
            }
            return loop_refused(o);
        }
        let mut o = StepOutcome::allow("the HTTP delegate answered 200");
        o.headers_to_add = pick(allowed_upstream_headers);
        if *read_state {
            let body = match resp.bytes().await {
                Ok(b) if b.len() <= MAX_RESPONSE => b,
                _ => return StepOutcome::deny(403, "the HTTP delegate's state could not be read"),
            };
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(mut m)) => match m.remove("state") {
                    Some(Value::Object(st)) => *input.state = st,
                    Some(Value::Null) | None => {}
                    Some(_) => {
                        return StepOutcome::deny(
                            403,
                            "the HTTP delegate's `state` is not an object",
                        )
                    }
                },
                _ => {
                    return StepOutcome::deny(
                        403,
                        "the HTTP delegate's answer is not a JSON object",
                    )
                }
            }
        }
        o
    }
}
