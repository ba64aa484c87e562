//! Diagnostics: every problem names the file, the line and the field.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found while loading or linting policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it (or `<embedded>/...` for the bundled examples).
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// `Kind namespace/name` of the resource, when known.
    pub resource: Option<String>,
    /// Dotted path of the field, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}: ", self.file, self.line, self.col)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(r) = &self.resource {
            write!(f, " [{r}]")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file.
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub resource: Option<String>,
    pub diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub fn push(&mut self, severity: Severity, line: u32, col: u32, field: &str, message: String) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_owned(),
            line,
            col,
            resource: self.resource.clone(),
            field: field.to_owned(),
            message,
        });
    }

    pub fn err(&mut self, at: &crate::yaml::Node, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, at.line, at.col, field, message.into());
    }

    pub fn warn(&mut self, at: &crate::yaml::Node, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, at.line, at.col, field, message.into());
    }

    pub fn err_at(&mut self, line: u32, col: u32, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, line, col, field, message.into());
    }

    pub fn warn_at(&mut self, line: u32, col: u32, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, line, col, field, message.into());
    }

    pub fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown fields.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(!ca.eq_ignore_ascii_case(cb));
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known name, if it is close enough to be a plausible typo.
pub(crate) fn suggest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
