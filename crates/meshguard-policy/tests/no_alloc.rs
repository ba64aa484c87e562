//! The common decision path allocates nothing: adapters prepare the request once, and
//! `PolicySet::evaluate` only borrows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use meshguard_policy::load::parse_request;

mod support;
use meshguard_policy::yaml::parse_documents;
use meshguard_policy::{MeshConfig, PathNormalization, PolicySet};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: this allocator only counts calls and forwards every request unchanged to the system
// allocator, so it upholds exactly the contract `System` upholds. It exists to prove (in this one
// test binary) that a decision does not allocate; no library code uses it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `System.alloc` with this layout (via `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn evaluate_does_not_allocate() {
    let dir = support::EXAMPLES;
    let l = support::load_dir(&format!("{dir}/policies"));
    assert!(!l.has_errors());
    let set = PolicySet::compile(l.resources, MeshConfig::default()).expect("compile");
    // Every bundled request except the one that matches an AUDIT policy (reporting audit
    // matches allocates a small list; that is not the common path).
    for name in [
        "frontend-reads-users.yaml",
        "frontend-admin-bypass.yaml",
        "plaintext-to-backend.yaml",
        "unknown-caller.yaml",
        "api-with-jwt.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/requests/{name}")).expect("read");
        let docs = parse_documents(&text).expect("yaml");
        let (req, id) = parse_request(&docs[0], PathNormalization::Base).expect("request");
        let warm = set.evaluate(&req, &id).allowed; // regex caches warm up here
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            assert_eq!(set.evaluate(&req, &id).allowed, warm);
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(
            after - before,
            0,
            "{name}: {} allocations in 1000 decisions",
            after - before
        );
    }
}
