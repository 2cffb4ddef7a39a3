//! Fuzzes gpubridge-storage's staged load of a file's byte range into host memory
//! (`Storage::read` with `Dest::Host`, and the async `Storage::load`): arbitrary file contents,
//! offsets and lengths (inside, straddling and past the end), task sizes and `O_DIRECT` on and off,
//! on the disk's temporary directory and on tmpfs.
//!
//! Contract: the bytes read equal the file's, or a typed `Error::Io` (`Truncated` for a range
//! past the end); never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use gpubridge_core::{BridgeConfig, Error, IoErrorKind};
use gpubridge_storage::{Dest, Storage};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;

struct Harness {
    /// Storage handles: task size 4 KiB or 12 KiB, `O_DIRECT` on or off.
    storages: Vec<Storage>,
    /// Files on the disk and on tmpfs (where present).
    files: Vec<PathBuf>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let mut storages = Vec::new();
        for task in [4, 12] {
            for direct in [true, false] {
                let cfg = BridgeConfig::from_toml_str(&format!(
                    "[storage]\nthreads = 2\ntask_size_kb = {task}\nbounce_buffer_kb = 8\n\
                     direct_io = {direct}\n"
                ))
                .expect("valid storage options");
                storages.push(Storage::new(&cfg).expect("storage starts"));
            }
        }
        let name = format!("gpubridge-fuzz-storage-{}", std::process::id());
        let mut files = vec![std::env::temp_dir().join(&name)];
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            files.push(shm.join(&name));
        }
        Harness { storages, files }
    })
}

fn one(mut u: Unstructured<'_>) -> AResult<()> {
    let h = harness();
    let storage = u.choose(&h.storages)?;
    let path = u.choose(&h.files)?;
    let offset: u64 = match u.int_in_range(0u8..=5)? {
        0 => u.arbitrary()?,
        1 => 4096,
        _ => u.int_in_range(0u64..=20_000)?,
    };
    let len: usize = match u.int_in_range(0u8..=7)? {
        0 => u.int_in_range(0usize..=1 << 20)?,
        1 => 0,
        _ => u.int_in_range(0usize..=20_000)?,
    };
    let use_async = u.ratio(1, 4)?;
    // The async form takes a range, whose end may be anything (before the start, far past the
    // file's end).
    let async_end: Option<u64> = if u.ratio(1, 4)? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let contents = u.take_rest();
    std::fs::write(path, contents).expect("write the file");
    let (len, end) = match async_end {
        Some(e) if use_async => (e.saturating_sub(offset) as usize, Some(e)),
        _ => (len, offset.checked_add(len as u64)),
    };
    let inside = end.is_some_and(|e| e >= offset && e <= contents.len() as u64);
    let result = if use_async {
        let end = end.unwrap_or(u64::MAX);
        match futures::executor::block_on(storage.load(path, Some(offset..end))) {
            Err(Error::InvalidInput { .. }) if end < offset => return Ok(()),
            r => r.map(|(v, _)| v),
        }
    } else {
        let mut buf = vec![0u8; len];
        storage
            .read(path, offset, Dest::Host(&mut buf))
            .map(|_| buf)
    };
    match result {
        Ok(buf) => {
            assert!(inside, "a range past the end must not load");
            let at = offset as usize;
            assert_eq!(&buf[..], &contents[at..at + len], "bytes as in the file");
        }
        Err(Error::Io { kind, .. }) => {
            if inside {
                panic!("a range inside the file failed: {kind:?}");
            }
            assert!(
                matches!(kind, IoErrorKind::Truncated),
                "a range past the end is Truncated, not {kind:?}"
            );
        }
        Err(other) => panic!("a host load failed with a non-I/O error: {other}"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = one(Unstructured::new(data));
});
