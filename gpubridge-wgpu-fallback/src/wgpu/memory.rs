//! The device's buffer pool: storage, uniform, upload (staging) and readback buffers, each kind
//! kept by size class for reuse, with statistics, a hard limit (`memory.pool_size_mb`) and trim
//! under pressure.
//!
//! The pool is owned by one device and used under its lock, by its executor thread in practice.
//! Upload buffers stay mapped for writing while idle: one is mapped at creation, and when it comes
//! back it is mapped again (`map_async`), which completes on the device's next poll, so that the
//! next plan can write its inputs into it without waiting.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use gpubridge_core::{BackendKind, Error, Result};
use gpubridge_telemetry::names;

use super::error::{map_error, Scopes};

/// Smallest allocation class, in bytes.
const MIN_CLASS: u64 = 256;
/// Sub-classes per power of two: rounding wastes at most a quarter of a request.
const SUBCLASSES: u64 = 4;

/// The class index and rounded size of a request: `256`, then four steps per power of two
/// (`256, 320, 384, 448, 512, 640, ...`).
pub(crate) fn size_class(bytes: u64) -> (usize, u64) {
    if bytes <= MIN_CLASS {
        return (0, MIN_CLASS);
    }
    let p = u64::from(u64::BITS - 1 - (bytes - 1).leading_zeros()); // floor(log2(bytes - 1))
    let base = 1u64 << p;
    let step = base / SUBCLASSES;
    let sub = (bytes - 1 - base) / step;
    let size = base + (sub + 1) * step;
    let min_p = u64::from(MIN_CLASS.trailing_zeros());
    ((1 + (p - min_p) * SUBCLASSES + sub) as usize, size)
}

/// What a pooled buffer is for; each kind has its own usages and free lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Plan buffers: read and written by kernels, copied to and from.
    Storage,
    /// Scalar arguments of launches.
    Uniform,
    /// Host-writable staging for inputs (`MAP_WRITE | COPY_SRC`).
    Upload,
    /// Host-readable staging for outputs (`MAP_READ | COPY_DST`).
    Readback,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Storage, Kind::Uniform, Kind::Upload, Kind::Readback];

    fn index(self) -> usize {
        match self {
            Kind::Storage => 0,
            Kind::Uniform => 1,
            Kind::Upload => 2,
            Kind::Readback => 3,
        }
    }

    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            Kind::Storage => U::STORAGE | U::COPY_DST | U::COPY_SRC,
            Kind::Uniform => U::UNIFORM | U::COPY_DST,
            Kind::Upload => U::MAP_WRITE | U::COPY_SRC,
            Kind::Readback => U::MAP_READ | U::COPY_DST,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Storage => "gpubridge storage",
            Kind::Uniform => "gpubridge uniforms",
            Kind::Upload => "gpubridge upload staging",
            Kind::Readback => "gpubridge readback staging",
        }
    }
}

/// Counters of a device's pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes rented out now.
    pub in_use: u64,
    /// Bytes held idle for reuse.
    pub idle: u64,
    /// Highest `in_use + idle` seen.
    pub peak: u64,
    /// Rents served from idle buffers.
    pub hits: u64,
    /// Rents that created a buffer.
    pub misses: u64,
    /// Rents refused (the pool limit, or the device out of memory after a trim).
    pub failures: u64,
    /// Idle bytes released by trims.
    pub trimmed: u64,
}

const PENDING: u8 = 0;
const MAPPED: u8 = 1;
const FAILED: u8 = 2;

/// One rented buffer.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub buffer: wgpu::Buffer,
    /// Size in bytes (the class size, at least the request).
    pub size: u64,
    kind: Kind,
    /// `None` for a buffer larger than any class the adapter allows: freed, not kept.
    class: Option<usize>,
    /// Upload buffers: whether the buffer is mapped for writing now.
    mapped: Arc<AtomicU8>,
}

/// A device's buffer pool (see the module documentation).
#[derive(Debug)]
pub(crate) struct BufferPool {
    label: String,
    free: [Vec<Vec<Pooled>>; 4],
    limit: u64,
    max_buffer: u64,
    stats: PoolStats,
}

impl BufferPool {
    /// A pool for device `label` holding at most `limit` bytes, on an adapter whose largest buffer
    /// is `max_buffer` bytes.
    pub(crate) fn new(label: String, limit: u64, max_buffer: u64) -> Self {
        Self {
            label,
            free: Default::default(),
            limit,
            max_buffer,
            stats: PoolStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Rents a buffer of `kind` of at least `bytes`; an upload buffer comes mapped for writing.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `bytes` exceeds the adapter's largest buffer;
    /// [`Error::OutOfMemory`] when the pool limit or the device refuses after a trim (counted in
    /// `gpubridge_allocation_failures_total`).
    pub(crate) fn rent(&mut self, device: &wgpu::Device, kind: Kind, bytes: u64) -> Result<Pooled> {
        let want = bytes.max(4).next_multiple_of(4);
        if want > self.max_buffer {
            return Err(Error::Unsupported {
                backend: BackendKind::Wgpu,
                what: format!(
                    "{}: a {want}-byte buffer exceeds the adapter's largest buffer ({} bytes)",
                    self.label, self.max_buffer
                ),
            });
        }
        let (class, class_size) = size_class(want);
        let (class, size) = if class_size <= self.max_buffer {
            (Some(class), class_size)
        } else {
            (None, want)
        };
        if let Some(c) = class {
            while let Some(buf) = self.free[kind.index()].get_mut(c).and_then(Vec::pop) {
                self.stats.idle -= buf.size;
                if kind == Kind::Upload && !Self::wait_mapped(device, &buf) {
                    // The re-map failed (a lost device, say): drop this one and look further.
                    continue;
                }
                self.stats.hits += 1;
                self.stats.in_use += buf.size;
                return Ok(buf);
            }
        }
        self.stats.misses += 1;
        if self.stats.in_use + self.stats.idle + size > self.limit {
            self.trim();
            if self.stats.in_use + size > self.limit {
                return Err(self.refuse(size, "pool limit (memory.pool_size_mb) reached"));
            }
        }
        let buffer = match self.create(device, kind, size) {
            Ok(b) => b,
            Err(Error::OutOfMemory { .. }) => {
                self.trim();
                match self.create(device, kind, size) {
                    Ok(b) => b,
                    Err(Error::OutOfMemory { reason, .. }) => {
                        return Err(self.refuse(size, &reason))
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        self.stats.in_use += size;
        self.stats.peak = self.stats.peak.max(self.stats.in_use + self.stats.idle);
        self.gauges();
        Ok(Pooled {
            buffer,
            size,
            kind,
            class,
            mapped: Arc::new(AtomicU8::new(if kind == Kind::Upload {
                MAPPED
            } else {
                PENDING
            })),
        })
    }

    /// Returns a buffer for reuse (an upload buffer is first mapped again, asynchronously).
    pub(crate) fn give_back(&mut self, buf: Pooled) {
        self.stats.in_use -= buf.size;
        let Some(class) = buf.class else {
            buf.buffer.destroy();
            self.gauges();
            return;
        };
        if buf.kind == Kind::Upload {
            buf.mapped.store(PENDING, Ordering::Release);
            let flag = buf.mapped.clone();
            buf.buffer.map_async(
                wgpu::MapMode::Write,
                ..,
                move |r: Result<(), wgpu::BufferAsyncError>| {
                    flag.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
                },
            );
        }
        let lists = &mut self.free[buf.kind.index()];
        if lists.len() <= class {
            lists.resize_with(class + 1, Vec::new);
        }
        self.stats.idle += buf.size;
        lists[class].push(buf);
        self.gauges();
    }

    /// Releases a rented buffer without keeping it (its state is in doubt, for example a mapping
    /// that never completed).
    pub(crate) fn discard(&mut self, buf: Pooled) {
        self.stats.in_use -= buf.size;
        buf.buffer.destroy();
        self.gauges();
    }

    /// Releases every idle buffer.
    pub(crate) fn trim(&mut self) {
        for kind in Kind::ALL {
            for list in &mut self.free[kind.index()] {
                for buf in list.drain(..) {
                    self.stats.idle -= buf.size;
                    self.stats.trimmed += buf.size;
                    buf.buffer.destroy();
                }
            }
        }
        self.gauges();
    }

    /// Whether an idle upload buffer is mapped, polling the device once if its re-map is still
    /// pending (it completes as soon as the device has caught up, which it has after each plan).
    fn wait_mapped(device: &wgpu::Device, buf: &Pooled) -> bool {
        if buf.mapped.load(Ordering::Acquire) == PENDING {
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
        }
        buf.mapped.load(Ordering::Acquire) == MAPPED
    }

    fn create(&self, device: &wgpu::Device, kind: Kind, size: u64) -> Result<wgpu::Buffer> {
        let scopes = Scopes::push(device);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(kind.label()),
            size,
            usage: kind.usage(),
            mapped_at_creation: kind == Kind::Upload,
        });
        match scopes.pop() {
            None => Ok(buffer),
            Some(e) => Err(map_error(
                &self.label,
                &format!("creating a {size}-byte {}", kind.label()),
                e,
            )),
        }
    }

    fn refuse(&mut self, size: u64, reason: &str) -> Error {
        self.stats.failures += 1;
        metrics::counter!(names::ALLOCATION_FAILURES_TOTAL, "device" => self.label.clone(), "reason" => "out_of_memory")
            .increment(1);
        Error::OutOfMemory {
            device: self.label.clone(),
            requested: usize::try_from(size).unwrap_or(usize::MAX),
            reason: reason.to_owned(),
        }
    }

    fn gauges(&self) {
        gpubridge_telemetry::record_pool_bytes(&self.label, self.stats.in_use, self.stats.idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wgpu::device::tests::test_device;

    #[test]
    fn classes_round_up_by_at_most_a_quarter() {
        assert_eq!(size_class(1), (0, 256));
        assert_eq!(size_class(256), (0, 256));
        assert_eq!(size_class(257), (1, 320));
        assert_eq!(size_class(512), (4, 512));
        assert_eq!(size_class(513), (5, 640));
        for b in [300u64, 4097, 1 << 20, (1 << 27) + 3, 3 << 30] {
            let (_, s) = size_class(b);
            assert!(s >= b && s - b <= b / 4 + 64, "{b} -> {s}");
            assert_eq!(s % 4, 0);
        }
    }

    #[test]
    fn buffers_past_the_adapter_or_its_largest_class_are_refused_or_made_to_measure() {
        let Some(d) = test_device() else { return };
        // An adapter whose largest buffer is 300 bytes: 320, the class of 300, is past it.
        let mut pool = BufferPool::new("wgpu:test".to_owned(), 1 << 20, 300);
        let e = pool.rent(&d.device, Kind::Storage, 301).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { backend: BackendKind::Wgpu, what }
                if what == "wgpu:test: a 304-byte buffer exceeds the adapter's largest buffer (300 bytes)"),
            "{e:?}"
        );
        assert_eq!(
            pool.stats(),
            PoolStats::default(),
            "a refused rent counts nothing"
        );

        // 297 bytes round to 300: no class fits, so the buffer is made to measure...
        let exact = pool.rent(&d.device, Kind::Storage, 297).unwrap();
        assert_eq!(exact.size, 300);
        assert_eq!(exact.buffer.size(), 300);
        assert_eq!((pool.stats().in_use, pool.stats().misses), (300, 1));
        // ...and freed when it comes back rather than kept, so the next rent makes another.
        pool.give_back(exact);
        assert_eq!((pool.stats().in_use, pool.stats().idle), (0, 0));
        let again = pool.rent(&d.device, Kind::Storage, 300).unwrap();
        assert_eq!((pool.stats().misses, pool.stats().hits), (2, 0));
        // A discarded buffer is released, not kept.
        pool.discard(again);
        assert_eq!((pool.stats().in_use, pool.stats().idle), (0, 0));

        // Within a class: kept on return, reused, and released when discarded.
        let small = pool.rent(&d.device, Kind::Readback, 100).unwrap();
        assert_eq!(small.size, 256);
        pool.give_back(small);
        assert_eq!(pool.stats().idle, 256);
        let reused = pool.rent(&d.device, Kind::Readback, 200).unwrap();
        assert_eq!((pool.stats().hits, pool.stats().idle), (1, 0));
        pool.discard(reused);
        let s = pool.stats();
        assert_eq!((s.in_use, s.idle, s.failures), (0, 0, 0), "{s:?}");
        assert_eq!(s.peak, 300);
    }
}
