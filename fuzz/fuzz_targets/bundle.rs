//! Policy bundles as `serve --bundle URL` reads them (`meshguard_engine::bundle::read`): any
//! bytes from a bundle server, read without a key and with one (the seed corpus holds bundles
//! signed by this key's private half, so the signature paths are reached). Never a panic; a
//! bundle that reads maps to documents without panicking, and packing its files again reads back
//! to the same files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_engine::bundle::{build, read, VerificationKey};

const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5G0+qoemdJns6GZ3aMJ9blZbAuae
L1gi/2xRlgVq78zLliIyrX3yxwIT44VwJyrVXPJnYP14kHyKhoFbVzRzXg==
-----END PUBLIC KEY-----
";

fuzz_target!(|data: &[u8]| {
    let key = VerificationKey::from_pem(PUBLIC_KEY.as_bytes(), "default", "").expect("key");
    let _ = read(data, Some(&key));
    let Ok(b) = read(data, None) else {
        return;
    };
    let _ = b.to_loaded();
    let again = build(&b.files, b.revision.as_deref(), None).expect("files that read pack again");
    let back = read(&again, None).expect("a packed bundle reads");
    let names = |files: &[meshguard_engine::bundle::BundleFile]| {
        files
            .iter()
            .filter(|f| f.name != ".manifest")
            .map(|f| (f.name.clone(), f.bytes.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&back.files),
        names(&b.files),
        "pack and read keep every file"
    );
});
