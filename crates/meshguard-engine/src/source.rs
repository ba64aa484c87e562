//! Where policies come from: the `PolicySource` seam. Files and directories (watched), texts
//! compiled into the binary; bundles over HTTP and Kubernetes watches plug in here. The policy
//! crate parses bytes; reading them is the source's job.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use meshguard_policy::load::Loaded;

/// Largest policy file accepted (a guard against pointing meshguard at the wrong file).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A supplier of policy documents. `read` runs on a blocking thread and may do IO; every
/// problem goes into the returned [`Loaded`] as a diagnostic with file and line.
pub trait PolicySource: Send + Sync {
    /// Reads every document.
    fn read(&self) -> Loaded;
    /// Changes whenever the content may have changed (cheap: called on every poll).
    fn fingerprint(&self) -> u64;
    /// Whether an empty read is a mistake (a directory with no policy files) rather than an
    /// intentionally empty set.
    fn must_have_files(&self) -> bool;
    /// For people: what is loaded (`3 path(s)`, `the bundled examples`).
    fn describe(&self) -> String;
    /// A source that knows when it changed (a Kubernetes watch, a bundle poll) hands out a
    /// notifier; [`crate::watch_policies`] then reloads at once instead of at its next poll.
    fn changed(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// Told when a read of this source was refused, with why (to report it where the
    /// documents came from, such as Kubernetes Events). Called on the async runtime; must not
    /// block.
    fn refused(&self, _error: &crate::error::LoadError) {}
    /// What is wrong with the source now while it keeps serving what it last read (a bundle
    /// server down, a failing watch): shown as degraded on /healthz and /readyz.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Named YAML texts compiled into the binary (the bundled examples).
#[derive(Debug, Clone)]
pub struct Embedded(pub Vec<(String, String)>);

impl PolicySource for Embedded {
    fn read(&self) -> Loaded {
        let mut l = Loaded::default();
        for (name, text) in &self.0 {
            l.files.push(PathBuf::from(name));
            l.add_text(text, name);
        }
        l
    }
    fn fingerprint(&self) -> u64 {
        0
    }
    fn must_have_files(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!("{} embedded document(s)", self.0.len())
    }
}

/// Files and directories (recursively: `*.yaml`, `*.yml`, `*.json`, sorted by path).
#[derive(Debug, Clone)]
pub struct Files(pub Vec<PathBuf>);

impl PolicySource for Files {
    fn read(&self) -> Loaded {
        load_paths(&self.0)
    }
    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        file_stats(&self.0).hash(&mut h);
        h.finish()
    }
    fn must_have_files(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Path, size and modification time of every file under `paths` (sorted), to notice edits.
pub fn file_stats(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
                }
            }
            Ok(m) => out.push((p, m.len(), m.modified().ok())),
            Err(_) => out.push((p, u64::MAX, None)),
        }
    }
    out.sort();
    out
}

/// Loads every path (files or directories).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    let mut l = Loaded::default();
    for p in paths {
        add_path(&mut l, p.as_ref());
    }
    l
}

/// Adds a file or a directory (recursively: `*.yaml`, `*.yml`, `*.json`, sorted by path;
/// names starting with `.` are skipped).
pub fn add_path(l: &mut Loaded, path: &Path) {
    let display = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            l.io_error(&display, &format!("cannot read: {e}"));
            return;
        }
    };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                l.io_error(&display, &format!("cannot list directory: {e}"));
                return;
            }
        };
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if e.is_dir() {
                add_path(l, &e);
            } else if [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)) {
                add_file(l, &e);
            }
        }
    } else {
        add_file(l, path);
    }
}

fn add_file(l: &mut Loaded, path: &Path) {
    use std::io::Read;
    let display = path.display().to_string();
    // Only regular files (after following symlinks): opening a FIFO blocks until a writer
    // comes, and a device such as /dev/zero never ends. A named `*.yaml` is not enough.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            l.io_error(
                &display,
                "not a regular file (a FIFO, device or socket, possibly behind a symlink); refusing to read it",
            );
            return;
        }
        // Cheap early refusal; the read below is bounded whatever the metadata says.
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            l.io_error(
                &display,
                &format!("file is larger than {MAX_FILE_BYTES} bytes; refusing to load it"),
            );
            return;
        }
        Ok(_) => {}
        Err(e) => {
            l.io_error(&display, &format!("cannot read: {e}"));
            return;
        }
    }
    // Bounded by the bytes actually read, not by what the metadata claims.
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        l.io_error(&display, &format!("cannot read: {e}"));
        return;
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        l.io_error(
            &display,
            &format!("file is larger than {MAX_FILE_BYTES} bytes; refusing to load it"),
        );
        return;
    }
    match String::from_utf8(bytes) {
        Ok(text) => {
            l.files.push(path.to_owned());
            l.add_text(&text, &display);
        }
        Err(e) => {
            // Where the first bad byte stands, as an editor counts lines and columns.
            let at = e.utf8_error().valid_up_to();
            let good = &e.as_bytes()[..at];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let col = at - good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
            l.error_at(
                &display,
                u32::try_from(line).unwrap_or(u32::MAX),
                u32::try_from(col).unwrap_or(u32::MAX),
                &format!(
                    "not UTF-8 text (first bad byte at offset {at}); policies are YAML or JSON, not binary files"
                ),
            )
        }
    }
}

/// A shared source is a source (so a caller can choose one at run time as `Arc<dyn ...>`).
impl<S: PolicySource + ?Sized> PolicySource for std::sync::Arc<S> {
    fn read(&self) -> Loaded {
        (**self).read()
    }
    fn fingerprint(&self) -> u64 {
        (**self).fingerprint()
    }
    fn must_have_files(&self) -> bool {
        (**self).must_have_files()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn changed(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        (**self).changed()
    }
    fn refused(&self, error: &crate::error::LoadError) {
        (**self).refused(error)
    }
    fn problems(&self) -> Vec<String> {
        (**self).problems()
    }
}
