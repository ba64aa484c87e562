//! The bundle format's corner cases (the end-to-end tests are in crates/meshguard/tests/bundle.rs).

use meshguard_engine::bundle::{build, read, BundleFile};

fn file(name: &str, text: &str) -> BundleFile {
    BundleFile {
        name: name.into(),
        bytes: text.as_bytes().to_vec(),
    }
}

#[test]
fn long_names_pack_and_read_back() {
    let long = format!("{}/policy.yaml", "d".repeat(180));
    let b = build(&[file(&long, "a: 1\n")], Some("r"), None).expect("build");
    let back = read(&b, None).expect("read");
    assert!(
        back.files.iter().any(|f| f.name == long),
        "{:?}",
        back.files
    );
    assert_eq!(back.revision.as_deref(), Some("r"));
}

#[test]
fn hostile_entries_are_refused() {
    // `..` and an absolute path that climbs out; build refuses them as read does.
    assert!(build(&[file("../etc/passwd", "x")], None, None).is_err());
    assert!(build(&[file("a/../../b.yaml", "x")], None, None).is_err());
    // A leading slash is OPA's own layout (`/data.json`) and is accepted as relative.
    let b = build(&[file("/x.yaml", "a: 1\n")], None, None).expect("build");
    assert!(read(&b, None)
        .expect("read")
        .files
        .iter()
        .any(|f| f.name == "x.yaml"));
    // Not gzip at all.
    assert!(read(b"not a bundle", None).is_err());
}

#[test]
fn same_files_same_bytes() {
    let files = [file("b.yaml", "b: 1\n"), file("a.yaml", "a: 1\n")];
    let one = build(&files, None, None).expect("build");
    let two = build(&[files[1].clone(), files[0].clone()], None, None).expect("build");
    assert_eq!(
        one, two,
        "the order given does not matter and nothing varies by time"
    );
}
