//! The one reader for YAML fields. Two ways to use it, sharing the rules here (what counts as a
//! scalar, how a wrong type or an unknown field is described):
//! - fail fast, through [`Field`]: config files (`serve --config`, `proxy --config`), the mesh
//!   config and request descriptions stop at the first problem, a [`FieldError`];
//! - collecting, through `fields.rs`: policy resources report every problem as a diagnostic and
//!   keep the valid rest.

use std::str::FromStr;
use std::time::Duration;

use crate::diag::suggest;
use crate::yaml::{parse_documents, Key, Node, NodeKind};

/// The first problem in a document: where (line, column), which field (dotted path such as
/// `inbound[0].listen`), and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct FieldError {
    pub line: u32,
    pub col: u32,
    pub field: String,
    pub message: String,
}

/// A config file that could not be used: unreadable, not YAML, a field in it, or the file as a
/// whole (nothing to do, contradicting parts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {file}: {message}")]
    Read {
        what: &'static str,
        file: String,
        message: String,
    },
    #[error("{file}:{line}:{col}: invalid YAML: {message}")]
    Syntax {
        file: String,
        line: u32,
        col: u32,
        message: String,
    },
    #[error("{file}:{}: {}: {}", .error.line, .error.field, .error.message)]
    Field { file: String, error: FieldError },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

impl ConfigError {
    pub fn field(file: &str, error: FieldError) -> Self {
        ConfigError::Field {
            file: file.to_owned(),
            error,
        }
    }

    pub fn read(what: &'static str, file: &std::path::Path, e: &std::io::Error) -> Self {
        ConfigError::Read {
            what,
            file: file.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// The first YAML document of `text` (`None` for an empty text), positions kept.
pub fn first_document(text: &str, file: &str) -> Result<Option<Node>, ConfigError> {
    let docs = parse_documents(text).map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        line: e.line,
        col: e.col,
        message: e.message,
    })?;
    Ok(docs.into_iter().next())
}

/// A scalar's text (strings, numbers and booleans as written), `None` for lists, maps and null.
pub fn scalar_text(n: &Node) -> Option<String> {
    match &n.kind {
        NodeKind::Str(s) => Some(s.clone()),
        NodeKind::Int(i) => Some(i.to_string()),
        NodeKind::Bool(b) => Some(b.to_string()),
        NodeKind::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// ` (write "8080" in quotes)` for a number or boolean where a string was expected.
pub(crate) fn quote_hint(n: &Node) -> String {
    match &n.kind {
        NodeKind::Int(i) => format!(" (write \"{i}\" in quotes)"),
        NodeKind::Bool(b) => format!(" (write \"{b}\" in quotes)"),
        NodeKind::Float(f) => format!(" (write \"{f}\" in quotes)"),
        _ => String::new(),
    }
}

/// `parent.key`, or `key` at the top.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The keys of a mapping that are not in `known`, each with the message that describes it.
pub(crate) fn unknown_keys<'n>(
    entries: &'n [(Key, Node)],
    known: &'n [&'n str],
) -> impl Iterator<Item = (&'n Key, String)> + 'n {
    entries
        .iter()
        .filter(|(k, _)| !known.contains(&k.text.as_str()))
        .map(move |(k, _)| {
            let hint = suggest(&k.text, known)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let message = format!(
                "unknown field `{}`{hint}; known fields: {}",
                k.text,
                known.join(", ")
            );
            (k, message)
        })
}

/// A node and the dotted path that names it, read fail-fast.
#[derive(Clone, Copy)]
pub struct Field<'n, 'p> {
    pub node: &'n Node,
    path: Path<'p>,
}

/// A field path built lazily: the parent's path and one more step, turned into text only when an
/// error names it.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Text(&'p str),
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Text(t) => (*t).to_owned(),
            Path::Key(p, k) => join(&p.render(), k),
            Path::Index(p, i) => format!("{}[{i}]", p.render()),
        }
    }
}

impl<'n> Field<'n, 'static> {
    /// The top of a document.
    pub fn root(node: &'n Node) -> Self {
        Field {
            node,
            path: Path::Root,
        }
    }
}

impl<'n, 'p> Field<'n, 'p> {
    /// A node named by a path given as text (`destination`, `identity.files`).
    pub fn named(node: &'n Node, path: &'p str) -> Self {
        Field {
            node,
            path: Path::Text(path),
        }
    }

    /// The dotted path of this field (`(top level)` for the root).
    pub fn path(&self) -> String {
        let p = self.path.render();
        if p.is_empty() {
            "(top level)".to_owned()
        } else {
            p
        }
    }

    /// An error at this field.
    pub fn error(&self, message: impl Into<String>) -> FieldError {
        FieldError {
            line: self.node.line,
            col: self.node.col,
            field: self.path(),
            message: message.into(),
        }
    }

    fn wrong_type(&self, wanted: &str) -> FieldError {
        self.error(format!(
            "must be {wanted}, found {}{}",
            self.node.type_name(),
            if wanted.contains("string") {
                quote_hint(self.node)
            } else {
                String::new()
            }
        ))
    }

    /// The entries of a mapping whose keys are all in `known` (the first unknown one is refused,
    /// with a "did you mean" hint).
    pub fn mapping(&self, known: &[&str]) -> Result<&'n [(Key, Node)], FieldError> {
        let entries = self.entries()?;
        if let Some((k, message)) = unknown_keys(entries, known).next() {
            return Err(FieldError {
                line: k.line,
                col: k.col,
                field: join(&self.path.render(), &k.text),
                message,
            });
        }
        Ok(entries)
    }

    /// The entries of a mapping, whatever its keys.
    pub fn entries(&self) -> Result<&'n [(Key, Node)], FieldError> {
        self.node
            .as_map()
            .ok_or_else(|| self.wrong_type("a mapping"))
    }

    /// A child, `None` when absent or null; its path borrows this field's.
    pub fn get<'q>(&'q self, key: &'q str) -> Option<Field<'n, 'q>> {
        let node = self.node.get(key).filter(|n| !n.is_null())?;
        Some(Field {
            node,
            path: Path::Key(&self.path, key),
        })
    }

    /// A child that must be there.
    pub fn required<'q>(&'q self, key: &'q str) -> Result<Field<'n, 'q>, FieldError> {
        self.get(key).ok_or_else(|| FieldError {
            line: self.node.line,
            col: self.node.col,
            field: join(&self.path.render(), key),
            message: "is required".to_owned(),
        })
    }

    /// The items of a list, each with its index in the path.
    pub fn items<'q>(&'q self) -> Result<Vec<Field<'n, 'q>>, FieldError> {
        match &self.node.kind {
            NodeKind::Seq(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, node)| Field {
                    node,
                    path: Path::Index(&self.path, i),
                })
                .collect()),
            _ => Err(self.wrong_type("a list")),
        }
    }

    /// A scalar as text (numbers and booleans as written).
    pub fn text(&self) -> Result<String, FieldError> {
        scalar_text(self.node).ok_or_else(|| self.wrong_type("a string"))
    }

    /// A list of scalars; a single string is split at commas (as a flag value would be).
    pub fn text_list(&self) -> Result<Vec<String>, FieldError> {
        match &self.node.kind {
            NodeKind::Seq(_) => self.items()?.iter().map(|i| i.text()).collect(),
            _ => Ok(self
                .text()?
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()),
        }
    }

    pub fn bool(&self) -> Result<bool, FieldError> {
        match self.node.kind {
            NodeKind::Bool(b) => Ok(b),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    /// A scalar parsed with `FromStr`; `what` completes "`x` is not ..." (e.g. "an IP address").
    pub fn parse<T: FromStr>(&self, what: &str) -> Result<T, FieldError> {
        let t = self.text()?;
        t.parse()
            .map_err(|_| self.error(format!("`{t}` is not {what}")))
    }

    /// A port number, 1-65535.
    pub fn port(&self) -> Result<u16, FieldError> {
        match self.parse::<u16>("a port number (1-65535)")? {
            0 => Err(self.error("`0` is not a port number (1-65535)")),
            p => Ok(p),
        }
    }

    /// A duration like `2s`, `500ms`, `1.5s` or `1m`.
    pub fn duration(&self) -> Result<Duration, FieldError> {
        let t = self.text()?;
        parse_duration(&t)
            .ok_or_else(|| self.error(format!("`{t}` is not a duration like 2s or 500ms")))
    }

    /// A mapping of names to a string or a list of strings, flattened to pairs in order.
    pub fn string_pairs(&self) -> Result<Vec<(String, String)>, FieldError> {
        let mut out = Vec::new();
        for (k, v) in self.entries()? {
            let f = Field {
                node: v,
                path: Path::Key(&self.path, &k.text),
            };
            match &v.kind {
                NodeKind::Seq(_) => {
                    for i in f.items()? {
                        out.push((k.text.clone(), i.text()?));
                    }
                }
                _ => out.push((k.text.clone(), f.text()?)),
            }
        }
        Ok(out)
    }
}

/// Parses a protobuf-JSON duration (`5s`, `1.5s`) or Go-style duration (`500ms`, `1m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(t: &str) -> Node {
        match first_document(t, "t.yaml") {
            Ok(Some(n)) => n,
            other => panic!("no document: {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_path_and_line() {
        let d = doc("a:\n  b:\n    - x: 1\n    - x: [1]\n");
        let root = Field::root(&d);
        let a = root.required("a").unwrap();
        let b = a.required("b").unwrap();
        let items = b.items().unwrap();
        assert_eq!(items[0].required("x").unwrap().text().unwrap(), "1");
        let e = items[1].required("x").unwrap().text().unwrap_err();
        assert_eq!(e.field, "a.b[1].x");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("must be a string, found a list"), "{e}");
        let missing = a.required("c").map(|_| ()).unwrap_err();
        assert_eq!(missing.field, "a.c");
    }

    #[test]
    fn unknown_keys_are_refused_with_a_hint() {
        let d = doc("listen: 1\nlistn: 2\n");
        let e = Field::root(&d).mapping(&["listen"]).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "listn"));
        assert!(e.message.contains("did you mean `listen`"), "{e}");
    }

    #[test]
    fn scalars_parse_with_what_was_expected() {
        let d = doc("p: 0\nq: 8080\nt: 2x\nl: a, b\n");
        let r = Field::root(&d);
        assert!(r.required("p").unwrap().port().is_err());
        assert_eq!(r.required("q").unwrap().port().unwrap(), 8080);
        let e = r.required("t").unwrap().duration().unwrap_err();
        assert!(e.message.contains("`2x` is not a duration"), "{e}");
        assert_eq!(r.required("l").unwrap().text_list().unwrap(), ["a", "b"]);
        let d = ConfigError::field("f.yaml", e);
        assert_eq!(
            d.to_string(),
            "f.yaml:3: t: `2x` is not a duration like 2s or 500ms"
        );
    }
}
