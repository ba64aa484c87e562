//! The file source refuses what is not a policy file without hanging or reading without bound
//! (moved here with the file IO from the policy crate).

use meshguard_engine::source::{load_paths, MAX_FILE_BYTES};

#[test]
fn oversized_file_is_refused_before_reading() {
    let dir = std::env::temp_dir().join(format!("meshguard-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = dir.join("big.yaml");
    let f = std::fs::File::create(&p).expect("create");
    f.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
    let l = load_paths(&[&p]);
    let err = l.errors().next().expect("refused");
    assert!(err.message.contains("larger than"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A FIFO named like a policy file, and a symlink to /dev/zero, are refused without blocking or
/// reading forever (they once hung `lint` and wedged hot reload).
#[test]
fn fifos_and_devices_are_refused_without_hanging() {
    let dir = std::env::temp_dir().join(format!("meshguard-hostile-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let fifo = dir.join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "mkfifo (coreutils) is needed for this test");
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).expect("symlink");
    std::fs::write(dir.join("ok.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: b}\nspec: {}\n").expect("write");
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || {
        let _ = tx.send(load_paths(&[d]));
    });
    let loaded = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("loading finishes (a FIFO or /dev/zero must not block it)");
    let errors: Vec<String> = loaded
        .errors()
        .map(|e| format!("{}: {}", e.file, e.message))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("not a regular file")),
        "{errors:?}"
    );
    assert_eq!(loaded.resources.len(), 1, "the regular file still loads");
}
