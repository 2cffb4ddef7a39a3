//! `gpubridge bench` rows of `gpubridge-storage` (TARGETS.md P6, P7, and a save diagnostic):
//! files to CUDA device memory and back, against raw `O_DIRECT` reads and writes of the same disk
//! measured in the same run, every byte checked by checksum.
//!
//! - P6: a multi-GiB file on disk, its pages dropped with `posix_fadvise(DONTNEED)` before each
//!   read, loaded into device memory; baseline: the best of a single-threaded `dd`-style read and
//!   a read by as many threads as the storage pool has, both `O_DIRECT` in 4 and in 16 MiB blocks
//!   into host memory, of the same file in the same run.
//! - P7: the same bytes in tmpfs (`/dev/shm`) loaded into device memory; target 20 GB/s; baseline
//!   column: pinned host-to-device bandwidth (raw cudarc) measured now.
//! - P6 (diagnostic, measured without a GPU too): the same cold read into page-aligned host
//!   memory, against the same baseline.
//! - P6 (diagnostic): the cold load to device memory again with 1, 2, 4 and 8 storage workers,
//!   one pass each: which `storage.threads` the disk wants.
//! - P6 (save): device memory to a new file on disk (temporary file, fsync, rename), against raw
//!   `O_DIRECT` writes of the same size by the same number of threads plus fsync, the best of 4
//!   and 16 MiB blocks into a file grown by its writes and one preallocated with `fallocate`.
//! - P6 (save diagnostic, measured without a GPU too): the same save from page-aligned host
//!   memory, against the same baseline.
//!
//! Each row records which path the transfer took and, for the staged path, why cuFile was not
//! taken (the storage runs with `storage.enable_gpu_direct_storage = true`, so the attempt is
//! made where the binary has the `gds` feature).
//!
//! Environment: `GPUBRIDGE_BENCH_DIR` (a directory on the disk to measure; default the system's
//! temporary directory), `GPUBRIDGE_BENCH_STORAGE_MB` (file size, default 4096, 64 with
//! `--quick`).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use gpubridge::storage::{Dest, Src, Storage, Transfer};
use gpubridge::BridgeConfig;
use rayon::prelude::*;

use super::Ctx;

const ROWS: [(&str, &str); 3] = [
    ("P6", "file -> CUDA device buffer, cold page cache"),
    ("P7", "file in tmpfs -> CUDA device buffer"),
    ("P6", "save: CUDA device buffer -> new file"),
];

const HOST_ROW: &str = "diagnostic: file -> host memory (page-aligned), cold page cache";
const HOST_SAVE_ROW: &str = "diagnostic: save: host memory (page-aligned) -> new file";

/// The baseline column of the rows measured against [`raw_direct_read`].
const RAW_READ_BASELINE: &str = "raw O_DIRECT reads of the same file, best of 4 and 16 MiB blocks on 1 thread and the pool's thread count";
/// The baseline column of the rows measured against [`raw_direct_write`].
const RAW_WRITE_BASELINE: &str = "raw O_DIRECT writes, 4 and 16 MiB blocks, same threads, + fsync (best of growing and preallocated files)";

/// Adds the storage rows that `cx` asks for. A row that fails (a file system that refuses
/// `O_DIRECT`, a full disk, a device error) is reported as not measured with the error, so that
/// the other rows of the bench still run.
///
/// # Errors
/// None today; the signature leaves room for errors that should stop the whole bench.
pub(super) fn rows(cx: &mut Ctx) -> anyhow::Result<()> {
    if !cx.wants("P6") && !cx.wants("P7") {
        return Ok(());
    }
    if cx.wants("P6") {
        if let Err(e) = host_row(cx) {
            failed(cx, &[("P6", HOST_ROW)], &e);
        }
        if let Err(e) = host_save_row(cx) {
            failed(cx, &[("P6", HOST_SAVE_ROW)], &e);
        }
    }
    #[cfg(feature = "cuda")]
    match gpubridge::storage::cuda_context(0) {
        Ok(ctx) => {
            if let Err(e) = measure::run(cx, ctx) {
                failed(cx, &ROWS, &e);
            }
        }
        Err(e) => skip(cx, &e.to_string()),
    }
    #[cfg(not(feature = "cuda"))]
    skip(cx, "built without the `cuda` feature");
    Ok(())
}

/// Rows of `rows` that have not been written yet, as not measured because of `e`.
fn failed(cx: &mut Ctx, rows: &[(&str, &str)], e: &anyhow::Error) {
    eprintln!("storage bench failed: {e:#}");
    for (id, metric) in rows {
        let done = cx
            .rows
            .iter()
            .any(|r| r["id"] == *id && r["metric"] == *metric);
        if cx.wants(id) && !done {
            cx.row(
                id,
                metric,
                None,
                "",
                "",
                None,
                None,
                "",
                Some(false),
                &format!("not measured: failed: {e:#}"),
            );
        }
    }
}

fn skip(cx: &mut Ctx, why: &str) {
    for (id, metric) in ROWS {
        if cx.wants(id) {
            cx.row(
                id,
                metric,
                None,
                "",
                "",
                None,
                None,
                "",
                None,
                &format!("not measured: {why}"),
            );
        }
    }
}

/// The raw baselines' block sizes: each baseline is the best over these (the library's own
/// default task is 4 MiB; some virtual disks are faster with smaller requests, some with larger).
const BLOCKS: [usize; 2] = [4 << 20, 16 << 20];

/// Removes the bench's files however the row ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// Deterministic bytes (SplitMix64 per MiB), generated on every core.
fn data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v.par_chunks_mut(1 << 20).enumerate().for_each(|(i, c)| {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        for w in c.chunks_mut(8) {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            w.copy_from_slice(&z.to_le_bytes()[..w.len()]);
        }
    });
    v
}

/// An order-sensitive checksum: FNV-1a over 8-byte words per MiB, chunks mixed by index.
fn checksum(b: &[u8]) -> u64 {
    b.par_chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| {
            let mut h = 0xcbf2_9ce4_8422_2325u64 ^ (i as u64).wrapping_mul(0x100_0000_01b3);
            for w in c.chunks(8) {
                let mut word = [0u8; 8];
                word[..w.len()].copy_from_slice(w);
                h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x100_0000_01b3);
            }
            h.rotate_left((i % 64) as u32)
        })
        .reduce(|| 0, |a, b| a ^ b)
}

fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + 4096];
    let at = v.as_ptr().align_offset(4096);
    (v, at)
}

/// Raw `O_DIRECT` reads of `path` by `threads` threads, pages dropped first; GB/s: the best over
/// [`BLOCKS`].
fn raw_direct_read(path: &Path, len: usize, threads: usize) -> anyhow::Result<f64> {
    let mut best = 0f64;
    for block in BLOCKS {
        best = best.max(raw_direct_read_once(path, len, threads, block)?);
    }
    Ok(best)
}

fn raw_direct_read_once(
    path: &Path,
    len: usize,
    threads: usize,
    block: usize,
) -> anyhow::Result<f64> {
    gpubridge::storage::evict_from_page_cache(path)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("O_DIRECT open of {}", path.display()))?;
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let (mut v, at) = aligned(block);
                    let buf = &mut v[at..at + block];
                    loop {
                        let off = next.fetch_add(block, Ordering::Relaxed);
                        if off >= len {
                            return Ok(());
                        }
                        let n = block.min(len - off);
                        let mut done = 0;
                        while done < n {
                            let r = f.read_at(&mut buf[done..n], (off + done) as u64)?;
                            if r == 0 {
                                bail!("short O_DIRECT read at {}", off + done);
                            }
                            done += r;
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok(())
    })?;
    Ok(gbps(len, t.elapsed().as_secs_f64()))
}

/// Raw `O_DIRECT` writes of `data` to a new file at `path` by `threads` threads, then fsync;
/// GB/s: the best over [`BLOCKS`] and over a file that grows with each write and one whose
/// blocks were allocated first (`fallocate`, timed too), so that the baseline is the fastest of
/// the ways a writer could lay the file out on this disk.
fn raw_direct_write(path: &Path, data: &[u8], threads: usize) -> anyhow::Result<f64> {
    raw_direct_write_from(path, data, threads, RawBuf::heap)
}

/// One raw writer thread's buffer.
enum RawBuf {
    /// Page-aligned heap memory: the vector, the aligned start, the usable length.
    Heap(Vec<u8>, usize, usize),
    /// Page-locked memory from `cuMemHostAlloc` (flags 0, cacheable), as the CUDA path's bounce
    /// buffers are: tells whether `O_DIRECT` from such memory costs anything on this machine.
    #[cfg(feature = "cuda")]
    Pinned(cudarc::driver::PinnedHostSlice<u8>),
}

impl RawBuf {
    fn heap(len: usize) -> anyhow::Result<Self> {
        let (mut v, at) = aligned(len);
        // Touched now, so that no page fault of it lands inside the clock (page-locked memory is
        // resident already).
        v.fill(1);
        Ok(Self::Heap(v, at, len))
    }

    #[cfg(feature = "cuda")]
    fn pinned(
        ctx: &std::sync::Arc<gpubridge::storage::CudaContext>,
        len: usize,
    ) -> anyhow::Result<Self> {
        // SAFETY: plain page-locked host memory; its bytes are written before they are read.
        Ok(Self::Pinned(unsafe {
            ctx.alloc_pinned_with_flags::<u8>(len, 0)
        }?))
    }

    fn slice_mut(&mut self) -> anyhow::Result<&mut [u8]> {
        let s = match self {
            Self::Heap(v, at, len) => &mut v[*at..*at + *len],
            #[cfg(feature = "cuda")]
            Self::Pinned(p) => p.as_mut_slice()?,
        };
        anyhow::ensure!(
            (s.as_ptr() as usize).is_multiple_of(4096),
            "raw writer buffer not page-aligned"
        );
        Ok(s)
    }
}

/// [`raw_direct_write`] with each writer's buffer from `alloc`.
fn raw_direct_write_from(
    path: &Path,
    data: &[u8],
    threads: usize,
    alloc: impl Fn(usize) -> anyhow::Result<RawBuf>,
) -> anyhow::Result<f64> {
    let mut best = 0f64;
    for block in BLOCKS {
        for preallocate in [false, true] {
            let bufs = (0..threads)
                .map(|_| alloc(block))
                .collect::<anyhow::Result<Vec<_>>>()?;
            best = best.max(raw_direct_write_once(path, data, bufs, block, preallocate)?);
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(best)
}

fn raw_direct_write_once(
    path: &Path,
    data: &[u8],
    bufs: Vec<RawBuf>,
    block: usize,
    preallocate: bool,
) -> anyhow::Result<f64> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("O_DIRECT create of {}", path.display()))?;
    let next = AtomicUsize::new(0);
    let len = data.len();
    let t = Instant::now();
    if preallocate && len > 0 {
        // SAFETY: `f` is open for the whole call; fallocate touches no memory of ours.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("fallocate of {}", path.display()));
        }
    }
    // Each writer hands its buffer back, so that freeing it (cuMemFreeHost for page-locked
    // memory) happens after the clock stops.
    let bufs = std::thread::scope(|s| -> anyhow::Result<Vec<RawBuf>> {
        let workers: Vec<_> = bufs
            .into_iter()
            .map(|mut b| {
                let (f, next) = (&f, &next);
                s.spawn(move || -> anyhow::Result<RawBuf> {
                    let v = b.slice_mut()?;
                    loop {
                        let off = next.fetch_add(block, Ordering::Relaxed);
                        if off >= len {
                            return Ok(b);
                        }
                        let n = block.min(len - off);
                        let buf = &mut v[..n];
                        buf.copy_from_slice(&data[off..off + n]);
                        f.write_all_at(buf, off as u64)?;
                    }
                })
            })
            .collect();
        let mut back = Vec::new();
        for w in workers {
            back.push(w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??);
        }
        Ok(back)
    })?;
    f.sync_all()?;
    let rate = gbps(len, t.elapsed().as_secs_f64());
    drop(bufs);
    Ok(rate)
}

fn route_note(t: &Transfer) -> String {
    let mut s = format!(
        "path {}; {} tasks on {} workers",
        t.route.name(),
        t.tasks,
        t.workers
    );
    if let Some(why) = &t.gds_declined {
        s.push_str(&format!("; cuFile not taken: {why}"));
    }
    if let Some(why) = &t.buffered {
        s.push_str(&format!("; page cache used: {why}"));
    }
    let p = &t.phases;
    s.push_str(&format!(
        "; phases: open {:.1} ms, cuFile attempt {:.1} ms, transfer {:.1} ms, commit {:.1} ms",
        p.open.as_secs_f64() * 1e3,
        p.gds_attempt.as_secs_f64() * 1e3,
        p.transfer.as_secs_f64() * 1e3,
        p.commit.as_secs_f64() * 1e3
    ));
    if let Some(n) = &t.note {
        s.push_str(&format!("; {n}"));
    }
    s
}

/// Sizes, places and the storage handle every row uses.
struct Setup {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    mb: usize,
    len: usize,
    reps: usize,
    threads: usize,
    dir: PathBuf,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    cfg: BridgeConfig,
    storage: Storage,
    settings: String,
}

fn setup(cx: &Ctx) -> anyhow::Result<Setup> {
    let quick = cx.args.quick;
    let mb: usize = std::env::var("GPUBRIDGE_BENCH_STORAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 64 } else { 4096 });
    let len = (mb.max(16) / 16 * 16) << 20;
    let reps = if quick { 1 } else { 2 };
    let threads = std::thread::available_parallelism().map_or(8, |n| n.get());
    let dir = std::env::var_os("GPUBRIDGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut cfg = BridgeConfig::default();
    cfg.storage.threads = threads;
    cfg.storage.enable_gpu_direct_storage = true;
    cfg.storage.max_pinned_memory_mb = cfg
        .storage
        .max_pinned_memory_mb
        .max(threads as u64 * 2 * cfg.storage.bounce_buffer_kb / 1024);
    let storage = Storage::new(&cfg)?;
    let settings = format!(
        "{} MiB; storage.threads {threads}, task {} KiB, bounce {} KiB x2 per worker; dir {}",
        len >> 20,
        cfg.storage.task_size_kb,
        cfg.storage.bounce_buffer_kb,
        dir.display()
    );
    Ok(Setup {
        mb,
        len,
        reps,
        threads,
        dir,
        cfg,
        storage,
        settings,
    })
}

/// P6 (diagnostic, no GPU needed): the same cold read into host memory, against the same raw
/// `O_DIRECT` baseline.
fn host_row(cx: &mut Ctx) -> anyhow::Result<()> {
    let Setup {
        len,
        reps,
        threads,
        dir,
        storage,
        settings,
        ..
    } = setup(cx)?;
    let bytes = data(len);
    let sum = checksum(&bytes);
    let file = dir.join(format!("gpubridge-bench-host-{}.bin", std::process::id()));
    let _cleanup = Cleanup(vec![file.clone()]);
    std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
    drop(bytes);
    let (mut backing, at) = aligned(len);
    let mut raw = 0f64;
    let mut best: Option<Transfer> = None;
    let mut ok = true;
    for _ in 0..reps {
        raw = raw.max(raw_direct_read(&file, len, 1)?);
        raw = raw.max(raw_direct_read(&file, len, threads)?);
        gpubridge::storage::evict_from_page_cache(&file)?;
        let buf = &mut backing[at..at + len];
        buf.fill(0);
        let t = storage.read(&file, 0, Dest::Host(buf))?;
        ok &= checksum(buf) == sum;
        if best.as_ref().is_none_or(|b| t.elapsed < b.elapsed) {
            best = Some(t);
        }
    }
    let t = best.context("no load measured")?;
    let v = t.bytes_per_second() / 1e9;
    cx.row(
        "P6",
        HOST_ROW,
        Some(v),
        "GB/s",
        RAW_READ_BASELINE,
        Some(raw),
        Some(v / raw),
        "diagnostic (no target)",
        None,
        &format!(
            "checksum {}; {}; best of {reps}; {settings}",
            if ok { "matches" } else { "MISMATCH" },
            route_note(&t)
        ),
    );
    Ok(())
}

/// P6 save (diagnostic, no GPU needed): host memory to a new file, the library's whole write
/// (temporary file, allocation, fsync, rename, directory fsync), against raw `O_DIRECT` writes of
/// the same bytes by the same number of threads, interleaved with it.
fn host_save_row(cx: &mut Ctx) -> anyhow::Result<()> {
    let Setup {
        len,
        reps,
        threads,
        dir,
        storage,
        settings,
        ..
    } = setup(cx)?;
    let pid = std::process::id();
    let file = dir.join(format!("gpubridge-bench-host-save-{pid}.bin"));
    let raw_file = dir.join(format!("gpubridge-bench-host-save-{pid}-raw.bin"));
    let _cleanup = Cleanup(vec![file.clone(), raw_file.clone()]);
    let (mut backing, at) = aligned(len);
    let bytes = &mut backing[at..at + len];
    bytes.copy_from_slice(&data(len));
    let sum = checksum(bytes);
    let mut raw = 0f64;
    let mut best: Option<Transfer> = None;
    for _ in 0..reps {
        raw = raw.max(raw_direct_write(&raw_file, bytes, threads)?);
        let t = storage.write(Src::Host(bytes), &file)?;
        if best.as_ref().is_none_or(|b| t.elapsed < b.elapsed) {
            best = Some(t);
        }
    }
    let written = checksum(&std::fs::read(&file)?) == sum;
    let t = best.context("no save measured")?;
    let v = t.bytes_per_second() / 1e9;
    cx.row(
        "P6",
        HOST_SAVE_ROW,
        Some(v),
        "GB/s",
        RAW_WRITE_BASELINE,
        Some(raw),
        Some(v / raw),
        "diagnostic (no target)",
        None,
        &format!(
            "checksum {}; {}; temporary file + fsync + rename + directory fsync included; best of {reps}; {settings}",
            if written { "matches" } else { "MISMATCH" },
            route_note(&t)
        ),
    );
    Ok(())
}

#[cfg(feature = "cuda")]
mod measure {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Instant;

    use anyhow::Context;
    use gpubridge::storage::{CudaContext, Dest, Src, Storage, Transfer};

    use super::{
        checksum, data, raw_direct_read, raw_direct_write, route_note, setup, Cleanup, Setup,
        RAW_READ_BASELINE, RAW_WRITE_BASELINE,
    };
    use super::{Ctx, ROWS};

    pub(super) fn run(cx: &mut Ctx, ctx: Arc<CudaContext>) -> anyhow::Result<()> {
        let Setup {
            mb,
            len,
            reps,
            threads,
            dir,
            cfg,
            storage,
            settings,
        } = setup(cx)?;
        let stream = ctx.new_stream()?;

        let t0 = Instant::now();
        let bytes = data(len);
        let sum = checksum(&bytes);
        let mut dev = stream.clone_htod(&bytes)?;
        stream.synchronize()?;
        eprintln!(
            "storage bench: {mb} MiB generated and uploaded in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let pid = std::process::id();
        let file = dir.join(format!("gpubridge-bench-{pid}.bin"));
        let raw_file = dir.join(format!("gpubridge-bench-{pid}-raw.bin"));
        let shm_file = PathBuf::from("/dev/shm").join(format!("gpubridge-bench-{pid}.bin"));
        let _cleanup = Cleanup(vec![file.clone(), raw_file.clone(), shm_file.clone()]);

        // Save (diagnostic) first: it writes the file that P6 reads.
        let mut raw_w = 0f64;
        let mut save: Option<Transfer> = None;
        for _ in 0..reps {
            raw_w = raw_w.max(raw_direct_write(&raw_file, &bytes, threads)?);
            let _ = std::fs::remove_file(&raw_file);
            let t = storage.write(Src::Cuda(dev.as_view()), &file)?;
            if save.as_ref().is_none_or(|s| t.elapsed < s.elapsed) {
                save = Some(t);
            }
        }
        let save = save.context("no save measured")?;
        let written = checksum(&std::fs::read(&file)?) == sum;
        // The same raw writer with its buffers in cuMemHostAlloc memory, once: whether O_DIRECT
        // from page-locked memory costs anything here.
        let raw_pinned = super::raw_direct_write_from(&raw_file, &bytes, threads, |n| {
            super::RawBuf::pinned(&ctx, n)
        })?;
        if cx.wants("P6") {
            let v = save.bytes_per_second() / 1e9;
            cx.row(
                ROWS[2].0,
                ROWS[2].1,
                Some(v),
                "GB/s",
                RAW_WRITE_BASELINE,
                Some(raw_w),
                Some(v / raw_w),
                ">= 90% of O_DIRECT write bandwidth of the same disk (issue 6), file checksum must match",
                Some(written && v >= 0.9 * raw_w),
                &format!(
                    "checksum {}; {}; temporary file + fsync + rename + directory fsync included; the raw writer from cuMemHostAlloc buffers {raw_pinned:.2} GB/s; {settings}",
                    if written { "matches" } else { "MISMATCH" },
                    route_note(&save)
                ),
            );
        }

        if cx.wants("P6") {
            let mut raw_1 = 0f64;
            let mut raw_n = 0f64;
            let mut best: Option<Transfer> = None;
            let mut ok = true;
            for _ in 0..reps {
                raw_1 = raw_1.max(raw_direct_read(&file, len, 1)?);
                raw_n = raw_n.max(raw_direct_read(&file, len, threads)?);
                gpubridge::storage::evict_from_page_cache(&file)?;
                stream.memset_zeros(&mut dev)?;
                stream.synchronize()?;
                let t = storage.read(&file, 0, Dest::Cuda(dev.as_view_mut()))?;
                ok &= checksum(&stream.clone_dtoh(&dev)?) == sum;
                if best.as_ref().is_none_or(|b| t.elapsed < b.elapsed) {
                    best = Some(t);
                }
            }
            let t = best.context("no load measured")?;
            let v = t.bytes_per_second() / 1e9;
            let base = raw_1.max(raw_n);
            let ratio = v / base;
            cx.row(
                "P6",
                ROWS[0].1,
                Some(v),
                "GB/s",
                RAW_READ_BASELINE,
                Some(base),
                Some(ratio),
                ">= 90% of O_DIRECT read bandwidth of the same disk",
                Some(ok && ratio >= 0.9),
                &format!(
                    "checksum {}; {}; raw 1 thread {raw_1:.2} GB/s, {threads} threads {raw_n:.2} GB/s; pages dropped with posix_fadvise(DONTNEED) before each read; best of {reps}; {settings}",
                    if ok { "matches" } else { "MISMATCH" },
                    route_note(&t)
                ),
            );

            // The same cold load with fewer workers, once each: a virtual disk may serve one
            // reader faster than many (the raw reads above say how much), and this says what
            // `storage.threads` the load wants on this disk.
            let mut sweep = Vec::new();
            for workers in [1usize, 2, 4, 8] {
                let mut c = cfg.clone();
                c.storage.threads = workers;
                let s = Storage::new(&c)?;
                // Untimed: one task per worker, so that every worker's pinned lane exists (and
                // cuFile's attempt is made) before the timed pass, as in the P6 row's second rep.
                let warm = (workers * c.storage.task_size_kb as usize * 1024).min(len);
                s.read(&file, 0, Dest::Cuda(dev.slice_mut(0..warm)))?;
                stream.memset_zeros(&mut dev)?;
                stream.synchronize()?;
                gpubridge::storage::evict_from_page_cache(&file)?;
                let t = s.read(&file, 0, Dest::Cuda(dev.as_view_mut()))?;
                let same = checksum(&stream.clone_dtoh(&dev)?) == sum;
                sweep.push((t.workers, t.bytes_per_second() / 1e9, same));
            }
            let best_sweep = sweep.iter().map(|w| w.1).fold(0.0, f64::max);
            cx.row(
                "P6",
                "diagnostic: cold load to CUDA by storage.threads",
                Some(best_sweep),
                "GB/s",
                "raw O_DIRECT reads as in the P6 row",
                Some(base),
                Some(best_sweep / base),
                "diagnostic (no target)",
                None,
                &format!(
                    "best of {}; {threads} workers (the P6 row) {v:.2} GB/s; one timed pass each after an untimed pass that sets up every worker's lane; checksums {}",
                    sweep
                        .iter()
                        .map(|(w, g, _)| format!("{w} workers {g:.2} GB/s"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if sweep.iter().all(|w| w.2) { "match" } else { "MISMATCH" }
                ),
            );
        }

        if cx.wants("P7") {
            let placed = storage.write(Src::Host(&bytes), &shm_file);
            let (path, where_) = match placed {
                Ok(_) => (shm_file.clone(), "tmpfs /dev/shm".to_owned()),
                Err(e) => {
                    // A small /dev/shm (containers): the disk file, read through the page cache.
                    let _ = std::fs::read(&file)?;
                    (
                        file.clone(),
                        format!("page cache of {} (tmpfs refused: {e})", dir.display()),
                    )
                }
            };
            let warm = if path == file {
                let mut c = cfg.clone();
                c.storage.direct_io = false;
                Storage::new(&c)?
            } else {
                storage.clone()
            };
            let mut best: Option<Transfer> = None;
            let mut ok = true;
            for _ in 0..reps + 1 {
                stream.memset_zeros(&mut dev)?;
                stream.synchronize()?;
                let t = warm.read(&path, 0, Dest::Cuda(dev.as_view_mut()))?;
                ok &= checksum(&stream.clone_dtoh(&dev)?) == sum;
                if best.as_ref().is_none_or(|b| t.elapsed < b.elapsed) {
                    best = Some(t);
                }
            }
            let t = best.context("no load measured")?;
            let v = t.bytes_per_second() / 1e9;
            let h2d = gpubridge::cuda::baseline::Baseline::new()
                .and_then(|b| b.h2d_pinned_gbps(256 << 20, 3))
                .ok();
            cx.row(
                "P7",
                ROWS[1].1,
                Some(v),
                "GB/s",
                "pinned H2D bandwidth, raw cudarc, 256 MiB",
                h2d,
                h2d.map(|h| v / h),
                ">= 20 GB/s on the 16-core H100 machine",
                Some(ok && v >= 20.0),
                &format!(
                    "checksum {}; {}; file in {where_}; best of {}; {settings}",
                    if ok { "matches" } else { "MISMATCH" },
                    route_note(&t),
                    reps + 1
                ),
            );
        }
        Ok(())
    }
}
