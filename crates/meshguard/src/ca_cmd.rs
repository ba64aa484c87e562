//! `meshguard ca`: create a SPIFFE CA, issue X.509-SVIDs, print the trust bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use meshguard_identity::{Ca, KeyType, SpiffeId};

#[derive(Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyArg {
    /// ECDSA P-256 (default)
    EcP256,
    /// RSA 2048
    Rsa2048,
}

impl From<KeyArg> for KeyType {
    fn from(k: KeyArg) -> KeyType {
        match k {
            KeyArg::EcP256 => KeyType::EcdsaP256,
            KeyArg::Rsa2048 => KeyType::Rsa2048,
        }
    }
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a root CA (or, with --parent, an intermediate signed by your own CA) in --dir:
    /// ca.crt, ca.key (mode 0600), bundle.crt, and jwt.key (0600), the key that signs JWT-SVIDs.
    Init {
        /// The trust domain, e.g. cluster.local.
        #[arg(long, required_unless_present = "parent")]
        trust_domain: Option<String>,
        /// Directory for the CA files; must not hold a CA already.
        #[arg(long)]
        dir: PathBuf,
        /// A CA directory (ca.crt, ca.key, bundle.crt) to sign an intermediate with.
        #[arg(long)]
        parent: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "ec-p256")]
        key_type: KeyArg,
    },
    /// Issue an X.509-SVID: writes svid.pem (leaf + intermediates), svid.key, bundle.pem to --out.
    Issue {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/prod/sa/web.
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime, e.g. 1h, 30m (at least 1s).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "ec-p256")]
        key_type: KeyArg,
    },
    /// Sign a JWT-SVID with the CA's JWT authority and print it.
    IssueJwt {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/prod/sa/web.
        #[arg(long)]
        spiffe_id: String,
        /// An audience the token is for; repeat for several.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Lifetime, e.g. 5m.
        #[arg(long, default_value = "5m")]
        ttl: String,
    },
    /// Create the JWT authority key (jwt.key, 0600) in a CA directory made without one, such as
    /// your own CA; `ca init` creates it already.
    JwtKey {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the trust bundle of the CA in --dir: PEM certificates, or the SPIFFE bundle format
    /// (a JWK Set with the X.509 roots and the JWT authority) with --format spiffe.
    Show {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BundleFormat {
    /// Root certificates, PEM.
    Pem,
    /// The SPIFFE bundle format (JWK Set with use x509-svid and jwt-svid keys).
    Spiffe,
}

fn parse_ttl(ttl: &str) -> Result<std::time::Duration> {
    let d = meshguard_policy::resource::parse_duration(ttl)
        .with_context(|| format!("--ttl `{ttl}` is not a duration like 1h or 30m"))?;
    if d < std::time::Duration::from_secs(1) {
        anyhow::bail!("--ttl `{ttl}` is too short: an SVID must live at least 1s");
    }
    Ok(d)
}

pub fn run(a: CaArgs) -> Result<ExitCode> {
    match a.command {
        CaCommand::Init {
            trust_domain,
            dir,
            parent,
            key_type,
        } => {
            let ca = match parent {
                Some(p) => Ca::init_intermediate(&dir, &p, key_type.into())?,
                None => Ca::init(
                    &dir,
                    trust_domain.as_deref().unwrap_or_default(),
                    key_type.into(),
                )?,
            };
            eprintln!(
                "created a CA for trust domain {} in {}",
                ca.trust_domain,
                dir.display()
            );
            eprintln!(
                "  certificate: {}  key: {} (0600)  bundle: {}",
                dir.join("ca.crt").display(),
                dir.join("ca.key").display(),
                dir.join("bundle.crt").display()
            );
            eprintln!(
                "  JWT-SVID authority: {} (0600)",
                dir.join("jwt.key").display()
            );
        }
        CaCommand::Issue {
            dir,
            spiffe_id,
            ttl,
            out,
            key_type,
        } => {
            let ca = Ca::load(&dir)?;
            let id = SpiffeId::parse_workload(&spiffe_id)
                .with_context(|| format!("--spiffe-id `{spiffe_id}`"))?;
            let ttl = parse_ttl(&ttl)?;
            let svid = ca.issue(&id, ttl, key_type.into())?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join("svid.pem"), &svid.cert_chain_pem)
                .with_context(|| format!("writing to {}", out.display()))?;
            let key_path = out.join("svid.key");
            let _ = std::fs::remove_file(&key_path);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            opts.open(&key_path)
                .and_then(|mut f| f.write_all(svid.key_pem.as_bytes()))
                .with_context(|| format!("writing {}", key_path.display()))?;
            std::fs::write(out.join("bundle.pem"), ca.bundle_pem())
                .with_context(|| format!("writing to {}", out.display()))?;
            eprintln!(
                "issued {} valid until {} -> {}/svid.pem, svid.key, bundle.pem",
                svid.id,
                svid.not_after,
                out.display()
            );
        }
        CaCommand::IssueJwt {
            dir,
            spiffe_id,
            audience,
            ttl,
        } => {
            let ca = Ca::load(&dir)?;
            let id = SpiffeId::parse_workload(&spiffe_id)
                .with_context(|| format!("--spiffe-id `{spiffe_id}`"))?;
            if id.trust_domain() != ca.trust_domain {
                anyhow::bail!(
                    "--spiffe-id `{spiffe_id}` is not in this CA's trust domain {}",
                    ca.trust_domain
                );
            }
            let signer = ca.jwt_signer().with_context(|| {
                format!(
                    "{} has no jwt.key; create it with `meshguard ca jwt-key --dir {}`",
                    dir.display(),
                    dir.display()
                )
            })?;
            println!("{}", signer.sign(&id, &audience, parse_ttl(&ttl)?)?);
        }
        CaCommand::JwtKey { dir } => {
            Ca::load(&dir)?;
            Ca::write_jwt_key(&dir)?;
            let ca = Ca::load(&dir)?;
            eprintln!(
                "JWT authority in {} (kid {})",
                dir.join("jwt.key").display(),
                ca.jwt_signer().map(|s| s.kid()).unwrap_or("?")
            );
        }
        CaCommand::Show { dir, format } => {
            let ca = Ca::load(&dir)?;
            match format {
                BundleFormat::Pem => print!("{}", ca.bundle_pem()),
                BundleFormat::Spiffe => println!(
                    "{}",
                    ca.spiffe_bundle_json(std::time::Duration::from_secs(300))
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
