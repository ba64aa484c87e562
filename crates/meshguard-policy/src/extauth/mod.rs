//! External-auth resources read from the same policy paths as the Istio kinds: Gloo's
//! `AuthConfig` (enterprise.gloo.solo.io/v1), and the Kubernetes `Secret` and `ConfigMap` objects
//! its steps refer to (API keys, passwords, Rego modules and data documents).
//!
//! Field names follow Gloo's extauth.proto (solo-io/gloo
//! projects/gloo/api/v1/enterprise/options/extauth/v1/extauth.proto) and the Gloo Edge guides.
//! Models meshguard recognises but does not run yet are refused with a clear error, so a config
//! never silently means less than it says.
//!
//! `AuthConfig` and its list of steps are here; each group of models has its own file
//! (`credentials.rs`: API keys, Basic, LDAP; `oauth2.rs`: access tokens and OIDC login;
//! `rego.rs`: OPA; `passthrough.rs`: delegation), and `secret.rs` holds the Kubernetes objects.

mod credentials;
mod oauth2;
mod passthrough;
mod policy;
mod rego;
mod secret;

pub use self::credentials::{
    ApiKeyAuth, BasicAuth, LdapAuth, MetadataHeader, PasswordEncryption, StoredUser,
};
pub use self::oauth2::{AccessTokenValidation, OidcAuthorizationCode, TokenValidation};
pub use self::passthrough::{PassThroughAuth, PassThroughTarget};
pub(crate) use self::policy::parse_ext_auth_policy;
pub use self::policy::{
    select as select_ext_auth_policy, DestinationInfo, DestinationSelector, ExtAuthAction,
    ExtAuthPolicy, RouteInfo, RouteSelector, ServerRef, ROUTE_LABEL_PREFIX, ROUTE_NAMESPACE_KEY,
};
pub use self::rego::{RegoAuth, RegoMode};
pub use self::secret::{labels_match, ConfigMap, ObjectRef, Secret};

pub(crate) use self::secret::{parse_config_map, parse_secret};

use self::credentials::{parse_api_key, parse_basic, parse_ldap};
use self::oauth2::{parse_oauth2, parse_oidc};
use self::passthrough::parse_pass_through;
use self::rego::parse_rego;
use crate::boolexpr::BoolExpr;
use crate::diag::Ctx;
use std::collections::BTreeMap;

use crate::fields::{check_fields, get_bool, get_seq, get_str, join, parse_duration};
use crate::meta::{Meta, Origin};
use crate::yaml::Node;

/// One step of an AuthConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthModel {
    ApiKey(ApiKeyAuth),
    Basic(BasicAuth),
    Rego(RegoAuth),
    AccessToken(AccessTokenValidation),
    Ldap(LdapAuth),
    PassThrough(PassThroughAuth),
    Oidc(OidcAuthorizationCode),
    /// Gloo's `jwt: {}` placeholder: passes when request authentication (an Istio
    /// RequestAuthentication) verified a token for this request.
    Jwt,
}

impl AuthModel {
    /// The model's key in AuthConfig YAML.
    pub fn key(&self) -> &'static str {
        match self {
            AuthModel::ApiKey(_) => "apiKeyAuth",
            AuthModel::Basic(_) => "basicAuth",
            AuthModel::Rego(RegoAuth {
                mode: RegoMode::Gloo { .. },
                ..
            }) => "opaAuth",
            AuthModel::Rego(_) => "opaEnvoy",
            AuthModel::AccessToken(_) => "oauth2",
            AuthModel::Ldap(_) => "ldap",
            AuthModel::PassThrough(_) => "passThroughAuth",
            AuthModel::Oidc(_) => "oauth2.oidcAuthorizationCode",
            AuthModel::Jwt => "jwt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStep {
    pub name: String,
    pub line: u32,
    pub model: AuthModel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub meta: Meta,
    pub origin: Origin,
    pub steps: Vec<AuthStep>,
    /// `None`: every step must pass (AND).
    pub boolean_expr: Option<BoolExpr>,
}

/// A Kubernetes object an AuthConfig reads: what a cluster-backed source must fetch, and no
/// more (least privilege: no list of every Secret).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    /// A Secret named in the config (API keys, htpasswd, client secrets, LDAP service account).
    Secret(ObjectRef),
    /// The Secrets in `namespace` whose labels carry every pair of `selector` (apiKeyAuth
    /// `labelSelector`).
    LabelledSecrets {
        namespace: String,
        selector: BTreeMap<String, String>,
    },
    /// A ConfigMap holding Rego modules and data documents.
    ConfigMap(ObjectRef),
}

impl AuthConfig {
    /// Every Secret and ConfigMap this config reads, sorted, without repeats.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        for step in &self.steps {
            match &step.model {
                AuthModel::ApiKey(k) => {
                    out.extend(k.secret_refs.iter().cloned().map(Reference::Secret));
                    if let Some(sel) = k.label_selector.as_ref().filter(|s| !s.is_empty()) {
                        out.push(Reference::LabelledSecrets {
                            namespace: self.meta.namespace.clone(),
                            selector: sel.clone(),
                        });
                    }
                }
                AuthModel::Basic(b) => {
                    out.extend(b.htpasswd_secret.iter().cloned().map(Reference::Secret))
                }
                AuthModel::Ldap(l) => {
                    out.extend(l.service_account.iter().cloned().map(Reference::Secret))
                }
                AuthModel::Rego(r) => {
                    out.extend(r.modules.iter().cloned().map(Reference::ConfigMap))
                }
                AuthModel::AccessToken(t) => {
                    if let TokenValidation::Introspection {
                        client_secret: Some(s),
                        ..
                    } = &t.validation
                    {
                        out.push(Reference::Secret(s.clone()));
                    }
                }
                AuthModel::Oidc(o) => out.push(Reference::Secret(o.client_secret.clone())),
                AuthModel::PassThrough(_) | AuthModel::Jwt => {}
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Headers this config reads credentials from (API key headers, lower case): never logged.
    pub fn credential_headers(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.model {
                AuthModel::ApiKey(k) => Some(k.header_name.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }

    /// The names a request can use for this config: `namespace.name` (Gloo's `config_id`) and
    /// `name`.
    pub fn ids(&self) -> [String; 2] {
        [
            format!("{}.{}", self.meta.namespace, self.meta.name),
            self.meta.name.clone(),
        ]
    }
}

const GLOO_GROUP: &str = "enterprise.gloo.solo.io";

/// Whether this module parses a document of `kind` and `apiVersion`.
pub(crate) fn handles(kind: &str, api_version: &str) -> bool {
    (kind == "AuthConfig" && api_version.split('/').next() == Some(GLOO_GROUP))
        || policy::handles(kind, api_version)
        || (api_version == "v1" && (kind == "Secret" || kind == "ConfigMap"))
}

/// Models Gloo defines that meshguard does not run (yet).
const NOT_YET: &[&str] = &["hmacAuth", "opaServerAuth", "pluginAuth", "oauth"];
const MODELS: &[&str] = &[
    "apiKeyAuth",
    "basicAuth",
    "opaAuth",
    "opaEnvoy",
    "oauth2",
    "jwt",
    "ldap",
    "passThroughAuth",
];

pub(crate) fn parse_auth_config(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    sp: &str,
    meta: Meta,
    origin: Origin,
) -> Option<AuthConfig> {
    let Some(spec) = doc.get("spec").filter(|s| s.as_map().is_some()) else {
        ctx.err(doc, sp, "an AuthConfig needs `spec.configs`");
        return None;
    };
    check_fields(ctx, spec, sp, &["configs", "booleanExpr", "failOnRedirect"]);
    let (steps, boolean_expr) = parse_steps(ctx, spec, sp, &meta.namespace)?;
    Some(AuthConfig {
        meta,
        origin,
        steps,
        boolean_expr,
    })
}

/// The body an AuthConfig's `spec` and an ExtAuthPolicy's `config.glooAuth` share: `configs`
/// (the steps), `booleanExpr` and `failOnRedirect`. `ns` is where the steps' references resolve.
pub(crate) fn parse_steps(
    ctx: &mut Ctx<'_>,
    spec: &Node,
    sp: &str,
    ns: &str,
) -> Option<(Vec<AuthStep>, Option<BoolExpr>)> {
    let mut steps: Vec<AuthStep> = Vec::new();
    let Some(configs) = get_seq(ctx, spec, "configs", sp) else {
        ctx.err(
            spec,
            &join(sp, "configs"),
            "missing `configs` (the list of auth steps)",
        );
        return None;
    };
    if configs.is_empty() {
        ctx.err(
            spec,
            &join(sp, "configs"),
            "at least one config is required",
        );
    }
    for (i, c) in configs.iter().enumerate() {
        let path = format!("{}[{i}]", join(sp, "configs"));
        let Some(entries) = c.as_map() else {
            ctx.err(
                c,
                &path,
                format!("must be a mapping, found {}", c.type_name()),
            );
            continue;
        };
        let name = get_str(ctx, c, "name", &path)
            .map(|x| x.0)
            .unwrap_or_else(|| format!("config_{i}"));
        if steps.iter().any(|s| s.name == name) {
            ctx.err(
                c,
                &join(&path, "name"),
                format!("duplicate config name `{name}`"),
            );
        }
        let models: Vec<&str> = entries
            .iter()
            .map(|(k, _)| k.text.as_str())
            .filter(|k| *k != "name")
            .collect();
        let mut all: Vec<&str> = MODELS.to_vec();
        all.extend(NOT_YET);
        all.push("name");
        check_fields(ctx, c, &path, &all);
        let model = match models.as_slice() {
            [one] if NOT_YET.contains(one) => {
                ctx.err(
                    c,
                    &join(&path, one),
                    format!("`{one}` is a Gloo model meshguard does not run yet (supported: apiKeyAuth, basicAuth, ldap, opaAuth, opaEnvoy, oauth2.accessTokenValidation, passThroughAuth, jwt); refusing rather than skipping it"),
                );
                None
            }
            [one] if MODELS.contains(one) => {
                let node = c.get(one).unwrap_or(c);
                let p = join(&path, one);
                match *one {
                    "apiKeyAuth" => parse_api_key(ctx, node, &p, ns).map(AuthModel::ApiKey),
                    "basicAuth" => parse_basic(ctx, node, &p, ns).map(AuthModel::Basic),
                    "opaAuth" => parse_rego(ctx, node, &p, ns, false).map(AuthModel::Rego),
                    "opaEnvoy" => parse_rego(ctx, node, &p, ns, true).map(AuthModel::Rego),
                    "oauth2" if node.get("oidcAuthorizationCode").is_some() => {
                        parse_oidc(ctx, node, &p, ns).map(AuthModel::Oidc)
                    }
                    "oauth2" => parse_oauth2(ctx, node, &p, ns).map(AuthModel::AccessToken),
                    "ldap" => parse_ldap(ctx, node, &p, ns).map(AuthModel::Ldap),
                    "passThroughAuth" => {
                        parse_pass_through(ctx, node, &p).map(AuthModel::PassThrough)
                    }
                    _ => Some(AuthModel::Jwt),
                }
            }
            [] => {
                ctx.err(
                    c,
                    &path,
                    format!(
                        "config `{name}` names no auth model (one of {})",
                        MODELS.join(", ")
                    ),
                );
                None
            }
            many => {
                ctx.err(
                    c,
                    &path,
                    format!(
                        "config `{name}` has {} models ({}); each config holds exactly one",
                        many.len(),
                        many.join(", ")
                    ),
                );
                None
            }
        };
        if let Some(model) = model {
            steps.push(AuthStep {
                name,
                line: c.line,
                model,
            });
        }
    }
    let boolean_expr = match get_str(ctx, spec, "booleanExpr", sp) {
        Some((text, line, col)) if !text.trim().is_empty() => match BoolExpr::parse(&text) {
            Ok(e) => {
                for n in e.names() {
                    if !steps.iter().any(|s| s.name == n) && !configs.is_empty() {
                        ctx.err_at(
                            line,
                            col,
                            &join(sp, "booleanExpr"),
                            format!("`{n}` is not the name of a config here"),
                        );
                    }
                }
                Some(e)
            }
            Err(e) => {
                ctx.err_at(line, col, &join(sp, "booleanExpr"), e.to_string());
                None
            }
        },
        _ => None,
    };
    if get_bool(ctx, spec, "failOnRedirect", sp) == Some(true) {
        ctx.warn(
            spec,
            &join(sp, "failOnRedirect"),
            "has no effect: no supported model redirects",
        );
    }
    Some((steps, boolean_expr))
}

fn duration_field(
    ctx: &mut Ctx<'_>,
    n: &Node,
    key: &str,
    path: &str,
) -> Option<std::time::Duration> {
    let (text, line, col) = get_str(ctx, n, key, path)?;
    match parse_duration(&text) {
        Some(d) => Some(d),
        None => {
            ctx.err_at(
                line,
                col,
                &join(path, key),
                format!("`{text}` is not a duration like 5m or 30s"),
            );
            None
        }
    }
}

/// The AuthConfig a request names, by `namespace.name` or by `name` when that is unique.
pub fn find<'a>(configs: &'a [AuthConfig], id: &str) -> Option<&'a AuthConfig> {
    if let Some(c) = configs.iter().find(|c| c.ids()[0] == id) {
        return Some(c);
    }
    let mut by_name = configs.iter().filter(|c| c.meta.name == id);
    match (by_name.next(), by_name.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}
