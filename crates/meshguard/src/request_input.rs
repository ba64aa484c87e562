//! A request description (the `meshguard check --request` format, README "Request format")
//! turned into the engine's [`Request`], filled the way `check` fills it: the mTLS peer,
//! `remote.ip` derived as the sidecar's Envoy derives it, the AuthConfig a route names, the body
//! Rego steps see, and already-verified claims standing for a verified token.
//!
//! `meshguard check` and `meshguard test` both decide through this.

use meshguard_policy::load::parse_request;
use meshguard_policy::yaml::Node;
use meshguard_policy::{MeshConfig, Request};

/// Builds the request a description stands for. The error names the line and field.
pub(crate) fn build(doc: &Node, mesh: &MeshConfig) -> Result<Request, String> {
    let (mut req, id) = parse_request(doc, mesh.path_normalization).map_err(|e| e.to_string())?;
    if let Some(p) = &id.peer {
        req = req.with_peer(p);
    }
    // remote.ip as the sidecar's Envoy derives it from X-Forwarded-For.
    req.derive_remote_ip(mesh.xff_trusted_hops);
    // An AuthConfig named by the request, as Envoy's per-route config_id.
    req.auth_config = doc
        .get("authConfig")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    if let Some(b) = &req.auth_config {
        req.context_extensions
            .insert("config_id".to_owned(), b.clone());
    }
    if let Some(h) = req.http.as_mut() {
        h.body = doc
            .get("request")
            .and_then(|r| r.get("body"))
            .and_then(|b| b.as_str())
            .map(|b| meshguard_policy::Body {
                bytes: b.as_bytes().to_vec(),
                truncated: false,
            });
    }
    // Verified claims given in the description stand for a token already verified.
    req.verified_jwt = id.jwt;
    Ok(req)
}
