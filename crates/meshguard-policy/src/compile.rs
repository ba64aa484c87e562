//! Compiles validated resources into an indexed [`PolicySet`] and decides requests against it.
//!
//! Policies are indexed by namespace and by one label of their selector, so a decision looks at
//! the handful of policies that can apply to the destination workload instead of scanning all of
//! them. Evaluation borrows from the set and the request and allocates nothing on the common path.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

use crate::matcher::{self, PathMatch, RequestPrincipalMatch, StrMatch};
use crate::mesh::MeshConfig;
use crate::resource::{
    Action, Attr, AuthorizationPolicy, KeyRule, MtlsMode, PeerAuthentication,
    RequestAuthentication, Resource, Rule,
};

/// A compile failure (a value that validation should have refused).
#[derive(Debug, thiserror::Error)]
#[error("{policy}: {field}: {message}")]
pub struct CompileError {
    pub policy: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub(crate) enum M {
    Str(StrMatch),
    StrIgnoreCase(StrMatch),
    /// Envoy `present_match` (headers, methods, hosts with `*`).
    Present,
    Regex(Regex),
    /// A substring test that is equivalent to the regex Istio generates (namespaces without
    /// wildcards or regex syntax: `.*/ns/<ns>/.*` is "contains `/ns/<ns>/`").
    Contains(String),
    Path(PathMatch),
    Ip(ipnet::IpNet),
    Port(u16),
    RequestPrincipal(RequestPrincipalMatch),
}

#[derive(Debug, Clone)]
pub(crate) struct CKey {
    /// The field or `when` key as written, for explanations.
    pub(crate) field: String,
    pub(crate) attr: Attr,
    pub(crate) values: Vec<M>,
    pub(crate) not_values: Vec<M>,
}

#[derive(Debug, Clone)]
pub(crate) struct CRule {
    /// Position in the sorted RBAC policy names (Envoy reports the first match in that order).
    pub(crate) rank: u32,
    pub(crate) index: usize,
    pub(crate) from: Option<Vec<Vec<CKey>>>,
    pub(crate) to: Option<Vec<Vec<CKey>>>,
    pub(crate) when: Vec<CKey>,
    /// An ALLOW rule that uses an HTTP-only field is dropped from TCP filter chains.
    pub(crate) has_http_only: bool,
    /// An ALLOW rule with a key istiod cannot generate is dropped everywhere.
    pub(crate) has_broken: bool,
}

#[derive(Debug)]
pub(crate) struct CPolicy {
    pub(crate) src: AuthorizationPolicy,
    pub(crate) rules: Vec<CRule>,
}

#[derive(Debug, Default)]
struct ScopeIndex {
    unselected: Vec<u32>,
    /// label key -> label value -> policies whose selector's first label is that pair.
    by_label: HashMap<String, HashMap<String, Vec<u32>>>,
}

impl ScopeIndex {
    fn add(&mut self, id: u32, selector: Option<&BTreeMap<String, String>>) {
        match selector.and_then(|s| s.iter().next()) {
            None => self.unselected.push(id),
            Some((k, v)) => self
                .by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push(id),
        }
    }
}

fn selector_matches(
    sel: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A compiled, indexed and immutable set of policies.
#[derive(Debug)]
pub struct PolicySet {
    pub(crate) mesh: MeshConfig,
    pub(crate) resources: Vec<Resource>,
    pub(crate) authz: Vec<CPolicy>,
    authz_index: HashMap<String, ScopeIndex>,
    pub(crate) peer: Vec<PeerAuthentication>,
    pub(crate) request_authn: Vec<RequestAuthentication>,
    /// issuer -> extra claim names split on spaces (besides `scope` and `permission`).
    pub(crate) space_delimited: HashMap<String, Vec<String>>,
    pub(crate) auth_configs: Vec<crate::extauth::AuthConfig>,
    pub(crate) ext_auth_policies: Vec<crate::extauth::ExtAuthPolicy>,
    pub(crate) secrets: Vec<crate::extauth::Secret>,
    pub(crate) config_maps: Vec<crate::extauth::ConfigMap>,
}

fn rbac_name(p: &AuthorizationPolicy, rule: usize) -> String {
    let prefix = match (&p.action, &p.provider) {
        (Action::Custom, Some(pr)) => format!("istio-ext-authz-{pr}-"),
        _ => String::new(),
    };
    format!(
        "{prefix}ns[{}]-policy[{}]-rule[{rule}]",
        p.meta.namespace, p.meta.name
    )
}

impl PolicySet {
    /// Compiles validated resources (see [`crate::load`] for loading and validation).
    pub fn compile(
        resources: Vec<Resource>,
        mut mesh: MeshConfig,
    ) -> Result<PolicySet, CompileError> {
        // Every AuthConfig is an extension provider CUSTOM policies may name, as
        // `namespace.name` or `name`.
        for r in &resources {
            if let Resource::AuthConfig(c) = r {
                for id in c.ids() {
                    if !mesh.extension_providers.contains(&id) {
                        mesh.extension_providers.push(id);
                    }
                }
            }
        }
        let mut authz_src = Vec::new();
        let mut peer = Vec::new();
        let mut request_authn = Vec::new();
        let mut auth_configs = Vec::new();
        let mut ext_auth_policies = Vec::new();
        let mut secrets = Vec::new();
        let mut config_maps = Vec::new();
        for r in &resources {
            match r {
                Resource::AuthorizationPolicy(p) => authz_src.push(p.clone()),
                Resource::PeerAuthentication(p) => peer.push(p.clone()),
                Resource::RequestAuthentication(p) => request_authn.push(p.clone()),
                Resource::AuthConfig(c) => auth_configs.push(c.clone()),
                Resource::ExtAuthPolicy(c) => ext_auth_policies.push(c.clone()),
                Resource::Secret(x) => secrets.push(x.clone()),
                Resource::ConfigMap(x) => config_maps.push(x.clone()),
            }
        }
        // Oldest first, ties by name: the order istiod composes PeerAuthentication in.
        peer.sort_by(|a, b| {
            let ta = a.meta.creation_timestamp.as_deref().unwrap_or("");
            let tb = b.meta.creation_timestamp.as_deref().unwrap_or("");
            (ta, &a.meta.name, &a.meta.namespace).cmp(&(tb, &b.meta.name, &b.meta.namespace))
        });

        // Ranks: byte-wise order of the RBAC policy names, except that root-namespace DENY
        // policies come first (istiod puts them in their own RBAC filter ahead of the others).
        let mut names: Vec<(bool, String, usize, usize)> = Vec::new();
        for (pi, p) in authz_src.iter().enumerate() {
            let later = !(p.action == Action::Deny && p.meta.namespace == mesh.root_namespace);
            for ri in 0..p.rules.len().max(1) {
                names.push((later, rbac_name(p, ri), pi, ri));
            }
        }
        names.sort();
        let mut rank_of: HashMap<(usize, usize), u32> = HashMap::new();
        for (rank, (_, _, pi, ri)) in names.iter().enumerate() {
            rank_of.insert((*pi, *ri), u32::try_from(rank).unwrap_or(u32::MAX));
        }

        let mut authz = Vec::with_capacity(authz_src.len());
        let mut authz_index: HashMap<String, ScopeIndex> = HashMap::new();
        for (pi, p) in authz_src.into_iter().enumerate() {
            let mut rules = Vec::with_capacity(p.rules.len());
            for (ri, r) in p.rules.iter().enumerate() {
                let rank = rank_of.get(&(pi, ri)).copied().unwrap_or(u32::MAX);
                rules.push(compile_rule(&p, r, ri, rank, &mesh)?);
            }
            let id = u32::try_from(authz.len()).unwrap_or(u32::MAX);
            if !p.has_target_refs {
                authz_index
                    .entry(p.meta.namespace.clone())
                    .or_default()
                    .add(id, p.selector.as_ref());
            }
            authz.push(CPolicy { src: p, rules });
        }

        let mut space_delimited: HashMap<String, Vec<String>> = HashMap::new();
        for ra in &request_authn {
            for r in &ra.jwt_rules {
                let e = space_delimited.entry(r.issuer.clone()).or_default();
                for c in &r.space_delimited_claims {
                    if !e.contains(c) {
                        e.push(c.clone());
                    }
                }
            }
        }

        Ok(PolicySet {
            mesh,
            resources,
            authz,
            authz_index,
            peer,
            request_authn,
            space_delimited,
            auth_configs,
            ext_auth_policies,
            secrets,
            config_maps,
        })
    }

    /// Gloo Platform ExtAuthPolicies loaded with the policies.
    pub fn ext_auth_policies(&self) -> &[crate::extauth::ExtAuthPolicy] {
        &self.ext_auth_policies
    }

    /// The ExtAuthPolicy that applies to `req` (Gloo: the oldest of those that select it).
    pub fn ext_auth_policy_for(
        &self,
        req: &crate::Request,
    ) -> Option<&crate::extauth::ExtAuthPolicy> {
        if self.ext_auth_policies.is_empty() {
            return None;
        }
        let route = crate::extauth::RouteInfo::from_context_extensions(&req.context_extensions);
        let d = &req.destination;
        let dest = crate::extauth::DestinationInfo {
            namespace: &d.namespace,
            labels: &d.labels,
            port: d.port,
        };
        crate::extauth::select_ext_auth_policy(
            &self.ext_auth_policies,
            &route,
            &dest,
            &self.mesh.root_namespace,
        )
    }

    /// Gloo AuthConfigs loaded with the policies.
    pub fn auth_configs(&self) -> &[crate::extauth::AuthConfig] {
        &self.auth_configs
    }

    /// The AuthConfig named `id` (`namespace.name`, or a unique `name`).
    pub fn auth_config(&self, id: &str) -> Option<&crate::extauth::AuthConfig> {
        crate::extauth::find(&self.auth_configs, id)
    }

    pub fn secrets(&self) -> &[crate::extauth::Secret] {
        &self.secrets
    }

    pub fn config_maps(&self) -> &[crate::extauth::ConfigMap] {
        &self.config_maps
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// RequestAuthentication resources that apply to a workload (root namespace, then its own).
    pub fn request_authentications<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a RequestAuthentication> + 'a {
        let root = self.mesh.root_namespace.as_str();
        self.request_authn.iter().filter(move |ra| {
            !ra.has_target_refs
                && (ra.meta.namespace == namespace || ra.meta.namespace == root)
                && selector_matches(ra.selector.as_ref(), labels)
        })
    }

    /// The effective PeerAuthentication mode for a workload and port
    /// (istio `ComposePeerAuthentication`): workload > namespace > mesh > PERMISSIVE.
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: Option<u16>,
    ) -> MtlsMode {
        let root = self.mesh.root_namespace.as_str();
        let empty_sel = |p: &PeerAuthentication| p.selector.as_ref().is_none_or(BTreeMap::is_empty);
        let mut mesh_p = None;
        let mut ns_p = None;
        let mut wl_p = None;
        // `self.peer` is sorted oldest first, so the first hit per level wins.
        for p in &self.peer {
            if empty_sel(p) {
                if p.meta.namespace == root {
                    mesh_p.get_or_insert(p);
                } else if p.meta.namespace == namespace {
                    ns_p.get_or_insert(p);
                }
            } else if p.meta.namespace == namespace
                && p.meta.namespace != root
                && selector_matches(p.selector.as_ref(), labels)
            {
                wl_p.get_or_insert(p);
            }
        }
        let mut mode = MtlsMode::Permissive;
        for p in [mesh_p, ns_p, wl_p].into_iter().flatten() {
            if p.mode != MtlsMode::Unset {
                mode = p.mode;
            }
        }
        if let (Some(w), Some(port)) = (wl_p, port) {
            if let Some(m) = w.port_level.get(&u32::from(port)) {
                if *m != MtlsMode::Unset {
                    return *m;
                }
            }
        }
        mode
    }

    /// The CUSTOM providers named by the enforced AuthorizationPolicies that apply to a
    /// workload (Istio allows one per workload; more are reported by `lint`).
    pub fn custom_providers(&self, ns: &str, labels: &BTreeMap<String, String>) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.for_each_applicable(ns, labels, |p| {
            if p.src.action == crate::resource::Action::Custom && !p.src.dry_run {
                if let Some(name) = p.src.provider.as_deref() {
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        });
        out
    }

    pub(crate) fn for_each_applicable<'s>(
        &'s self,
        ns: &str,
        labels: &BTreeMap<String, String>,
        mut f: impl FnMut(&'s CPolicy),
    ) {
        let root = self.mesh.root_namespace.as_str();
        let scopes = [
            self.authz_index.get(root),
            if ns == root {
                None
            } else {
                self.authz_index.get(ns)
            },
        ];
        for scope in scopes.into_iter().flatten() {
            for &id in &scope.unselected {
                f(&self.authz[id as usize]);
            }
            for (k, v) in labels {
                if let Some(ids) = scope.by_label.get(k).and_then(|m| m.get(v)) {
                    for &id in ids {
                        let p = &self.authz[id as usize];
                        if selector_matches(p.src.selector.as_ref(), labels) {
                            f(p);
                        }
                    }
                }
            }
        }
    }
}

fn compile_rule(
    p: &AuthorizationPolicy,
    r: &Rule,
    index: usize,
    rank: u32,
    mesh: &MeshConfig,
) -> Result<CRule, CompileError> {
    let mut has_http_only = false;
    let is_broken = |k: &KeyRule| matches!(k.attr, Attr::Broken(_));
    let has_broken = r.when.iter().any(is_broken);
    let mut group =
        |g: &Option<Vec<Vec<KeyRule>>>| -> Result<Option<Vec<Vec<CKey>>>, CompileError> {
            match g {
                None => Ok(None),
                Some(alts) => alts
                    .iter()
                    .map(|keys| {
                        keys.iter()
                            .map(|k| {
                                has_http_only |= k.attr.http_only();
                                compile_key(p, k, mesh)
                            })
                            .collect()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
            }
        };
    let from = group(&r.from)?;
    let to = group(&r.to)?;
    let when = r
        .when
        .iter()
        .map(|k| {
            has_http_only |= k.attr.http_only();
            compile_key(p, k, mesh)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CRule {
        rank,
        index,
        from,
        to,
        when,
        has_http_only,
        has_broken,
    })
}

fn compile_key(
    p: &AuthorizationPolicy,
    k: &KeyRule,
    mesh: &MeshConfig,
) -> Result<CKey, CompileError> {
    let err = |message: String| CompileError {
        policy: format!("{}/{}", p.meta.namespace, p.meta.name),
        field: k.field.clone(),
        message,
    };
    let compile_one = |v: &str| -> Result<Vec<M>, CompileError> {
        Ok(match &k.attr {
            Attr::SrcPrincipal => principal_variants(v, mesh)
                .into_iter()
                .map(|pv| M::Str(StrMatch::with_prefix(&pv, "spiffe://")))
                .collect(),
            Attr::SrcNamespace if !v.contains(|c: char| "*.+?()|[]{}^$\\".contains(c)) => {
                vec![M::Contains(format!("/ns/{v}/"))]
            }
            Attr::SrcNamespace => vec![M::Regex(
                Regex::new(&matcher::namespace_regex(v)).map_err(|e| err(e.to_string()))?,
            )],
            // istiod (builder testdata trust-domains-in/-out): `td` is the principal prefix
            // `spiffe://td/`, a `*` in it matches within the domain (`spiffe://bad[^/]*/.*`).
            Attr::SrcTrustDomain => {
                let domain: Vec<String> = v.split('*').map(regex::escape).collect();
                vec![M::Regex(
                    Regex::new(&format!("^spiffe://{}/.*$", domain.join("[^/]*")))
                        .map_err(|e| err(e.to_string()))?,
                )]
            }
            Attr::SrcServiceAccount => vec![M::Regex(
                Regex::new(&matcher::service_account_regex(v, &p.meta.namespace))
                    .map_err(|e| err(e.to_string()))?,
            )],
            Attr::SrcIp | Attr::RemoteIp | Attr::DstIp => vec![M::Ip(
                crate::resource::parse_ip_block(v)
                    .ok_or_else(|| err(format!("bad IP address or CIDR `{v}`")))?,
            )],
            Attr::Port => vec![M::Port(
                v.parse().map_err(|_| err(format!("bad port `{v}`")))?,
            )],
            Attr::RequestPrincipal => vec![M::RequestPrincipal(RequestPrincipalMatch::new(v))],
            Attr::Header(_) | Attr::Method if v == "*" => vec![M::Present],
            Attr::Host if v == "*" => vec![M::Present],
            Attr::Host => vec![M::StrIgnoreCase(StrMatch::new_ignore_case(v))],
            Attr::Path => vec![M::Path(PathMatch::new(v).map_err(|e| err(e.to_string()))?)],
            Attr::Header(_)
            | Attr::Method
            | Attr::Sni
            | Attr::Audiences
            | Attr::Presenter
            | Attr::Claim(_)
            | Attr::EnvoyMetadata(_)
            | Attr::Broken(_) => vec![M::Str(StrMatch::new(v))],
        })
    };
    let mut values = Vec::with_capacity(k.values.len());
    for v in &k.values {
        values.extend(compile_one(v)?);
    }
    let mut not_values = Vec::with_capacity(k.not_values.len());
    for v in &k.not_values {
        not_values.extend(compile_one(v)?);
    }
    Ok(CKey {
        field: k.field.clone(),
        attr: k.attr.clone(),
        values,
        not_values,
    })
}

/// istio `MigrateTrustDomain`: a principal written with `cluster.local` (or the mesh trust domain
/// or an alias) also matches the same identity in the trust domain and every alias.
fn principal_variants(v: &str, mesh: &MeshConfig) -> Vec<String> {
    let mut out = vec![v.to_owned()];
    if mesh.trust_domain == "cluster.local" && mesh.trust_domain_aliases.is_empty() {
        return out;
    }
    let Some((td, rest)) = v.split_once('/') else {
        return out;
    };
    let known = td == "cluster.local"
        || td == mesh.trust_domain
        || mesh.trust_domain_aliases.iter().any(|a| a == td);
    if known {
        for t in std::iter::once(&mesh.trust_domain).chain(&mesh.trust_domain_aliases) {
            let cand = format!("{t}/{rest}");
            if !out.contains(&cand) {
                out.push(cand);
            }
        }
    }
    out
}
