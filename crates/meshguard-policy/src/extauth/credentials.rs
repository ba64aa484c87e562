//! Steps that check a credential the client presents: `apiKeyAuth` (keys in Secrets),
//! `basicAuth` (stored or htpasswd users) and `ldap` (a bind plus group membership).

use std::collections::BTreeMap;

use super::secret::{object_ref, object_refs, ObjectRef};
use crate::diag::Ctx;
use crate::fields::{check_fields, get_bool, get_map, get_str, get_str_list, join, string_map};
use crate::yaml::Node;

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

pub(super) fn parse_api_key(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<ApiKeyAuth> {
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

pub(super) fn parse_basic(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<BasicAuth> {
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

pub(super) fn parse_ldap(ctx: &mut Ctx<'_>, n: &Node, p: &str, ns: &str) -> Option<LdapAuth> {
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
    let allowed_groups: Vec<String> = get_str_list(ctx, n, "allowedGroups", p)
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
