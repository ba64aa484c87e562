//! X-Forwarded-Client-Cert in Envoy's grammar (quoted values, escaped quotes, several elements),
//! as HTTP mode reads it with --trust-forwarded-client-cert.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = meshguard_server::http::xfcc_uri(v) {
        assert!(!uri.is_empty(), "an accepted XFCC names a URI");
    }
});
