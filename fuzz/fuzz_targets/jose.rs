//! The JOSE/JWT parser that sees every bearer token before any signature check (compact
//! serialisation, base64url segments, the header and payload JSON, strict: duplicate keys
//! refused), and the JWK Set parser that reads what a jwksUri or OIDC discovery returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_authn::jose;

fuzz_target!(|data: &[u8]| {
    for allow_oct in [false, true] {
        let _ = meshguard_authn::jwks::KeySet::parse(data, allow_oct);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = jose::parse_json_strict(data);
        return;
    };
    if let Ok(p) = jose::parse(text) {
        // The signed input is a prefix of the token, the payload segment is within it.
        assert!(text.starts_with(p.signing_input));
        assert!(p.signing_input.ends_with(p.payload_b64));
    }
    let _ = jose::parse_json_strict(data);
    let _ = jose::parse_alg(text);
});
