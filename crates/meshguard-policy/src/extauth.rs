//! External-auth resources read from the same policy paths as the Istio kinds: Gloo's
//! `AuthConfig` (enterprise.gloo.solo.io/v1), and the Kubernetes `Secret` and `ConfigMap` objects
//! its steps refer to (API keys, passwords, Rego modules and data documents).
//!
//! Field names follow Gloo's extauth.proto (solo-io/gloo
//! projects/gloo/api/v1/enterprise/options/extauth/v1/extauth.proto) and the Gloo Edge guides.
//! Models meshguard recognises but does not run yet are refused with a clear error, so a config
//! never silently means less than it says.

use std::collections::BTreeMap;

use crate::boolexpr::BoolExpr;
use crate::diag::Ctx;
use crate::resource::{
    check_fields, get_bool, get_map, get_seq, get_str, join, parse_meta, secret_string_map,
    string_map, Meta, Origin, Resource,
};
use crate::yaml::Node;

/// A reference to a Secret or ConfigMap. `namespace` defaults to the referring object's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub meta: Meta,
    pub origin: Origin,
    /// `type` (e.g. `extauth.solo.io/apikey`, `Opaque`).
    pub secret_type: String,
    /// `data` (base64-decoded) merged with `stringData` (which wins, as in Kubernetes).
    pub data: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMap {
    pub meta: Meta,
    pub origin: Origin,
    pub data: BTreeMap<String, String>,
}

/// A header filled from an API key's metadata (`headersFromMetadataEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataHeader {
    pub header: String,
    /// The Secret data key holding the value.
    pub key: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    /// Default `api-key`.
    pub header_name: String,
    /// Secrets in the AuthConfig's namespace with these labels (`labelSelector`).
    pub label_selector: Option<BTreeMap<String, String>>,
    pub secret_refs: Vec<ObjectRef>,
    pub headers_from_metadata: Vec<MetadataHeader>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordEncryption {
    /// Apache apr1 (MD5 crypt).
    Apr,
    /// Hex SHA-1 of password followed by salt.
    Sha1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub salt: String,
    pub hashed_password: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub realm: String,
    pub encryption: PasswordEncryption,
    pub users: BTreeMap<String, StoredUser>,
    /// meshguard extension: a Secret whose `htpasswd` (or `.htpasswd`) entry holds htpasswd
    /// lines (`$apr1$` or bcrypt `$2y$`), for teams that keep one file of users.
    pub htpasswd_secret: Option<ObjectRef>,
}

/// Which input document and decision convention a Rego step uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegoMode {
    /// Gloo `opaAuth`: input `{check_request, http_request, state}`, a query whose first
    /// expression is `true` (or an array starting with `true`) allows.
    Gloo { query: String },
    /// meshguard `opaEnvoy`: opa-envoy-plugin's input (`attributes`, `parsed_path`, ...), and a
    /// rule path (default `envoy/authz/allow`) that yields a boolean or a decision object.
    Envoy { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoAuth {
    /// ConfigMaps: `*.rego` entries are modules, `*.json` entries data documents.
    pub modules: Vec<ObjectRef>,
    pub mode: RegoMode,
}

/// How an access token is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenValidation {
    /// A JWT checked against a JWKS (inline or fetched and refreshed), and `issuer` if set.
    Jwt {
        local_jwks: Option<String>,
        remote_jwks: Option<(String, std::time::Duration)>,
        issuer: String,
    },
    /// RFC 7662 token introspection.
    Introspection {
        url: String,
        client_id: String,
        /// Secret holding the client secret (`client-secret` key).
        client_secret: Option<ObjectRef>,
        user_id_attribute: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenValidation {
    pub validation: TokenValidation,
    /// Introspection results are cached this long (default 10 minutes; 0 disables).
    pub cache_timeout: std::time::Duration,
    /// Every one of these must be in the token's `scope` (space-separated) or `scp`.
    pub required_scopes: Vec<String>,
    /// meshguard extension: claims copied into upstream headers.
    pub claims_to_headers: Vec<(String, String)>,
}

/// Gloo `ldap`: Basic credentials bound as `userDnTemplate` and group membership checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapAuth {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub address: String,
    /// A DN with exactly one `%s` for the user name.
    pub user_dn_template: String,
    /// Default `memberOf`.
    pub membership_attribute: String,
    pub allowed_groups: Vec<String>,
    /// Default `(uid=*)`.
    pub search_filter: String,
    pub pool_max: usize,
    pub pool_initial: usize,
    pub disable_group_checking: bool,
    /// `groupLookupSettings` with `checkGroupsWithServiceAccount`: group memberships are read
    /// bound as this account (Secret with `username` = its DN, `password`), not as the user.
    pub service_account: Option<ObjectRef>,
}

/// Where `passThroughAuth` delegates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassThroughTarget {
    /// Another Envoy ext_authz v3 gRPC server (`host:port`).
    Grpc { address: String },
    /// An HTTP service: POST, 200 allows.
    Http {
        url: String,
        allowed_headers: Vec<String>,
        headers_to_add: Vec<(String, String)>,
        pass_state: bool,
        pass_body: bool,
        allowed_upstream_headers: Vec<String>,
        allowed_client_headers_on_denied: Vec<String>,
        read_state: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PassThroughAuth {
    pub target: PassThroughTarget,
    pub timeout: std::time::Duration,
    /// `config` (a Struct) handed to the delegate.
    pub config: Option<serde_json::Value>,
    /// Allow when the delegate cannot be reached, times out or answers 5xx.
    pub failure_mode_allow: bool,
}

impl Eq for PassThroughAuth {}

/// Gloo `oauth2.oidcAuthorizationCode`: the browser login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcAuthorizationCode {
    pub client_id: String,
    /// Secret with the client secret (`client-secret` key).
    pub client_secret: ObjectRef,
    pub issuer_url: String,
    /// The application's external base URL (`https://app.example.com`).
    pub app_url: String,
    /// Default `/oauth-gloo-callback` (Gloo's default).
    pub callback_path: String,
    pub logout_path: Option<String>,
    pub after_logout_url: Option<String>,
    /// Extra scopes besides `openid`.
    pub scopes: Vec<String>,
    /// Upstream header for the ID token (e.g. `x-id-token`), if any.
    pub id_token_header: Option<String>,
    /// Upstream header for the access token, if any.
    pub access_token_header: Option<String>,
    /// `session.cookie.allowRefreshing`: an expired session is renewed with the refresh token
    /// (Gloo's default for cookie sessions is false).
    pub allow_refreshing: bool,
    /// `session.cookie.keyPrefix`: put before the cookie names as `<prefix>_`, so two OIDC
    /// AuthConfigs on one host keep separate sessions.
    pub cookie_prefix: Option<String>,
}

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

impl AuthConfig {
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

pub(crate) fn parse_object(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    prefix: &str,
    kind: &str,
    out: &mut Vec<Resource>,
) {
    let field = |f: &str| join(prefix, f);
    let known: &[&str] = match kind {
        "AuthConfig" => &["apiVersion", "kind", "metadata", "spec", "status"],
        "Secret" => &[
            "apiVersion",
            "kind",
            "metadata",
            "type",
            "data",
            "stringData",
            "immutable",
        ],
        _ => &[
            "apiVersion",
            "kind",
            "metadata",
            "data",
            "binaryData",
            "immutable",
        ],
    };
    check_fields(ctx, doc, prefix, known);
    let errors_before = ctx.error_count();
    let Some(meta) = parse_meta(ctx, doc, &field("metadata")) else {
        return;
    };
    ctx.resource = Some(format!("{kind} {}/{}", meta.namespace, meta.name));
    let origin = Origin {
        file: ctx.file.to_owned(),
        line: doc.line,
    };
    let res = match kind {
        "Secret" => parse_secret(ctx, doc, prefix, meta, origin).map(Resource::Secret),
        "ConfigMap" => {
            let data = doc
                .get("data")
                .map(|d| string_map(ctx, d, &field("data")))
                .unwrap_or_default();
            Some(Resource::ConfigMap(ConfigMap { meta, origin, data }))
        }
        _ => parse_auth_config(ctx, doc, &field("spec"), meta, origin).map(Resource::AuthConfig),
    };
    if let Some(r) = res {
        if ctx.error_count() == errors_before {
            out.push(r);
        }
    }
}

fn parse_secret(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    prefix: &str,
    meta: Meta,
    origin: Origin,
) -> Option<Secret> {
    use base64::Engine as _;
    let mut data = BTreeMap::new();
    if let Some(d) = doc.get("data") {
        for (k, v) in secret_string_map(ctx, d, &join(prefix, "data")) {
            let clean: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(clean.as_bytes()) {
                Ok(bytes) => {
                    data.insert(k, bytes);
                }
                Err(_) => {
                    let at = d.get(&k).unwrap_or(d);
                    ctx.err(
                        at,
                        &join(prefix, &format!("data.{k}")),
                        "is not base64 (Secret `data` values are base64; use `stringData` for plain text)",
                    );
                }
            }
        }
    }
    if let Some(d) = doc.get("stringData") {
        for (k, v) in secret_string_map(ctx, d, &join(prefix, "stringData")) {
            data.insert(k, v.into_bytes());
        }
    }
    let secret_type = get_str(ctx, doc, "type", prefix)
        .map(|t| t.0)
        .unwrap_or_else(|| "Opaque".to_owned());
    Some(Secret {
        meta,
        origin,
        secret_type,
        data,
    })
}

fn object_ref(ctx: &mut Ctx<'_>, n: &Node, path: &str, default_ns: &str) -> Option<ObjectRef> {
    if n.as_map().is_none() {
        ctx.err(
            n,
            path,
            format!(
                "must be a mapping {{name, namespace}}, found {}",
                n.type_name()
            ),
        );
        return None;
    }
    check_fields(ctx, n, path, &["name", "namespace"]);
    let Some((name, _, _)) = get_str(ctx, n, "name", path) else {
        ctx.err(n, &join(path, "name"), "missing `name`");
        return None;
    };
    let namespace = get_str(ctx, n, "namespace", path)
        .map(|x| x.0)
        .unwrap_or_else(|| default_ns.to_owned());
    Some(ObjectRef { name, namespace })
}

fn object_refs(
    ctx: &mut Ctx<'_>,
    parent: &Node,
    key: &str,
    path: &str,
    ns: &str,
) -> Vec<ObjectRef> {
    let mut out = Vec::new();
    if let Some(items) = get_seq(ctx, parent, key, path) {
        for (i, item) in items.iter().enumerate() {
            if let Some(r) = object_ref(ctx, item, &format!("{}[{i}]", join(path, key)), ns) {
                out.push(r);
            }
        }
    }
    out
}

fn parse_auth_config(
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
                    "apiKeyAuth" => {
                        parse_api_key(ctx, node, &p, &meta.namespace).map(AuthModel::ApiKey)
                    }
                    "basicAuth" => {
                        parse_basic(ctx, node, &p, &meta.namespace).map(AuthModel::Basic)
                    }
                    "opaAuth" => {
                        parse_rego(ctx, node, &p, &meta.namespace, false).map(AuthModel::Rego)
                    }
                    "opaEnvoy" => {
                        parse_rego(ctx, node, &p, &meta.namespace, true).map(AuthModel::Rego)
                    }
                    "oauth2" if node.get("oidcAuthorizationCode").is_some() => {
                        parse_oidc(ctx, node, &p, &meta.namespace).map(AuthModel::Oidc)
                    }
                    "oauth2" => {
                        parse_oauth2(ctx, node, &p, &meta.namespace).map(AuthModel::AccessToken)
                    }
                    "ldap" => parse_ldap(ctx, node, &p, &meta.namespace).map(AuthModel::Ldap),
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
                ctx.err_at(line, col, &join(sp, "booleanExpr"), e);
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
    Some(AuthConfig {
        meta,
        origin,
        steps,
        boolean_expr,
    })
}

fn parse_api_key(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<ApiKeyAuth> {
    check_fields(
        ctx,
        n,
        p,
        &[
            "headerName",
            "labelSelector",
            "apiKeySecretRefs",
            "k8sSecretApikeyStorage",
            "headersFromMetadataEntry",
            "headersFromMetadata",
            "skipMetadataValidation",
        ],
    );
    let header_name = get_str(ctx, n, "headerName", p)
        .map(|x| x.0.to_ascii_lowercase())
        .unwrap_or_else(|| "api-key".to_owned());
    let mut label_selector = n
        .get("labelSelector")
        .map(|l| string_map(ctx, l, &join(p, "labelSelector")));
    let mut secret_refs = object_refs(ctx, n, "apiKeySecretRefs", p, ns);
    if let Some(storage) = get_map(ctx, n, "k8sSecretApikeyStorage", p) {
        let sp = join(p, "k8sSecretApikeyStorage");
        check_fields(ctx, storage, &sp, &["labelSelector", "apiKeySecretRefs"]);
        if let Some(l) = storage.get("labelSelector") {
            label_selector = Some(string_map(ctx, l, &join(&sp, "labelSelector")));
        }
        secret_refs.extend(object_refs(ctx, storage, "apiKeySecretRefs", &sp, ns));
    }
    if label_selector.is_none() && secret_refs.is_empty() {
        ctx.err(
            n,
            p,
            "name the API key Secrets with `labelSelector` or `apiKeySecretRefs`",
        );
    }
    let mut headers_from_metadata = Vec::new();
    for key in ["headersFromMetadataEntry", "headersFromMetadata"] {
        if let Some(m) = get_map(ctx, n, key, p) {
            for (k, v) in m.as_map().unwrap_or(&[]) {
                let hp = join(&join(p, key), &k.text);
                if v.as_map().is_none() {
                    ctx.err(v, &hp, "must be a mapping {name, required}");
                    continue;
                }
                check_fields(ctx, v, &hp, &["name", "required"]);
                let Some((name, _, _)) = get_str(ctx, v, "name", &hp) else {
                    ctx.err(
                        v,
                        &join(&hp, "name"),
                        "missing `name` (the Secret data key)",
                    );
                    continue;
                };
                headers_from_metadata.push(MetadataHeader {
                    header: k.text.to_ascii_lowercase(),
                    key: name,
                    required: get_bool(ctx, v, "required", &hp).unwrap_or(false),
                });
            }
        }
    }
    let _ = get_bool(ctx, n, "skipMetadataValidation", p);
    Some(ApiKeyAuth {
        header_name,
        label_selector,
        secret_refs,
        headers_from_metadata,
    })
}

fn parse_users(ctx: &mut Ctx<'_>, n: &Node, p: &str) -> BTreeMap<String, StoredUser> {
    let mut users = BTreeMap::new();
    let Some(u) = get_map(ctx, n, "users", p) else {
        ctx.err(
            n,
            &join(p, "users"),
            "missing `users` (user name -> {salt, hashedPassword})",
        );
        return users;
    };
    for (k, v) in u.as_map().unwrap_or(&[]) {
        let up = join(&join(p, "users"), &k.text);
        check_fields(ctx, v, &up, &["salt", "hashedPassword"]);
        match (
            get_str(ctx, v, "salt", &up),
            get_str(ctx, v, "hashedPassword", &up),
        ) {
            (Some(salt), Some(hash)) => {
                users.insert(
                    k.text.clone(),
                    StoredUser {
                        salt: salt.0,
                        hashed_password: hash.0,
                    },
                );
            }
            _ => ctx.err(v, &up, "needs `salt` and `hashedPassword`"),
        }
    }
    users
}

fn parse_basic(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<BasicAuth> {
    check_fields(
        ctx,
        n,
        p,
        &[
            "realm",
            "apr",
            "encryption",
            "userList",
            "htpasswdSecretRef",
        ],
    );
    let realm = get_str(ctx, n, "realm", p).map(|x| x.0).unwrap_or_default();
    let htpasswd_secret = n
        .get("htpasswdSecretRef")
        .and_then(|r| object_ref(ctx, r, &join(p, "htpasswdSecretRef"), ns));
    let legacy = get_map(ctx, n, "apr", p);
    let extended = (n.get("encryption"), n.get("userList"));
    let (encryption, users) = match (legacy, extended) {
        (Some(apr), (None, None)) => {
            let ap = join(p, "apr");
            check_fields(ctx, apr, &ap, &["users"]);
            (PasswordEncryption::Apr, parse_users(ctx, apr, &ap))
        }
        (None, (Some(enc), Some(list))) => {
            let ep = join(p, "encryption");
            check_fields(ctx, enc, &ep, &["apr", "sha1"]);
            let e = match (enc.get("apr"), enc.get("sha1")) {
                (Some(_), None) => PasswordEncryption::Apr,
                (None, Some(_)) => PasswordEncryption::Sha1,
                _ => {
                    ctx.err(enc, &ep, "exactly one of `apr: {}` or `sha1: {}`");
                    PasswordEncryption::Apr
                }
            };
            let lp = join(p, "userList");
            check_fields(ctx, list, &lp, &["users"]);
            (e, parse_users(ctx, list, &lp))
        }
        (None, (None, None)) if htpasswd_secret.is_some() => {
            (PasswordEncryption::Apr, BTreeMap::new())
        }
        _ => {
            ctx.err(n, p, "define exactly one of `apr` or (`encryption` and `userList`), or `htpasswdSecretRef`");
            return None;
        }
    };
    Some(BasicAuth {
        realm,
        encryption,
        users,
        htpasswd_secret,
    })
}

fn parse_rego(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str, envoy: bool) -> Option<RegoAuth> {
    if envoy {
        check_fields(ctx, n, p, &["modules", "path"]);
    } else {
        check_fields(ctx, n, p, &["modules", "query", "options"]);
        if let Some(o) = get_map(ctx, n, "options", p) {
            let op = join(p, "options");
            check_fields(
                ctx,
                o,
                &op,
                &["fastInputConversion", "returnDecisionReason"],
            );
        }
    }
    let modules = object_refs(ctx, n, "modules", p, ns);
    if modules.is_empty() {
        ctx.err(
            n,
            &join(p, "modules"),
            "name at least one ConfigMap holding Rego modules",
        );
    }
    let mode = if envoy {
        let path = get_str(ctx, n, "path", p)
            .map(|x| x.0)
            .unwrap_or_else(|| "envoy/authz/allow".to_owned());
        RegoMode::Envoy {
            path: path.trim_matches('/').to_owned(),
        }
    } else {
        match get_str(ctx, n, "query", p) {
            Some((q, _, _)) => RegoMode::Gloo { query: q },
            None => {
                ctx.err(
                    n,
                    &join(p, "query"),
                    "missing `query` (e.g. `data.test.allow == true`)",
                );
                return None;
            }
        }
    };
    Some(RegoAuth { modules, mode })
}

/// A YAML value as JSON (for `config` Structs).
fn to_json(n: &Node) -> serde_json::Value {
    use crate::yaml::NodeKind as K;
    match &n.kind {
        K::Null => serde_json::Value::Null,
        K::Bool(b) => (*b).into(),
        K::Int(i) => (*i).into(),
        K::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        K::Str(s) => s.clone().into(),
        K::Seq(items) => items.iter().map(to_json).collect(),
        K::Map(m) => m
            .iter()
            .map(|(k, v)| (k.text.clone(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn lower_list(ctx: &mut Ctx<'_>, n: &Node, key: &str, p: &str) -> Vec<String> {
    crate::resource::get_str_list(ctx, n, key, p)
        .map(|l| l.into_iter().map(|x| x.0.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

fn parse_pass_through(ctx: &mut Ctx<'_>, n: &Node, p: &str) -> Option<PassThroughAuth> {
    check_fields(ctx, n, p, &["grpc", "http", "config", "failureModeAllow"]);
    let (target, timeout) = match (n.get("grpc"), n.get("http")) {
        (Some(g), None) => {
            let gp = join(p, "grpc");
            check_fields(
                ctx,
                g,
                &gp,
                &["address", "connectionTimeout", "tlsConfig", "retryPolicy"],
            );
            if g.get("tlsConfig").is_some() {
                ctx.err(g, &join(&gp, "tlsConfig"), "TLS to the delegate is not supported yet; refusing rather than sending plaintext");
            }
            let Some((address, _, _)) = get_str(ctx, g, "address", &gp) else {
                ctx.err(
                    g,
                    &join(&gp, "address"),
                    "missing `address` (host:port of an ext_authz gRPC server)",
                );
                return None;
            };
            let t = duration_field(ctx, g, "connectionTimeout", &gp)
                .unwrap_or(std::time::Duration::from_secs(5));
            (PassThroughTarget::Grpc { address }, t)
        }
        (None, Some(h)) => {
            let hp = join(p, "http");
            check_fields(
                ctx,
                h,
                &hp,
                &[
                    "url",
                    "request",
                    "response",
                    "connectionTimeout",
                    "tlsConfig",
                ],
            );
            let Some((url, line, col)) = get_str(ctx, h, "url", &hp) else {
                ctx.err(h, &join(&hp, "url"), "missing `url`");
                return None;
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                ctx.err_at(
                    line,
                    col,
                    &join(&hp, "url"),
                    "must be an http:// or https:// URL",
                );
            }
            let t = duration_field(ctx, h, "connectionTimeout", &hp)
                .unwrap_or(std::time::Duration::from_secs(5));
            let (mut allowed_headers, mut headers_to_add, mut pass_state, mut pass_body) =
                (Vec::new(), Vec::new(), false, false);
            if let Some(r) = get_map(ctx, h, "request", &hp) {
                let rp = join(&hp, "request");
                check_fields(
                    ctx,
                    r,
                    &rp,
                    &[
                        "allowedHeaders",
                        "headersToAdd",
                        "passThroughState",
                        "passThroughFilterMetadata",
                        "passThroughBody",
                    ],
                );
                allowed_headers = lower_list(ctx, r, "allowedHeaders", &rp);
                if let Some(m) = r.get("headersToAdd") {
                    headers_to_add = string_map(ctx, m, &join(&rp, "headersToAdd"))
                        .into_iter()
                        .collect();
                }
                pass_state = get_bool(ctx, r, "passThroughState", &rp).unwrap_or(false);
                pass_body = get_bool(ctx, r, "passThroughBody", &rp).unwrap_or(false);
            }
            let (mut up, mut denied, mut read_state) = (Vec::new(), Vec::new(), false);
            if let Some(r) = get_map(ctx, h, "response", &hp) {
                let rp = join(&hp, "response");
                check_fields(
                    ctx,
                    r,
                    &rp,
                    &[
                        "allowedUpstreamHeaders",
                        "allowedUpstreamHeadersToOverwrite",
                        "allowedClientHeadersOnDenied",
                        "readStateFromResponse",
                    ],
                );
                up = lower_list(ctx, r, "allowedUpstreamHeaders", &rp);
                up.extend(lower_list(ctx, r, "allowedUpstreamHeadersToOverwrite", &rp));
                denied = lower_list(ctx, r, "allowedClientHeadersOnDenied", &rp);
                read_state = get_bool(ctx, r, "readStateFromResponse", &rp).unwrap_or(false);
            }
            (
                PassThroughTarget::Http {
                    url,
                    allowed_headers,
                    headers_to_add,
                    pass_state,
                    pass_body,
                    allowed_upstream_headers: up,
                    allowed_client_headers_on_denied: denied,
                    read_state,
                },
                t,
            )
        }
        _ => {
            ctx.err(n, p, "exactly one of `grpc` or `http`");
            return None;
        }
    };
    Some(PassThroughAuth {
        target,
        timeout,
        config: n.get("config").map(to_json),
        failure_mode_allow: get_bool(ctx, n, "failureModeAllow", p).unwrap_or(false),
    })
}

fn parse_oidc(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<OidcAuthorizationCode> {
    check_fields(ctx, n, p, &["oidcAuthorizationCode"]);
    let o = get_map(ctx, n, "oidcAuthorizationCode", p)?;
    let p = join(p, "oidcAuthorizationCode");
    check_fields(
        ctx,
        o,
        &p,
        &[
            "clientId",
            "clientSecretRef",
            "issuerUrl",
            "appUrl",
            "callbackPath",
            "logoutPath",
            "afterLogoutUrl",
            "scopes",
            "headers",
            "session",
            "authEndpointQueryParams",
            "tokenEndpointQueryParams",
            "discoveryPollInterval",
            "endSessionProperties",
        ],
    );
    for unsupported in ["authEndpointQueryParams", "tokenEndpointQueryParams"] {
        if o.get(unsupported).is_some() {
            ctx.warn(
                o,
                &join(&p, unsupported),
                "ignored: meshguard sends only the standard parameters",
            );
        }
    }
    let mut allow_refreshing = false;
    let mut cookie_prefix = None;
    if let Some(sess) = get_map(ctx, o, "session", &p) {
        let sp = join(&p, "session");
        check_fields(
            ctx,
            sess,
            &sp,
            &["cookie", "redis", "cookieOptions", "failOnFetchFailure"],
        );
        for ignored in ["redis", "cookieOptions", "failOnFetchFailure"] {
            if sess.get(ignored).is_some() {
                ctx.warn(sess, &join(&sp, ignored), "ignored: meshguard keeps the session in its own encrypted cookie (lifetime: the ID token's)");
            }
        }
        if let Some(c) = get_map(ctx, sess, "cookie", &sp) {
            let cp = join(&sp, "cookie");
            check_fields(
                ctx,
                c,
                &cp,
                &["allowRefreshing", "keyPrefix", "targetDomain"],
            );
            if c.get("targetDomain").is_some() {
                ctx.warn(
                    c,
                    &join(&cp, "targetDomain"),
                    "ignored: meshguard scopes its cookies to the host",
                );
            }
            if let Some((prefix, line, col)) = get_str(ctx, c, "keyPrefix", &cp) {
                if prefix.is_empty()
                    || !prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    ctx.err_at(line, col, &join(&cp, "keyPrefix"), "must be letters, digits, `-`, `_` or `.` (it becomes part of the cookie name)");
                } else {
                    cookie_prefix = Some(prefix);
                }
            }
            allow_refreshing = get_bool(ctx, c, "allowRefreshing", &cp).unwrap_or(false);
        }
    }
    if let Some(e) = get_map(ctx, o, "endSessionProperties", &p) {
        let ep = join(&p, "endSessionProperties");
        check_fields(ctx, e, &ep, &["methodType"]);
        if let Some((m, line, col)) = get_str(ctx, e, "methodType", &ep) {
            if m != "GetMethod" {
                ctx.err_at(line, col, &join(&ep, "methodType"), format!("`{m}` is not supported: meshguard sends the browser to the provider's end_session_endpoint with GET (GetMethod)"));
            }
        }
    }
    let req = |ctx: &mut Ctx<'_>, key: &str| -> Option<String> {
        let v = get_str(ctx, o, key, &p).map(|x| x.0);
        if v.is_none() {
            ctx.err(o, &join(&p, key), format!("missing `{key}`"));
        }
        v
    };
    let client_id = req(ctx, "clientId")?;
    let issuer_url = req(ctx, "issuerUrl")?;
    let app_url = req(ctx, "appUrl")?;
    let Some(client_secret) = o
        .get("clientSecretRef")
        .and_then(|r| object_ref(ctx, r, &join(&p, "clientSecretRef"), ns))
    else {
        ctx.err(
            o,
            &join(&p, "clientSecretRef"),
            "missing `clientSecretRef` (a Secret with `client-secret`)",
        );
        return None;
    };
    for (k, v) in [("issuerUrl", &issuer_url), ("appUrl", &app_url)] {
        if !(v.starts_with("http://") || v.starts_with("https://")) {
            ctx.err(o, &join(&p, k), format!("`{v}` must be an http(s) URL"));
        }
    }
    let path_of = |ctx: &mut Ctx<'_>, key: &str| -> Option<String> {
        let (v, line, col) = get_str(ctx, o, key, &p)?;
        if !v.starts_with('/') {
            ctx.err_at(line, col, &join(&p, key), "must be a path starting with /");
        }
        Some(v)
    };
    let callback_path =
        path_of(ctx, "callbackPath").unwrap_or_else(|| "/oauth-gloo-callback".into());
    let logout_path = path_of(ctx, "logoutPath");
    let (mut id_token_header, mut access_token_header) = (None, None);
    if let Some(h) = get_map(ctx, o, "headers", &p) {
        let hp = join(&p, "headers");
        check_fields(
            ctx,
            h,
            &hp,
            &[
                "idTokenHeader",
                "accessTokenHeader",
                "useBearerSchemaForAuthorization",
            ],
        );
        id_token_header = get_str(ctx, h, "idTokenHeader", &hp).map(|x| x.0.to_ascii_lowercase());
        access_token_header =
            get_str(ctx, h, "accessTokenHeader", &hp).map(|x| x.0.to_ascii_lowercase());
    }
    Some(OidcAuthorizationCode {
        client_id,
        client_secret,
        issuer_url: issuer_url.trim_end_matches('/').to_owned(),
        app_url: app_url.trim_end_matches('/').to_owned(),
        callback_path,
        logout_path,
        after_logout_url: get_str(ctx, o, "afterLogoutUrl", &p).map(|x| x.0),
        scopes: crate::resource::get_str_list(ctx, o, "scopes", &p)
            .map(|l| l.into_iter().map(|x| x.0).collect())
            .unwrap_or_default(),
        id_token_header,
        access_token_header,
        allow_refreshing,
        cookie_prefix,
    })
}

fn parse_ldap(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<LdapAuth> {
    check_fields(
        ctx,
        n,
        p,
        &[
            "address",
            "userDnTemplate",
            "membershipAttributeName",
            "allowedGroups",
            "searchFilter",
            "pool",
            "disableGroupChecking",
            "groupLookupSettings",
        ],
    );
    let mut service_account = None;
    if let Some(g) = get_map(ctx, n, "groupLookupSettings", p) {
        let gp = join(p, "groupLookupSettings");
        check_fields(
            ctx,
            g,
            &gp,
            &["checkGroupsWithServiceAccount", "credentialsSecretRef"],
        );
        if get_bool(ctx, g, "checkGroupsWithServiceAccount", &gp) == Some(true) {
            match g.get("credentialsSecretRef") {
                Some(r) => {
                    service_account = object_ref(ctx, r, &join(&gp, "credentialsSecretRef"), ns)
                }
                None => ctx.err(
                    g,
                    &join(&gp, "credentialsSecretRef"),
                    "checkGroupsWithServiceAccount needs `credentialsSecretRef` (a Secret with `username`, the service account's DN, and `password`)",
                ),
            }
        }
    }
    let Some((address, line, col)) = get_str(ctx, n, "address", p) else {
        ctx.err(
            n,
            &join(p, "address"),
            "missing `address` (ldap://host:389 or ldaps://host:636)",
        );
        return None;
    };
    if !(address.starts_with("ldap://") || address.starts_with("ldaps://")) {
        ctx.err_at(
            line,
            col,
            &join(p, "address"),
            format!("`{address}` must start with ldap:// or ldaps://"),
        );
    }
    let Some((template, tl, tc)) = get_str(ctx, n, "userDnTemplate", p) else {
        ctx.err(
            n,
            &join(p, "userDnTemplate"),
            "missing `userDnTemplate` (e.g. uid=%s,ou=people,dc=example,dc=org)",
        );
        return None;
    };
    if template.matches("%s").count() != 1 {
        ctx.err_at(
            tl,
            tc,
            &join(p, "userDnTemplate"),
            "must contain exactly one %s (where the user name goes)",
        );
    }
    let disable = get_bool(ctx, n, "disableGroupChecking", p).unwrap_or(false);
    let allowed_groups: Vec<String> = crate::resource::get_str_list(ctx, n, "allowedGroups", p)
        .map(|l| l.into_iter().map(|x| x.0).collect())
        .unwrap_or_default();
    if allowed_groups.is_empty() && !disable {
        ctx.err(
            n,
            &join(p, "allowedGroups"),
            "name at least one group DN (or set disableGroupChecking: true)",
        );
    }
    let (mut pool_max, mut pool_initial) = (5usize, 2usize);
    if let Some(pool) = get_map(ctx, n, "pool", p) {
        let pp = join(p, "pool");
        check_fields(ctx, pool, &pp, &["maxSize", "initialSize"]);
        for (key, slot) in [
            ("maxSize", &mut pool_max),
            ("initialSize", &mut pool_initial),
        ] {
            if let Some(v) = pool.get(key) {
                match v.kind {
                    crate::yaml::NodeKind::Int(i) if (0..=1000).contains(&i) => *slot = i as usize,
                    _ => ctx.err(v, &join(&pp, key), "must be a number from 0 to 1000"),
                }
            }
        }
    }
    Some(LdapAuth {
        address,
        user_dn_template: template,
        membership_attribute: get_str(ctx, n, "membershipAttributeName", p)
            .map(|x| x.0)
            .unwrap_or_else(|| "memberOf".into()),
        allowed_groups,
        search_filter: get_str(ctx, n, "searchFilter", p)
            .map(|x| x.0)
            .unwrap_or_else(|| "(uid=*)".into()),
        pool_max: pool_max.max(1),
        pool_initial,
        disable_group_checking: disable,
        service_account,
    })
}

fn duration_field(
    ctx: &mut Ctx<'_>,
    n: &Node,
    key: &str,
    path: &str,
) -> Option<std::time::Duration> {
    let (text, line, col) = get_str(ctx, n, key, path)?;
    match crate::resource::parse_duration(&text) {
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

fn parse_oauth2(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<AccessTokenValidation> {
    check_fields(
        ctx,
        n,
        p,
        &["accessTokenValidation", "oidcAuthorizationCode"],
    );
    let Some(v) = get_map(ctx, n, "accessTokenValidation", p) else {
        ctx.err(
            n,
            &join(p, "accessTokenValidation"),
            "missing `accessTokenValidation`",
        );
        return None;
    };
    let p = join(p, "accessTokenValidation");
    check_fields(
        ctx,
        v,
        &p,
        &[
            "jwt",
            "introspection",
            "introspectionUrl",
            "userinfoUrl",
            "cacheTimeout",
            "requiredScopes",
            "dynamicMetadataFromClaims",
            "claimsToHeaders",
        ],
    );
    if v.get("userinfoUrl").is_some() {
        ctx.err(
            v,
            &join(&p, "userinfoUrl"),
            "userinfo lookups are not run by meshguard yet; refusing rather than skipping it",
        );
    }
    if v.get("dynamicMetadataFromClaims").is_some() {
        ctx.warn(
            v,
            &join(&p, "dynamicMetadataFromClaims"),
            "ignored: meshguard does not emit dynamic metadata from claims",
        );
    }
    let validation = match (
        v.get("jwt"),
        v.get("introspection"),
        v.get("introspectionUrl"),
    ) {
        (Some(j), None, None) => {
            let jp = join(&p, "jwt");
            check_fields(ctx, j, &jp, &["remoteJwks", "localJwks", "issuer"]);
            let local = get_map(ctx, j, "localJwks", &jp).and_then(|l| {
                check_fields(ctx, l, &join(&jp, "localJwks"), &["inlineString"]);
                get_str(ctx, l, "inlineString", &join(&jp, "localJwks")).map(|x| x.0)
            });
            let remote = get_map(ctx, j, "remoteJwks", &jp).and_then(|r| {
                let rp = join(&jp, "remoteJwks");
                check_fields(ctx, r, &rp, &["url", "refreshInterval"]);
                let url = get_str(ctx, r, "url", &rp).map(|x| x.0);
                let every = duration_field(ctx, r, "refreshInterval", &rp)
                    .unwrap_or(std::time::Duration::from_secs(300));
                url.map(|u| (u, every))
            });
            if local.is_some() == remote.is_some() {
                ctx.err(
                    j,
                    &jp,
                    "exactly one of `localJwks.inlineString` or `remoteJwks.url`",
                );
                return None;
            }
            TokenValidation::Jwt {
                local_jwks: local,
                remote_jwks: remote,
                issuer: get_str(ctx, j, "issuer", &jp)
                    .map(|x| x.0)
                    .unwrap_or_default(),
            }
        }
        (None, Some(i), None) => {
            let ip = join(&p, "introspection");
            check_fields(
                ctx,
                i,
                &ip,
                &[
                    "introspectionUrl",
                    "clientId",
                    "clientSecretRef",
                    "userIdAttributeName",
                    "disableClientSecret",
                ],
            );
            let Some((url, _, _)) = get_str(ctx, i, "introspectionUrl", &ip) else {
                ctx.err(
                    i,
                    &join(&ip, "introspectionUrl"),
                    "missing `introspectionUrl`",
                );
                return None;
            };
            let client_secret = if get_bool(ctx, i, "disableClientSecret", &ip) == Some(true) {
                None
            } else {
                i.get("clientSecretRef")
                    .and_then(|r| object_ref(ctx, r, &join(&ip, "clientSecretRef"), ns))
            };
            TokenValidation::Introspection {
                url,
                client_id: get_str(ctx, i, "clientId", &ip)
                    .map(|x| x.0)
                    .unwrap_or_default(),
                client_secret,
                user_id_attribute: get_str(ctx, i, "userIdAttributeName", &ip)
                    .map(|x| x.0)
                    .unwrap_or_else(|| "sub".into()),
            }
        }
        (None, None, Some(_)) => TokenValidation::Introspection {
            url: get_str(ctx, v, "introspectionUrl", &p)
                .map(|x| x.0)
                .unwrap_or_default(),
            client_id: String::new(),
            client_secret: None,
            user_id_attribute: "sub".into(),
        },
        _ => {
            ctx.err(
                v,
                &p,
                "exactly one of `jwt`, `introspection` or `introspectionUrl`",
            );
            return None;
        }
    };
    let required_scopes = get_map(ctx, v, "requiredScopes", &p)
        .and_then(|r| {
            let rp = join(&p, "requiredScopes");
            check_fields(ctx, r, &rp, &["scope"]);
            crate::resource::get_str_list(ctx, r, "scope", &rp)
        })
        .map(|l| l.into_iter().map(|x| x.0).collect())
        .unwrap_or_default();
    let mut claims_to_headers = Vec::new();
    if let Some(items) = get_seq(ctx, v, "claimsToHeaders", &p) {
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", join(&p, "claimsToHeaders"));
            check_fields(ctx, item, &ip, &["claim", "header", "append"]);
            match (
                get_str(ctx, item, "claim", &ip),
                get_str(ctx, item, "header", &ip),
            ) {
                (Some(c), Some(h)) => claims_to_headers.push((c.0, h.0.to_ascii_lowercase())),
                _ => ctx.err(item, &ip, "needs `claim` and `header`"),
            }
        }
    }
    Some(AccessTokenValidation {
        validation,
        cache_timeout: duration_field(ctx, v, "cacheTimeout", &p)
            .unwrap_or(std::time::Duration::from_secs(600)),
        required_scopes,
        claims_to_headers,
    })
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

/// Kubernetes label selector semantics for `matchLabels`: every pair must be present.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
