//! Gloo Platform's `ExtAuthPolicy` (security.policy.gloo.solo.io/v2): which routes and
//! destinations get external auth, and what runs for them: an inline Gloo AuthConfig
//! (`config.glooAuth`) or a custom authorizer (`config.customAuth`).
//!
//! Field names follow solo-io/solo-apis `api/gloo.solo.io/policy/v2/security/ext_auth_policy.proto`
//! (and `common/v2` selectors) and the Gloo Platform 2.14 CRD; `glooAuth` is the same message as
//! an AuthConfig's `spec`, read by [`super::parse_steps`]. `config.disable` is refused as Gloo
//! refuses it (deprecated, "currently unsupported"; gone from the 2.14 CRD).
//!
//! How a route and a destination reach meshguard (there is no RouteTable or Service object here):
//! - route labels: Envoy per-route `context_extensions` `route_label.<key>: <value>` (gRPC), or
//!   `--route-labels [host]/path=key=value;...` (HTTP forward-auth), or a `check` request file's
//!   `routeLabels`; the RouteTable's namespace: `route_namespace` (default: the destination's);
//! - the destination: the request's destination workload (namespace, labels) and port.
//!   `selector.name` (a Service) is refused: meshguard sees workloads, not Services, and taking
//!   the Service from the request's Host would let a client choose (or dodge) the policy.
//!
//! Scope: a policy outside the mesh root namespace applies only to destinations in its own
//! namespace, so a team cannot attach auth (whose allow counts as explicit under default deny)
//! to another team's workloads, nor displace their policies by being older.
//!
//! Selection, as the proto documents it: a route is selected when any `applyToRoutes` entry's
//! labels are all on it; a destination when any `applyToDestinations` entry matches it; a policy
//! with neither list applies to every destination. "Only one external auth policy can apply to
//! a route. Subsequent policies (sorted by creation time) are ignored" (the same for
//! destinations): the oldest applies (ties, which Gloo leaves open, by namespace/name), and
//! `lint` reports every overlap.

use std::collections::BTreeMap;

use super::{parse_steps, AuthConfig};
use crate::diag::Ctx;
use crate::fields::{check_fields, get_map, get_seq, get_str, join, string_map};
use crate::meta::{Meta, Origin};
use crate::yaml::{Node, NodeKind};

pub(crate) const GROUP: &str = "security.policy.gloo.solo.io";

/// The context-extension prefix that carries one route label (`route_label.route: ratings`).
pub const ROUTE_LABEL_PREFIX: &str = "route_label.";
/// The context extension that carries the namespace of the route's RouteTable.
pub const ROUTE_NAMESPACE_KEY: &str = "route_namespace";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthPolicy {
    pub meta: Meta,
    pub origin: Origin,
    pub routes: Vec<RouteSelector>,
    pub destinations: Vec<DestinationSelector>,
    pub action: ExtAuthAction,
    /// `config.server`: the ext auth server Gloo would configure. meshguard runs `glooAuth`
    /// itself; for `customAuth` the server's name is the meshConfig extension provider called.
    pub server: Option<ServerRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRef {
    pub name: String,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
}

/// What an ExtAuthPolicy does for the requests it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthAction {
    /// `config.glooAuth`: the inline AuthConfig, run in-process. Its `meta` is the policy's.
    Gloo(Box<AuthConfig>),
    /// `config.customAuth`: ask the external authorizer `config.server` names, with these
    /// extra context extensions.
    Custom {
        context_extensions: BTreeMap<String, String>,
    },
}

/// One `applyToRoutes` entry. Every given part must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSelector {
    pub line: u32,
    /// `route.labels`: every pair must be on the route.
    pub labels: BTreeMap<String, String>,
    /// `route.namespace`: the RouteTable's namespace.
    pub namespace: Option<String>,
}

/// One `applyToDestinations` entry. Every given part must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSelector {
    pub line: u32,
    /// `selector.labels`, matched against the destination workload's labels.
    pub labels: BTreeMap<String, String>,
    /// `selector.namespace` (or the `ref`'s namespace).
    pub namespace: Option<String>,
    /// `port.number`.
    pub port: Option<u16>,
}

/// The route a request arrived on, as the front end knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// The RouteTable's namespace, when the front end says it.
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl RouteInfo {
    /// Reads `route_label.<key>` and `route_namespace` from per-route context extensions.
    pub fn from_context_extensions(ext: &BTreeMap<String, String>) -> RouteInfo {
        RouteInfo {
            namespace: ext
                .get(ROUTE_NAMESPACE_KEY)
                .filter(|v| !v.is_empty())
                .cloned(),
            labels: ext
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(ROUTE_LABEL_PREFIX)
                        .filter(|k| !k.is_empty())
                        .map(|k| (k.to_owned(), v.clone()))
                })
                .collect(),
        }
    }
}

/// The destination of a request, as ExtAuthPolicy selectors see it.
#[derive(Debug, Clone, Copy)]
pub struct DestinationInfo<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub port: Option<u16>,
}

impl RouteSelector {
    /// `dest_ns` stands for the RouteTable's namespace when the route does not say it.
    pub fn matches(&self, route: &RouteInfo, dest_ns: &str) -> bool {
        let ns = route.namespace.as_deref().unwrap_or(dest_ns);
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && !route.labels.is_empty()
            && self
                .labels
                .iter()
                .all(|(k, v)| route.labels.get(k) == Some(v))
    }
}

impl DestinationSelector {
    pub fn matches(&self, d: &DestinationInfo<'_>) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|n| n == d.namespace);
        // An unknown port cannot rule the policy out: it applies (fail closed).
        let port_ok = self.port.is_none_or(|p| d.port.is_none_or(|dp| dp == p));
        let labels_ok = self.labels.iter().all(|(k, v)| d.labels.get(k) == Some(v));
        ns_ok && port_ok && labels_ok
    }
}

impl ExtAuthPolicy {
    /// `namespace.name`, as logs, metrics and `lint` name this policy.
    pub fn id(&self) -> String {
        format!("{}.{}", self.meta.namespace, self.meta.name)
    }

    /// Whether this policy selects a request on `route` to `dest`: what either list selects;
    /// with neither list, every destination ("If you don't select any routes or destinations,
    /// an external auth policy is applied to all destinations by default").
    pub fn applies(&self, route: &RouteInfo, dest: &DestinationInfo<'_>, root_ns: &str) -> bool {
        if self.meta.namespace != root_ns && self.meta.namespace != dest.namespace {
            return false;
        }
        if self.routes.is_empty() && self.destinations.is_empty() {
            return true;
        }
        self.routes.iter().any(|r| r.matches(route, dest.namespace))
            || self.destinations.iter().any(|d| d.matches(dest))
    }

    /// The order Gloo resolves conflicts in: oldest first, then namespace/name.
    pub fn age_key(&self) -> (&str, &str, &str) {
        (
            self.meta.creation_timestamp.as_deref().unwrap_or(""),
            &self.meta.namespace,
            &self.meta.name,
        )
    }

    /// Whether some route or destination could be selected by both policies (for `lint`).
    pub fn overlaps(&self, other: &ExtAuthPolicy) -> bool {
        let everything = |p: &ExtAuthPolicy| p.routes.is_empty() && p.destinations.is_empty();
        if everything(self) || everything(other) {
            return true;
        }
        let compatible = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
        };
        let routes = self.routes.iter().any(|a| {
            other.routes.iter().any(|b| {
                compatible(&a.labels, &b.labels)
                    && (a.namespace.is_none()
                        || b.namespace.is_none()
                        || a.namespace == b.namespace)
            })
        });
        let dests = self.destinations.iter().any(|a| {
            other.destinations.iter().any(|b| {
                compatible(&a.labels, &b.labels)
                    && (a.namespace.is_none()
                        || b.namespace.is_none()
                        || a.namespace == b.namespace)
                    && (a.port.is_none() || b.port.is_none() || a.port == b.port)
            })
        });
        routes || dests
    }
}

/// The ExtAuthPolicy that applies to a request: the oldest of those that select it.
pub fn select<'a>(
    policies: &'a [ExtAuthPolicy],
    route: &RouteInfo,
    dest: &DestinationInfo<'_>,
    root_ns: &str,
) -> Option<&'a ExtAuthPolicy> {
    policies
        .iter()
        .filter(|p| p.applies(route, dest, root_ns))
        .min_by(|a, b| a.age_key().cmp(&b.age_key()))
}

pub(crate) fn handles(kind: &str, api_version: &str) -> bool {
    kind == "ExtAuthPolicy" && api_version.split('/').next() == Some(GROUP)
}

pub(crate) fn parse_ext_auth_policy(
    ctx: &mut Ctx<'_>,
    doc: &Node,
    sp: &str,
    meta: Meta,
    origin: Origin,
) -> Option<ExtAuthPolicy> {
    let version = doc
        .get("apiVersion")
        .and_then(Node::as_str)
        .and_then(|v| v.split_once('/'))
        .map(|(_, v)| v)
        .unwrap_or("");
    if version != "v2" {
        ctx.err(
            doc,
            "apiVersion",
            format!(
                "unsupported version `{GROUP}/{version}`: meshguard reads ExtAuthPolicy {GROUP}/v2"
            ),
        );
        return None;
    }
    let Some(spec) = doc.get("spec").filter(|s| s.as_map().is_some()) else {
        ctx.err(
            doc,
            sp,
            "an ExtAuthPolicy needs `spec` with `config` and `applyToRoutes` or `applyToDestinations`",
        );
        return None;
    };
    check_fields(
        ctx,
        spec,
        sp,
        &["applyToRoutes", "applyToDestinations", "config"],
    );
    let routes = parse_routes(ctx, spec, sp);
    let destinations = parse_destinations(ctx, spec, sp);
    if spec.get("applyToRoutes").is_none() && spec.get("applyToDestinations").is_none() {
        ctx.warn(
            spec,
            sp,
            "no `applyToRoutes` or `applyToDestinations`: as in Gloo, this policy applies to every destination",
        );
    }
    let cp = join(sp, "config");
    let Some(config) = get_map(ctx, spec, "config", sp) else {
        ctx.err(spec, &cp, "missing `config` (glooAuth or customAuth)");
        return None;
    };
    check_fields(
        ctx,
        config,
        &cp,
        &["server", "glooAuth", "customAuth", "disable"],
    );
    let server = parse_server(ctx, config, &cp);
    if let Some(d) = config.get("disable") {
        ctx.err(
            d,
            &join(&cp, "disable"),
            "Gloo refuses `disable` (deprecated and unsupported; not in the 2.14 CRD): remove the route's labels from the policy's `applyToRoutes` instead",
        );
        return None;
    }
    let gloo = get_map(ctx, config, "glooAuth", &cp);
    let custom = get_map(ctx, config, "customAuth", &cp);
    if gloo.is_some() && custom.is_some() {
        ctx.err(config, &cp, "give `glooAuth` or `customAuth`, not both");
        return None;
    }
    let action = if let Some(g) = gloo {
        let gp = join(&cp, "glooAuth");
        check_fields(ctx, g, &gp, &["configs", "booleanExpr", "failOnRedirect"]);
        let (steps, boolean_expr) = parse_steps(ctx, g, &gp, &meta.namespace)?;
        ExtAuthAction::Gloo(Box::new(AuthConfig {
            meta: meta.clone(),
            origin: origin.clone(),
            steps,
            boolean_expr,
        }))
    } else if let Some(c) = custom {
        let p = join(&cp, "customAuth");
        check_fields(ctx, c, &p, &["contextExtensions"]);
        let context_extensions = c
            .get("contextExtensions")
            .map(|m| string_map(ctx, m, &join(&p, "contextExtensions")))
            .unwrap_or_default();
        if server.is_none() {
            ctx.err(
                c,
                &p,
                "customAuth needs `config.server`: its name is the meshConfig extension provider (envoyExtAuthzGrpc/envoyExtAuthzHttp) meshguard calls",
            );
        }
        ExtAuthAction::Custom { context_extensions }
    } else {
        ctx.err(
            config,
            &cp,
            "says nothing to do: give `glooAuth` (auth configs) or `customAuth` (an external authorizer)",
        );
        return None;
    };
    Some(ExtAuthPolicy {
        meta,
        origin,
        routes,
        destinations,
        action,
        server,
    })
}

fn parse_server(ctx: &mut Ctx<'_>, config: &Node, cp: &str) -> Option<ServerRef> {
    let n = get_map(ctx, config, "server", cp)?;
    let p = join(cp, "server");
    check_fields(ctx, n, &p, &["name", "namespace", "cluster"]);
    let Some((name, _, _)) = get_str(ctx, n, "name", &p) else {
        ctx.err(n, &join(&p, "name"), "missing `name`");
        return None;
    };
    Some(ServerRef {
        name,
        namespace: get_str(ctx, n, "namespace", &p).map(|x| x.0),
        cluster: get_str(ctx, n, "cluster", &p).map(|x| x.0),
    })
}

fn labels_of(ctx: &mut Ctx<'_>, n: &Node, key: &str, path: &str) -> BTreeMap<String, String> {
    match get_map(ctx, n, key, path) {
        Some(m) => string_map(ctx, m, &join(path, key)),
        None => BTreeMap::new(),
    }
}

fn parse_routes(ctx: &mut Ctx<'_>, spec: &Node, sp: &str) -> Vec<RouteSelector> {
    let mut out = Vec::new();
    let Some(items) = get_seq(ctx, spec, "applyToRoutes", sp) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{}[{i}]", join(sp, "applyToRoutes"));
        check_fields(ctx, item, &p, &["route", "withDestinations"]);
        if let Some(w) = item.get("withDestinations") {
            ctx.err(
                w,
                &join(&p, "withDestinations"),
                "meshguard does not read RouteTables, so it cannot tell where a route forwards: select the routes by `route.labels`, or the destinations with `applyToDestinations`",
            );
            continue;
        }
        let Some(route) = get_map(ctx, item, "route", &p) else {
            ctx.err(
                item,
                &join(&p, "route"),
                "missing `route` (labels or name of the routes this applies to)",
            );
            continue;
        };
        let rp = join(&p, "route");
        check_fields(
            ctx,
            route,
            &rp,
            &["labels", "namespace", "cluster", "workspace"],
        );
        let labels = labels_of(ctx, route, "labels", &rp);
        if labels.is_empty() {
            ctx.err(
                route,
                &join(&rp, "labels"),
                "missing `labels`: the labels of the routes (RouteTable `http[].labels`) this policy applies to",
            );
            continue;
        }
        out.push(RouteSelector {
            line: item.line,
            labels,
            namespace: get_str(ctx, route, "namespace", &rp).map(|x| x.0),
        });
    }
    out
}

fn parse_destinations(ctx: &mut Ctx<'_>, spec: &Node, sp: &str) -> Vec<DestinationSelector> {
    let mut out = Vec::new();
    let Some(items) = get_seq(ctx, spec, "applyToDestinations", sp) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{}[{i}]", join(sp, "applyToDestinations"));
        check_fields(ctx, item, &p, &["selector", "port", "kind"]);
        if let Some((kind, line, col)) = get_str(ctx, item, "kind", &p) {
            if kind != "SERVICE" {
                ctx.err_at(
                    line,
                    col,
                    &join(&p, "kind"),
                    format!("`{kind}`: meshguard selects Kubernetes workloads (kind SERVICE); virtual destinations and external services are not seen here"),
                );
                continue;
            }
        }
        let port = match get_map(ctx, item, "port", &p) {
            Some(pn) => {
                let pp = join(&p, "port");
                check_fields(ctx, pn, &pp, &["number", "name"]);
                if pn.get("name").is_some() {
                    ctx.err(
                        pn,
                        &join(&pp, "name"),
                        "meshguard sees port numbers, not Service port names: use `number`",
                    );
                    continue;
                }
                match pn.get("number").map(|n| &n.kind) {
                    Some(NodeKind::Int(v)) => match u16::try_from(*v) {
                        Ok(v) if v > 0 => Some(v),
                        _ => {
                            ctx.err(pn, &join(&pp, "number"), "must be a port, 1 to 65535");
                            continue;
                        }
                    },
                    Some(_) => {
                        ctx.err(pn, &join(&pp, "number"), "must be a number");
                        continue;
                    }
                    None => None,
                }
            }
            None => None,
        };
        let mut sel = DestinationSelector {
            line: item.line,
            labels: BTreeMap::new(),
            namespace: None,
            port,
        };
        if let Some(sn) = get_map(ctx, item, "selector", &p) {
            let spp = join(&p, "selector");
            check_fields(
                ctx,
                sn,
                &spp,
                &["labels", "namespace", "cluster", "workspace", "name"],
            );
            sel.labels = labels_of(ctx, sn, "labels", &spp);
            sel.namespace = get_str(ctx, sn, "namespace", &spp).map(|x| x.0);
            if let Some(n) = sn.get("name") {
                ctx.err(
                    n,
                    &join(&spp, "name"),
                    "meshguard selects workloads, not Services (it would have to believe the request's Host): select the Service's pods by `labels`",
                );
                continue;
            }
        }
        if sel.labels.is_empty() && sel.namespace.is_none() {
            ctx.err(
                item,
                &p,
                "selects every destination: give `selector.labels` or `selector.namespace` (or leave out both lists to mean every destination)",
            );
            continue;
        }
        out.push(sel);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_come_from_context_extensions() {
        let ext: BTreeMap<String, String> = [
            ("route_label.route", "ratings"),
            ("route_label.", "ignored"),
            ("route_namespace", "gateways"),
            ("config_id", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = RouteInfo::from_context_extensions(&ext);
        assert_eq!(r.namespace.as_deref(), Some("gateways"));
        assert_eq!(r.labels.len(), 1);
        assert_eq!(r.labels.get("route").map(String::as_str), Some("ratings"));
        let sel = RouteSelector {
            line: 1,
            labels: r.labels.clone(),
            namespace: Some("gateways".into()),
        };
        assert!(sel.matches(&r, "bookinfo"));
        let elsewhere = RouteSelector {
            namespace: Some("bookinfo".into()),
            ..sel.clone()
        };
        assert!(!elsewhere.matches(&r, "bookinfo"));
        // No labels on the request: a route selector never matches it.
        assert!(!sel.matches(&RouteInfo::default(), "gateways"));
    }
}
