//! The one Envoy ext_authz v3 codec: a `CheckRequest`'s `AttributeContext` to meshguard's
//! `Request` and back, a `CheckResponse` to an [`Answer`] and back, and the gRPC client for
//! delegating to another ext_authz server. Used by `meshguard serve`'s gRPC adapter (decode the
//! request, encode the answer) and by pass-through steps (encode the request, decode the
//! answer), so both read and write Envoy's wire format the same way.

#![forbid(unsafe_code)]

mod answer;
mod attributes;
mod client;
pub mod value;

pub use answer::{from_check_response, to_check_response, Answer};
pub use attributes::{
    drop_context_extensions, request_from_check, set_filter_metadata, set_header, to_check_request,
    CodecError, MAX_CHECK_HEADERS,
};
pub use client::{Client, ClientError};
pub use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
