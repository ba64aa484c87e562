//! The destination workload named on a command line or in route context: a Kubernetes
//! namespace and labels, validated with Kubernetes' own syntax so a typo is refused rather than
//! read as a workload no policy selects.

use std::collections::BTreeMap;

/// The destination workload for requests that do not say which workload they are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// Parses `namespace` or `namespace/key=value,key=value`. The namespace must be a DNS-1123
    /// label and every label `key=value` with Kubernetes label syntax: a malformed workload is
    /// refused, never read as a workload that no policy selects.
    pub fn parse(s: &str) -> Result<Workload, WorkloadError> {
        let (ns, labels) = s.split_once('/').unwrap_or((s, ""));
        if ns.is_empty() {
            return Err(WorkloadError::NoNamespace(s.to_owned()));
        }
        let within = |e: WorkloadError| WorkloadError::In {
            input: s.to_owned(),
            source: Box::new(e),
        };
        check_namespace(ns).map_err(within)?;
        if s.contains('/') && labels.is_empty() {
            return Err(WorkloadError::NoLabels(s.to_owned()));
        }
        Ok(Workload {
            namespace: ns.to_owned(),
            labels: parse_label_list(labels).map_err(within)?,
        })
    }
}

/// A Kubernetes namespace name: a DNS-1123 label (lower-case alphanumerics and `-`, 63 at most).
pub fn check_namespace(ns: &str) -> Result<(), WorkloadError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(WorkloadError::Namespace(ns.escape_debug().to_string()))
    }
}

/// `key=value,key=value` with Kubernetes label syntax (an empty string is no labels).
pub fn parse_label_list(s: &str) -> Result<BTreeMap<String, String>, WorkloadError> {
    let mut map = BTreeMap::new();
    for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| WorkloadError::NotKeyValue(pair.escape_debug().to_string()))?;
        let (k, v) = (k.trim(), v.trim());
        if !label_key_ok(k) || !label_value_ok(v) {
            return Err(WorkloadError::Label(pair.escape_debug().to_string()));
        }
        if map.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(WorkloadError::Duplicate(k.to_owned()));
        }
    }
    Ok(map)
}

fn label_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn label_key_ok(k: &str) -> bool {
    match k.rsplit_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty() && prefix.len() <= 253 && label_name_ok(name) && {
                prefix.split('.').all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
            }
        }
        None => label_name_ok(k),
    }
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty() || label_name_ok(v)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_workloads_are_refused() {
        for bad in [
            "",
            "/app=x",
            "Garbage",
            "ns with space",
            "ns/app",
            "ns/",
            "ns/app=x,version",
            "ns/=x",
            "ns/app=x y",
            "ns/app=x,app=y",
            "-ns",
            "ns/app=a\nb",
        ] {
            assert!(Workload::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let w = Workload::parse("shop/app=web,version=v1").expect("valid");
        assert_eq!(w.namespace, "shop");
        assert_eq!(w.labels.len(), 2);
        assert!(Workload::parse("shop").expect("ns only").labels.is_empty());
        assert!(Workload::parse("shop/app.kubernetes.io/name=web").is_ok());
    }
}
