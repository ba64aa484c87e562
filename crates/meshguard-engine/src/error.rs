//! The engine's errors: what a user must fix, said in their terms.

use meshguard_policy::Diagnostic;

/// A policy set that cannot become the serving generation (the previous one stays).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Validation errors, each with file, line and field.
    #[error("{} error(s):\n{}", .0.len(), render(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("no policy files found (looked for *.yaml, *.yml, *.json)")]
    NoFiles,
    #[error(transparent)]
    Compile(#[from] meshguard_policy::CompileError),
    /// An AuthConfig that cannot be built (a Secret it names is missing, Rego that does not
    /// compile, ...).
    #[error("{message}")]
    AuthConfig {
        /// Where the AuthConfig came from (a file, or `kubernetes/AuthConfig/<ns>/<name>`).
        file: String,
        message: String,
    },
    /// The blocking task that loads files did not complete.
    #[error("reload task failed: {0}")]
    Task(String),
}

fn render(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
