//! The host-staged path into and out of host memory and the CPU backend's buffers, run in CI
//! (no GPU): every alignment of head and tail, multi-task ranges, tmpfs's refusal of
//! `O_DIRECT`, and each bad-file case as its typed error.

use std::path::{Path, PathBuf};

use gpubridge_core::device::Device;
use gpubridge_core::{BridgeConfig, Error, IoErrorKind};
use gpubridge_storage::{Dest, DeviceRange, DeviceView, Route, Src, Storage};
use rand::{Rng, SeedableRng};

/// Small tasks and bounce buffers, so that a few hundred KiB make many tasks, each several
/// bounce buffers long.
fn storage() -> Storage {
    let cfg = BridgeConfig::from_toml_str(
        "[storage]\nthreads = 4\ntask_size_kb = 16\nbounce_buffer_kb = 4\nmax_pinned_memory_mb = 1\n",
    )
    .unwrap();
    Storage::new(&cfg).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    // On disk beside the build (not tmpfs, where O_DIRECT is refused), where the runner allows.
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("storage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

fn kind(e: &Error) -> Option<IoErrorKind> {
    match e {
        Error::Io { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// A 4 KiB-aligned window of `len` bytes inside a fresh vector.
fn aligned_window(backing: &mut [u8], len: usize) -> &mut [u8] {
    let skip = backing.as_ptr().align_offset(4096);
    &mut backing[skip..skip + len]
}

#[test]
fn every_alignment_of_head_and_tail_round_trips_through_host_memory() {
    let dir = scratch("align");
    let s = storage();
    let n = 5 * 16384 + 4096 * 3 + 123;
    let data = random_bytes(n, 1);
    let path = dir.join("data.bin");
    let t = s.write(Src::Host(&data), &path).unwrap();
    assert_eq!(t.bytes, n as u64);
    assert_eq!(t.route, Route::Staged);
    assert!(t.tasks > 4, "{t:?}");
    assert_eq!(std::fs::read(&path).unwrap(), data);

    for (offset, len) in [
        (0, n),
        (1, n - 1),
        (4095, 10_000),
        (4096, 8192),
        (4097, 3 * 16384),
        (100, 50),
        (n - 10, 10),
        (0, 0),
        (n, 0),
        (8191, n - 8191),
    ] {
        // An ordinary vector: aligned pieces go through the bounce buffers.
        let mut buf = vec![0u8; len];
        let t = s.read(&path, offset as u64, Dest::Host(&mut buf)).unwrap();
        assert_eq!(t.bytes, len as u64);
        assert!(buf == data[offset..offset + len], "bytes {offset}..+{len}");
        // A page-aligned buffer: the aligned body is read straight into it.
        let mut backing = vec![0u8; len + 4096];
        let window = aligned_window(&mut backing, len);
        s.read(&path, offset as u64, Dest::Host(window)).unwrap();
        assert!(
            *aligned_window(&mut backing, len) == data[offset..offset + len],
            "aligned bytes {offset}..+{len}"
        );
    }
    // Saving an unaligned range of memory (bounce buffers on the write side too).
    let part = &data[3..3 + 40_000];
    let p2 = dir.join("part.bin");
    s.write(Src::Host(part), &p2).unwrap();
    assert_eq!(std::fs::read(&p2).unwrap(), part);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn async_load_and_save_run_on_any_executor() {
    let dir = scratch("async");
    let s = storage();
    let data = random_bytes(70_001, 2);
    let path = dir.join("a.bin");
    futures::executor::block_on(async {
        let (back, t) = s.save(data.clone(), &path).await.unwrap();
        assert_eq!(back, data);
        assert_eq!(t.bytes, 70_001);
        let (whole, _) = s.load(&path, None).await.unwrap();
        assert_eq!(whole, data);
        let (part, _) = s.load(&path, Some(5..60_005)).await.unwrap();
        assert_eq!(part, data[5..60_005]);
        let (filled, _) = s.load_into(&path, 7, vec![0u8; 1000]).await.unwrap();
        assert_eq!(filled, data[7..1007]);
        #[allow(clippy::reversed_empty_ranges)] // The point: a range that ends before it starts.
        let backwards = Some(10..5);
        let e = s.load(&path, backwards).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_is_not_found() {
    let s = storage();
    let dir = scratch("missing");
    let mut buf = vec![0u8; 10];
    let e = s
        .read(&dir.join("nope.bin"), 0, Dest::Host(&mut buf))
        .unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("nope.bin"), "{e}");
    let e = futures::executor::block_on(s.load(dir.join("nope.bin"), None)).unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::NotFound), "{e}");
    // Saving into a directory that does not exist, with `storage.create_dirs = false`.
    let strict =
        Storage::new(&BridgeConfig::from_toml_str("[storage]\ncreate_dirs = false\n").unwrap())
            .unwrap();
    let e = strict
        .write(Src::Host(&[1, 2, 3]), &dir.join("no-dir").join("f.bin"))
        .unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::NotFound), "{e}");
    assert!(!dir.join("no-dir").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_save_creates_missing_directories_by_default() {
    let s = storage();
    let dir = scratch("mkdirs");
    let path = dir.join("a").join("b").join("f.bin");
    let data = random_bytes(10_000, 3);
    s.write(Src::Host(&data), &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // Only the file is left beside the new directories: no temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.join("a").join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f.bin")]);
    // A file where a directory should be is an error, not a panic, and leaves the file alone.
    std::fs::write(dir.join("plain"), b"x").unwrap();
    let e = s
        .write(Src::Host(&data), &dir.join("plain").join("f.bin"))
        .unwrap_err();
    assert!(e.to_string().contains("creating its directory"), "{e}");
    assert_eq!(std::fs::read(dir.join("plain")).unwrap(), b"x");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_range_past_the_end_is_truncated_and_nothing_is_read() {
    let dir = scratch("trunc");
    let s = storage();
    let path = dir.join("short.bin");
    std::fs::write(&path, random_bytes(10_000, 3)).unwrap();
    for (offset, len) in [(0, 10_001), (9_999, 2), (20_000, 1), (u64::MAX - 1, 4)] {
        let mut buf = vec![0xAAu8; len];
        let e = s.read(&path, offset, Dest::Host(&mut buf)).unwrap_err();
        assert_eq!(
            kind(&e),
            Some(IoErrorKind::Truncated),
            "{offset}+{len}: {e}"
        );
        assert!(buf.iter().all(|b| *b == 0xAA), "nothing was read");
    }
    let e = futures::executor::block_on(s.load(&path, Some(5000..12_000))).unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::Truncated), "{e}");
    // Found by the storage_load fuzz target: a range far past the end used to be allocated
    // (here 1 PiB) before the file's size was checked, and the allocation aborted the process.
    for end in [1u64 << 50, u64::MAX] {
        let e = futures::executor::block_on(s.load(&path, Some(7..end))).unwrap_err();
        assert_eq!(kind(&e), Some(IoErrorKind::Truncated), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_is_not_a_file() {
    let dir = scratch("dir");
    let mut buf = vec![0u8; 1];
    let e = storage().read(&dir, 0, Dest::Host(&mut buf)).unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::Other), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `f` on a thread of its own that the file system treats as user `nobody`. As root, file
/// permissions are not checked (CAP_DAC_OVERRIDE); a thread's file-system user id is its own on
/// Linux, and setting it away from 0 drops those capabilities for that thread only.
fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: geteuid only reads the process's credentials.
            if unsafe { libc::geteuid() } == 0 {
                // SAFETY: setfsuid changes only this thread's file-system user id; the thread
                // ends with this test.
                unsafe { libc::setfsuid(65534) };
                // SAFETY: an invalid id changes nothing and returns the current one.
                let now = unsafe { libc::setfsuid(u32::MAX) };
                assert_eq!(now, 65534, "setfsuid took");
            }
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn permission_denied_on_read_and_on_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("perm");
    let s = storage();
    let path = dir.join("secret.bin");
    std::fs::write(&path, [1u8; 100]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (read, write) = as_nobody(|| {
        let mut buf = vec![0u8; 100];
        let read = s.read(&path, 0, Dest::Host(&mut buf)).unwrap_err();
        let write = s
            .write(Src::Host(&[1, 2, 3]), &locked.join("f.bin"))
            .unwrap_err();
        (read, write)
    });
    assert_eq!(kind(&read), Some(IoErrorKind::PermissionDenied), "{read}");
    assert_eq!(kind(&write), Some(IoErrorKind::PermissionDenied), "{write}");
    assert_eq!(read.class(), gpubridge_core::ErrorClass::Caller);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("gpubridge-tmp"))
        .collect()
}

#[test]
fn a_full_disk_leaves_the_old_file_whole_and_no_temporary_file() {
    let dir = scratch("full");
    let s = storage();
    let path = dir.join("model.bin");
    let old = random_bytes(30_000, 4);
    s.write(Src::Host(&old), &path).unwrap();
    s.inject_disk_full_after(Some(20_000));
    let e = s
        .write(Src::Host(&random_bytes(100_000, 5)), &path)
        .unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::DiskFull), "{e}");
    assert_eq!(e.class(), gpubridge_core::ErrorClass::Resource);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        old,
        "the old file is untouched"
    );
    let e =
        futures::executor::block_on(s.save(vec![1u8; 50_000], dir.join("new.bin"))).unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::DiskFull), "{e}");
    assert!(!dir.join("new.bin").exists(), "no partial file");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    s.inject_disk_full_after(None);
    s.write(Src::Host(&[9u8; 5000]), &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![9u8; 5000]);
    assert!(leftovers(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tmpfs_is_read_with_o_direct_where_the_kernel_allows_it_and_through_the_page_cache_otherwise() {
    use std::os::unix::fs::OpenOptionsExt;
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm here");
        return;
    }
    let s = storage();
    let path = shm.join(format!("gpubridge-storage-test-{}", std::process::id()));
    let data = random_bytes(100_000, 6);
    let t = s.write(Src::Host(&data), &path).unwrap();
    let mut buf = vec![0u8; 90_000];
    let r = s.read(&path, 5000, Dest::Host(&mut buf)).unwrap();
    assert_eq!(buf, data[5000..95_000]);
    // tmpfs refuses O_DIRECT before Linux 6.6 and takes it since: ask the kernel directly.
    let refused = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .is_err();
    std::fs::remove_file(&path).unwrap();
    for why in [t.buffered, r.buffered] {
        if refused {
            let why = why.expect("a reason");
            assert!(why.contains("refused O_DIRECT"), "{why}");
        } else {
            assert_eq!(why, None);
        }
    }
}

#[test]
fn direct_io_can_be_turned_off_by_configuration() {
    let dir = scratch("nodirect");
    let cfg = BridgeConfig::from_toml_str("[storage]\ndirect_io = false\n").unwrap();
    let s = Storage::new(&cfg).unwrap();
    let data = random_bytes(50_000, 7);
    let path = dir.join("f.bin");
    s.write(Src::Host(&data), &path).unwrap();
    let mut buf = vec![0u8; 50_000];
    let t = s.read(&path, 0, Dest::Host(&mut buf)).unwrap();
    assert_eq!(buf, data);
    assert_eq!(t.buffered.as_deref(), Some("storage.direct_io = false"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn buffers_of_a_core_device_load_and_save() {
    let dir = scratch("device");
    let s = storage();
    let dev = gpubridge_wgpu_fallback::cpu::CpuDevice::new(1).unwrap();
    let data = random_bytes(60_000, 8);
    let path = dir.join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let mut buf = dev.alloc(70_000).unwrap();
    let mut range = DeviceRange::new(&dev, &mut buf, 1000, 50_000, Some(70_000)).unwrap();
    let t = s.read(&path, 333, Dest::Device(&mut range)).unwrap();
    assert_eq!(t.bytes, 50_000);
    assert_eq!(buf[1000..51_000], data[333..50_333]);
    assert!(buf[..1000].iter().all(|b| *b == 0));
    let view = DeviceView::new(&dev, &buf, 1000, 50_000, Some(70_000)).unwrap();
    let out = dir.join("out.bin");
    s.write(Src::Device(&view), &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data[333..50_333]);
    // A range that does not fit the buffer is refused up front.
    assert!(DeviceRange::new(&dev, &mut buf, 60_000, 20_000, Some(70_000)).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_transfers_share_the_pool() {
    let dir = scratch("concurrent");
    let s = storage();
    let data = random_bytes(200_000, 9);
    let path = dir.join("f.bin");
    s.write(Src::Host(&data), &path).unwrap();
    std::thread::scope(|sc| {
        for i in 0..6u64 {
            let (s, path, data) = (&s, &path, &data);
            sc.spawn(move || {
                let off = i * 7919;
                let mut buf = vec![0u8; 150_000];
                s.read(path, off, Dest::Host(&mut buf)).unwrap();
                assert!(buf == data[off as usize..off as usize + 150_000]);
            });
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bytes_are_counted_by_path() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let dir = scratch("metrics");
    let s = storage();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let path = dir.join("f.bin");
        s.write(Src::Host(&[5u8; 12_345]), &path).unwrap();
        let mut buf = vec![0u8; 12_345];
        s.read(&path, 0, Dest::Host(&mut buf)).unwrap();
    });
    let total: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == "gpubridge_storage_bytes_total"
                && k.key()
                    .labels()
                    .any(|l| l.key() == "path" && l.value() == "staged")
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 2 * 12_345);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_save_makes_an_empty_file() {
    let dir = scratch("empty");
    let s = storage();
    let path = dir.join("empty.bin");
    let t = s.write(Src::Host(&[]), &path).unwrap();
    assert_eq!(t.bytes, 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_large_direct_read_measures_its_depth_once_and_the_next_reads_on_that_disk_reuse_it() {
    let dir = scratch("depth");
    // 4 KiB tasks: a 1 MiB file is 256 tasks, enough to probe (16 with one reader, 16 with four).
    let toml = "[storage]\nthreads = 4\ntask_size_kb = 4\nbounce_buffer_kb = 4\n";
    let s = Storage::new(&BridgeConfig::from_toml_str(toml).unwrap()).unwrap();
    let data = random_bytes(1 << 20, 8);
    let path = dir.join("big.bin");
    s.write(Src::Host(&data), &path).unwrap();
    let mut backing = vec![0u8; (1 << 20) + 4096];
    let buf = aligned_window(&mut backing, 1 << 20);
    let first = s.read(&path, 0, Dest::Host(buf)).unwrap();
    assert_eq!(buf, &data[..]);
    let second = s.read(&path, 0, Dest::Host(buf)).unwrap();
    assert_eq!(buf, &data[..]);
    if first.buffered.is_some() {
        // This file system refused O_DIRECT: the page cache serves every depth alike, so no
        // read measures one.
        eprintln!("O_DIRECT refused here ({:?}): no probe", first.buffered);
        assert_eq!(first.depth_probe, None);
        assert_eq!(first.workers, 4);
    } else {
        let p = first
            .depth_probe
            .expect("the first large direct read probes");
        assert_eq!(p.readers, 4);
        assert!(p.one_reader > 0.0 && p.many_readers > 0.0, "{p:?}");
        assert!(p.chosen == 1 || p.chosen == 4, "{p:?}");
        assert_eq!(first.workers, p.chosen);
        // The next read on the same disk within the minute uses the measured depth.
        assert_eq!(second.depth_probe, None);
        assert_eq!(second.workers, p.chosen);
    }
    // Small reads never probe, and with the option off no read does.
    let mut small = vec![0u8; 64 << 10];
    let t = s.read(&path, 0, Dest::Host(&mut small)).unwrap();
    assert_eq!(t.depth_probe, None);
    let off = BridgeConfig::from_toml_str(&format!("{toml}adaptive_depth = false\n")).unwrap();
    let s = Storage::new(&off).unwrap();
    let t = s.read(&path, 0, Dest::Host(buf)).unwrap();
    assert_eq!(buf, &data[..]);
    assert_eq!((t.depth_probe, t.workers), (None, 4));
    std::fs::remove_dir_all(&dir).unwrap();
}
