//! Puts the git commit into `meshguard --version`: `MESHGUARD_VERSION` is
//! `<crate version> (<short commit>)`, or `(unknown)` outside a git checkout or without git.
//! Packagers building from a tarball can set `MESHGUARD_GIT_COMMIT`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// A file that does not exist (a packed branch ref) would make cargo rerun this every build.
fn watch(path: &str) {
    if std::path::Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=MESHGUARD_GIT_COMMIT");
    let commit = std::env::var("MESHGUARD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to (a commit),
    // and packed-refs (after `git gc`). Paths from git, so worktrees work too.
    for p in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", p]) {
            watch(&path);
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &branch]) {
            watch(&path);
        }
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".to_owned());
    println!("cargo:rustc-env=MESHGUARD_VERSION={version} ({commit})");
    println!("cargo:rustc-env=MESHGUARD_GIT_COMMIT={commit}");
}
