//! Fuzzes the graph sample's parquet loader (`gpubridge run graph --data DIR`):
//! `gpubridge-samples/src/samples/graph/data.rs`, compiled in here by path, run on a directory
//! holding the fuzzed `nodes.parquet` and `edges.parquet`.
//!
//! Input: a little-endian `u32` length, that many bytes of `nodes.parquet`, the rest
//! `edges.parquet`. Contract: `Ok` with edges that name loaded nodes, or a typed
//! `GraphDataError`; never a panic that escapes. The loader turns a panic inside the parquet
//! reader into `GraphDataError::Corrupt` by design (`guarded`), so this target counts such
//! panics instead of aborting on them, and any other panic still aborts.
#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "the loader's writer half is not fuzzed here")]
#[path = "../../gpubridge-samples/src/samples/graph/data.rs"]
mod data;

/// Panics the loader caught inside the parquet reader.
static CAUGHT: AtomicU64 = AtomicU64::new(0);

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("gpubridge-fuzz-parquet-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a temporary directory");
        // libFuzzer's hook aborts on every panic, even one the loader catches on purpose; this
        // hook counts the caught ones. A panic outside `guarded` still unwinds out of the
        // target, and libFuzzer reports it.
        std::panic::set_hook(Box::new(|_| {
            CAUGHT.fetch_add(1, Ordering::Relaxed);
        }));
        d
    })
}

fuzz_target!(|input: &[u8]| {
    let d = dir();
    let (nodes, edges) = match input.get(..4) {
        Some(h) => {
            let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let rest = &input[4..];
            rest.split_at(n.min(rest.len()))
        }
        None => (input, &[][..]),
    };
    std::fs::write(d.join("nodes.parquet"), nodes).expect("write nodes");
    std::fs::write(d.join("edges.parquet"), edges).expect("write edges");
    match data::load(d) {
        Ok(g) => {
            assert_eq!(g.ids.len(), g.kinds.len(), "one kind per node");
            assert_eq!(g.edges.len(), g.amounts.len(), "one amount per edge");
            let n = g.ids.len() as u64;
            assert!(
                g.edges
                    .iter()
                    .all(|e| u64::from(e[0]) < n && u64::from(e[1]) < n),
                "edges name loaded nodes"
            );
            assert!(g.kinds.iter().all(|&k| (k as usize) < g.kind_names.len()));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
