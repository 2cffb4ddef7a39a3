//! The storage handle's own facts and the smaller parts of its interface, run in CI (no GPU):
//! the worker count the pinned-memory cap allows, what a transfer reports, owned buffers of every
//! kind through the asynchronous calls, device ranges and views, page-cache eviction, and paths
//! that name no file or no directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpubridge_core::device::Device;
use gpubridge_core::{BridgeConfig, Error, IoErrorKind};
use gpubridge_storage::{
    evict_from_page_cache, Dest, DeviceRange, DeviceRead, DeviceView, DeviceWrite, Phases, Route,
    Src, Storage, Transfer,
};

fn storage_with(toml: &str) -> Storage {
    Storage::new(&BridgeConfig::from_toml_str(toml).unwrap()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("storage-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn kind(e: &Error) -> Option<IoErrorKind> {
    match e {
        Error::Io { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn workers_are_capped_by_the_pinned_memory_for_their_bounce_buffers() {
    // Four threads, each with two 4 KiB bounce buffers under 1 MiB: all four work.
    let s = storage_with(
        "[storage]\nthreads = 4\ntask_size_kb = 16\nbounce_buffer_kb = 4\nmax_pinned_memory_mb = 1\n",
    );
    assert_eq!(s.config().threads, 4);
    assert_eq!(s.config().bounce_buffer_kb, 4);
    assert_eq!(s.max_workers(), 4);
    // Eight threads, but 1 MiB holds only two 512 KiB bounce buffers: one worker.
    let s = storage_with(
        "[storage]\nthreads = 8\ntask_size_kb = 512\nbounce_buffer_kb = 512\nmax_pinned_memory_mb = 1\n",
    );
    assert_eq!(s.config().threads, 8);
    assert_eq!(s.max_workers(), 1);
    let shown = format!("{s:?}");
    assert!(
        shown.starts_with("Storage") && shown.contains("workers: 1"),
        "{shown}"
    );
    // No CUDA transfer has run: no pinned memory is held.
    assert_eq!(s.pinned_bytes(), 0);

    // A transfer with that one worker still moves every byte, in several tasks.
    let dir = scratch("one-worker");
    let data = bytes(700_001, 3);
    let path = dir.join("f.bin");
    let t = s.write(Src::Host(&data), &path).unwrap();
    assert_eq!((t.workers, t.route), (1, Route::Staged));
    assert!(t.tasks >= 3, "{t:?}");
    let mut back = vec![0u8; data.len()];
    let r = s.read(&path, 0, Dest::Host(&mut back)).unwrap();
    assert_eq!(back, data);
    assert_eq!(r.workers, 1);
    assert_eq!(r.gds_declined, None, "cuFile does not apply to host memory");
    std::fs::remove_dir_all(&dir).unwrap();

    // A cap that cannot hold one worker's bounce buffers is refused, naming the key.
    let mut cfg = BridgeConfig::default();
    cfg.storage.bounce_buffer_kb = 1024;
    cfg.storage.max_pinned_memory_mb = 1;
    let e = Storage::new(&cfg).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { key, .. } if key == "storage.max_pinned_memory_mb"),
        "{e:?}"
    );
}

#[test]
fn a_transfer_reports_its_rate_and_route() {
    let t = Transfer {
        bytes: 3_000_000,
        route: Route::Staged,
        gds_declined: None,
        buffered: None,
        note: None,
        tasks: 3,
        workers: 2,
        depth_probe: None,
        elapsed: Duration::from_millis(1500),
        phases: Phases::default(),
    };
    assert!((t.bytes_per_second() - 2_000_000.0).abs() < 1e-6);
    // An instant transfer does not divide by zero.
    let instant = Transfer {
        elapsed: Duration::ZERO,
        ..t.clone()
    };
    assert!(instant.bytes_per_second().is_finite());
    assert!(instant.bytes_per_second() >= 3_000_000.0 * 1e9 * 0.999);
    assert_eq!(Route::Staged.name(), "staged");
    assert_eq!(Route::Gds.name(), "gds");

    let dir = scratch("rate");
    let s = storage_with("[storage]\nthreads = 2\n");
    let data = bytes(123_457, 5);
    let t = s.write(Src::Host(&data), &dir.join("f.bin")).unwrap();
    assert_eq!(t.bytes, data.len() as u64);
    // The phases account for the whole save, and a save has a commit (fsync, rename).
    let p = t.phases;
    assert_eq!(
        p.gds_attempt,
        Duration::ZERO,
        "host memory: no cuFile attempt"
    );
    assert!(
        p.commit > Duration::ZERO && p.transfer > Duration::ZERO,
        "{p:?}"
    );
    let sum = p.open + p.gds_attempt + p.transfer + p.commit;
    assert!(
        sum <= t.elapsed && sum + Duration::from_millis(1) >= t.elapsed,
        "{p:?} vs {t:?}"
    );
    let mut back = vec![0u8; data.len()];
    let r = s
        .read(&dir.join("f.bin"), 0, Dest::Host(&mut back))
        .unwrap();
    assert_eq!(back, data);
    assert_eq!(r.phases.commit, Duration::ZERO, "a load commits nothing");
    assert!(r.phases.open + r.phases.transfer <= r.elapsed);
    let rate = t.bytes_per_second();
    let want = t.bytes as f64 / t.elapsed.as_secs_f64().max(1e-9);
    assert!(
        rate > 0.0 && (rate - want).abs() <= want * 1e-12,
        "{rate} vs {want}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn destinations_and_sources_know_their_length() {
    let mut buf = [0u8; 7];
    let d = Dest::Host(&mut buf);
    assert_eq!((d.len(), d.is_empty()), (7, false));
    let d = Dest::Host(&mut []);
    assert_eq!((d.len(), d.is_empty()), (0, true));
    let s = Src::Host(b"abc");
    assert_eq!((s.len(), s.is_empty()), (3, false));
    let s = Src::Host(&[]);
    assert_eq!((s.len(), s.is_empty()), (0, true));

    let dev = gpubridge_wgpu_fallback::cpu::CpuDevice::new(1).unwrap();
    let mut devbuf = dev.alloc(100).unwrap();
    {
        let mut range = DeviceRange::new(&dev, &mut devbuf, 10, 0, Some(100)).unwrap();
        assert!(DeviceWrite::is_empty(&range));
        assert_eq!(Dest::Device(&mut range).len(), 0);
    }
    {
        let range = DeviceRange::new(&dev, &mut devbuf, 10, 90, Some(100)).unwrap();
        assert!(!DeviceWrite::is_empty(&range));
        assert_eq!(DeviceWrite::len(&range), 90);
    }
    let view = DeviceView::new(&dev, &devbuf, 100, 0, Some(100)).unwrap();
    assert!(DeviceRead::is_empty(&view));
    assert!(Src::Device(&view).is_empty());
    let view = DeviceView::new(&dev, &devbuf, 0, 100, Some(100)).unwrap();
    assert!(!DeviceRead::is_empty(&view));
    assert_eq!(Src::Device(&view).len(), 100);

    // A range whose end overflows is refused as invalid input, never wrapped around.
    let range = DeviceRange::new(&dev, &mut devbuf, usize::MAX, 2, Some(100)).err();
    let view = DeviceView::new(&dev, &devbuf, 2, usize::MAX, None).err();
    for e in [range, view] {
        let e = e.expect("an overflowing range is refused");
        assert!(
            matches!(&e, Error::InvalidInput { reason, .. } if reason.contains("range overflows")),
            "{e:?}"
        );
    }
}

#[test]
fn boxed_and_shared_buffers_load_and_save_asynchronously() {
    let dir = scratch("owned");
    let s = storage_with("[storage]\nthreads = 2\ntask_size_kb = 16\nbounce_buffer_kb = 4\n");
    let data = bytes(40_000, 9);
    let boxed: Box<[u8]> = data.clone().into_boxed_slice();
    let shared: Arc<[u8]> = Arc::from(&data[..1000]);
    futures::executor::block_on(async {
        let (back, t) = s.save(boxed, dir.join("boxed.bin")).await.unwrap();
        assert_eq!(&back[..], &data[..]);
        assert_eq!(t.bytes, 40_000);
        let (back, _) = s
            .save(shared.clone(), dir.join("shared.bin"))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&back, &shared), "the same buffer comes back");
        let into: Box<[u8]> = vec![0u8; 5000].into_boxed_slice();
        let (filled, t) = s.load_into(dir.join("boxed.bin"), 333, into).await.unwrap();
        assert_eq!(&filled[..], &data[333..5333]);
        assert_eq!(t.bytes, 5000);
        let (whole, _) = s.load(dir.join("shared.bin"), None).await.unwrap();
        assert_eq!(whole, &data[..1000]);
        // A boxed destination longer than what is left of the file: truncated, nothing read.
        let too_long: Box<[u8]> = vec![0u8; 2000].into_boxed_slice();
        let e = s
            .load_into(dir.join("shared.bin"), 0, too_long)
            .await
            .unwrap_err();
        assert_eq!(kind(&e), Some(IoErrorKind::Truncated), "{e}");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn evicting_a_file_from_the_page_cache_keeps_its_bytes() {
    let dir = scratch("evict");
    let s = storage_with("[storage]\nthreads = 2\n");
    let data = bytes(300_000, 1);
    let path = dir.join("f.bin");
    s.write(Src::Host(&data), &path).unwrap();
    evict_from_page_cache(&path).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read(&path, 0, Dest::Host(&mut back)).unwrap();
    assert_eq!(back, data);
    let e = evict_from_page_cache(&dir.join("missing.bin")).unwrap_err();
    assert_eq!(kind(&e), Some(IoErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("opening to evict its pages"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_save_to_a_path_that_names_no_file_is_refused_and_writes_nothing() {
    let dir = scratch("nofile");
    let s = storage_with("[storage]\nthreads = 1\n");
    for bad in [dir.join(".."), PathBuf::from("/")] {
        let e = s.write(Src::Host(&[1, 2, 3]), &bad).unwrap_err();
        match &e {
            Error::Io {
                path,
                kind: IoErrorKind::Other,
                message,
            } => {
                assert_eq!(path, &bad);
                assert_eq!(message, "the path names no file");
            }
            other => panic!("expected Io(Other), got {other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bare_file_name_is_saved_beside_the_working_directory_and_loaded_back() {
    // A path with no directory part: the temporary file and the directory sync use ".".
    let name = format!(".gpubridge-storage-api-{}.tmp", std::process::id());
    let path = Path::new(&name);
    let s = storage_with("[storage]\nthreads = 1\n");
    let data = bytes(9000, 4);
    let result = s.write(Src::Host(&data), path).map(|t| {
        let mut back = vec![0u8; data.len()];
        s.read(path, 0, Dest::Host(&mut back)).map(|_| (t, back))
    });
    let on_disk = std::fs::read(path);
    let _ = std::fs::remove_file(path);
    let (t, back) = result.unwrap().unwrap();
    assert_eq!(t.bytes, 9000);
    assert_eq!(back, data);
    assert_eq!(on_disk.unwrap(), data);
    let leftovers: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&name))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn blocking_work_runs_off_the_caller_and_a_panic_there_is_a_cancellation() {
    let s = storage_with("[storage]\nthreads = 1\n");
    let caller = std::thread::current().id();
    let (answer, ran_on) = futures::executor::block_on(
        s.unblock(|s: &Storage| (s.max_workers() * 21, std::thread::current().id())),
    )
    .unwrap();
    assert_eq!(answer, 21);
    assert_ne!(ran_on, caller, "the work ran on a thread of its own");
    let e = futures::executor::block_on(
        s.unblock(|_: &Storage| -> u8 { panic!("the storage work failed") }),
    )
    .unwrap_err();
    match e {
        Error::Cancelled { reason } => {
            assert_eq!(reason, "the storage I/O thread ended without an answer")
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // The handle is still usable afterwards.
    assert_eq!(
        futures::executor::block_on(s.unblock(|s: &Storage| s.config().threads)).unwrap(),
        1
    );
}
