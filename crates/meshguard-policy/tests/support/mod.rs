//! Loading the bundled examples in tests and benchmarks (the policy crate itself does no IO).

#![allow(dead_code)]

use meshguard_policy::load::Loaded;

/// The repository's `examples/` folder.
pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// Every `*.yaml` file directly in `dir`, in name order, added to one `Loaded`.
pub fn load_dir(dir: &str) -> Loaded {
    let mut l = Loaded::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        l.add_text(&text, &f.display().to_string());
    }
    l
}
