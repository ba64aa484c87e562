//! A replay's report for people (text), machines (JSON) and pull requests (Markdown).

use serde_json::json;

use crate::simulate::{Change, Group, Report};

fn counts(g: &Group) -> String {
    g.counts
        .iter()
        .map(|(c, n)| format!("{n} {}", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary(r: &Report) -> String {
    let mut s = format!(
        "{} line(s): {} replayed, {} unchanged, {} changed",
        r.lines,
        r.replayed,
        r.unchanged,
        r.changed()
    );
    for (c, n) in &r.changes {
        s.push_str(&format!("; {n} {}", c.as_str()));
    }
    if r.not_replayable > 0 {
        s.push_str(&format!(
            "; {} kept as recorded (refused tokens and fail-closed denials cannot be decided again)",
            r.not_replayable
        ));
    }
    if r.unreadable > 0 {
        s.push_str(&format!("; {} unreadable line(s)", r.unreadable));
    }
    s
}

/// Plain text.
pub fn text(r: &Report) -> String {
    let mut out = summary(r);
    out.push('\n');
    for u in &r.unreadable_examples {
        out.push_str(&format!("  unreadable: {u}\n"));
    }
    if r.changed() == 0 {
        out.push_str("no request would be decided differently\n");
        return out;
    }
    out.push_str("\nby edge (source -> destination):\n");
    for ((src, dst), g) in &r.by_edge {
        out.push_str(&format!("  {src} -> {dst}: {}\n", counts(g)));
        for e in &g.examples {
            out.push_str(&format!(
                "    line {} {}: {} => {}\n",
                e.line, e.request, e.before, e.after
            ));
        }
    }
    out.push_str("\nby policy responsible:\n");
    for (p, g) in &r.by_policy {
        out.push_str(&format!("  {p}: {}\n", counts(g)));
    }
    out
}

fn group_json(g: &Group) -> serde_json::Value {
    json!({
        "total": g.total(),
        "counts": g.counts.iter().map(|(c, n)| (c.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "examples": g.examples.iter().map(|e| json!({
            "line": e.line, "id": e.id, "request": e.request, "before": e.before, "after": e.after,
        })).collect::<Vec<_>>(),
    })
}

/// One JSON object.
pub fn json(r: &Report) -> serde_json::Value {
    json!({
        "lines": r.lines,
        "replayed": r.replayed,
        "unchanged": r.unchanged,
        "changed": r.changed(),
        "not_replayable": r.not_replayable,
        "unreadable": r.unreadable,
        "unreadable_examples": r.unreadable_examples,
        "changes": r.changes.iter().map(|(c, n)| (c.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "by_edge": r.by_edge.iter().map(|((s, d), g)| {
            let mut v = group_json(g);
            v["source"] = s.clone().into();
            v["destination"] = d.clone().into();
            v
        }).collect::<Vec<_>>(),
        "by_policy": r.by_policy.iter().map(|(p, g)| {
            let mut v = group_json(g);
            v["policy"] = p.clone().into();
            v
        }).collect::<Vec<_>>(),
    })
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown for a pull-request comment.
pub fn markdown(r: &Report) -> String {
    let mut out = String::from("### meshguard simulate\n\n");
    out.push_str(&summary(r));
    out.push_str("\n\n");
    if r.changed() == 0 {
        out.push_str("No request in the log would be decided differently.\n");
        return out;
    }
    let kinds = [Change::AllowToDeny, Change::DenyToAllow, Change::Status];
    out.push_str("| source | destination | allow -> deny | deny -> allow | status change | example |\n|---|---|---|---|---|---|\n");
    for ((src, dst), g) in &r.by_edge {
        let n = |c: Change| g.counts.get(&c).copied().unwrap_or(0);
        let ex = g
            .examples
            .first()
            .map(|e| {
                format!(
                    "line {}: `{}` {} => {}",
                    e.line, e.request, e.before, e.after
                )
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            cell(src),
            cell(dst),
            n(kinds[0]),
            n(kinds[1]),
            n(kinds[2]),
            cell(&ex)
        ));
    }
    out.push_str("\n| policy responsible | changes |\n|---|---|\n");
    for (p, g) in &r.by_policy {
        out.push_str(&format!("| {} | {} |\n", cell(p), cell(&counts(g))));
    }
    out
}
