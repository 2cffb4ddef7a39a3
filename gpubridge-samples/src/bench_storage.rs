//! `gpubridge bench` rows of `gpubridge-storage` (TARGETS.md P6, P7, and a save diagnostic):
//! files to CUDA device memory and back, against raw `O_DIRECT` reads and writes of the same disk
//! measured in the same run, every byte checked by checksum.
//!
//! - P6: a multi-GiB file on disk, its pages dropped with `posix_fadvise(DONTNEED)` before each
//!   read, loaded into device memory; baseline: raw `O_DIRECT` reads of the same file into host
//!   memory by 1 thread and by as many threads as the storage pool has, in 4 and in 16 MiB blocks.
//! - P7: the same bytes in tmpfs (`/dev/shm`) loaded into device memory; target 20 GB/s; baseline
//!   column: pinned host-to-device bandwidth (raw cudarc) measured now.
//! - P6 (diagnostic, measured without a GPU too): the same cold read into page-aligned host
//!   memory, against the same baseline.
//! - P6 (diagnostic): the cold load to device memory again with 1, 2, 4 and 8 storage workers,
//!   one pass each: which `storage.threads` the disk wants.
//! - P6 (save): device memory to a new file on disk (temporary file, fsync, rename, directory
//!   fsync), against raw `O_DIRECT` writes of the same bytes to a new file by the pool's threads
//!   plus fsync, in 4 and 16 MiB blocks into a file grown by its writes and one preallocated with
//!   `fallocate`.
//! - P6 (save diagnostic, measured without a GPU too): the same save from page-aligned host
//!   memory, against the same baseline.
//!
//! Every P6 row is measured in rounds ([`Rounds`]): each round times every raw shape once and
//! the library's transfer once (raw first in even rounds, the library first in odd ones), with
//! a `syncfs` before each timed transfer so that none pays for what the one before left to the
//! journal. The row's value is the library's median over the rounds and its baseline the median
//! of the best raw shape: the device machine's virtual disk drifts by a quarter within a minute,
//! and a best-of-2 against a best over eight raw samples compared unequal order statistics.
//!
//! Each row records which path the transfer took and, for the staged path, why cuFile was not
//! taken (the storage runs with `storage.enable_gpu_direct_storage = true`, so the attempt is
//! made where the binary has the `gds` feature).
//!
//! Environment: `GPUBRIDGE_BENCH_DIR` (a directory on the disk to measure; default the system's
//! temporary directory), `GPUBRIDGE_BENCH_STORAGE_MB` (file size, default 4096, 64 with
//! `--quick`), `GPUBRIDGE_BENCH_STORAGE_ROUNDS` (rounds per P6 row, default 5, 1 with
//! `--quick`), `GPUBRIDGE_BENCH_P6_PROBE` (set: a diagnostic row more, with reads in more shapes
//! and saves with their commit time and the dirty page cache seen; `saves`: the saves only).

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

/// The baseline column of the rows measured against [`raw_direct_read_once`] in [`Rounds`].
const RAW_READ_BASELINE: &str = "raw O_DIRECT reads of the same file in 4 and 16 MiB blocks on 1 thread and on the pool's threads: the best shape's median, rounds interleaved with ours";
/// The baseline column of the rows measured against [`raw_direct_write_once`] in [`Rounds`].
const RAW_WRITE_BASELINE: &str = "raw O_DIRECT writes by the pool's threads in 4 and 16 MiB blocks into a growing and a preallocated file, + fsync: the best shape's median, rounds interleaved with ours";

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

/// Samples taken in rounds: each round takes one sample of every raw shape, then one of the
/// library's transfer, so that a disk whose speed drifts (the device machine's virtual disk moves
/// by a quarter within a minute) treats both alike. The row's value is the library's median; its
/// baseline the median of the best raw shape. (A best-of-N against a best over shapes x reps
/// would compare order statistics of unequal samples: the more samples, the higher the max.)
#[derive(Default)]
struct Rounds {
    raw: Vec<(String, Vec<f64>)>,
    ours: Vec<f64>,
}

/// The largest of `v` (0 for none).
fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl Rounds {
    fn raw(&mut self, shape: String, gbps: f64) {
        match self.raw.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, v)) => v.push(gbps),
            None => self.raw.push((shape, vec![gbps])),
        }
    }

    /// Raw reads of `path` in every shape of [`read_shapes`], pages dropped before each.
    fn raw_reads(&mut self, path: &Path, len: usize, threads: usize) -> anyhow::Result<()> {
        for (t, block) in read_shapes(threads) {
            settle(path)?;
            let v = raw_direct_read_once(path, len, t, block)?;
            self.raw(format!("{t} thr x {} MiB", block >> 20), v);
        }
        Ok(())
    }

    /// Raw writes of `data` to `path` in every shape of [`WRITE_SHAPES`] (the file removed
    /// after each).
    fn raw_writes(&mut self, path: &Path, data: &[u8], threads: usize) -> anyhow::Result<()> {
        for (block, preallocate) in WRITE_SHAPES {
            let bufs = (0..threads)
                .map(|_| RawBuf::heap(block))
                .collect::<anyhow::Result<Vec<_>>>()?;
            settle(path)?;
            let (v, _) = raw_direct_write_once(path, data, bufs, block, preallocate)?;
            let _ = std::fs::remove_file(path);
            let how = if preallocate {
                "preallocated"
            } else {
                "growing"
            };
            self.raw(format!("{} MiB {how}", block >> 20), v);
        }
        Ok(())
    }

    /// The library's median, GB/s.
    fn value(&self) -> f64 {
        median(&self.ours)
    }

    /// The best raw shape's median, GB/s.
    fn baseline(&self) -> f64 {
        self.raw.iter().map(|(_, v)| median(v)).fold(0.0, f64::max)
    }

    /// The raw shapes alone: `shape median (best)`, comma-separated.
    fn raw_note(&self) -> String {
        self.raw
            .iter()
            .map(|(s, v)| format!("{s} {:.2} ({:.2})", median(v), best(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every shape's median and best, and the library's.
    fn note(&self) -> String {
        format!(
            "medians of {} rounds (best): ours {:.2} ({:.2}), raw {}",
            self.ours.len(),
            self.value(),
            best(&self.ours),
            self.raw_note()
        )
    }
}

/// The order of a row's measurements: per round the raw shapes, then the library's transfer
/// (`true`), or the other way round in odd rounds, so that neither always follows the other.
fn turns(rounds: usize) -> impl Iterator<Item = bool> {
    (0..rounds).flat_map(|r| {
        if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        }
    })
}

/// Untimed, before every timed transfer (raw or the library's): `syncfs` on the file system of
/// `path`, so that what the previous one left to the journal (a deleted file's blocks, which a
/// file system mounted with `discard` trims in the next commit) lands here and not in the next
/// one's fsync.
fn settle(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: the descriptor is open for the call; syncfs reads no memory of ours.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

/// The raw read shapes: (threads, block) for 1 thread and the pool's `threads`, [`BLOCKS`] each.
fn read_shapes(threads: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for t in [1, threads] {
        for b in BLOCKS {
            if !v.contains(&(t, b)) {
                v.push((t, b));
            }
        }
    }
    v
}

/// The raw write shapes: (block, preallocated), by the pool's threads.
const WRITE_SHAPES: [(usize, bool); 4] = [
    (4 << 20, false),
    (4 << 20, true),
    (16 << 20, false),
    (16 << 20, true),
];

/// `path` opened for `O_DIRECT` reads, its pages dropped from the page cache first.
fn open_direct_cold(path: &Path) -> anyhow::Result<std::fs::File> {
    gpubridge::storage::evict_from_page_cache(path)?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("O_DIRECT open of {}", path.display()))
}

/// Fills `buf` from `f` at `off`, failing on a short read.
fn read_full_at(f: &std::fs::File, buf: &mut [u8], off: usize) -> anyhow::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let r = f.read_at(&mut buf[done..], (off + done) as u64)?;
        if r == 0 {
            bail!("short O_DIRECT read at {}", off + done);
        }
        done += r;
    }
    Ok(())
}

fn raw_direct_read_once(
    path: &Path,
    len: usize,
    threads: usize,
    block: usize,
) -> anyhow::Result<f64> {
    let f = open_direct_cold(path)?;
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
                        read_full_at(&f, &mut buf[..block.min(len - off)], off)?;
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

/// The best raw write over [`WRITE_SHAPES`] (once each), each writer's buffer from `alloc`.
#[cfg(feature = "cuda")]
fn raw_direct_write_from(
    path: &Path,
    data: &[u8],
    threads: usize,
    alloc: impl Fn(usize) -> anyhow::Result<RawBuf>,
) -> anyhow::Result<f64> {
    let mut best = 0f64;
    for (block, preallocate) in WRITE_SHAPES {
        let bufs = (0..threads)
            .map(|_| alloc(block))
            .collect::<anyhow::Result<Vec<_>>>()?;
        best = best.max(raw_direct_write_once(path, data, bufs, block, preallocate)?.0);
        let _ = std::fs::remove_file(path);
    }
    Ok(best)
}

fn raw_direct_write_once(
    path: &Path,
    data: &[u8],
    bufs: Vec<RawBuf>,
    block: usize,
    preallocate: bool,
) -> anyhow::Result<(f64, std::time::Duration)> {
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
    let synced = Instant::now();
    f.sync_all()?;
    let rate = gbps(len, t.elapsed().as_secs_f64());
    let fsync = synced.elapsed();
    drop(bufs);
    Ok((rate, fsync))
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
    if let Some(p) = &t.depth_probe {
        s.push_str(&format!(
            "; depth measured: 1 reader {:.2} GB/s, {} readers {:.2} GB/s, {} chosen",
            p.one_reader / 1e9,
            p.readers,
            p.many_readers / 1e9,
            p.chosen
        ));
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
    let reps = std::env::var("GPUBRIDGE_BENCH_STORAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 })
        .max(1);
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
    let mut rounds = Rounds::default();
    let mut last: Option<Transfer> = None;
    let mut ok = true;
    for ours in turns(reps) {
        if !ours {
            rounds.raw_reads(&file, len, threads)?;
            continue;
        }
        gpubridge::storage::evict_from_page_cache(&file)?;
        let buf = &mut backing[at..at + len];
        buf.fill(0);
        settle(&file)?;
        let t = storage.read(&file, 0, Dest::Host(buf))?;
        ok &= checksum(buf) == sum;
        rounds.ours.push(t.bytes_per_second() / 1e9);
        last = Some(t);
    }
    let t = last.context("no load measured")?;
    let (v, raw) = (rounds.value(), rounds.baseline());
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
            "checksum {}; {}; {}; {settings}",
            if ok { "matches" } else { "MISMATCH" },
            route_note(&t),
            rounds.note()
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
    let mut rounds = Rounds::default();
    let mut last: Option<Transfer> = None;
    for ours in turns(reps) {
        if !ours {
            rounds.raw_writes(&raw_file, bytes, threads)?;
            continue;
        }
        // A new file, as the raw writer's: the previous round's is removed, untimed.
        let _ = std::fs::remove_file(&file);
        settle(&file)?;
        let t = storage.write(Src::Host(bytes), &file)?;
        rounds.ours.push(t.bytes_per_second() / 1e9);
        last = Some(t);
    }
    let written = checksum(&std::fs::read(&file)?) == sum;
    let t = last.context("no save measured")?;
    let (v, raw) = (rounds.value(), rounds.baseline());
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
            "checksum {}; {}; temporary file + fsync + rename + directory fsync included; {}; {settings}",
            if written { "matches" } else { "MISMATCH" },
            route_note(&t),
            rounds.note()
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
        checksum, data, route_note, settle, setup, turns, Cleanup, Rounds, Setup,
        RAW_READ_BASELINE, RAW_WRITE_BASELINE,
    };
    use super::{Ctx, ROWS};

    /// One thread's `O_DIRECT` reads of `path` in 4 MiB blocks, three ways, each timed once
    /// into `lanes` (pages dropped before each): into page-locked memory from `cuMemHostAlloc`
    /// (the library's bounce buffers); into page-aligned heap memory locked with
    /// `cuMemHostRegister`; and as a lane does it, into two `cuMemHostAlloc` buffers in turn
    /// with each block sent on to `dev` by `cuMemcpyHtoDAsync` and an event per buffer waited for
    /// before the buffer is read into again.
    fn raw_lane_reads(
        ctx: &Arc<CudaContext>,
        stream: &Arc<cudarc::driver::CudaStream>,
        path: &std::path::Path,
        len: usize,
        dev: &mut cudarc::driver::CudaSlice<u8>,
        lanes: &mut Rounds,
    ) -> anyhow::Result<()> {
        use cudarc::driver::{result, sys, DevicePtrMut};

        const BLOCK: usize = 4 << 20;
        let open = || -> anyhow::Result<std::fs::File> {
            super::settle(path)?;
            super::open_direct_cold(path)
        };
        let read_block = |f: &std::fs::File, buf: &mut [u8], off: usize| {
            super::read_full_at(f, &mut buf[..BLOCK.min(len - off)], off)
        };
        ctx.bind_to_thread()?;

        // Into cuMemHostAlloc memory.
        // SAFETY: plain page-locked host memory; written by the reads before anything reads it.
        let mut pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(BLOCK, 0) }?;
        let f = open()?;
        let t = Instant::now();
        for off in (0..len).step_by(BLOCK) {
            read_block(&f, pinned.as_mut_slice()?, off)?;
        }
        lanes.raw(
            "into cuMemHostAlloc".to_owned(),
            super::gbps(len, t.elapsed().as_secs_f64()),
        );

        // Into heap pages locked with cuMemHostRegister.
        let (mut v, at) = super::aligned(BLOCK);
        v.fill(1);
        let buf = &mut v[at..at + BLOCK];
        // SAFETY: `buf` is page-aligned, BLOCK bytes long, and outlives the registration, which
        // is undone below before `v` is dropped.
        unsafe { sys::cuMemHostRegister_v2(buf.as_mut_ptr().cast(), BLOCK, 0) }
            .result()
            .context("cuMemHostRegister")?;
        let f = open()?;
        let t = Instant::now();
        let read = (0..len)
            .step_by(BLOCK)
            .try_for_each(|off| read_block(&f, buf, off));
        let secs = t.elapsed().as_secs_f64();
        // SAFETY: registered above; nothing uses it any more.
        unsafe { sys::cuMemHostUnregister(buf.as_mut_ptr().cast()) }
            .result()
            .context("cuMemHostUnregister")?;
        read?;
        lanes.raw("into cuMemHostRegister".to_owned(), super::gbps(len, secs));

        // As a lane: two cuMemHostAlloc buffers in turn, each block copied on to the device.
        // SAFETY: as above.
        let mut bufs = [
            unsafe { ctx.alloc_pinned_with_flags::<u8>(BLOCK, 0) }?,
            unsafe { ctx.alloc_pinned_with_flags::<u8>(BLOCK, 0) }?,
        ];
        let events = [ctx.new_event(None)?, ctx.new_event(None)?];
        let mut pending = [false; 2];
        let (base, _sync) = dev.device_ptr_mut(stream);
        let f = open()?;
        let t = Instant::now();
        let mut lane = || -> anyhow::Result<()> {
            for (i, off) in (0..len).step_by(BLOCK).enumerate() {
                let k = i % 2;
                if pending[k] {
                    events[k].synchronize()?;
                }
                let n = BLOCK.min(len - off);
                let staged = &mut bufs[k].as_mut_slice()?[..n];
                read_block(&f, staged, off)?;
                // SAFETY: `base + off .. + n` lies inside `dev` (len bytes); `staged` is
                // page-locked and not written again until event `k`, recorded after the copy,
                // is waited for (and the stream is synchronised before the buffers are freed).
                unsafe {
                    result::memcpy_htod_async(base + off as u64, &*staged, stream.cu_stream())
                }?;
                events[k].record(stream)?;
                pending[k] = true;
            }
            Ok(())
        };
        let ran = lane();
        // Every copy done before the buffers go, whether or not a read failed.
        stream.synchronize()?;
        ran?;
        lanes.raw(
            "as a lane (2 x cuMemHostAlloc + H2D)".to_owned(),
            super::gbps(len, t.elapsed().as_secs_f64()),
        );
        Ok(())
    }

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

        // The save first: it writes the file that P6 reads. One untimed save sets up what a
        // process does once (every worker's pinned lane, cuFile's driver).
        let first = storage.write(Src::Cuda(dev.as_view()), &file)?;
        let mut save_rounds = Rounds::default();
        let mut save: Option<Transfer> = None;
        for ours in turns(reps) {
            if !ours {
                save_rounds.raw_writes(&raw_file, &bytes, threads)?;
                continue;
            }
            // A new file, as the raw writer's: the previous one is removed, untimed.
            let _ = std::fs::remove_file(&file);
            settle(&file)?;
            let t = storage.write(Src::Cuda(dev.as_view()), &file)?;
            save_rounds.ours.push(t.bytes_per_second() / 1e9);
            save = Some(t);
        }
        let save = save.context("no save measured")?;
        let written = checksum(&std::fs::read(&file)?) == sum;
        // The same raw writer with its buffers in cuMemHostAlloc memory, once: whether O_DIRECT
        // from page-locked memory costs anything here.
        let raw_pinned = super::raw_direct_write_from(&raw_file, &bytes, threads, |n| {
            super::RawBuf::pinned(&ctx, n)
        })?;
        if cx.wants("P6") {
            let (v, raw_w) = (save_rounds.value(), save_rounds.baseline());
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
                    "checksum {}; {}; temporary file + fsync + rename + directory fsync included; {}; the first save, untimed, {:.2} GB/s; the raw writer from cuMemHostAlloc buffers (best shape, once) {raw_pinned:.2} GB/s; {settings}",
                    if written { "matches" } else { "MISMATCH" },
                    route_note(&save),
                    save_rounds.note(),
                    first.bytes_per_second() / 1e9
                ),
            );
        }

        if cx.wants("P6") {
            let mut rounds = Rounds::default();
            let mut last: Option<Transfer> = None;
            let mut ok = true;
            // The workers of each round, and what the rounds that measured their depth found.
            let mut depths = Vec::new();
            // Raw single readers shaped like the library's lane, beside the baseline's shapes
            // but not among them: where a gap between the library and the best raw reader lies.
            let mut lane_shapes = Rounds::default();
            for ours in turns(reps) {
                if !ours {
                    rounds.raw_reads(&file, len, threads)?;
                    raw_lane_reads(&ctx, &stream, &file, len, &mut dev, &mut lane_shapes)?;
                    continue;
                }
                gpubridge::storage::evict_from_page_cache(&file)?;
                stream.memset_zeros(&mut dev)?;
                stream.synchronize()?;
                settle(&file)?;
                let t = storage.read(&file, 0, Dest::Cuda(dev.as_view_mut()))?;
                ok &= checksum(&stream.clone_dtoh(&dev)?) == sum;
                rounds.ours.push(t.bytes_per_second() / 1e9);
                depths.push(match &t.depth_probe {
                    Some(p) => format!(
                        "{} (measured: 1 reader {:.2}, {} readers {:.2} GB/s)",
                        p.chosen,
                        p.one_reader / 1e9,
                        p.readers,
                        p.many_readers / 1e9
                    ),
                    None => t.workers.to_string(),
                });
                last = Some(t);
            }
            let t = last.context("no load measured")?;
            let (v, base) = (rounds.value(), rounds.baseline());
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
                    "checksum {}; {}; {}; readers per round (storage.adaptive_depth): {}; bounce buffers: {}; raw single readers of 4 MiB shaped like the former lane, medians (best): {}; pages dropped with posix_fadvise(DONTNEED) before each read; {settings}",
                    if ok { "matches" } else { "MISMATCH" },
                    route_note(&t),
                    rounds.note(),
                    depths.join(", "),
                    storage.bounce_memory().map_or("none", |m| m.name()),
                    lane_shapes.raw_note()
                ),
            );

            // The same cold load with fewer workers, once each: a virtual disk may serve one
            // reader faster than many (the raw reads above say how much), and this says what
            // `storage.threads` the load wants on this disk.
            let mut sweep = Vec::new();
            for workers in [1usize, 2, 4, 8] {
                let mut c = cfg.clone();
                c.storage.threads = workers;
                // Each depth as it is, not measured against one reader.
                c.storage.adaptive_depth = false;
                let s = Storage::new(&c)?;
                // Untimed: one task per worker, so that every worker's pinned lane exists (and
                // cuFile's attempt is made) before the timed pass, as in the P6 row's second rep.
                let warm = (workers * c.storage.task_size_kb as usize * 1024).min(len);
                s.read(&file, 0, Dest::Cuda(dev.slice_mut(0..warm)))?;
                stream.memset_zeros(&mut dev)?;
                stream.synchronize()?;
                gpubridge::storage::evict_from_page_cache(&file)?;
                super::settle(&file)?;
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

        if cx.wants("P6") && std::env::var_os("GPUBRIDGE_BENCH_P6_PROBE").is_some() {
            probe(
                cx,
                &mut ProbeCx {
                    file: &file,
                    raw_file: &raw_file,
                    len,
                    sum,
                    threads,
                    cfg: &cfg,
                    stream: &stream,
                    dev: &mut dev,
                },
            )?;
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

    /// What [`probe`] works on: the P6 file and the device buffer it was saved from.
    struct ProbeCx<'a> {
        file: &'a std::path::Path,
        raw_file: &'a std::path::Path,
        len: usize,
        sum: u64,
        threads: usize,
        cfg: &'a gpubridge::BridgeConfig,
        stream: &'a Arc<gpubridge::storage::CudaStream>,
        dev: &'a mut gpubridge::storage::CudaSlice<u8>,
    }

    /// `GPUBRIDGE_BENCH_P6_PROBE=1`: raw reads and the staged load in several shapes (threads,
    /// request size), interleaved over rounds so that a disk whose speed drifts treats them
    /// alike, and saves with the commit's cost split from the writing, with and without a
    /// `syncfs` first (which settles what earlier deletes left to the journal). Prints one line per
    /// shape (median and best) and a diagnostic row.
    fn probe(cx: &mut Ctx, p: &mut ProbeCx<'_>) -> anyhow::Result<()> {
        use super::{raw_direct_read_once, raw_direct_write_once, RawBuf};
        let rounds: usize = std::env::var("GPUBRIDGE_BENCH_P6_PROBE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let n = p.threads;
        let raw_reads: Vec<(usize, usize)> = vec![
            (1, 4 << 20),
            (1, 16 << 20),
            (1, 64 << 20),
            (4, 16 << 20),
            (n, 4 << 20),
            (n, 16 << 20),
        ];
        let ours: Vec<(usize, u64)> = vec![
            (1, 16 << 10),
            (1, 64 << 10),
            (2, 16 << 10),
            (4, 16 << 10),
            (n, 4 << 10),
            (n, 16 << 10),
        ];
        let storages = ours
            .iter()
            .map(|&(t, kb)| {
                let mut c = p.cfg.clone();
                c.storage.threads = t;
                c.storage.task_size_kb = kb;
                c.storage.bounce_buffer_kb = kb;
                // Each shape as labelled, not measured against one reader.
                c.storage.adaptive_depth = false;
                c.storage.max_pinned_memory_mb =
                    c.storage.max_pinned_memory_mb.max(t as u64 * 2 * kb / 1024);
                Storage::new(&c)
            })
            .collect::<gpubridge::Result<Vec<_>>>()?;
        // Untimed: every worker's lane set up, cuFile's attempt made.
        for s in &storages {
            s.read(p.file, 0, Dest::Cuda(p.dev.as_view_mut()))?;
        }
        let mut reads: Vec<(String, Vec<f64>)> = raw_reads
            .iter()
            .map(|(t, b)| (format!("raw read {t} thr x {} MiB", b >> 20), Vec::new()))
            .chain(
                ours.iter()
                    .map(|(t, kb)| (format!("load  {t} wkr x {} MiB", kb >> 10), Vec::new())),
            )
            .collect();
        let mut ok = true;
        // `GPUBRIDGE_BENCH_P6_PROBE=saves`: the saves only.
        let read_rounds = if std::env::var("GPUBRIDGE_BENCH_P6_PROBE").is_ok_and(|v| v == "saves") {
            0
        } else {
            rounds
        };
        for _ in 0..read_rounds {
            super::settle(p.file)?;
            for (i, &(t, b)) in raw_reads.iter().enumerate() {
                let v = raw_direct_read_once(p.file, p.len, t, b)?;
                reads[i].1.push(v);
            }
            for (j, s) in storages.iter().enumerate() {
                gpubridge::storage::evict_from_page_cache(p.file)?;
                let t = s.read(p.file, 0, Dest::Cuda(p.dev.as_view_mut()))?;
                reads[raw_reads.len() + j]
                    .1
                    .push(t.bytes_per_second() / 1e9);
            }
            ok &= checksum(&p.stream.clone_dtoh(&*p.dev)?) == p.sum;
        }
        // Saves, interleaved: the raw writer (the pool's threads, 4 MiB, preallocated) from heap
        // and from cuMemHostAlloc memory, the CUDA save with cuFile's attempt and without it,
        // and the host save; the fsync (raw) or commit (library) time of each, and the most dirty
        // page-cache memory seen while each ran (O_DIRECT leaves none).
        let bytes = p.stream.clone_dtoh(&*p.dev)?;
        let (mut host_backing, at) = super::aligned(p.len);
        host_backing[at..at + p.len].copy_from_slice(&bytes);
        let host = &host_backing[at..at + p.len];
        let ctx = p.stream.context().clone();
        let no_gds = {
            let mut c = p.cfg.clone();
            c.storage.enable_gpu_direct_storage = false;
            Storage::new(&c)?
        };
        no_gds.write(Src::Cuda(p.dev.as_view()), p.file)?;
        let default = &storages[storages.len() - 2];
        let names = [
            "raw write, heap buffers",
            "raw write, cuMemHostAlloc buffers",
            "CUDA save (cuFile attempted)",
            "CUDA save (storage.enable_gpu_direct_storage = false)",
            "host save",
        ];
        // (GB/s, fsync or commit ms, most dirty MiB) per round.
        let mut writes: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
        for _ in 0..rounds {
            for (i, w) in writes.iter_mut().enumerate() {
                let _ = std::fs::remove_file(p.raw_file);
                super::settle(p.file)?;
                let dirty = DirtyWatch::start();
                let r = match i {
                    0 | 1 => {
                        let bufs = (0..n)
                            .map(|_| {
                                if i == 0 {
                                    RawBuf::heap(4 << 20)
                                } else {
                                    RawBuf::pinned(&ctx, 4 << 20)
                                }
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        let (v, fsync) =
                            raw_direct_write_once(p.raw_file, &bytes, bufs, 4 << 20, true)?;
                        (v, fsync.as_secs_f64() * 1e3)
                    }
                    _ => {
                        let t = match i {
                            2 => default.write(Src::Cuda(p.dev.as_view()), p.file)?,
                            3 => no_gds.write(Src::Cuda(p.dev.as_view()), p.file)?,
                            _ => default.write(Src::Host(host), p.file)?,
                        };
                        (
                            t.bytes_per_second() / 1e9,
                            t.phases.commit.as_secs_f64() * 1e3,
                        )
                    }
                };
                w.push((r.0, r.1, dirty.stop()));
            }
        }
        let _ = std::fs::remove_file(p.raw_file);
        ok &= checksum(&std::fs::read(p.file)?) == p.sum;
        use super::{best, median as med};
        eprintln!("P6 probe ({rounds} rounds, {} MiB):", p.len >> 20);
        let mut lines = Vec::new();
        for (name, v) in &reads {
            lines.push(format!(
                "{name}: median {:.2}, best {:.2} GB/s",
                med(v),
                best(v)
            ));
        }
        for (name, w) in names.iter().zip(&writes) {
            let col = |f: fn(&(f64, f64, f64)) -> f64| w.iter().map(f).collect::<Vec<_>>();
            let v = col(|x| x.0);
            lines.push(format!(
                "{name}: median {:.2}, best {:.2} GB/s, fsync/commit median {:.0} ms, dirty page cache up to {:.0} MiB",
                med(&v),
                best(&v),
                med(&col(|x| x.1)),
                best(&col(|x| x.2))
            ));
        }
        for l in &lines {
            eprintln!("  {l}");
        }
        let top = reads.iter().map(|r| med(&r.1)).fold(0.0, f64::max);
        cx.row(
            "P6",
            "diagnostic: probe of read shapes and saves, interleaved",
            Some(top),
            "GB/s",
            "",
            None,
            None,
            "diagnostic (no target)",
            None,
            &format!(
                "checksums {}; {}",
                if ok { "match" } else { "MISMATCH" },
                lines.join("; ")
            ),
        );
        Ok(())
    }

    /// Samples `Dirty:` of `/proc/meminfo` every 10 ms on a thread of its own;
    /// [`DirtyWatch::stop`] gives the most seen, in MiB (0 where the file cannot be read).
    struct DirtyWatch {
        stop: Arc<std::sync::atomic::AtomicBool>,
        thread: std::thread::JoinHandle<f64>,
    }

    impl DirtyWatch {
        fn start() -> Self {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut most = 0f64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let kb = std::fs::read_to_string("/proc/meminfo")
                        .ok()
                        .and_then(|m| {
                            m.lines()
                                .find(|l| l.starts_with("Dirty:"))
                                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                        })
                        .unwrap_or(0.0);
                    most = most.max(kb / 1024.0);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                most
            });
            Self { stop, thread }
        }

        fn stop(self) -> f64 {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            self.thread.join().unwrap_or(0.0)
        }
    }
}
