//! A small, position-carrying YAML tree.
//!
//! Policies must be rejected with the file, line and field that is wrong, so the loader keeps the
//! line and column of every node. `saphyr` does the parsing (including duplicate-key detection);
//! this module flattens its output into an owned tree that the resource parsers walk.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// One YAML node with the position (1-based line, 1-based column) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: u32,
    pub col: u32,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string scalar (quoted, or plain text that is not null/bool/number).
    Str(String),
    Seq(Vec<Node>),
    /// Mapping entries in document order. Keys are rendered as text; duplicate keys were
    /// already refused by the parser.
    Map(Vec<(Key, Node)>),
}

/// A mapping key: its text and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub line: u32,
    pub col: u32,
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, NodeKind::Null)
    }

    /// Converts to JSON (for request descriptions and claims). Non-finite floats become null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.text.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn pos(m: &saphyr::Marker) -> (u32, u32) {
    (
        u32::try_from(m.line()).unwrap_or(u32::MAX),
        u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    )
}

fn scalar_text(s: &Scalar<'_>) -> String {
    match s {
        Scalar::Null => "null".to_owned(),
        Scalar::Boolean(b) => b.to_string(),
        Scalar::Integer(i) => i.to_string(),
        Scalar::FloatingPoint(f) => f.to_string(),
        Scalar::String(s) => s.to_string(),
    }
}

fn convert(y: &MarkedYaml<'_>, depth: usize) -> Result<Node, SyntaxError> {
    let (line, col) = pos(&y.span.start);
    if depth > MAX_DEPTH {
        return Err(SyntaxError {
            line,
            col,
            message: format!("nesting deeper than {MAX_DEPTH} levels"),
        });
    }
    let kind = match &y.data {
        YamlData::Value(s) => match s {
            Scalar::Null => NodeKind::Null,
            Scalar::Boolean(b) => NodeKind::Bool(*b),
            Scalar::Integer(i) => NodeKind::Int(*i),
            Scalar::FloatingPoint(f) => NodeKind::Float(f.into_inner()),
            Scalar::String(s) => NodeKind::Str(s.to_string()),
        },
        YamlData::Representation(s, _, _) => NodeKind::Str(s.to_string()),
        YamlData::Sequence(items) => NodeKind::Seq(
            items
                .iter()
                .map(|i| convert(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                let (kline, kcol) = pos(&k.span.start);
                let text = match &k.data {
                    YamlData::Value(s) => scalar_text(s),
                    YamlData::Representation(s, _, _) => s.to_string(),
                    _ => {
                        return Err(SyntaxError {
                            line: kline,
                            col: kcol,
                            message: "mapping keys must be plain scalars".to_owned(),
                        });
                    }
                };
                entries.push((
                    Key {
                        text,
                        line: kline,
                        col: kcol,
                    },
                    convert(v, depth + 1)?,
                ));
            }
            NodeKind::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner, depth + 1),
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(SyntaxError {
                line,
                col,
                message: "unsupported YAML value (aliases are not accepted in policies)".to_owned(),
            });
        }
    };
    Ok(Node { line, col, kind })
}

/// Deepest nesting accepted; deeper input is refused instead of risking stack exhaustion.
pub const MAX_DEPTH: usize = 64;

/// Parses a (possibly multi-document) YAML stream. Empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        let (line, col) = pos(e.marker());
        SyntaxError {
            line,
            col,
            message: e.info().to_owned(),
        }
    })?;
    let mut out = Vec::with_capacity(docs.len());
    for d in &docs {
        let n = convert(d, 0)?;
        if !n.is_null() {
            out.push(n);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_types() {
        let docs = parse_documents("a: 1\nb:\n  - \"8080\"\n  - x\n---\n---\nc: true\n").unwrap();
        assert_eq!(docs.len(), 2);
        let b = docs[0].get("b").unwrap();
        let NodeKind::Seq(items) = &b.kind else {
            panic!("not a seq")
        };
        assert_eq!(items[0].as_str(), Some("8080"));
        assert_eq!(items[0].line, 3);
        assert_eq!(docs[0].get("a").unwrap().kind, NodeKind::Int(1));
        assert_eq!(docs[1].get("c").unwrap().line, 7);
    }

    #[test]
    fn duplicate_keys_refused() {
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn deep_nesting_refused() {
        let text = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_documents(&text).is_err());
    }
}
