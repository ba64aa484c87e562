//! The README's fenced blocks, by the id in the `<!-- test: ID -->` line just above each.
//! Every block has one, and some test fetches every id with [`block`] (the `readme` test file
//! checks both), so a snippet that is added to the README without a test fails the suite.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn readme_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
}

/// One fenced block of the README.
#[derive(Debug, Clone)]
pub struct Block {
    /// From the marker line above the fence; `None` when it has none.
    pub id: Option<String>,
    /// The fence's info string (`sh`, `yaml`, ...).
    pub lang: String,
    /// The text between the fences, with its final newline.
    pub body: String,
    /// 1-based line of the opening fence.
    pub line: usize,
}

/// Every fenced block of the README, in order.
pub fn blocks() -> Vec<Block> {
    let text = std::fs::read_to_string(readme_path()).expect("read README.md");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let id = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- test: "))
            .and_then(|s| s.strip_suffix(" -->"))
            .map(|s| s.trim().to_owned());
        let start = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && !lines[i].starts_with("```") {
            body.push_str(lines[i]);
            body.push('\n');
            i += 1;
        }
        assert!(
            i < lines.len(),
            "README.md:{}: a fence that is never closed",
            start + 1
        );
        out.push(Block {
            id,
            lang: lang.trim().to_owned(),
            body,
            line: start + 1,
        });
        i += 1;
    }
    out
}

/// The body of the README block marked `<!-- test: ID -->`.
pub fn block(id: &str) -> String {
    let found: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.id.as_deref() == Some(id))
        .collect();
    match found.as_slice() {
        [b] => b.body.clone(),
        [] => panic!("README.md has no block marked <!-- test: {id} -->"),
        _ => panic!("README.md has several blocks marked <!-- test: {id} -->"),
    }
}

/// The command lines of a shell block that start with `prog `: comments (`  # ...`) cut off,
/// split on whitespace (the README's commands quote nothing that holds a space).
pub fn commands(body: &str, prog: &str) -> Vec<Vec<String>> {
    body.lines()
        .map(|l| l.split("  #").next().unwrap_or("").trim())
        .filter_map(|l| {
            l.strip_prefix(&format!("{prog} "))
                .or((l == prog).then_some(""))
        })
        .map(|args| args.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A synopsis line (`[--flag ...]`, `DIR_OR_FILE...`) describes a command; it is not run.
pub fn is_synopsis(args: &[String]) -> bool {
    args.iter().any(|a| {
        a.starts_with('[')
            || a.ends_with(']')
            || a.contains("...")
            || a.contains('|')
            || (a.len() > 1 && a.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    })
}

/// The `--flags` a synopsis names.
pub fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| a.trim_start_matches('[').trim_end_matches(']'))
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect()
}
