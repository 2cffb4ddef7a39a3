//! Metric handles of the request path, registered once per thread and recorder instead of on
//! every update.
//!
//! A `metrics` macro builds its key (name, labels, their hash) and asks the recorder for the
//! metric on every call: about 3,000 instructions of a request's 16,000 with no recorder, and
//! 12,700 more with one (docs/PERFORMANCE.md, thirteenth session). The handles here are made
//! once per thread, per (kernel, backend, device), and reused while the thread's recorder is
//! the process's global one (or the no-op one, when none is installed).
//!
//! A recorder set for a scope (`metrics::with_local_recorder`, as tests do) is never cached: its
//! address could be reused by the next one, and handles made with the first would miss the
//! second's updates. Such a thread updates through the macros, as before. Which recorder is the
//! global one is learned on a thread of our own (it has no scoped recorder), at the first update
//! and again, at most once a second, while a thread sees a recorder that differs from it: so a
//! recorder installed after the bridge was built is used from then on, through the macros until
//! it has been learned.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::plan::FxHasher;
use gpubridge_telemetry::names;
use metrics::{Counter, Gauge, Histogram};

/// The address of the recorder the current thread updates (local, global or no-op).
fn recorder_id() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

/// The global (or no-op) recorder's address as last learned; 0 before.
static GLOBAL: AtomicUsize = AtomicUsize::new(0);
/// When it was last learned, in milliseconds since [`epoch`] plus one (0: never).
static LEARNED_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Learns the global recorder's address on a new thread, unless that was done less than a
/// second ago (by this thread or another).
fn relearn() {
    let now = epoch().elapsed().as_millis() as u64 + 1;
    let last = LEARNED_MS.load(Ordering::Relaxed);
    if last != 0 && now < last + 1000 {
        return;
    }
    if LEARNED_MS
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let learned = std::thread::Builder::new()
        .name("gpubridge-metrics".to_owned())
        .spawn(recorder_id)
        .ok()
        .and_then(|t| t.join().ok());
    if let Some(id) = learned {
        GLOBAL.store(id, Ordering::Relaxed);
    }
}

/// Whether this thread updates the global (or no-op) recorder, whose handles stay valid.
fn on_global_recorder(id: usize) -> bool {
    if id == GLOBAL.load(Ordering::Relaxed) {
        return true;
    }
    relearn();
    id == GLOBAL.load(Ordering::Relaxed)
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A static string's identity: its address and length (kernel ids and device labels are
/// `&'static str`s, interned, so equal names share an address; two copies of one name would
/// only register the same metric twice).
fn id_of(s: &'static str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

/// A kernel's request-level metrics.
pub(crate) struct KernelMetrics {
    pub request_duration: Histogram,
}

/// The metrics of a kernel's micro-batches on one device.
pub(crate) struct DeviceMetrics {
    pub executed_ok: Counter,
    pub executed_failed: Counter,
    pub circuit_state: Gauge,
    pub kernel_duration: Histogram,
    pub queue_duration: Histogram,
    pub batch_size: Histogram,
}

/// The metrics without per-kernel labels.
pub(crate) struct GlobalMetrics {
    pub pending: Gauge,
    pub bytes_h2d: Counter,
    pub bytes_d2h: Counter,
    pub throughput: Gauge,
}

fn kernel_metrics(kernel: &'static str) -> KernelMetrics {
    KernelMetrics {
        request_duration: metrics::histogram!(names::REQUEST_DURATION_SECONDS, "kernel" => kernel),
    }
}

fn device_metrics(
    kernel: &'static str,
    backend: &'static str,
    device: &'static str,
) -> DeviceMetrics {
    DeviceMetrics {
        executed_ok: metrics::counter!(names::KERNELS_EXECUTED_TOTAL, "kernel" => kernel, "backend" => backend, "device" => device, "success" => "true"),
        executed_failed: metrics::counter!(names::KERNELS_EXECUTED_TOTAL, "kernel" => kernel, "backend" => backend, "device" => device, "success" => "false"),
        circuit_state: metrics::gauge!(names::CIRCUIT_STATE, "device" => device),
        kernel_duration: metrics::histogram!(names::KERNEL_DURATION_SECONDS, "kernel" => kernel, "backend" => backend),
        queue_duration: metrics::histogram!(names::QUEUE_DURATION_SECONDS, "kernel" => kernel),
        batch_size: metrics::histogram!(names::BATCH_SIZE, "kernel" => kernel),
    }
}

fn global_metrics() -> GlobalMetrics {
    GlobalMetrics {
        pending: metrics::gauge!(names::PENDING_REQUESTS),
        bytes_h2d: metrics::counter!(names::BYTES_TRANSFERRED_TOTAL, "direction" => "h2d"),
        bytes_d2h: metrics::counter!(names::BYTES_TRANSFERRED_TOTAL, "direction" => "d2h"),
        throughput: metrics::gauge!(names::TRANSFER_THROUGHPUT_BYTES_PER_SECOND),
    }
}

/// The handles one thread made for one recorder.
#[derive(Default)]
struct Cache {
    recorder: usize,
    global: Option<GlobalMetrics>,
    kernels: Map<(usize, usize), KernelMetrics>,
    devices: Map<[(usize, usize); 3], DeviceMetrics>,
}

/// At most this many (kernel, backend, device) entries per thread; past it the cache starts
/// over, so a process that registers ever-new kernels cannot grow it without bound.
const MAX_ENTRIES: usize = 4096;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Runs `f` with this thread's cache for the current recorder, or returns `None` when the
/// recorder is a scoped one (the caller then uses fresh handles).
fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> Option<T> {
    let id = recorder_id();
    if !on_global_recorder(id) {
        return None;
    }
    CACHE
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if c.recorder != id {
                *c = Cache {
                    recorder: id,
                    ..Cache::default()
                };
            }
            if c.kernels.len() + c.devices.len() > MAX_ENTRIES {
                c.kernels.clear();
                c.devices.clear();
            }
            Some(f(&mut c))
        })
        .ok()
        .flatten()
}

// The handles below are lent to `f`, not cloned: a clone of a recorder's handle is an atomic
// increment and decrement on a count that every thread shares. `f` runs once; it is `Fn` only
// so that it can run on fresh handles when the cache cannot be used.

/// Runs `f` with the request-level metrics of `kernel`.
pub(crate) fn with_kernel<T>(kernel: &'static str, f: impl Fn(&KernelMetrics) -> T) -> T {
    with_cache(|c| {
        f(c.kernels
            .entry(id_of(kernel))
            .or_insert_with(|| kernel_metrics(kernel)))
    })
    .unwrap_or_else(|| f(&kernel_metrics(kernel)))
}

/// Runs `f` with the metrics of `kernel`'s micro-batches on `device` of `backend`.
pub(crate) fn with_device<T>(
    kernel: &'static str,
    backend: &'static str,
    device: &'static str,
    f: impl Fn(&DeviceMetrics) -> T,
) -> T {
    with_cache(|c| {
        f(c.devices
            .entry([id_of(kernel), id_of(backend), id_of(device)])
            .or_insert_with(|| device_metrics(kernel, backend, device)))
    })
    .unwrap_or_else(|| f(&device_metrics(kernel, backend, device)))
}

/// Runs `f` with the metrics without per-kernel labels.
pub(crate) fn with_global<T>(f: impl Fn(&GlobalMetrics) -> T) -> T {
    with_cache(|c| f(c.global.get_or_insert_with(global_metrics)))
        .unwrap_or_else(|| f(&global_metrics()))
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// A scoped recorder gets every update, however many scoped recorders came before it on
    /// this thread (each is a fresh value, often at the same address).
    #[test]
    fn scoped_recorders_each_see_their_own_updates() {
        for round in 1..=3u64 {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            metrics::with_local_recorder(&recorder, || {
                for _ in 0..round {
                    super::with_device("k", "cpu", "cpu:0", |m| m.executed_ok.increment(1));
                    super::with_global(|m| m.bytes_h2d.increment(10));
                }
            });
            let values: Vec<_> = snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| (k.key().name().to_owned(), v))
                .collect();
            let counter = |name: &str| {
                values.iter().find_map(|(n, v)| match v {
                    DebugValue::Counter(c) if n == name => Some(*c),
                    _ => None,
                })
            };
            assert_eq!(counter("gpubridge_kernels_executed_total"), Some(round));
            assert_eq!(
                counter("gpubridge_bytes_transferred_total"),
                Some(10 * round)
            );
        }
    }

    /// With no scoped recorder the handles are cached: the same metric comes back.
    #[test]
    fn the_global_recorder_s_handles_are_reused() {
        super::with_kernel("cached", |m| m.request_duration.record(1.0));
        super::with_kernel("cached", |m| m.request_duration.record(1.0));
        // The cache was consulted, so the thread's recorder was learned as the global one.
        assert_eq!(
            super::recorder_id(),
            super::GLOBAL.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
