//! Policy bundles: a tar.gz of Istio/Gloo YAML (and JSON) with Rego modules and data, fetched
//! over HTTP with ETag polling, optionally signed in OPA's bundle signature format.
//!
//! Layout (what `meshguard bundle build DIR` packs and [`Bundle::to_loaded`] reads):
//! - `*.yaml`, `*.yml`, `*.json` anywhere: policy documents, as `--policies DIR` reads them;
//! - `configmaps/<namespace>/<name>/<key>`: one entry of the ConfigMap `<namespace>/<name>` (Rego
//!   modules `*.rego`, data documents `*.json`), so an AuthConfig's `opaAuth` modules can travel as
//!   plain `.rego` files;
//! - `.manifest`: OPA's manifest (`revision`, `roots`), reported, not needed;
//! - `.signatures.json`: OPA's signature file, `{"signatures": [JWT]}` whose payload lists every
//!   other file with its hash (`{"files": [{"name", "hash", "algorithm"}], "keyid", "scope"}`).
//!
//! Signatures are checked as OPA's `DefaultVerifier` does (open-policy-agent/opa
//! v1/bundle/verify.go): exactly one JWT; its signature with the configured key (OPA uses the
//! configured key id before the token's `kid`, so with one key the token's id selects nothing);
//! the scope must equal the configured one; every file in the bundle must be listed with a matching digest, and every
//! listed file must be in the bundle. Digests are SHA-256 (or -384/-512) of the bytes, except for
//! OPA's structured documents (`data.json`, `.manifest`), which are hashed over their parsed
//! JSON with keys sorted (v1/bundle/hash.go).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshguard_policy::load::Loaded;
use tokio::sync::Notify;

/// The signature file's name in a bundle.
pub const SIGNATURES: &str = ".signatures.json";
/// OPA's manifest.
pub const MANIFEST: &str = ".manifest";
/// Largest bundle accepted, compressed or not (a guard against the wrong URL or a gzip bomb).
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest file in a bundle.
pub const MAX_FILE_BYTES: u64 = crate::source::MAX_FILE_BYTES;
/// Most files in a bundle.
pub const MAX_FILES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a gzip-compressed tar archive: {0}")]
    Archive(String),
    #[error("bundle entry `{0}`: {1}")]
    Entry(String, String),
    #[error("the bundle is larger than {MAX_BUNDLE_BYTES} bytes (uncompressed) or holds more than {MAX_FILES} files")]
    TooLarge,
    #[error("signature: {0}")]
    Signature(String),
    #[error("key: {0}")]
    Key(String),
}

/// One file of a bundle (the path relative to the bundle root, `/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A bundle read and (when a key is given) verified.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// Every file but `.signatures.json`, sorted by name.
    pub files: Vec<BundleFile>,
    /// `.manifest`'s `revision`, if any.
    pub revision: Option<String>,
    /// Whether its signature was verified.
    pub verified: bool,
}

/// A public key that bundles must be signed with.
pub struct VerificationKey {
    key: jsonwebtoken::DecodingKey,
    algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The key's id (OPA's `signing.keyid`; `opa run --verification-key-id` defaults to
    /// `default`): reported, not compared with the token's `kid`, as OPA does with one key.
    pub key_id: String,
    /// The scope the signature must carry (OPA's `scope`; empty by default).
    pub scope: String,
}

impl VerificationKey {
    /// A PEM public key (`PUBLIC KEY`, RSA or EC P-256/P-384) or certificate.
    pub fn from_pem(pem: &[u8], key_id: &str, scope: &str) -> Result<VerificationKey, BundleError> {
        use jsonwebtoken::Algorithm::*;
        let text = std::str::from_utf8(pem).map_err(|_| BundleError::Key("not PEM text".into()))?;
        let (key, algorithms) = if let Ok(k) = jsonwebtoken::DecodingKey::from_rsa_pem(pem) {
            (k, vec![RS256, RS384, RS512, PS256, PS384, PS512])
        } else if let Ok(k) = jsonwebtoken::DecodingKey::from_ec_pem(pem) {
            (k, vec![ES256, ES384])
        } else if text.contains("PRIVATE KEY") {
            return Err(BundleError::Key(
                "this is a private key; give the public key (openssl pkey -pubout)".into(),
            ));
        } else {
            return Err(BundleError::Key(
                "not an RSA or EC public key in PEM (-----BEGIN PUBLIC KEY-----)".into(),
            ));
        };
        Ok(VerificationKey {
            key,
            algorithms,
            key_id: key_id.to_owned(),
            scope: scope.to_owned(),
        })
    }
}

/// A private key that signs bundles.
pub struct SigningKey {
    key: jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    pub key_id: String,
}

impl SigningKey {
    /// A PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey` writes),
    /// RSA (RS256) or EC P-256 (ES256); RSA also as PKCS#1.
    pub fn from_pem(pem: &[u8], key_id: &str) -> Result<SigningKey, BundleError> {
        let (key, algorithm) = if let Ok(k) = jsonwebtoken::EncodingKey::from_rsa_pem(pem) {
            (k, jsonwebtoken::Algorithm::RS256)
        } else if let Ok(k) = jsonwebtoken::EncodingKey::from_ec_pem(pem) {
            (k, jsonwebtoken::Algorithm::ES256)
        } else {
            return Err(BundleError::Key(
                "not an RSA or EC P-256 private key in PKCS#8 PEM (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)".into(),
            ));
        };
        Ok(SigningKey {
            key,
            algorithm,
            key_id: key_id.to_owned(),
        })
    }
}

/// Reads a tar.gz bundle; with a key, refuses it unless its signature covers exactly its files.
/// Without a key a signature is not checked.
pub fn read(bytes: &[u8], key: Option<&VerificationKey>) -> Result<Bundle, BundleError> {
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_BUNDLE_BYTES + 1);
    let mut archive = tar::Archive::new(gz);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Archive(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        if !kind.is_file() {
            return Err(BundleError::Entry(
                raw,
                "not a regular file (links and devices are refused)".into(),
            ));
        }
        let name = clean_name(&raw)?;
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES {
            return Err(BundleError::Entry(
                name,
                format!("larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        total = total.saturating_add(size);
        if total > MAX_BUNDLE_BYTES || files.len() >= MAX_FILES {
            return Err(BundleError::TooLarge);
        }
        let mut data = Vec::new();
        entry
            .by_ref()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| BundleError::Archive(e.to_string()))?;
        if files.insert(name.clone(), data).is_some() {
            return Err(BundleError::Entry(name, "appears twice".into()));
        }
    }
    let signatures = files.remove(SIGNATURES);
    let verified = match key {
        Some(k) => {
            let s = signatures.as_deref().ok_or_else(|| {
                BundleError::Signature(format!(
                    "the bundle has no {SIGNATURES}, and a verification key is configured"
                ))
            })?;
            verify(&files, s, k)?;
            true
        }
        None => false,
    };
    let revision = files
        .get(MANIFEST)
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(m).ok())
        .and_then(|m| m["revision"].as_str().map(str::to_owned));
    Ok(Bundle {
        files: files
            .into_iter()
            .map(|(name, bytes)| BundleFile { name, bytes })
            .collect(),
        revision,
        verified,
    })
}

/// A path inside the bundle, relative and `/`-separated; `..`, empty and odd names are refused.
/// A leading `/` or `./` is dropped (`opa build` writes `/data.json`).
fn clean_name(raw: &str) -> Result<String, BundleError> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => continue,
            ".." => return Err(BundleError::Entry(raw.into(), "`..` is not allowed".into())),
            p if p.contains('\\') || p.chars().any(char::is_control) => {
                return Err(BundleError::Entry(
                    raw.into(),
                    "odd characters in the name".into(),
                ))
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(BundleError::Entry(raw.into(), "empty name".into()));
    }
    Ok(parts.join("/"))
}

#[derive(serde::Deserialize)]
struct SignaturesFile {
    signatures: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Payload {
    #[serde(default)]
    files: Vec<FileInfo>,
    #[serde(default)]
    keyid: String,
    #[serde(default)]
    scope: String,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct FileInfo {
    name: String,
    hash: String,
    algorithm: String,
}

fn verify(
    files: &BTreeMap<String, Vec<u8>>,
    signatures: &[u8],
    key: &VerificationKey,
) -> Result<(), BundleError> {
    let sig = |m: String| BundleError::Signature(m);
    let s: SignaturesFile = serde_json::from_slice(signatures)
        .map_err(|e| sig(format!("{SIGNATURES} is not valid: {e}")))?;
    let token = match s.signatures.as_slice() {
        [t] => t,
        [] => {
            return Err(sig(format!(
                "{SIGNATURES}: missing JWT (expected exactly one)"
            )))
        }
        _ => {
            return Err(sig(format!(
                "{SIGNATURES}: several JWTs (expected exactly one)"
            )))
        }
    };
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| sig(format!("the JWT header is not valid: {e}")))?;
    if !key.algorithms.contains(&header.alg) {
        return Err(sig(format!(
            "signed with {:?}, which the configured key cannot verify",
            header.alg
        )));
    }
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).map_err(|e| {
            sig(format!(
                "the JWT does not verify with the configured key: {e}"
            ))
        })?;
    let payload: Payload = serde_json::from_value(data.claims)
        .map_err(|e| sig(format!("the JWT payload is not a bundle signature: {e}")))?;
    // OPA looks the key up by the configured key id first and by the token's `kid` (or the
    // deprecated `keyid` claim) only when none is configured; meshguard has exactly one key, so
    // the token's key id selects nothing and is not compared.
    let _ = (&header.kid, &payload.keyid);
    if payload.scope != key.scope {
        return Err(sig(format!(
            "scope mismatch (signature `{}`, configured `{}`)",
            payload.scope, key.scope
        )));
    }
    let mut listed: BTreeMap<String, FileInfo> = payload
        .files
        .into_iter()
        .map(|f| (f.name.trim_start_matches('/').to_owned(), f))
        .collect();
    for (name, bytes) in files {
        let info = listed
            .remove(name)
            .ok_or_else(|| sig(format!("{name}: not included in the bundle signature")))?;
        let digest = file_digest(name, bytes, &info.algorithm)?;
        if !digest.eq_ignore_ascii_case(&info.hash) {
            return Err(sig(format!(
                "{name}: digest mismatch (signed {}, got {digest})",
                info.hash
            )));
        }
    }
    if let Some(name) = listed.keys().next() {
        return Err(sig(format!(
            "{name}: in the bundle signature but not in the bundle"
        )));
    }
    Ok(())
}

/// Whether OPA hashes this file over its parsed JSON (v1/bundle: `IsStructuredDoc`).
fn is_structured(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base == "data.json" || base == MANIFEST
}

/// The hex digest of a file as OPA computes it.
fn file_digest(name: &str, bytes: &[u8], algorithm: &str) -> Result<String, BundleError> {
    let alg = match algorithm {
        "SHA-256" => &aws_lc_rs::digest::SHA256,
        "SHA-384" => &aws_lc_rs::digest::SHA384,
        "SHA-512" => &aws_lc_rs::digest::SHA512,
        "" => {
            return Err(BundleError::Signature(format!(
                "{name}: no hashing algorithm given"
            )))
        }
        other => {
            return Err(BundleError::Signature(format!(
                "{name}: hashing algorithm `{other}` is not supported (SHA-256, SHA-384, SHA-512)"
            )))
        }
    };
    let mut ctx = aws_lc_rs::digest::Context::new(alg);
    if is_structured(name) {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Entry(name.into(), format!("not valid JSON: {e}")))?;
        structured(&v, &mut ctx);
    } else {
        ctx.update(bytes);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// OPA's structural hash input: objects as `{"k":v,...}` with keys sorted, arrays as `[v,...]`,
/// primitives as Go's encoding/json writes them (no HTML escaping).
fn structured(v: &serde_json::Value, ctx: &mut aws_lc_rs::digest::Context) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            ctx.update(b"{");
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    ctx.update(b",");
                }
                ctx.update(go_string(k).as_bytes());
                ctx.update(b":");
                if let Some(x) = m.get(*k) {
                    structured(x, ctx);
                }
            }
            ctx.update(b"}");
        }
        Value::Array(a) => {
            ctx.update(b"[");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    ctx.update(b",");
                }
                structured(x, ctx);
            }
            ctx.update(b"]");
        }
        Value::String(s) => ctx.update(go_string(s).as_bytes()),
        other => ctx.update(other.to_string().as_bytes()),
    }
}

/// A JSON string as Go writes it: serde_json's escaping, plus U+2028/U+2029, which Go escapes.
fn go_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned())
        .to_string()
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Lower-case hex of bytes (digests).
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Packs files into a bundle: a `.manifest` with `revision` (given, or the SHA-256 of the
/// contents), and with a key a `.signatures.json` in OPA's format. Deterministic: the same files
/// give the same bytes.
pub fn build(
    files: &[BundleFile],
    revision: Option<&str>,
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, BundleError> {
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for f in files {
        let name = clean_name(&f.name)?;
        if name == SIGNATURES || name == MANIFEST {
            continue;
        }
        all.insert(name, f.bytes.clone());
    }
    let revision = match revision {
        Some(r) => r.to_owned(),
        None => {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for (n, b) in &all {
                ctx.update(&(n.len() as u64).to_be_bytes());
                ctx.update(n.as_bytes());
                ctx.update(&(b.len() as u64).to_be_bytes());
                ctx.update(b);
            }
            hex(ctx.finish().as_ref())
        }
    };
    let manifest = serde_json::json!({"revision": revision, "roots": [""]});
    all.insert(MANIFEST.to_owned(), manifest.to_string().into_bytes());
    if let Some(k) = key {
        let listed: Vec<FileInfo> = all
            .iter()
            .map(|(name, bytes)| {
                file_digest(name, bytes, "SHA-256").map(|hash| FileInfo {
                    name: name.clone(),
                    hash,
                    algorithm: "SHA-256".into(),
                })
            })
            .collect::<Result<_, _>>()?;
        let mut header = jsonwebtoken::Header::new(k.algorithm);
        header.kid = Some(k.key_id.clone());
        let payload = serde_json::json!({"files": listed, "keyid": k.key_id});
        let token = jsonwebtoken::encode(&header, &payload, &k.key)
            .map_err(|e| BundleError::Key(e.to_string()))?;
        let sigs = serde_json::json!({"signatures": [token]});
        all.insert(SIGNATURES.to_owned(), sigs.to_string().into_bytes());
    }
    let mut out = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in &all {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, bytes.as_slice())
                .map_err(|e| BundleError::Entry(name.clone(), e.to_string()))?;
        }
        let gz = tar
            .into_inner()
            .map_err(|e| BundleError::Archive(e.to_string()))?;
        gz.finish()
            .map_err(|e| BundleError::Archive(e.to_string()))?;
    }
    Ok(out)
}

impl Bundle {
    /// The bundle's documents as the engine loads them (names `bundle/<path>`); a file that
    /// does not belong is an error with its name.
    pub fn to_loaded(&self) -> Loaded {
        let mut l = Loaded::default();
        let mut config_maps: BTreeMap<
            (String, String),
            serde_json::Map<String, serde_json::Value>,
        > = BTreeMap::new();
        for f in &self.files {
            let display = format!("bundle/{}", f.name);
            if f.name == MANIFEST {
                continue;
            }
            let Ok(text) = std::str::from_utf8(&f.bytes) else {
                l.io_error(&display, "not UTF-8 text");
                continue;
            };
            if let Some(rest) = f.name.strip_prefix("configmaps/") {
                let parts: Vec<&str> = rest.split('/').collect();
                match parts.as_slice() {
                    [ns, name, key] => {
                        config_maps
                            .entry(((*ns).to_owned(), (*name).to_owned()))
                            .or_default()
                            .insert((*key).to_owned(), text.into());
                    }
                    _ => l.io_error(
                        &display,
                        "files under configmaps/ go at configmaps/<namespace>/<configmap>/<key>",
                    ),
                }
                continue;
            }
            if [".yaml", ".yml", ".json"]
                .iter()
                .any(|x| f.name.ends_with(x))
            {
                l.files.push(PathBuf::from(&display));
                l.add_text(text, &display);
            } else if f.name.ends_with(".rego") {
                l.io_error(
                    &display,
                    "a Rego module outside configmaps/: put it at configmaps/<namespace>/<configmap>/<name>.rego, the ConfigMap an AuthConfig's opaAuth or opaEnvoy `modules` names",
                );
            }
        }
        for ((ns, name), data) in config_maps {
            let display = format!("bundle/configmaps/{ns}/{name}");
            let doc = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns},
                "data": data,
            });
            l.files.push(PathBuf::from(&display));
            l.add_text(&doc.to_string(), &display);
        }
        l
    }
}

/// How [`BundleSource`] fetches.
pub struct BundleOptions {
    pub url: String,
    pub key: Option<VerificationKey>,
    /// Between polls (with up to 10% jitter).
    pub interval: Duration,
    /// For one fetch.
    pub timeout: Duration,
}

struct BundleShared {
    options: BundleOptions,
    client: reqwest::Client,
    current: Mutex<Option<Arc<Bundle>>>,
    etag: Mutex<Option<String>>,
    version: AtomicU64,
    changed: Arc<Notify>,
    problem: Mutex<Option<String>>,
    loaded: tokio::sync::watch::Sender<bool>,
}

/// A bundle URL as a policy source: polled with `If-None-Match`; a bundle that cannot be
/// fetched, read or verified is refused and the last good one stays.
#[derive(Clone)]
pub struct BundleSource {
    shared: Arc<BundleShared>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for BundleSource {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl BundleSource {
    /// Starts polling (the first fetch at once). Call inside a Tokio runtime.
    pub fn start(options: BundleOptions, client: reqwest::Client) -> BundleSource {
        let (loaded, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(BundleShared {
            options,
            client,
            current: Mutex::new(None),
            etag: Mutex::new(None),
            version: AtomicU64::new(0),
            changed: Arc::new(Notify::new()),
            problem: Mutex::new(None),
            loaded,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut seed = std::process::id() as u64 | 1;
            loop {
                s.fetch_once().await;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let jitter = 1.0 + (seed % 100) as f64 / 1000.0;
                tokio::time::sleep(s.options.interval.mul_f64(jitter)).await;
            }
        });
        BundleSource {
            shared,
            task: Arc::new(task),
        }
    }

    /// Waits for the first good bundle, logging the last problem every `progress`.
    pub async fn wait_loaded(&self, progress: Duration) {
        let mut rx = self.shared.loaded.subscribe();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(progress) => {
                    let p = crate::PolicySource::problems(self).join("; ");
                    tracing::info!(url = %self.shared.options.url, problem = %p, "waiting for the first good policy bundle (not ready until then)");
                }
            }
        }
    }

    /// The active bundle's revision.
    pub fn revision(&self) -> Option<String> {
        self.shared
            .current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().and_then(|b| b.revision.clone()))
    }
}

impl BundleShared {
    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut cur) = self.problem.lock() {
            if let Some(msg) = &p {
                if cur.as_ref() != Some(msg) {
                    tracing::error!(url = %self.options.url, problem = %msg, "policy bundle refused; the last good bundle stays");
                }
            } else if cur.is_some() {
                tracing::info!(url = %self.options.url, "policy bundle fetched again");
            }
            *cur = p;
        }
    }

    async fn fetch_once(self: &Arc<Self>) {
        let etag = self.etag.lock().ok().and_then(|e| e.clone());
        let mut req = self
            .client
            .get(&self.options.url)
            .timeout(self.options.timeout);
        if let Some(e) = &etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.set_problem(Some(format!("cannot fetch the bundle: {e}")));
                return;
            }
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && etag.is_some() {
            self.set_problem(None);
            return;
        }
        if !status.is_success() {
            self.set_problem(Some(format!("the bundle server answered {status}")));
            return;
        }
        let new_etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match read_bounded(resp).await {
            Ok(b) => b,
            Err(e) => {
                self.set_problem(Some(e));
                return;
            }
        };
        let me = self.clone();
        let read = tokio::task::spawn_blocking(move || read(&body, me.options.key.as_ref()))
            .await
            .map_err(|e| BundleError::Archive(format!("the reading task failed: {e}")))
            .and_then(|r| r);
        let bundle = match read {
            Ok(b) => b,
            Err(e) => {
                self.set_problem(Some(format!("bundle refused: {e}")));
                return;
            }
        };
        let changed = self.current.lock().is_ok_and(|mut cur| {
            let differs = cur.as_ref().is_none_or(|c| c.files != bundle.files);
            if differs {
                tracing::info!(url = %self.options.url, revision = %bundle.revision.as_deref().unwrap_or("-"), verified = bundle.verified, files = bundle.files.len(), "policy bundle fetched");
                *cur = Some(Arc::new(bundle));
            }
            differs
        });
        if let Ok(mut e) = self.etag.lock() {
            *e = new_etag;
        }
        self.set_problem(None);
        if changed {
            self.version.fetch_add(1, Ordering::SeqCst);
            self.changed.notify_one();
        }
        self.loaded.send_replace(true);
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > MAX_BUNDLE_BYTES) {
        return Err(format!(
            "the bundle is larger than {MAX_BUNDLE_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                body.extend_from_slice(&c);
                if body.len() as u64 > MAX_BUNDLE_BYTES {
                    return Err(format!(
                        "the bundle is larger than {MAX_BUNDLE_BYTES} bytes"
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("reading the bundle: {e}")),
        }
    }
}

impl crate::PolicySource for BundleSource {
    fn read(&self) -> Loaded {
        match self.shared.current.lock().ok().and_then(|c| c.clone()) {
            Some(b) => b.to_loaded(),
            None => Loaded::default(),
        }
    }
    fn fingerprint(&self) -> u64 {
        self.shared.version.load(Ordering::SeqCst)
    }
    fn must_have_files(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!(
            "the bundle {}{}",
            self.shared.options.url,
            if self.shared.options.key.is_some() {
                " (signature verified)"
            } else {
                " (signature not checked: no verification key)"
            }
        )
    }
    fn changed(&self) -> Option<Arc<Notify>> {
        Some(self.shared.changed.clone())
    }
    fn problems(&self) -> Vec<String> {
        self.shared
            .problem
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .into_iter()
            .collect()
    }
}
