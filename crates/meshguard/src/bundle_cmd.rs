//! `meshguard bundle build|inspect`: policy bundles for `serve --bundle URL`
//! (meshguard-engine `bundle.rs` has the format).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use meshguard_engine::bundle::{self, BundleFile, SigningKey, VerificationKey};

#[derive(Args)]
pub(crate) struct BundleArgs {
    #[command(subcommand)]
    command: BundleCommand,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Pack a directory into a bundle (tar.gz): policy YAML/JSON anywhere, Rego modules and data
    /// at configmaps/<namespace>/<configmap>/<key>. The set is loaded and compiled first: a
    /// directory that would be refused by `serve` is refused here, with file, line and field.
    Build(BuildArgs),
    /// Read a bundle file, verify its signature when a key is given, and list what it holds.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// The directory to pack.
    dir: PathBuf,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "output", default_value = "bundle.tar.gz")]
    output: PathBuf,
    /// Sign it (OPA's .signatures.json) with this PKCS#8 PEM private key: RSA (RS256) or EC
    /// P-256 (ES256), e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// The key id the signature names (OPA's `keyid`; serve's --bundle-key-id must match).
    #[arg(long, default_value = "default")]
    key_id: String,
    /// The revision in .manifest. [default: the SHA-256 of the contents]
    #[arg(long)]
    revision: Option<String>,
}

#[derive(Args)]
struct InspectArgs {
    /// The bundle file.
    file: PathBuf,
    /// Verify the signature with this PEM public key.
    #[arg(long)]
    verification_key: Option<PathBuf>,
    /// The verification key's id (reported; as in OPA, the token's kid is not compared).
    #[arg(long, default_value = "default")]
    key_id: String,
}

pub(crate) fn run(a: BundleArgs) -> Result<ExitCode> {
    match a.command {
        BundleCommand::Build(b) => build(b),
        BundleCommand::Inspect(i) => inspect(i),
    }
}

/// Every file under `dir` that a bundle carries, with names relative to it (`/`-separated).
fn collect(dir: &Path) -> Result<Vec<BundleFile>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for e in rd {
            let p = e
                .with_context(|| format!("reading {}", d.display()))?
                .path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            let meta = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?;
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let wanted = [".yaml", ".yml", ".json", ".rego"]
                .iter()
                .any(|x| name.ends_with(x))
                || rel.starts_with("configmaps/");
            if !wanted {
                continue;
            }
            if meta.len() > bundle::MAX_FILE_BYTES {
                bail!(
                    "{}: larger than {} bytes",
                    p.display(),
                    bundle::MAX_FILE_BYTES
                );
            }
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            out.push(BundleFile { name: rel, bytes });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn build(a: BuildArgs) -> Result<ExitCode> {
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    let files = collect(&a.dir)?;
    if files.is_empty() {
        bail!(
            "{} holds no policy files (*.yaml, *.yml, *.json) or configmaps/ entries",
            a.dir.display()
        );
    }
    // What serve would load from it: refuse here what serve would refuse.
    let preview = bundle::Bundle {
        files: files.clone(),
        ..Default::default()
    };
    let loaded = preview.to_loaded();
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!(
                "{}",
                e.replacen("bundle/", &format!("{}/", a.dir.display()), 1)
            );
        }
        bail!("{} error(s); no bundle written", errors.len());
    }
    let resources = loaded.resources.len();
    meshguard_policy::PolicySet::compile(loaded.resources, Default::default())
        .map_err(|e| anyhow::anyhow!("the policies do not compile: {e}; no bundle written"))?;
    let key = match &a.signing_key {
        Some(p) => {
            let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                SigningKey::from_pem(&pem, &a.key_id)
                    .map_err(|e| anyhow::anyhow!("--signing-key {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let bytes = bundle::build(&files, a.revision.as_deref(), key.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let check = bundle::read(&bytes, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&a.output, &bytes).with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "wrote {}: {} file(s), {resources} resource(s), revision {}, {}",
        a.output.display(),
        files.len(),
        check.revision.as_deref().unwrap_or("-"),
        match &a.signing_key {
            Some(_) => format!("signed (key id {})", a.key_id),
            None => "unsigned".to_owned(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let key = match &a.verification_key {
        Some(p) => {
            let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                VerificationKey::from_pem(&pem, &a.key_id, "")
                    .map_err(|e| anyhow::anyhow!("--verification-key {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let b = bundle::read(&bytes, key.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    println!(
        "revision: {}\nsignature: {}",
        b.revision.as_deref().unwrap_or("-"),
        if b.verified {
            "verified"
        } else {
            "not checked (no --verification-key)"
        }
    );
    for f in &b.files {
        println!("  {} ({} bytes)", f.name, f.bytes.len());
    }
    Ok(ExitCode::SUCCESS)
}
