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
    #[error("{0}")]
    AuthConfig(String),
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

/// A workload name (`namespace/key=value,...`) or one of its parts that is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("`{0}`: the workload needs a namespace, as `namespace/app=name,version=v1`")]
    NoNamespace(String),
    #[error(
        "`{0}`: nothing after `/`; write the labels (`namespace/app=name`) or only the namespace"
    )]
    NoLabels(String),
    #[error("`{0}` is not a namespace name (lower-case letters, digits and `-`, at most 63)")]
    Namespace(String),
    #[error("`{0}`: labels are written key=value")]
    NotKeyValue(String),
    #[error("`{0}` is not a Kubernetes label (key: [prefix/]name of alphanumerics, `-`, `_`, `.`; value: up to 63 of the same)")]
    Label(String),
    #[error("label `{0}` is given twice")]
    Duplicate(String),
    /// One of the above, in the workload it came from.
    #[error("`{input}`: {source}")]
    In {
        input: String,
        #[source]
        source: Box<WorkloadError>,
    },
}
