//! Envoy ext_authz v3 over gRPC: `envoy.service.auth.v3.Authorization/Check`. The CheckRequest
//! is decoded with the one Envoy codec (`meshguard-envoy`: which workload, the sockets, the
//! route context, the HTTP request), decided by the engine, and the decision encoded back as a
//! CheckResponse with meshguard's reason in its dynamic metadata.

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use meshguard_engine::state::Workload;
use meshguard_engine::{Decision, Engine};
use meshguard_envoy::Answer;
use serde_json::Value;
use tonic::{Response, Status};

pub use meshguard_envoy::MAX_CHECK_HEADERS;

pub struct CheckService {
    pub engine: Engine,
    pub workload: Option<Workload>,
}

/// meshguard's own keys in a CheckResponse's `dynamic_metadata`.
const OWN: [&str; 7] = [
    "decision_id",
    "allowed",
    "reason",
    "policy",
    "rule",
    "request_principal",
    "generation",
];

/// What the CheckResponse says about a decision.
pub fn answer_of(o: &Decision) -> Answer {
    // An OPA-Envoy decision's `dynamic_metadata` goes out as opa-envoy-plugin sends it, but
    // never under meshguard's own keys (written below, some only when set): access logs and
    // metadata matchers trust them.
    let mut meta: serde_json::Map<String, Value> = o
        .dynamic_metadata
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("decision_id".into(), o.id.clone().into());
    meta.insert("allowed".into(), o.allowed.into());
    meta.insert("reason".into(), o.reason.clone().into());
    if let Some(p) = &o.policy {
        meta.insert("policy".into(), p.clone().into());
    }
    if let Some(r) = o.rule {
        meta.insert("rule".into(), (r as f64).into());
    }
    if let Some(p) = &o.request_principal {
        meta.insert("request_principal".into(), p.clone().into());
    }
    meta.insert("generation".into(), (o.generation as f64).into());
    let mut response_headers = Vec::new();
    if !o.allowed {
        if let Some(w) = &o.www_authenticate {
            response_headers.push(("www-authenticate".to_owned(), w.clone()));
        }
    }
    response_headers.extend(o.response_headers.iter().cloned());
    Answer {
        allowed: o.allowed,
        status: o.status,
        message: if o.allowed {
            String::new()
        } else {
            o.reason.clone()
        },
        headers_to_add: o.headers_to_add.clone(),
        headers_to_remove: o.headers_to_remove.clone(),
        query_params_to_remove: o.query_params_to_remove.clone(),
        response_headers,
        body: if o.allowed {
            String::new()
        } else {
            o.body().to_owned()
        },
        dynamic_metadata: meta,
    }
}

/// The CheckResponse for a decision.
pub fn to_response(o: &Decision) -> CheckResponse {
    meshguard_envoy::to_check_response(&answer_of(o))
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let cr = request.into_inner();
        let mesh = &self.engine.state().mesh;
        let decision = match meshguard_envoy::request_from_check(cr, self.workload.as_ref(), mesh) {
            Ok(req) => self.engine.decide("grpc", &req).await,
            Err(e) => self.engine.undecidable("grpc", &e.to_string()),
        };
        Ok(Response::new(to_response(&decision)))
    }
}
