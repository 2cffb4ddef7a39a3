//! Releasing the step cache (in a process of its own: the cache is global, and other tests rely
//! on the lists they cached staying there).

use gpubridge_core::plan::{release_step_cache, step_cache_usage, Arg, Launch, Plan};

fn reused(key: u64) -> Plan {
    let mut p = Plan::new("test/release");
    let x = p.input("x", 128, |_, _| {});
    let y = p.output("y", 64);
    p.reuse_steps(key, |s| {
        for _ in 0..10 {
            s.launch(Launch::new(
                "bump",
                [1, 1, 1],
                [32, 1, 1],
                &[Arg::buf(x), Arg::buf(y)],
            ));
        }
    });
    p
}

#[test]
fn a_released_step_cache_is_empty_and_fills_again() {
    let a = reused(1);
    let b = reused(2);
    assert!(reused(1).steps.ptr_eq(&a.steps));
    assert_eq!(step_cache_usage().0, 2);
    let (lists, bytes) = release_step_cache();
    assert_eq!(lists, 2);
    assert!(bytes > 0);
    assert_eq!(step_cache_usage(), (0, 0));
    // Built afresh, then reused again.
    let c = reused(2);
    assert!(!c.steps.ptr_eq(&b.steps));
    assert!(reused(2).steps.ptr_eq(&c.steps));
    assert_eq!(step_cache_usage().0, 1);
}
