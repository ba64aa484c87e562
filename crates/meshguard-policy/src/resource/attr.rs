//! The request attributes a rule field or `when` key reads, and how istiod maps a field name or
//! a `when` key to one.

/// The attribute a rule field or `when` key reads (Istio's attribute names in comments).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attr {
    /// `source.principal` (principals)
    SrcPrincipal,
    /// `source.namespace` (namespaces)
    SrcNamespace,
    /// `source.serviceAccount` (serviceAccounts)
    SrcServiceAccount,
    /// The trust domain of the source principal (trustDomains, Istio 1.2x)
    SrcTrustDomain,
    /// `source.ip` (ipBlocks)
    SrcIp,
    /// `remote.ip` (remoteIpBlocks)
    RemoteIp,
    /// `request.auth.principal` (requestPrincipals)
    RequestPrincipal,
    /// `request.auth.audiences`
    Audiences,
    /// `request.auth.presenter`
    Presenter,
    /// `request.auth.claims[a][b]...`
    Claim(Vec<String>),
    /// `request.headers[name]`, name lower-cased
    Header(String),
    /// hosts
    Host,
    /// methods
    Method,
    /// paths
    Path,
    /// ports and `destination.port`
    Port,
    /// `destination.ip`
    DstIp,
    /// `connection.sni`
    Sni,
    /// `experimental.envoy.filters.*[...]`: Envoy dynamic metadata, never present in meshguard
    EnvoyMetadata(String),
    /// A key istiod's validation accepts but its config generation cannot build (e.g.
    /// `request.headers.x[foo]`): an ALLOW rule using it is dropped, a DENY/AUDIT/CUSTOM rule
    /// loses the condition (istio model.go `checkError`).
    Broken(String),
}

impl Attr {
    /// Fields that only exist on HTTP requests (istio model.go: the generators return an error
    /// for TCP filter chains).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::Broken(_)
                | Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Claim(_)
                | Attr::Header(_)
                | Attr::Host
                | Attr::Method
                | Attr::Path
        )
    }

    /// Fields that need an authenticated identity (not allowed with CUSTOM).
    pub fn is_authn(&self) -> bool {
        matches!(
            self,
            Attr::SrcPrincipal
                | Attr::SrcNamespace
                | Attr::SrcServiceAccount
                | Attr::SrcTrustDomain
                | Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Claim(_)
        )
    }
}

pub(super) fn field_attr(field: &str) -> (Attr, bool) {
    let (base, neg) = match field.strip_prefix("not") {
        Some(rest) => (rest, true),
        None => (field, false),
    };
    let attr = match base.to_ascii_lowercase().as_str() {
        "principals" => Attr::SrcPrincipal,
        "requestprincipals" => Attr::RequestPrincipal,
        "namespaces" => Attr::SrcNamespace,
        "ipblocks" => Attr::SrcIp,
        "remoteipblocks" => Attr::RemoteIp,
        "serviceaccounts" => Attr::SrcServiceAccount,
        "trustdomains" => Attr::SrcTrustDomain,
        "hosts" => Attr::Host,
        "ports" => Attr::Port,
        "methods" => Attr::Method,
        _ => Attr::Path,
    };
    (attr, neg)
}

const HTTP_ONLY_KEYS_HINT: &str = "request.headers[<name>], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[<name>], destination.ip, destination.port, connection.sni, experimental.envoy.filters.*";

/// istio validation `validateMapKey`: a prefix check only.
fn valid_map_key(key: &str) -> bool {
    match key.find('[') {
        Some(open) => key.ends_with(']') && open > 0 && open + 2 < key.len(),
        None => false,
    }
}

/// istio model util.go `extractNameInBrackets`.
fn name_in_brackets(s: &str) -> Option<String> {
    (s.len() >= 2 && s.starts_with('[') && s.ends_with(']')).then(|| s[1..s.len() - 1].to_owned())
}

/// istio model util.go `extractNameInNestedBrackets`: `[a][b]` -> [a, b]; anything else falls back
/// to one name with the outer brackets removed (`[foo.com/name]`, `[a]b]`).
fn names_in_nested_brackets(s: &str) -> Option<Vec<String>> {
    let b = s.as_bytes();
    let find_end = |begin: usize| -> Option<usize> {
        if b.get(begin) != Some(&b'[') {
            return None;
        }
        for (i, &c) in b.iter().enumerate().skip(begin + 1) {
            match c {
                b'[' => return None,
                b']' => return Some(i),
                _ => {}
            }
        }
        None
    };
    let mut out = Vec::new();
    let mut begin = 0;
    while begin < b.len() {
        match find_end(begin) {
            Some(end) => {
                out.push(s[begin + 1..end].to_owned());
                begin = end + 1;
            }
            None => return name_in_brackets(s).map(|n| vec![n]),
        }
    }
    Some(out)
}

/// Why istiod's validation refuses a `when` key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionKeyError {
    /// A map key (`request.headers`, `request.auth.claims`, `experimental.`) without `[<name>]`.
    #[error("bad key `{key}`: should have format {prefix}[<name>]")]
    BadMapKey { key: String, prefix: &'static str },
    #[error("attribute `{0}` is replaced by the metadata.namespace of the policy")]
    ReplacedByNamespace(String),
    #[error("attribute `{0}` is replaced by the workload selector")]
    ReplacedBySelector(String),
    #[error("deprecated attribute `{0}`: only supported in v1alpha1")]
    Deprecated(String),
    #[error("unknown attribute `{0}`; supported keys: {hint}", hint = HTTP_ONLY_KEYS_HINT)]
    Unknown(String),
}

/// Maps a `when` key to its attribute, or explains why istiod's validation refuses it.
pub fn condition_attr(key: &str) -> Result<Attr, ConditionKeyError> {
    let map_key = |prefix: &'static str| -> Option<Result<String, ConditionKeyError>> {
        let rest = key.strip_prefix(prefix)?;
        if !valid_map_key(key) {
            return Some(Err(ConditionKeyError::BadMapKey {
                key: key.to_owned(),
                prefix,
            }));
        }
        Some(Ok(rest.to_owned()))
    };
    if let Some(r) = map_key("request.headers") {
        let rest = r?;
        return Ok(match name_in_brackets(&rest) {
            Some(n) if !n.is_empty() => Attr::Header(n.to_ascii_lowercase()),
            _ => Attr::Broken(key.to_owned()),
        });
    }
    if let Some(r) = map_key("request.auth.claims") {
        let rest = r?;
        return Ok(match names_in_nested_brackets(&rest) {
            Some(names) if !names.is_empty() => Attr::Claim(names),
            _ => Attr::Broken(key.to_owned()),
        });
    }
    if let Some(r) = map_key("experimental.") {
        r?;
        return Ok(Attr::EnvoyMetadata(key.to_owned()));
    }
    Ok(match key {
        "source.ip" => Attr::SrcIp,
        "remote.ip" => Attr::RemoteIp,
        "source.namespace" => Attr::SrcNamespace,
        "source.principal" => Attr::SrcPrincipal,
        "source.serviceAccount" => Attr::SrcServiceAccount,
        "request.auth.principal" => Attr::RequestPrincipal,
        "request.auth.audiences" => Attr::Audiences,
        "request.auth.presenter" => Attr::Presenter,
        "destination.ip" => Attr::DstIp,
        "destination.port" => Attr::Port,
        "connection.sni" => Attr::Sni,
        "destination.namespace" => {
            return Err(ConditionKeyError::ReplacedByNamespace(key.to_owned()));
        }
        k if k.starts_with("destination.labels") => {
            return Err(ConditionKeyError::ReplacedBySelector(key.to_owned()));
        }
        "destination.name" | "destination.user" => {
            return Err(ConditionKeyError::Deprecated(key.to_owned()));
        }
        other => return Err(ConditionKeyError::Unknown(other.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages reach users as diagnostics and must not change.
    #[test]
    fn condition_key_messages() {
        let msg = |k: &str| condition_attr(k).unwrap_err().to_string();
        assert_eq!(
            msg("request.headers"),
            "bad key `request.headers`: should have format request.headers[<name>]"
        );
        assert_eq!(
            msg("experimental.x"),
            "bad key `experimental.x`: should have format experimental.[<name>]"
        );
        assert_eq!(
            msg("destination.namespace"),
            "attribute `destination.namespace` is replaced by the metadata.namespace of the policy"
        );
        assert_eq!(
            msg("destination.labels[app]"),
            "attribute `destination.labels[app]` is replaced by the workload selector"
        );
        assert_eq!(
            msg("destination.user"),
            "deprecated attribute `destination.user`: only supported in v1alpha1"
        );
        assert_eq!(
            msg("source.foo"),
            format!("unknown attribute `source.foo`; supported keys: {HTTP_ONLY_KEYS_HINT}")
        );
        assert_eq!(
            condition_attr("request.headers[X-Token]"),
            Ok(Attr::Header("x-token".into()))
        );
    }
}
