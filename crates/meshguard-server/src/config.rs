//! The `meshguard serve --config` file: every key mirrors a flag (camelCase), read with the
//! shared field reader so a mistake names file, line and field. Flags and environment variables
//! override what the file says; the binary does that merge.

use std::path::{Path, PathBuf};

use meshguard_policy::read::{first_document, ConfigError, Field, FieldError};
use meshguard_policy::PathNormalization;

/// The keys a serve config file may have.
pub const KEYS: &[&str] = &[
    "grpcListen",
    "httpListen",
    "adminListen",
    "policies",
    "meshConfig",
    "rootNamespace",
    "pathNormalization",
    "providers",
    "workload",
    "trustedProxies",
    "forwardAuth",
    "trustForwardedClientCert",
    "httpPathPrefix",
    "authBindings",
    "routeLabels",
    "decisionLog",
    "decisionLogMaxBytes",
    "reloadInterval",
    "logLevel",
    "grpcMaxMessageBytes",
    "defaultDeny",
    "audit",
];

/// What a serve config file says; `None` or empty where it is silent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeFile {
    pub grpc_listen: Option<String>,
    pub http_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Relative paths are resolved against the config file's folder.
    pub policies: Vec<PathBuf>,
    /// Relative to the config file's folder.
    pub mesh_config: Option<PathBuf>,
    pub root_namespace: Option<String>,
    pub path_normalization: Option<PathNormalization>,
    pub providers: Vec<String>,
    pub workload: Option<String>,
    pub trusted_proxies: Vec<String>,
    pub forward_auth: Option<String>,
    pub trust_forwarded_client_cert: Option<bool>,
    pub http_path_prefix: Option<String>,
    pub auth_bindings: Vec<String>,
    pub route_labels: Vec<String>,
    pub decision_log: Option<String>,
    pub decision_log_max_bytes: Option<u64>,
    pub reload_interval: Option<String>,
    pub log_level: Option<String>,
    pub grpc_max_message_bytes: Option<usize>,
    pub default_deny: Option<bool>,
    /// Workloads in audit mode, as `namespace[/label=value,...]`.
    pub audit: Vec<String>,
}

impl ServeFile {
    pub fn load(path: &Path) -> Result<ServeFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::read("the config file", path, &e))?;
        ServeFile::parse(&text, path)
    }

    /// Parses a config text; `path` names it in errors and anchors relative paths. An empty
    /// file is an empty config.
    pub fn parse(text: &str, path: &Path) -> Result<ServeFile, ConfigError> {
        let file = path.display().to_string();
        let Some(doc) = first_document(text, &file)? else {
            return Ok(ServeFile::default());
        };
        let base = path.parent().map(PathBuf::from).unwrap_or_default();
        read(Field::root(&doc), &base).map_err(|e| ConfigError::field(&file, e))
    }
}

fn read(root: Field<'_, '_>, base: &Path) -> Result<ServeFile, FieldError> {
    root.mapping(KEYS)?;
    let text = |k: &str| root.get(k).map(|v| v.text()).transpose();
    let list = |k: &str| -> Result<Vec<String>, FieldError> {
        Ok(root
            .get(k)
            .map(|v| v.text_list())
            .transpose()?
            .unwrap_or_default())
    };
    let path_normalization = match root.get("pathNormalization") {
        None => None,
        Some(v) => {
            let s = v.text()?;
            Some(
                PathNormalization::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
                    v.error(format!(
                        "`{s}`: use NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                    ))
                })?,
            )
        }
    };
    let flag = |k: &str| root.get(k).map(|v| v.bool()).transpose();
    Ok(ServeFile {
        grpc_listen: text("grpcListen")?,
        http_listen: text("httpListen")?,
        admin_listen: text("adminListen")?,
        policies: list("policies")?
            .into_iter()
            .map(|p| base.join(p))
            .collect(),
        mesh_config: text("meshConfig")?.map(|p| base.join(p)),
        root_namespace: text("rootNamespace")?,
        path_normalization,
        providers: list("providers")?,
        workload: text("workload")?,
        trusted_proxies: list("trustedProxies")?,
        forward_auth: text("forwardAuth")?,
        trust_forwarded_client_cert: flag("trustForwardedClientCert")?,
        http_path_prefix: text("httpPathPrefix")?,
        auth_bindings: list("authBindings")?,
        route_labels: list("routeLabels")?,
        decision_log: text("decisionLog")?,
        decision_log_max_bytes: root
            .get("decisionLogMaxBytes")
            .map(|v| v.parse("a number of bytes (0: never rotate)"))
            .transpose()?,
        reload_interval: text("reloadInterval")?,
        log_level: text("logLevel")?,
        grpc_max_message_bytes: root
            .get("grpcMaxMessageBytes")
            .map(|v| v.parse("a number of bytes"))
            .transpose()?,
        default_deny: flag("defaultDeny")?,
        audit: match root.get("audit") {
            Some(v) => v
                .items()?
                .iter()
                .map(|i| i.text())
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mirror_flags_and_paths_follow_the_file() {
        let f = ServeFile::parse(
            "grpcListen: 127.0.0.1:0\npolicies: [a.yaml, /abs/b]\nmeshConfig: mesh.yaml\ntrustedProxies: 10.0.0.0/8, 127.0.0.1/32\npathNormalization: merge_slashes\ndefaultDeny: false\n",
            Path::new("/etc/mg/serve.yaml"),
        )
        .unwrap();
        assert_eq!(f.grpc_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            f.policies,
            [PathBuf::from("/etc/mg/a.yaml"), PathBuf::from("/abs/b")]
        );
        assert_eq!(f.mesh_config, Some(PathBuf::from("/etc/mg/mesh.yaml")));
        assert_eq!(f.trusted_proxies, ["10.0.0.0/8", "127.0.0.1/32"]);
        assert_eq!(f.path_normalization, Some(PathNormalization::MergeSlashes));
        assert_eq!(f.default_deny, Some(false));
    }

    #[test]
    fn mistakes_name_file_line_and_field() {
        let e = ServeFile::parse("grpcListen: a\nhttpListn: b\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "s.yaml:2: httpListn: unknown field `httpListn` (did you mean `httpListen`?)"
            ),
            "{e}"
        );
        let e = ServeFile::parse("grpcMaxMessageBytes: lots\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "s.yaml:1: grpcMaxMessageBytes: `lots` is not a number of bytes"
        );
        let e = ServeFile::parse("policies: {a: 1}\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("policies: must be a string, found a mapping"),
            "{e}"
        );
    }
}
