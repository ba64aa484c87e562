//! `CheckResponse` <-> [`Answer`]: what an ext_authz server answers, in plain terms. `serve`
//! encodes its decisions with it; a pass-through step decodes its delegate's answer with it.

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::google::rpc;
use serde_json::{Map, Value};

use crate::value::{from_struct, to_struct};

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const UNKNOWN: i32 = 2;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// An ext_authz answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub allowed: bool,
    /// The HTTP status of a denial (Envoy sends it to the client); 200 when allowed.
    pub status: u16,
    /// `status.message`: why (Envoy logs it).
    pub message: String,
    /// Allowed: headers for the upstream request. The first value of a name replaces what the
    /// client sent; later values of the same name are added beside it.
    pub headers_to_add: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    pub query_params_to_remove: Vec<String>,
    /// Headers for the client: on a denial, the denied response's; when allowed,
    /// `response_headers_to_add`.
    pub response_headers: Vec<(String, String)>,
    /// A denial's body.
    pub body: String,
    pub dynamic_metadata: Map<String, Value>,
}

fn header(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.to_owned(),
            value: v.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Headers for the upstream request: the first value of a name replaces what the client sent,
/// later values of the same name are added beside it (one line per verified token, as Envoy's
/// jwt_authn writes them).
#[allow(deprecated)]
fn request_headers(add: &[(String, String)]) -> Vec<HeaderValueOption> {
    add.iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let mut h = header(k, v);
            if add[..i].iter().any(|(x, _)| x.eq_ignore_ascii_case(k)) {
                // Envoy's ext_authz client reads the deprecated `append` flag (default false
                // there) to choose between setting and appending.
                h.append = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
                h.append_action = HeaderAppendAction::AppendIfExistsOrAdd as i32;
            }
            h
        })
        .collect()
}

/// Encodes an answer as Envoy reads it: OK with header mutations, or PERMISSION_DENIED
/// (UNAUTHENTICATED for a 401) with the denied response.
pub fn to_check_response(a: &Answer) -> CheckResponse {
    let dynamic_metadata = Some(to_struct(&a.dynamic_metadata));
    if a.allowed {
        return CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: request_headers(&a.headers_to_add),
                headers_to_remove: a.headers_to_remove.clone(),
                query_parameters_to_remove: a.query_params_to_remove.clone(),
                response_headers_to_add: a
                    .response_headers
                    .iter()
                    .map(|(k, v)| header(k, v))
                    .collect(),
                ..Default::default()
            })),
            dynamic_metadata,
        };
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: if a.status == 401 {
                UNAUTHENTICATED
            } else {
                PERMISSION_DENIED
            },
            message: a.message.clone(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(a.status),
            }),
            headers: a
                .response_headers
                .iter()
                .map(|(k, v)| header(k, v))
                .collect(),
            body: a.body.clone(),
        })),
        dynamic_metadata,
    }
}

/// Decodes a delegate's CheckResponse. Anything but OK denies: with the denied response's
/// status when it is a real HTTP status, 401 for UNAUTHENTICATED without one, else 403. A
/// missing status is UNKNOWN (a denial).
pub fn from_check_response(r: &CheckResponse) -> Answer {
    let code = r.status.as_ref().map_or(UNKNOWN, |s| s.code);
    let pairs = |hs: &[HeaderValueOption]| {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
            .collect::<Vec<_>>()
    };
    let mut a = Answer {
        allowed: code == OK,
        status: if code == OK { 200 } else { 403 },
        message: r
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default(),
        dynamic_metadata: r
            .dynamic_metadata
            .as_ref()
            .map(from_struct)
            .unwrap_or_default(),
        ..Answer::default()
    };
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) if a.allowed => {
            a.headers_to_add = pairs(&ok.headers);
            a.headers_to_remove = ok.headers_to_remove.clone();
            a.query_params_to_remove = ok.query_parameters_to_remove.clone();
            a.response_headers = pairs(&ok.response_headers_to_add);
        }
        Some(HttpResponse::DeniedResponse(d)) if !a.allowed => {
            if let Some(s) = d.status.as_ref().and_then(|s| u16::try_from(s.code).ok()) {
                if (100..=599).contains(&s) {
                    a.status = s;
                }
            }
            a.response_headers = pairs(&d.headers);
            a.body = d.body.clone();
        }
        _ if code == UNAUTHENTICATED => a.status = 401,
        _ => {}
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_encoding_and_decoding() {
        let allow = Answer {
            allowed: true,
            status: 200,
            headers_to_add: vec![("x-user".into(), "a".into()), ("x-user".into(), "b".into())],
            headers_to_remove: vec!["authorization".into()],
            query_params_to_remove: vec!["token".into()],
            response_headers: vec![("x-r".into(), "1".into())],
            dynamic_metadata: serde_json::json!({"k": "v"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..Answer::default()
        };
        assert_eq!(from_check_response(&to_check_response(&allow)), allow);
        let deny = Answer {
            allowed: false,
            status: 401,
            message: "no token".into(),
            response_headers: vec![("www-authenticate".into(), "Bearer".into())],
            body: "Jwt authentication failed".into(),
            ..Answer::default()
        };
        assert_eq!(from_check_response(&to_check_response(&deny)), deny);
    }

    #[test]
    fn a_response_without_status_denies() {
        let a = from_check_response(&CheckResponse::default());
        assert!(!a.allowed);
        assert_eq!(a.status, 403);
    }
}
