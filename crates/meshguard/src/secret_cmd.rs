//! `meshguard secret apikey|htpasswd`: the Kubernetes Secrets the Gloo AuthConfig models read,
//! in exactly the shapes they accept:
//!
//! - `apiKeyAuth` (meshguard-authn `extauth/apikey.rs`): type `extauth.solo.io/apikey`, the key in
//!   `data.api-key`, other `data` entries as metadata for `headersFromMetadataEntry`; selected by
//!   `labelSelector` (same namespace as the AuthConfig) or `apiKeySecretRefs`.
//! - `basicAuth.htpasswdSecretRef` (meshguard-authn `extauth/basic.rs`): `data.htpasswd` holding
//!   `user:hash` lines; the hash is bcrypt (`$2y$`, cost at most 12), which the loader accepts
//!   beside `$apr1$`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Args, Subcommand};
use meshguard_policy::workload::{check_namespace, parse_label_list};

#[derive(Args)]
pub(crate) struct SecretArgs {
    #[command(subcommand)]
    kind: SecretKind,
}

#[derive(Subcommand)]
enum SecretKind {
    /// An API key Secret for `apiKeyAuth` (type extauth.solo.io/apikey, the key in `api-key`).
    ///
    /// With neither --key nor --key-stdin a random key (32 bytes, base64url) is generated and
    /// printed on standard error.
    Apikey(ApiKeyArgs),
    /// A Secret of htpasswd lines (bcrypt) for `basicAuth.htpasswdSecretRef`; the password is
    /// read from standard input, never from an argument.
    Htpasswd(HtpasswdArgs),
}

#[derive(Args)]
struct Common {
    /// The Secret's name (a DNS-1123 subdomain: lower-case letters, digits, `-` and `.`).
    #[arg(long)]
    name: String,
    /// Labels for the Secret, `key=value` (repeatable or comma-separated). `apiKeyAuth`'s
    /// `labelSelector` selects API key Secrets by them.
    #[arg(long = "label", short = 'l', value_delimiter = ',')]
    labels: Vec<String>,
    /// Write the YAML to this file (created with mode 0600, refused if it exists) instead of
    /// standard output.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ApiKeyArgs {
    #[command(flatten)]
    common: Common,
    /// The namespace: `labelSelector` only selects Secrets in the AuthConfig's own namespace.
    #[arg(long, short = 'n')]
    namespace: String,
    /// The API key. Visible to other local users in the process list: prefer --key-stdin.
    #[arg(long, conflicts_with = "key_stdin")]
    key: Option<String>,
    /// Read the API key from standard input (one line).
    #[arg(long)]
    key_stdin: bool,
    /// Another entry for `headersFromMetadataEntry`, `key=value` (repeatable).
    #[arg(long = "metadata", short = 'm')]
    metadata: Vec<String>,
}

#[derive(Args)]
struct HtpasswdArgs {
    #[command(flatten)]
    common: Common,
    /// The namespace (`htpasswdSecretRef` defaults to the AuthConfig's namespace).
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The user name (with --password-stdin). Replaces a same-named user of --from-file.
    #[arg(long, required_unless_present = "from_file")]
    user: Option<String>,
    /// Start from an htpasswd file (`user:hash` lines; bcrypt or `$apr1$` hashes, as basicAuth
    /// accepts them; other hash kinds are refused with their line).
    #[arg(long)]
    from_file: Option<PathBuf>,
    /// Read the password from standard input (one line; a trailing newline is dropped).
    #[arg(long)]
    password_stdin: bool,
    /// bcrypt cost (4 to 12; each step doubles the work of every check).
    #[arg(long, default_value_t = 10)]
    cost: u32,
}

/// The largest bcrypt cost the basicAuth loader accepts (meshguard-authn MAX_BCRYPT_COST).
const MAX_COST: u32 = meshguard_authn::extauth::basic::MAX_BCRYPT_COST;

pub(crate) fn run(a: SecretArgs) -> Result<ExitCode> {
    let (common, yaml) = match a.kind {
        SecretKind::Apikey(k) => {
            let y = apikey(&k)?;
            (k.common, y)
        }
        SecretKind::Htpasswd(h) => {
            let y = htpasswd(&h)?;
            (h.common, y)
        }
    };
    match &common.out {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(yaml.as_bytes())
                .and_then(|()| out.flush())
                .context("writing to standard output")?;
        }
        Some(path) => write_private(path, &yaml)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is not overwritten)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A Kubernetes object name (DNS-1123 subdomain).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !ok {
        bail!(
            "--name `{}` is not a Kubernetes object name (lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit, at most 253)",
            name.escape_debug()
        );
    }
    Ok(())
}

fn labels(c: &Common) -> Result<BTreeMap<String, String>> {
    parse_label_list(&c.labels.join(",")).map_err(|e| anyhow::anyhow!("--label {e}"))
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML), so no value is ever read as
/// a number, a boolean or YAML syntax.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn secret_yaml(
    name: &str,
    namespace: &str,
    secret_type: &str,
    labels: &BTreeMap<String, String>,
    data: &BTreeMap<String, Vec<u8>>,
    comment: &str,
) -> String {
    // A document start, so outputs appended to one file (`>> secrets.yaml`) stay separate
    // documents for kubectl and `--policies`.
    let mut y = String::from("---\n");
    for line in comment.lines() {
        y.push_str(&format!("# {line}\n"));
    }
    y.push_str("apiVersion: v1\nkind: Secret\n");
    y.push_str(&format!("type: {}\n", q(secret_type)));
    y.push_str("metadata:\n");
    y.push_str(&format!("  name: {}\n", q(name)));
    y.push_str(&format!("  namespace: {}\n", q(namespace)));
    if !labels.is_empty() {
        y.push_str("  labels:\n");
        for (k, v) in labels {
            y.push_str(&format!("    {}: {}\n", q(k), q(v)));
        }
    }
    y.push_str("data:\n");
    for (k, v) in data {
        y.push_str(&format!("  {}: {}\n", q(k), q(&b64(v))));
    }
    y
}

/// One line from standard input, without its line ending.
fn stdin_line(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .with_context(|| format!("reading the {what} from standard input"))?;
    let line = s
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&s);
    if line.contains(['\n', '\r']) {
        bail!("the {what} on standard input has more than one line; give one line");
    }
    if line.is_empty() {
        bail!("the {what} on standard input is empty");
    }
    Ok(line.to_owned())
}

/// A Secret data key (Kubernetes: alphanumerics, `-`, `_`, `.`).
fn check_data_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn apikey(a: &ApiKeyArgs) -> Result<String> {
    check_name(&a.common.name)?;
    check_namespace(&a.namespace).map_err(|e| anyhow::anyhow!("--namespace {e}"))?;
    let labels = labels(&a.common)?;
    let mut generated = false;
    let key = match (&a.key, a.key_stdin) {
        (Some(k), _) => k.clone(),
        (None, true) => stdin_line("API key")?,
        (None, false) => {
            let mut b = [0u8; 32];
            aws_lc_rs::rand::fill(&mut b)
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
            generated = true;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        }
    };
    // apiKeyAuth trims the presented header value; a key with surrounding blanks could never
    // be presented, and an empty one is refused by the loader.
    if key.trim() != key || key.is_empty() {
        bail!("--key must not be empty or start or end with blanks (the header value is trimmed before comparing)");
    }
    if key.bytes().any(|b| b.is_ascii_control()) {
        bail!("--key must not contain control characters (it travels in an HTTP header)");
    }
    let mut data = BTreeMap::new();
    data.insert(
        meshguard_authn::extauth::apikey::KEY_FIELD.to_owned(),
        key.clone().into_bytes(),
    );
    for m in &a.metadata {
        let Some((k, v)) = m.split_once('=') else {
            bail!("--metadata `{}`: write key=value", m.escape_debug());
        };
        if !check_data_key(k) {
            bail!(
                "--metadata `{}`: the key must be letters, digits, `-`, `_` or `.`",
                k.escape_debug()
            );
        }
        if k == meshguard_authn::extauth::apikey::KEY_FIELD {
            bail!("--metadata cannot set `api-key`: that entry is the key itself (use --key)");
        }
        if data.insert(k.to_owned(), v.as_bytes().to_vec()).is_some() {
            bail!("--metadata `{k}` is given twice");
        }
    }
    if generated {
        eprintln!(
            "generated API key (send it in the AuthConfig's headerName, default `api-key`): {key}"
        );
    }
    if std::io::stderr().is_terminal() {
        let sel = if labels.is_empty() {
            format!(
                "apiKeySecretRefs: [{{name: {}, namespace: {}}}]",
                a.common.name, a.namespace
            )
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!(
                "labelSelector: {{{}}} (an AuthConfig in namespace {})",
                l.join(", "),
                a.namespace
            )
        };
        eprintln!("select it in an AuthConfig with apiKeyAuth: {sel}");
    }
    Ok(secret_yaml(
        &a.common.name,
        &a.namespace,
        "extauth.solo.io/apikey",
        &labels,
        &data,
        "An API key for Gloo apiKeyAuth (meshguard secret apikey). The key is base64 in data.api-key.",
    ))
}

fn check_user(user: &str, what: &str) -> Result<()> {
    if user.is_empty()
        || user.contains(':')
        || user.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        bail!(
            "{what} `{}` cannot be used: a user name must be non-empty, without `:`, blanks or control characters (htpasswd lines and Basic credentials split at `:`)",
            user.escape_debug()
        );
    }
    Ok(())
}

/// The users of an htpasswd file, checked as basicAuth's loader checks them.
fn read_htpasswd(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    use meshguard_authn::extauth::basic::Stored;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut users: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            bail!("{at}: not a `user:hash` line");
        };
        check_user(user, &format!("{at}: user"))?;
        if Stored::from_htpasswd(hash).is_none() {
            bail!("{at}: user {user}: only bcrypt (`$2y$`, `$2b$`, `$2a$`) and `$apr1$` hashes are accepted by basicAuth (re-create the password with this command)");
        }
        if hash.starts_with("$2") {
            if let Some(cost) = hash.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
                if cost > MAX_COST {
                    bail!("{at}: user {user}: bcrypt cost {cost} is above {MAX_COST}, which basicAuth refuses");
                }
            }
        }
        if users.iter().any(|(u, _)| u == user) {
            bail!("{at}: user {user} is listed twice");
        }
        users.push((user.to_owned(), hash.to_owned()));
    }
    Ok(users)
}

fn htpasswd(a: &HtpasswdArgs) -> Result<String> {
    check_name(&a.common.name)?;
    check_namespace(&a.namespace).map_err(|e| anyhow::anyhow!("--namespace {e}"))?;
    let labels = labels(&a.common)?;
    let mut users = match &a.from_file {
        Some(p) => read_htpasswd(p)?,
        None => Vec::new(),
    };
    if let Some(user) = &a.user {
        check_user(user, "--user")?;
        if !(4..=MAX_COST).contains(&a.cost) {
            bail!(
                "--cost {} is out of range: use 4 to {MAX_COST} (basicAuth refuses costlier hashes)",
                a.cost
            );
        }
        if !a.password_stdin {
            bail!("give the password on standard input with --password-stdin (never as an argument, where the process list and shell history would show it), e.g. `printf '%s' \"$PASSWORD\" | meshguard secret htpasswd --name {} --user {user} --password-stdin`", a.common.name);
        }
        let password = stdin_line("password")?;
        if password.len() > 72 {
            bail!("the password is {} bytes; bcrypt reads only the first 72, so longer passwords are refused rather than cut", password.len());
        }
        let hash = bcrypt::hash(&password, a.cost)
            .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
        // bcrypt's output is `$2b$`; Apache's htpasswd writes `$2y$`. basicAuth takes both.
        match users.iter_mut().find(|(u, _)| u == user) {
            Some(entry) => entry.1 = hash,
            None => users.push((user.clone(), hash)),
        }
    } else if a.password_stdin {
        bail!("--password-stdin needs --user: the user whose password it is");
    }
    if users.is_empty() {
        bail!("no users: the --from-file file has none; add one with --user and --password-stdin");
    }
    let mut text = String::new();
    for (u, h) in &users {
        text.push_str(&format!("{u}:{h}\n"));
    }
    let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
    let mut data = BTreeMap::new();
    data.insert("htpasswd".to_owned(), text.into_bytes());
    if std::io::stderr().is_terminal() {
        eprintln!(
            "use it in an AuthConfig with basicAuth: {{htpasswdSecretRef: {{name: {}, namespace: {}}}}}",
            a.common.name, a.namespace
        );
    }
    Ok(secret_yaml(
        &a.common.name,
        &a.namespace,
        "Opaque",
        &labels,
        &data,
        &format!(
            "htpasswd lines for basicAuth.htpasswdSecretRef (meshguard secret htpasswd), users: {}.",
            names.join(", ")
        ),
    ))
}
