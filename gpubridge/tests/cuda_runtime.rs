//! The CUDA backend's runtime on a real device: graph capture and replay, the graph cache's
//! eviction, the memory pool, out-of-memory and device-loss fallback. Skips without a CUDA device
//! unless `GPUBRIDGE_REQUIRE_GPU=1`.

#![cfg(feature = "cuda")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use gpubridge::cuda::CudaBackend;
use gpubridge::faults::{FaultInjector, InjectedFault, Trigger};
use gpubridge::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge::testing::PoisonAdd;
use gpubridge::{BackendKind, BridgeConfig, CircuitState, DeviceId, ExecutionHints, GpuBridge};
use rand::{Rng, SeedableRng};

/// Held by every test here for its whole run: they share the GPU, and several read
/// process-wide state (the live heap, a device's inline-run and graph counters) that another
/// test's work would move. `cargo test` runs them one at a time as the device pack does
/// (`--test-threads=1`); in parallel, two failed on the H200.
fn gpu_lock() -> std::sync::MutexGuard<'static, ()> {
    static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GPU.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cuda(config: &BridgeConfig) -> Option<Arc<CudaBackend>> {
    match CudaBackend::new(config) {
        Ok(b) => Some(b),
        Err(why) => {
            assert!(
                !gpubridge::conformance::gpu_required(),
                "CUDA is required here: {why}"
            );
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// The default configuration on one GPU (`general.max_devices = 1`), for tests that read one
/// device's statistics: on a machine of several, placement may send the work to any of them.
fn one_gpu() -> BridgeConfig {
    let mut config = BridgeConfig::default();
    config.general.max_devices = 1;
    config
}

/// A bridge of `VectorAdd` and `Sum` on `device` (CUDA, or CUDA under fault injection), with
/// the CPU as its fallback.
fn bridge(config: BridgeConfig, device: Arc<dyn gpubridge::Backend>) -> GpuBridge {
    let cpu = gpubridge::cpu::CpuBackend::new(&config).unwrap();
    GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .kernel(Sum)
        .unwrap()
        .backend(device)
        .backend(cpu)
        .build()
        .unwrap()
}

/// A bridge of one kernel on `cuda`, with the CPU as its fallback.
fn bridge_of<K: gpubridge::Kernel>(
    config: BridgeConfig,
    cuda: Arc<CudaBackend>,
    kernel: K,
) -> GpuBridge {
    let cpu = gpubridge::cpu::CpuBackend::new(&config).unwrap();
    GpuBridge::builder(config)
        .kernel(kernel)
        .unwrap()
        .backend(cuda)
        .backend(cpu)
        .build()
        .unwrap()
}

/// Asserts the circuit state of CUDA device `index`.
#[track_caller]
fn assert_circuit(b: &GpuBridge, index: usize, state: CircuitState) {
    let device = DeviceId {
        backend: BackendKind::Cuda,
        index,
    };
    assert_eq!(b.circuit_state(device), Some(state));
}

fn random_pairs(rng: &mut impl Rng, n: usize, len: usize) -> Vec<VectorPair> {
    (0..n)
        .map(|_| VectorPair {
            a: (0..len).map(|_| rng.random_range(-1.0..1.0)).collect(),
            b: (0..len).map(|_| rng.random_range(-1.0..1.0)).collect(),
        })
        .collect()
}

fn check_add(inputs: &[VectorPair], outputs: &[Vec<f32>]) {
    assert_eq!(inputs.len(), outputs.len());
    for (p, o) in inputs.iter().zip(outputs) {
        for ((a, b), o) in p.a.iter().zip(&p.b).zip(o) {
            assert_eq!(a + b, *o);
        }
    }
}

/// Adds `pairs` fresh random pairs of each length in turn on CUDA, checks every sum, and says
/// which calls replayed a graph.
fn add_on_cuda(
    grain: &gpubridge::BatchGrain<VectorPair, Vec<f32>>,
    pairs: usize,
    lens: &[usize],
) -> Vec<bool> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    lens.iter()
        .map(|&len| {
            let inputs = random_pairs(&mut rng, pairs, len);
            let r = block_on(grain.execute(
                inputs.clone(),
                ExecutionHints::default().on_backend(BackendKind::Cuda),
            ))
            .unwrap();
            check_add(&inputs, &r.outputs);
            r.graph_replayed()
        })
        .collect()
}

#[test]
fn repeated_plan_shapes_are_captured_once_and_replayed_with_fresh_data() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let replayed = add_on_cuda(&grain, 10, &[1000; 6]);
    // First run: stream launches (a one-off shape is never captured); second: captured and
    // replayed; then replays.
    assert_eq!(replayed, [false, true, true, true, true, true]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.hits, g.entries), (1, 5, 1), "{g:?}");
    // 80,000 bytes in: past the copy kernel's 64 KiB, so the graph copies with memcpy nodes,
    // its inputs included.
    assert_eq!(g.kernel_copy_captures, 0, "{g:?}");
    assert_eq!(
        (g.mapped_input_captures, g.mapped_output_captures),
        (0, 0),
        "{g:?}"
    );
    // So its replays wait for the stream: only kernel-copy graphs end with a signal.
    assert_eq!(g.signalled_replays, 0, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn batches_of_nearby_sizes_share_a_bucketed_graph_updated_in_place() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    // 10 pairs of 1000..=1024 floats: each input buffer is 40,000..40,960 bytes, one bucket
    // (40,960), and the plan is past the zero-copy size, so it takes the graph path.
    let replayed = add_on_cuda(&grain, 10, &[1000, 1000, 1010, 1024, 1003, 1017, 1000]);
    assert_eq!(replayed, [false, true, true, true, true, true, true]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!(
        (g.misses, g.entries),
        (1, 1),
        "one capture serves the bucket: {g:?}"
    );
    // 1010, 1024, 1003, 1017 and back to 1000 each change the length argument.
    assert_eq!(g.updated_replays, 5, "{g:?}");
    assert_eq!(g.node_updates, 5, "{g:?}");

    // Sum: items of random lengths, so every batch has another exact shape, while 6, 7 and 8
    // items stay in three buckets (data of 86,400..88,800, 100,800..103,600 and
    // 115,200..118,400 bytes): three captures serve all nine batches.
    let sum = b.batch::<Sum>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for round in 0..9 {
        let items = 6 + round % 3;
        let v: Vec<Vec<f32>> = (0..items)
            .map(|_| {
                let len = rng.random_range(3600..3700);
                int_rows(&mut rng, 1, len).remove(0)
            })
            .collect();
        sums_checked(
            &sum,
            v,
            ExecutionHints::default(),
            &format!("round {round}"),
        );
    }
    let g2 = cuda.graph_stats(0).unwrap();
    assert_eq!((g2.misses - g.misses, g2.entries), (3, 4), "{g2:?}");
    assert_eq!(g2.hits - g.hits, 6, "{g2:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// A graph whose inputs and outputs are each at most 64 KiB copies them with the executor's copy
/// kernel through mapped staging, or, as here (the add's one launch is the only one to name each
/// input and the output), its kernel reads the inputs from the mapped staging and writes the
/// output there itself: 53,248 bytes in (the bucket's two 26,624-byte input buffers) and 26,624
/// out, in a bucket that batches of 1,025 to 1,109 floats per vector share, the add's length
/// argument updated in place. Every sum is checked on fresh random data, so a word read or
/// written short, twice or left over from the last batch would show.
#[test]
fn small_graphs_copy_with_a_kernel_and_answer_exactly() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let replayed = add_on_cuda(&grain, 6, &[1100, 1100, 1093, 1109, 1100, 1087, 1031, 1099]);
    assert_eq!(replayed, [false, true, true, true, true, true, true, true]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.entries), (1, 1), "{g:?}");
    assert_eq!(g.kernel_copy_captures, 1, "{g:?}");
    assert_eq!(
        (g.mapped_input_captures, g.mapped_output_captures),
        (1, 1),
        "{g:?}"
    );
    // Every replay of a kernel-copy graph is known done by its signal word, not the stream.
    assert!(g.hits >= 7, "{g:?}");
    assert_eq!(g.signalled_replays, g.hits, "{g:?}");
    // The parked caller is woken ahead of replays after the first, when due before the end.
    assert!(g.early_wakes < g.hits, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// With `cuda.mapped_graph_buffers` off, the same small graph copies its inputs in and its output
/// out with the copy kernel, and answers the same.
#[test]
fn small_graphs_keep_both_copies_when_mapped_buffers_are_off() {
    let _gpu = gpu_lock();
    let mut config = one_gpu();
    config.cuda.mapped_graph_buffers = false;
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let replayed = add_on_cuda(&grain, 6, &[1100, 1100, 1093, 1109]);
    assert_eq!(replayed, [false, true, true, true]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.kernel_copy_captures), (1, 1), "{g:?}");
    assert_eq!(
        (g.mapped_input_captures, g.mapped_output_captures),
        (0, 0),
        "{g:?}"
    );
    assert_eq!(g.signalled_replays, g.hits, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// A caller that parks (no `spin_wait` hint) is woken by the executor ahead of a graph replay's
/// expected end, from the graph's second replay on (the first gives the time), and still gets
/// exactly its own answer; its plans always replay on the executor, never on its own (async)
/// thread; a spinning caller is never woken early; and `cuda.early_wake_us = 0` turns the early
/// wake off.
#[test]
fn parked_callers_are_woken_ahead_of_graph_replays_and_answer_exactly() {
    let _gpu = gpu_lock();
    for (lead_us, wakes) in [(10_000, 6), (0, 0)] {
        let case = format!("lead {lead_us} us");
        let mut config = one_gpu();
        // A lead past any replay's time: every replay after the first is due at once.
        config.cuda.early_wake_us = lead_us;
        let Some(cuda) = cuda(&config) else { return };
        assert_eq!(gpubridge::Backend::wakes_early(&*cuda), lead_us > 0);
        let b = bridge(config, cuda.clone());
        let grain = b.batch::<VectorAdd>().unwrap();
        let replayed = add_on_cuda(&grain, 6, &[1100, 1100, 1093, 1109, 1100, 1087, 1031, 1099]);
        assert_eq!(replayed, [false, true, true, true, true, true, true, true]);
        let g = cuda.graph_stats(0).unwrap();
        assert_eq!((g.hits, g.early_wakes), (7, wakes), "{case}: {g:?}");
        assert_eq!(
            cuda.inline_replays(0),
            0,
            "{case}: parked callers replay on the executor"
        );
        // Spinning callers: never woken early; they replay the graph on their own thread.
        let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
        let spin = ExecutionHints::default()
            .on_backend(BackendKind::Cuda)
            .spin_wait(std::time::Duration::from_millis(1));
        for _ in 0..4 {
            let inputs = random_pairs(&mut rng, 6, 1100);
            let r = block_on(grain.execute(inputs.clone(), spin.clone())).unwrap();
            check_add(&inputs, &r.outputs);
            assert!(r.graph_replayed());
        }
        let g = cuda.graph_stats(0).unwrap();
        assert_eq!((g.hits, g.early_wakes), (11, wakes), "{case}: {g:?}");
        assert_eq!(cuda.inline_replays(0), 4, "{case}");
        gpubridge::testing::assert_quiescent(&b);
    }
}

/// Releasing the caches destroys the cached graphs, forgets the shapes and frees the pool's
/// idle memory; the next batches answer as before, captured again from scratch.
#[test]
fn released_caches_are_given_back_and_rebuilt_on_demand() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    // Two shapes, each captured on its second run (big enough for the graph path, not run
    // zero-copy on the caller's thread); a third seen once.
    add_on_cuda(&grain, 6, &[1100, 1100, 1100, 5000, 5000, 20_000]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!(g.entries, 2, "{g:?}");
    assert!(g.shapes_seen_once >= 1, "{g:?}");
    let idle = cuda.pool_stats(0).unwrap().idle;
    assert!(idle > 0, "the stream launches left idle blocks");
    let released = cuda.release_caches(0).unwrap();
    assert_eq!(released.graphs, 2, "{released:?}");
    assert_eq!(released.graph_bytes, g.bytes, "{released:?}");
    assert!(released.shapes >= 1, "{released:?}");
    // The stream launches' pinned staging, grown for the 20,000-float pairs, is freed too.
    assert!(released.staging_bytes >= 6 * 20_000 * 4 * 2, "{released:?}");
    // The graphs' blocks came back to the pool before it was trimmed: nothing idle is left.
    assert!(released.pool_bytes >= idle as u64, "{released:?}");
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!(
        (g.entries, g.bytes, g.device_bytes, g.shapes_seen_once),
        (0, 0, 0, 0),
        "{g:?}"
    );
    let p = cuda.pool_stats(0).unwrap();
    assert_eq!((p.in_use, p.idle), (0, 0), "{p:?}");
    // Rebuilt on demand: a shape seen before the release is new again.
    let replayed = add_on_cuda(&grain, 6, &[1100, 1100, 1100]);
    assert_eq!(replayed, [false, true, true]);
    assert_eq!(cuda.graph_stats(0).unwrap().entries, 1);
    assert!(matches!(
        cuda.release_caches(7),
        Err(gpubridge::Error::DeviceLost { .. })
    ));
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn large_results_land_in_the_donated_inputs_memory() {
    let _gpu = gpu_lock();
    let config = BridgeConfig::default();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda);
    let grain = b.batch::<VectorAdd>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // 8 pairs of 1M floats: 32 MB of results, unpacked off the executor thread into the `a`s.
    let inputs = random_pairs(&mut rng, 8, 1 << 20);
    let kept = inputs.clone();
    let donors: Vec<usize> = inputs.iter().map(|p| p.a.as_ptr() as usize).collect();
    let r = block_on(grain.execute(
        inputs,
        ExecutionHints::default().on_backend(BackendKind::Cuda),
    ))
    .unwrap();
    check_add(&kept, &r.outputs);
    let reused: Vec<usize> = r.outputs.iter().map(|o| o.as_ptr() as usize).collect();
    assert_eq!(reused, donors);
    gpubridge::testing::assert_quiescent(&b);
}

/// Also: the executor makes a stream per lane and the inline lane's at start, and a lane's two
/// copy streams only when it first runs a staged plan (a context whose later-made streams run
/// work runs every kernel slower: `CudaBackend::streams_made`).
#[test]
fn a_large_matrix_product_runs_staged_and_matches_the_cpu() {
    let _gpu = gpu_lock();
    use gpubridge::kernels::{MatMul, MatMulInput};
    let config = BridgeConfig::default();
    let lanes = config.cuda.streams_per_device as u64;
    let Some(cuda) = cuda(&config) else { return };
    assert_eq!(cuda.streams_made(0), lanes + 1, "streams made at start");
    let b = bridge_of(config, cuda.clone(), MatMul);
    let grain = b.batch::<MatMul>().unwrap();
    let small = MatMulInput {
        m: 8,
        k: 8,
        n: 8,
        a: vec![1.0; 64],
        b: vec![2.0; 64],
    };
    let r = block_on(grain.execute(
        vec![small],
        ExecutionHints::default().on_backend(BackendKind::Cuda),
    ))
    .unwrap();
    assert!(r.outputs[0].data.iter().all(|&x| x == 16.0));
    assert_eq!(
        cuda.streams_made(0),
        lanes + 1,
        "an unstaged plan made streams"
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // 32 MB of a, b and c: past the staging threshold, so eight row blocks, each uploaded,
    // multiplied and downloaded in its turn. Small integers keep every sum exact in f32. Two
    // items, the second of another shape, check the offsets of each item's blocks.
    let mut item = |m: usize, k: usize, n: usize| MatMulInput {
        m,
        k,
        n,
        a: (0..m * k)
            .map(|_| rng.random_range(-2i32..=2) as f32)
            .collect(),
        b: (0..k * n)
            .map(|_| rng.random_range(-2i32..=2) as f32)
            .collect(),
    };
    let inputs = vec![item(2048, 1024, 2048), item(1500, 1100, 1300)];
    let on = |k| ExecutionHints::default().on_backend(k);
    let gpu = block_on(grain.execute(inputs.clone(), on(BackendKind::Cuda))).unwrap();
    let reference = block_on(grain.execute(inputs, on(BackendKind::Cpu))).unwrap();
    assert_eq!(gpu.backend(), Some(BackendKind::Cuda));
    for (g, c) in gpu.outputs.iter().zip(&reference.outputs) {
        assert_eq!((g.rows, g.cols), (c.rows, c.cols));
        assert!(g.data == c.data, "staged product differs from the CPU's");
    }
    let made = cuda.streams_made(0);
    assert!(
        made > lanes + 1 && made <= 3 * lanes + 1 && (made - lanes - 1).is_multiple_of(2),
        "{made} streams after a staged plan on {lanes} lanes"
    );
    gpubridge::testing::assert_quiescent(&b);
}

/// The default bridge on one GPU with a graph cache of 1 MiB, and its CUDA backend (`None`: a
/// skip, where there is no GPU and none is required).
fn bridge_with_1mb_graph_cache() -> Option<(GpuBridge, Arc<CudaBackend>)> {
    let mut config = one_gpu();
    config.cuda.graph_cache_mb = 1;
    let cuda = cuda(&config)?;
    Some((bridge(config, cuda.clone()), cuda))
}

#[test]
fn graph_cache_evicts_least_recently_used_under_its_budget() {
    let _gpu = gpu_lock();
    // Each of the four shapes' graphs owns about 0.4 MB (device block and pinned staging), so a
    // 1 MB cache cannot hold them all.
    let Some((b, cuda)) = bridge_with_1mb_graph_cache() else {
        return;
    };
    let grain = b.batch::<Sum>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for round in 0..2 {
        // Large enough (>= 96 KB) to take the graph path rather than the zero-copy one.
        for len in [3000usize, 4000, 5000, 6000] {
            for _ in 0..2 {
                let v = int_rows(&mut rng, 8, len);
                let what = format!("round {round}, length {len}");
                sums_checked(&grain, v, ExecutionHints::default(), &what);
            }
        }
    }
    let g = cuda.graph_stats(0).unwrap();
    assert!(g.evictions >= 1, "{g:?}");
    assert!(g.bytes <= 1 << 20, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn a_graph_larger_than_its_cache_with_its_staging_is_not_kept() {
    let _gpu = gpu_lock();
    let Some((b, cuda)) = bridge_with_1mb_graph_cache() else {
        return;
    };
    let grain = b.batch::<Sum>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // 8 x 30000 floats: a device block of 0.96 MB fits the 1 MiB budget, the entry with its
    // pinned staging does not.
    for run in 0..4 {
        let v = int_rows(&mut rng, 8, 30_000);
        let r = sums_checked(&grain, v, ExecutionHints::default(), &format!("run {run}"));
        assert_eq!(r.backend(), Some(BackendKind::Cuda));
        assert!(!r.graph_replayed(), "run {run} replayed a graph");
        let g = cuda.graph_stats(0).unwrap();
        assert!(g.bytes <= 1 << 20, "run {run}: {g:?}");
        assert_eq!(g.entries, 0, "run {run}: {g:?}");
    }
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn a_resident_plan_is_captured_at_once_and_outlives_the_lru() {
    let _gpu = gpu_lock();
    let mut config = one_gpu();
    // Ordinary graphs get 1 MB (about two of the shapes below); resident ones 4 MB.
    config.cuda.graph_cache_mb = 1;
    config.cuda.resident_mb = 4;
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<Sum>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let mut batch = |len: usize, hints: ExecutionHints| {
        let v = int_rows(&mut rng, 8, len);
        sums_checked(&grain, v, hints, &format!("length {len}")).graph_replayed()
    };
    let resident = ExecutionHints::default().persistent(true);
    // A resident plan is captured on its first run (an ordinary one on its second).
    assert!(
        batch(7000, resident.clone()),
        "captured and replayed at once"
    );
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.resident_entries, g.misses), (1, 1), "{g:?}");
    // Ordinary shapes churn through their 1 MB cache, evicting one another...
    for _ in 0..2 {
        for len in [3000usize, 4000, 5000, 6000] {
            batch(len, ExecutionHints::default());
            batch(len, ExecutionHints::default());
        }
    }
    let g = cuda.graph_stats(0).unwrap();
    assert!(g.evictions >= 1, "{g:?}");
    assert_eq!(g.resident_evictions, 0, "{g:?}");
    // ...but the resident graph is still there: replayed with no new capture.
    let misses = g.misses;
    assert!(batch(7000, resident));
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!(g.misses, misses, "{g:?}");
    assert_eq!(g.resident_entries, 1, "{g:?}");
    assert!(g.resident_bytes > 0 && g.resident_bytes <= 4 << 20, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn pool_reuses_memory_across_batches() {
    let _gpu = gpu_lock();
    let mut config = one_gpu();
    config.cuda.enable_graphs = false;
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for _ in 0..5 {
        let inputs = random_pairs(&mut rng, 4, 50_000);
        let r = block_on(grain.execute(
            inputs.clone(),
            ExecutionHints::default().on_backend(BackendKind::Cuda),
        ))
        .unwrap();
        check_add(&inputs, &r.outputs);
    }
    let p = cuda.pool_stats(0).unwrap();
    assert_eq!(p.misses, 1, "{p:?}");
    assert_eq!(p.hits, 4, "{p:?}");
    assert_eq!(p.in_use, 0, "every block is back in the pool: {p:?}");
    // Placement sees the device's free memory, sampled by its executor.
    let free = gpubridge::Backend::free_memory(&*cuda, 0).unwrap_or(0);
    assert!(free > 1 << 30, "free memory sampled: {free}");
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn out_of_memory_falls_back_to_the_cpu() {
    let _gpu = gpu_lock();
    let mut config = BridgeConfig::default();
    config.memory.pool_size_mb = 1;
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // One pair of 200 000 floats needs 2.4 MB on the device: more than the 1 MiB pool.
    let inputs = random_pairs(&mut rng, 1, 200_000);
    let r = block_on(
        b.batch::<VectorAdd>()
            .unwrap()
            .execute(inputs.clone(), ExecutionHints::default()),
    )
    .unwrap();
    check_add(&inputs, &r.outputs);
    assert_eq!(r.backend(), Some(BackendKind::Cpu));
    assert_eq!(r.fallbacks[0].reason, "out_of_memory");
    assert_circuit(&b, 0, CircuitState::Closed);
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn a_lost_device_trips_its_circuit_and_work_moves_on_with_nothing_lost() {
    let _gpu = gpu_lock();
    let mut config = BridgeConfig::default();
    config.fallback.circuit_failure_threshold = 2;
    let Some(cuda) = cuda(&config) else { return };
    let devices = cuda.devices_len();
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    cuda.inject_device_lost(0, "test");
    for _ in 0..4 {
        let inputs = random_pairs(&mut rng, 3, 1000);
        let r = block_on(grain.execute(
            inputs.clone(),
            ExecutionHints::default().preferred_device(0),
        ))
        .unwrap();
        check_add(&inputs, &r.outputs);
        if devices > 1 {
            assert_eq!(
                r.device(),
                Some(DeviceId {
                    backend: BackendKind::Cuda,
                    index: 1
                }),
                "moved to the other GPU"
            );
        } else {
            assert_eq!(r.backend(), Some(BackendKind::Cpu), "moved to the CPU");
        }
    }
    assert_circuit(&b, 0, CircuitState::Open);
    gpubridge::testing::assert_quiescent(&b);
}

/// Placement over every GPU: a preferred device is honoured, and concurrent batches without a
/// preference spread over the devices by their queue depth, each answer checked. On a machine
/// of one GPU the spreading part has nothing to show and says so.
#[test]
fn batches_spread_over_every_gpu_and_a_preferred_device_is_honoured() {
    let _gpu = gpu_lock();
    let config = BridgeConfig::default();
    let Some(cuda) = cuda(&config) else { return };
    let devices = cuda.devices_len();
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for d in 0..devices {
        let inputs = random_pairs(&mut rng, 4, 50_000);
        let r = block_on(
            grain.execute(
                inputs.clone(),
                ExecutionHints::default()
                    .on_backend(BackendKind::Cuda)
                    .preferred_device(d),
            ),
        )
        .unwrap();
        check_add(&inputs, &r.outputs);
        assert_eq!(
            r.device(),
            Some(DeviceId {
                backend: BackendKind::Cuda,
                index: d
            })
        );
    }
    let used = std::sync::Mutex::new(std::collections::BTreeMap::<usize, usize>::new());
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (grain, used) = (&grain, &used);
            scope.spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random::<u64>() ^ t);
                for _ in 0..10 {
                    let inputs = random_pairs(&mut rng, 8, 250_000);
                    let r = block_on(grain.execute(
                        inputs.clone(),
                        ExecutionHints::default().on_backend(BackendKind::Cuda),
                    ))
                    .unwrap();
                    check_add(&inputs, &r.outputs);
                    for c in &r.chunks {
                        *used.lock().unwrap().entry(c.device.index).or_default() += 1;
                    }
                }
            });
        }
    });
    let used = used.into_inner().unwrap();
    eprintln!("{devices} CUDA device(s); micro-batches per device: {used:?}");
    if devices > 1 {
        assert_eq!(used.len(), devices, "every GPU took work: {used:?}");
    }
    gpubridge::testing::assert_quiescent(&b);
}

/// A kernel whose packer panics on one request fails that request with `KernelPanicked`, on every
/// CUDA path (zero-copy on the executor and on a spinning caller's thread, with graphs off; a
/// tiny plan's graph, replayed on the executor and on a spinning caller's thread; a larger
/// graph; and a large plan packed on the rayon pool while it uploads), and nothing else: the
/// device's circuit stays closed, the next request is right, and the bridge holds nothing
/// afterwards.
#[test]
fn a_panicking_packer_fails_its_request_on_every_cuda_path_and_nothing_else() {
    let _gpu = gpu_lock();
    for graphs in [false, true] {
        let mut config = one_gpu();
        config.cuda.enable_graphs = graphs;
        let Some(cuda) = cuda(&config) else { return };
        let b = GpuBridge::builder(config)
            .kernel(PoisonAdd)
            .unwrap()
            .backend(cuda)
            .build()
            .unwrap();
        let grain = b.batch::<PoisonAdd>().unwrap();
        let on_cuda = ExecutionHints::default().on_backend(BackendKind::Cuda);
        let spin = on_cuda
            .clone()
            .spin_wait(std::time::Duration::from_millis(5));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
        // (pairs, length): tiny (4 KiB: zero-copy, or a graph once captured); a graph
        // candidate, run often enough to be replayed; 16 MiB, packed in pieces on the rayon pool.
        let cases: &[(usize, usize, &ExecutionHints)] = if graphs {
            &[
                (4, 100, &on_cuda),
                (4, 100, &spin),
                (8, 20_000, &on_cuda),
                (4, 350_000, &on_cuda),
            ]
        } else {
            &[(4, 100, &on_cuda), (4, 100, &spin)]
        };
        for &(pairs, len, hints) in cases {
            for round in 0..4 {
                let good = random_pairs(&mut rng, pairs, len);
                let r = block_on(grain.execute(good.clone(), hints.clone())).unwrap();
                check_add(&good, &r.outputs);
                let mut bad = random_pairs(&mut rng, pairs, len);
                bad[0].a[0] = PoisonAdd::IN_PACKER;
                let e = block_on(grain.execute(bad, hints.clone())).unwrap_err();
                assert!(
                    matches!(&e, gpubridge::Error::KernelPanicked { kernel, backend: BackendKind::Cuda, message } if kernel == <PoisonAdd as gpubridge::Kernel>::ID && message == "poisoned input"),
                    "graphs {graphs}, {pairs} x {len}, round {round}: {e:?}"
                );
            }
        }
        assert_circuit(&b, 0, CircuitState::Closed);
        gpubridge::testing::assert_quiescent(&b);
    }
}

/// Thirty-two callers' singles in one batch on the GPU, two of them poison (one for the packers,
/// one for the unpacking): those two callers get `KernelPanicked`, the thirty others their sums
/// from the device, on the zero-copy, graph and staged paths.
#[test]
fn a_poison_single_fails_alone_and_its_batch_mates_get_their_sums() {
    let _gpu = gpu_lock();
    let mut config = one_gpu();
    config.batching.max_batch = 32;
    config.batching.max_queue_delay_us = 10_000_000;
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge_of(config, cuda, PoisonAdd);
    let on_cuda = ExecutionHints::default().on_backend(BackendKind::Cuda);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for len in [100, 20_000, 350_000] {
        for round in 0..3 {
            let mut pairs = random_pairs(&mut rng, 32, len);
            let packer = rng.random_range(0..32);
            let unpacker = (packer + rng.random_range(1..32)) % 32;
            pairs[packer].a[0] = PoisonAdd::IN_PACKER;
            pairs[unpacker].a[0] = PoisonAdd::IN_UNPACK;
            let answers = block_on(futures::future::join_all(
                pairs
                    .iter()
                    .map(|p| b.single::<PoisonAdd>(p.clone(), on_cuda.clone())),
            ));
            let context = format!("length {len}, round {round}");
            PoisonAdd::check_singles(&pairs, answers, BackendKind::Cuda, 32, &context);
        }
    }
    assert_circuit(&b, 0, CircuitState::Closed);
    gpubridge::testing::assert_quiescent(&b);
}

/// A tiny plan (4 KB, one launch) runs zero-copy the first time its shape is seen and is then
/// captured as a small graph whose kernel uses the mapped staging directly (no copies), which
/// later calls replay; with graphs off it runs zero-copy every time. Fresh data every call.
#[test]
fn tiny_plans_run_zero_copy_then_as_mapped_graphs_with_fresh_data_every_time() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<Sum>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let replayed: Vec<bool> = (0..20)
        .map(|_| {
            sums_checked(
                &grain,
                small_sums(&mut rng),
                ExecutionHints::default(),
                "tiny",
            )
            .graph_replayed()
        })
        .collect();
    assert_eq!(replayed[..2], [false, true], "zero-copy, then captured");
    assert!(replayed[2..].iter().all(|r| *r), "{replayed:?}");
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.hits), (1, 19), "{g:?}");
    assert_eq!(
        (
            g.kernel_copy_captures,
            g.mapped_input_captures,
            g.mapped_output_captures
        ),
        (1, 1, 1),
        "{g:?}"
    );
    assert_eq!(g.signalled_replays, g.hits, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);

    let mut off = one_gpu();
    off.cuda.enable_graphs = false;
    let Some(cuda) = self::cuda(&off) else { return };
    let b = bridge(off, cuda.clone());
    let grain = b.batch::<Sum>().unwrap();
    for _ in 0..10 {
        let r = sums_checked(
            &grain,
            small_sums(&mut rng),
            ExecutionHints::default(),
            "tiny, graphs off",
        );
        assert!(!r.graph_replayed(), "graphs are off: zero-copy");
    }
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.hits), (0, 0), "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

fn small_sums(rng: &mut impl Rng) -> Vec<Vec<f32>> {
    int_rows(rng, 10, 100)
}

/// `rows` rows of `len` small integers as floats (their sums are exact).
fn int_rows(rng: &mut impl Rng, rows: usize, len: usize) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(-8i32..8) as f32)
                .collect()
        })
        .collect()
}

/// Sums `v` through `grain` with `hints` (on CUDA) and checks every sum against the host's.
fn sums_checked(
    grain: &gpubridge::BatchGrain<Vec<f32>, f32>,
    v: Vec<Vec<f32>>,
    hints: ExecutionHints,
    what: &str,
) -> gpubridge::BatchResult<f32> {
    let want: Vec<f32> = v.iter().map(|x| x.iter().sum()).collect();
    let r = block_on(grain.execute(v, hints.on_backend(BackendKind::Cuda))).unwrap();
    assert_eq!(r.outputs, want, "{what}");
    r
}

/// A caller that spins runs a tiny plan on its own thread (`cuda.inline_tiny_plans`): the first
/// run of the kernel goes through the executor (which compiles it), later ones do not; callers
/// that park, and every caller when the option is off, go through the executor. Results are
/// checked against the CPU's sums every time, from many threads at once too (one caller at a
/// time holds the inline lane; the others' plans go to the executor meanwhile).
#[test]
fn spinning_callers_run_tiny_plans_on_their_own_threads() {
    let _gpu = gpu_lock();
    // Graphs off: every tiny plan runs zero-copy (with graphs on, see the test after this one).
    let mut config = one_gpu();
    config.cuda.enable_graphs = false;
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<Sum>().unwrap();
    let on_cuda = ExecutionHints::default().on_backend(BackendKind::Cuda);
    let spin = on_cuda
        .clone()
        .spin_wait(std::time::Duration::from_millis(5));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let check = |v: &[Vec<f32>], out: &[f32]| {
        assert_eq!(v.len(), out.len());
        for (x, s) in v.iter().zip(out) {
            assert_eq!(x.iter().sum::<f32>(), *s);
        }
    };
    // Parked callers never run inline.
    for _ in 0..5 {
        let v = small_sums(&mut rng);
        let r = block_on(grain.execute(v.clone(), on_cuda.clone())).unwrap();
        check(&v, &r.outputs);
    }
    assert_eq!(cuda.inline_runs(0), 0);
    for _ in 0..50 {
        let v = small_sums(&mut rng);
        let r = block_on(grain.execute(v.clone(), spin.clone())).unwrap();
        check(&v, &r.outputs);
        assert!(!r.graph_replayed());
    }
    assert_eq!(
        cuda.inline_runs(0),
        50,
        "the kernel was loaded by the parked calls"
    );
    // Eight threads at once: every answer right, the lane shared one caller at a time.
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (grain, spin) = (&grain, &spin);
            scope.spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random::<u64>() ^ t);
                for _ in 0..200 {
                    let v = small_sums(&mut rng);
                    let r = block_on(grain.execute(v.clone(), spin.clone())).unwrap();
                    check(&v, &r.outputs);
                }
            });
        }
    });
    let inline = cuda.inline_runs(0);
    assert!(
        inline > 50,
        "some of the concurrent calls ran inline: {inline}"
    );
    gpubridge::testing::assert_quiescent(&b);

    // Off: every plan goes through the executor.
    let mut off = one_gpu();
    off.cuda.inline_tiny_plans = false;
    off.cuda.enable_graphs = false;
    let Some(cuda) = self::cuda(&off) else { return };
    let b = bridge(off, cuda.clone());
    let grain = b.batch::<Sum>().unwrap();
    for _ in 0..20 {
        let v = small_sums(&mut rng);
        let r = block_on(grain.execute(v.clone(), spin.clone())).unwrap();
        check(&v, &r.outputs);
    }
    assert_eq!(cuda.inline_runs(0), 0);
    gpubridge::testing::assert_quiescent(&b);
}

/// With graphs on, a spinning caller's tiny plan goes to the executor until its shape's graph is
/// captured there (the first run zero-copy, the second captured), and from then on the caller
/// replays that graph on its own thread, with fresh data every time.
#[test]
fn spinning_callers_replay_tiny_plans_graphs_once_captured() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<Sum>().unwrap();
    let spin = ExecutionHints::default()
        .on_backend(BackendKind::Cuda)
        .spin_wait(std::time::Duration::from_millis(5));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // `n` calls, each checked; which replayed a graph.
    let mut calls = |n: usize, what: &str| -> Vec<bool> {
        (0..n)
            .map(|i| {
                let sums = small_sums(&mut rng);
                sums_checked(&grain, sums, spin.clone(), &format!("call {i}{what}"))
                    .graph_replayed()
            })
            .collect()
    };
    let replayed = calls(30, "");
    assert_eq!(replayed[..2], [false, true], "zero-copy, then captured");
    assert!(replayed[2..].iter().all(|r| *r), "{replayed:?}");
    assert_eq!(
        (cuda.inline_runs(0), cuda.inline_replays(0)),
        (28, 28),
        "the first two went to the executor"
    );
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!(
        (g.misses, g.hits, g.signalled_replays),
        (1, 29, 29),
        "{g:?}"
    );
    // With the graph gone (evicted, or here the caches released), the shape is handed to the
    // executor twice again and captured again: the callers do not stay on zero-copy runs.
    assert_eq!(cuda.release_caches(0).unwrap().graphs, 1);
    let replayed = calls(10, " after the release");
    assert_eq!(
        replayed[..2],
        [false, true],
        "zero-copy, then captured again"
    );
    assert!(replayed[2..].iter().all(|r| *r), "{replayed:?}");
    assert_eq!(
        (cuda.inline_runs(0), cuda.inline_replays(0)),
        (36, 36),
        "the first two after the release went to the executor"
    );
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.entries), (2, 1), "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// A spinning caller replays its plan's cached graph on its own thread: the shape's first run
/// goes through the executor, its second is captured there, later ones replay on the caller's
/// thread with fresh data every time; parked callers' plans of the same shape replay on the
/// executor. Then eight threads at once, with a graph budget too small for their shapes, so that
/// the executor evicts graphs that callers may be replaying: every answer right, graphs evicted,
/// replays done by callers, nothing left over.
#[test]
fn spinning_callers_replay_cached_graphs_on_their_own_threads() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge(config, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    let on_cuda = ExecutionHints::default().on_backend(BackendKind::Cuda);
    let spin = on_cuda
        .clone()
        .spin_wait(std::time::Duration::from_millis(5));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // 4 x 10,000 pairs: 480 KB, above the zero-copy limit and below the inline replay limit.
    for i in 0..40 {
        let inputs = random_pairs(&mut rng, 4, 10_000);
        let r = block_on(grain.execute(inputs.clone(), spin.clone())).unwrap();
        check_add(&inputs, &r.outputs);
        assert_eq!(r.graph_replayed(), i >= 1, "call {i}");
    }
    assert_eq!(cuda.inline_replays(0), 38, "every call after the capture");
    assert_eq!(cuda.inline_runs(0), 38);
    for _ in 0..5 {
        let inputs = random_pairs(&mut rng, 4, 10_000);
        let r = block_on(grain.execute(inputs.clone(), on_cuda.clone())).unwrap();
        check_add(&inputs, &r.outputs);
        assert!(r.graph_replayed());
    }
    assert_eq!(
        cuda.inline_replays(0),
        38,
        "parked callers replay on the executor"
    );
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.hits), (1, 44), "{g:?}");
    gpubridge::testing::assert_quiescent(&b);

    let mut small = one_gpu();
    small.cuda.graph_cache_mb = 1;
    let Some(cuda) = self::cuda(&small) else {
        return;
    };
    let b = bridge(small, cuda.clone());
    let grain = b.batch::<VectorAdd>().unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (grain, spin, on_cuda) = (&grain, &spin, &on_cuda);
            scope.spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random::<u64>() ^ t);
                // Eight shapes (two pair counts, four lengths in separate buckets), 72 to 720 KB.
                let shapes = [(4usize, 1500usize), (4, 3000), (4, 6000), (4, 12_000)];
                for i in 0..150usize {
                    let (n, len) = shapes[(i + t as usize) % 4];
                    let n = n + (t as usize % 2);
                    let inputs = random_pairs(&mut rng, n, len);
                    // One call in ten parks, so the executor replays the same graphs meanwhile.
                    let hints = if i % 10 == 0 { on_cuda } else { spin };
                    let r = block_on(grain.execute(inputs.clone(), hints.clone())).unwrap();
                    check_add(&inputs, &r.outputs);
                }
            });
        }
    });
    let g = cuda.graph_stats(0).unwrap();
    assert!(g.evictions >= 1, "{g:?}");
    assert!(cuda.inline_replays(0) > 0, "{g:?}");
    assert!(g.bytes <= 1 << 20 || g.entries == 1, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// A spinning caller that holds its tiny plan's graph for long (its completion slowed here by an
/// injected fault, as a slow device or a preempted thread would hold it) stalls no other plan:
/// parked callers' plans of that shape run unreplayed on the executor after a short wait
/// (`busy_fallbacks`), and captures that must evict the held graph take it out of the cache at
/// once and destroy it once the caller lets go (`deferred_evictions`, `dying`). Every answer is
/// checked, and all the others arrive while the slow caller still holds the graph.
#[test]
fn a_caller_holding_a_graph_long_stalls_no_other_plan() {
    let _gpu = gpu_lock();
    let mut config = one_gpu();
    config.cuda.graph_cache_mb = 1;
    let Some(cuda) = cuda(&config) else { return };
    let faulty = FaultInjector::wrap(cuda.clone());
    let b = bridge(config, faulty.clone());
    let grain = b.batch::<Sum>().unwrap();
    let spin = ExecutionHints::default().spin_wait(Duration::from_millis(5));
    let parked = ExecutionHints::default;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // The tiny shape's graph: captured on the executor (calls 0 and 1), then replayed by the
    // spinning caller on its own thread.
    for i in 0..4 {
        let sums = small_sums(&mut rng);
        sums_checked(&grain, sums, spin.clone(), &format!("warm-up {i}"));
    }
    assert_eq!(cuda.inline_replays(0), 2);
    faulty.inject(InjectedFault::Slow(Duration::from_secs(1)), Trigger::Nth(1));
    let held_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (grain, spin, held_done) = (&grain, &spin, &held_done);
        let sums = small_sums(&mut rng);
        scope.spawn(move || {
            sums_checked(grain, sums, spin.clone(), "the slow caller");
            held_done.store(true, Ordering::SeqCst);
        });
        // Once the fault has fired, and a while after, the caller is in its slowed completion
        // with the graph held.
        while faulty.injected() == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..3 {
            let sums = small_sums(&mut rng);
            sums_checked(grain, sums, parked(), &format!("parked {i}"));
        }
        let g = cuda.graph_stats(0).unwrap();
        assert_eq!((g.busy_fallbacks, g.deferred_evictions), (3, 0), "{g:?}");
        // Four shapes of about 0.4 MB, each captured on its second run, overflow the 1 MB
        // cache: the least recently used graph, the held one, is evicted first.
        for len in [3000usize, 4000, 5000, 6000] {
            for _ in 0..2 {
                let rows = int_rows(&mut rng, 8, len);
                sums_checked(grain, rows, parked(), &format!("length {len}"));
            }
        }
        let g = cuda.graph_stats(0).unwrap();
        assert_eq!((g.deferred_evictions, g.dying), (1, 1), "{g:?}");
        assert!(g.bytes <= 1 << 20, "{g:?}");
        assert!(
            !held_done.load(Ordering::SeqCst),
            "every other call is answered while the slow caller holds its graph"
        );
    });
    assert_eq!(faulty.injected(), 1);
    // Its caller has let go: the executor destroys it after its next plan.
    sums_checked(
        &grain,
        small_sums(&mut rng),
        parked(),
        "after the slow caller",
    );
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.deferred_evictions, g.dying), (1, 0), "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// A plan with a library (cuBLAS) step replays its graph on the executor even for a spinning
/// caller: a captured cuBLAS call uses the handle's workspace, which the executor's own calls
/// use too. Every product checked against the CPU's (small integers: exact in f32).
#[test]
fn spinning_callers_leave_library_graphs_to_the_executor() {
    let _gpu = gpu_lock();
    use gpubridge::kernels::{MatMul, MatMulInput};
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge_of(config, cuda.clone(), MatMul);
    let grain = b.batch::<MatMul>().unwrap();
    let spin = ExecutionHints::default()
        .on_backend(BackendKind::Cuda)
        .spin_wait(std::time::Duration::from_millis(5));
    let on_cpu = ExecutionHints::default().on_backend(BackendKind::Cpu);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let mut replayed = Vec::new();
    for _ in 0..6 {
        // 3 x 96 x 96 floats: 108 KB, past the zero-copy limit.
        let inputs = vec![MatMulInput {
            m: 96,
            k: 96,
            n: 96,
            a: (0..96 * 96)
                .map(|_| rng.random_range(-2i32..=2) as f32)
                .collect(),
            b: (0..96 * 96)
                .map(|_| rng.random_range(-2i32..=2) as f32)
                .collect(),
        }];
        let gpu = block_on(grain.execute(inputs.clone(), spin.clone())).unwrap();
        let want = block_on(grain.execute(inputs, on_cpu.clone())).unwrap();
        assert!(gpu.outputs[0].data == want.outputs[0].data);
        replayed.push(gpu.graph_replayed());
    }
    assert_eq!(replayed, [false, true, true, true, true, true]);
    assert_eq!(
        cuda.inline_replays(0),
        0,
        "a product's plan calls cuBLAS (the GPU machines have it)"
    );
    gpubridge::testing::assert_quiescent(&b);
}

#[test]
fn micro_batches_overlap_on_two_lanes_and_not_on_one() {
    let _gpu = gpu_lock();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let inputs = random_pairs(&mut rng, 8, 200_000);
    for lanes in [2usize, 1] {
        let mut config = one_gpu();
        config.cuda.streams_per_device = lanes;
        config.cuda.enable_graphs = false;
        let Some(cuda) = cuda(&config) else { return };
        let b = bridge(config, cuda.clone());
        let hints = ExecutionHints::default()
            .on_backend(BackendKind::Cuda)
            .max_micro_batch(1);
        let r = block_on(
            b.batch::<VectorAdd>()
                .unwrap()
                .execute(inputs.clone(), hints),
        )
        .unwrap();
        check_add(&inputs, &r.outputs);
        assert_eq!(r.chunks.len(), 8);
        let overlapped = cuda.overlapped_plans(0);
        if lanes == 1 {
            assert_eq!(overlapped, 0, "one lane cannot overlap");
        } else {
            assert!(
                overlapped > 0,
                "with two lanes the next micro-batch starts before the previous one finishes"
            );
        }
        gpubridge::testing::assert_quiescent(&b);
    }
}

/// A kernel whose CUDA C does not compile: its CPU form is fine.
struct Broken;

impl gpubridge::Kernel for Broken {
    type Input = Vec<f32>;
    type Output = f32;
    const ID: &'static str = "test/broken-cuda";

    fn sources(&self) -> gpubridge::KernelSources {
        gpubridge::KernelSources {
            cuda: Some("extern \"C\" __global__ void k(float* x) { x[0] = not_declared; }"),
            wgsl: None,
        }
    }
    fn validate(&self, _index: usize, _input: &Vec<f32>) -> gpubridge::Result<()> {
        Ok(())
    }
    fn device_bytes(&self, input: &Vec<f32>) -> usize {
        4 * input.len()
    }
    fn run_cpu(
        &self,
        inputs: &[Vec<f32>],
        _ctx: &gpubridge::CpuContext,
    ) -> gpubridge::Result<Vec<f32>> {
        Ok(inputs.iter().map(|v| v.iter().sum()).collect())
    }
    fn plan(
        &self,
        inputs: &Arc<[Vec<f32>]>,
        _target: &gpubridge::PlanTarget,
    ) -> gpubridge::Result<gpubridge::Plan> {
        let mut plan = gpubridge::Plan::new(Self::ID);
        let n = inputs.iter().map(Vec::len).sum::<usize>();
        let x = plan.input(
            "x",
            4 * n,
            gpubridge::plan::Concat::new(inputs.clone(), |v: &Vec<f32>| v).into_packer(),
        );
        plan.launch(gpubridge::plan::Launch::new(
            "k",
            [1, 1, 1],
            [1, 1, 1],
            &[gpubridge::plan::Arg::buf(x)],
        ));
        Ok(plan)
    }
}

#[test]
fn a_kernel_that_does_not_compile_falls_back_without_blaming_the_device() {
    let _gpu = gpu_lock();
    let mut config = BridgeConfig::default();
    config.fallback.circuit_failure_threshold = 1;
    let Some(cuda) = cuda(&config) else { return };
    let cpu = gpubridge::cpu::CpuBackend::new(&config).unwrap();
    let b = GpuBridge::builder(config)
        .kernel(Broken)
        .unwrap()
        .backend(cuda)
        .backend(cpu)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = block_on(
            b.batch::<Broken>()
                .unwrap()
                .execute(vec![vec![1.0, 2.0]], ExecutionHints::default()),
        )
        .unwrap();
        assert_eq!(r.outputs, vec![3.0]);
        assert_eq!(r.backend(), Some(BackendKind::Cpu));
        assert_eq!(r.fallbacks[0].reason, "unsupported");
        assert!(
            r.fallbacks[0].message.contains("not_declared"),
            "NVRTC's log reaches the caller: {}",
            r.fallbacks[0].message
        );
    }
    assert_circuit(&b, 0, CircuitState::Closed);
    gpubridge::testing::assert_quiescent(&b);
}

/// The test kernels' items are 32 floats.
fn thirty_two_floats(kernel: &'static str, index: usize, x: &[f32]) -> gpubridge::Result<()> {
    match x.len() {
        32 => Ok(()),
        _ => Err(gpubridge::Error::invalid_item(kernel, index, "32 floats")),
    }
}

/// The one answer of a test kernel's batch: its plan's second buffer (the output after the input).
fn second_buffer(outputs: &gpubridge::plan::PlanOutputs<'_>) -> gpubridge::Result<Vec<Vec<f32>>> {
    Ok(vec![outputs
        .f32s(gpubridge::plan::BufferId(1))?
        .into_owned()])
}

/// `test/bump_chain`: copies 32 floats and adds `step` to them `BUMPS` times, with its launches
/// reused by key (the step's bits): plans of different steps share one bucketed graph.
struct BumpChain;

/// An item: 32 floats and the step to add.
#[derive(Clone)]
struct Bumped {
    x: Vec<f32>,
    step: f32,
}

const BUMPS: u32 = 8;

impl gpubridge::Kernel for BumpChain {
    type Input = Bumped;
    type Output = Vec<f32>;
    const ID: &'static str = "test/bump_chain";

    fn sources(&self) -> gpubridge::KernelSources {
        gpubridge::KernelSources {
            cuda: Some(
                "extern \"C\" __global__ void copy32(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x]; }\n\
                 extern \"C\" __global__ void bump32(float* y, float s) { y[threadIdx.x] += s; }\n",
            ),
            wgsl: None,
        }
    }
    fn validate(&self, index: usize, input: &Bumped) -> gpubridge::Result<()> {
        thirty_two_floats(Self::ID, index, &input.x)
    }
    fn device_bytes(&self, _input: &Bumped) -> usize {
        256
    }
    fn run_cpu(
        &self,
        inputs: &[Bumped],
        _ctx: &gpubridge::CpuContext,
    ) -> gpubridge::Result<Vec<Vec<f32>>> {
        Ok(inputs
            .iter()
            .map(|i| {
                i.x.iter()
                    .map(|v| (0..BUMPS).fold(*v, |a, _| a + i.step))
                    .collect()
            })
            .collect())
    }
    fn plan(
        &self,
        inputs: &Arc<[Bumped]>,
        _target: &gpubridge::PlanTarget,
    ) -> gpubridge::Result<gpubridge::Plan> {
        use gpubridge::plan::{pack_range, Arg, Launch};
        let first = inputs
            .first()
            .ok_or_else(|| gpubridge::Error::invalid_batch(Self::ID, "empty"))?;
        let (x_vals, step) = (first.x.clone(), first.step);
        let mut plan = gpubridge::Plan::new(Self::ID);
        let x = plan.input("x", 128, move |dst, at| pack_range(dst, at, &x_vals));
        let y = plan.output("y", 128);
        plan.reuse_steps(u64::from(step.to_bits()), |steps| {
            steps.launch(Launch::new(
                "copy32",
                [1, 1, 1],
                [32, 1, 1],
                &[Arg::buf(x), Arg::buf(y)],
            ));
            for _ in 0..BUMPS {
                steps.launch(Launch::new(
                    "bump32",
                    [1, 1, 1],
                    [32, 1, 1],
                    &[Arg::buf(y), Arg::F32(step)],
                ));
            }
        });
        Ok(plan)
    }
    fn unpack(
        &self,
        _inputs: &[Bumped],
        outputs: &gpubridge::plan::PlanOutputs<'_>,
    ) -> gpubridge::Result<Vec<Vec<f32>>> {
        second_buffer(outputs)
    }
}

/// Plans whose launches are reused by key (`Plan::reuse_steps`) share one bucketed graph: a
/// plan with the list the graph's nodes were last given replays without comparing them, and one
/// with another list (another step) has its nodes updated first. Every result is checked, so a
/// replay that skipped an update it needed would show.
#[test]
fn reused_steps_replay_without_comparison_and_update_when_they_change() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge_of(config, cuda.clone(), BumpChain);
    let grain = b.batch::<BumpChain>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let mut replayed = Vec::new();
    for step in [1.0f32, 1.0, 2.0, 2.0, 1.0, 3.0, 3.0, 1.0] {
        let x: Vec<f32> = (0..32)
            .map(|_| rng.random_range(-64i32..64) as f32)
            .collect();
        let r = block_on(grain.execute(
            vec![Bumped { x: x.clone(), step }],
            ExecutionHints::default().on_backend(BackendKind::Cuda),
        ))
        .unwrap();
        let want: Vec<f32> = x.iter().map(|v| v + BUMPS as f32 * step).collect();
        assert_eq!(r.outputs[0], want, "step {step}");
        replayed.push(r.graph_replayed());
    }
    assert_eq!(replayed, [false, true, true, true, true, true, true, true]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!(
        (g.misses, g.entries),
        (1, 1),
        "one graph for every step: {g:?}"
    );
    // Captured with step 1; then 2, back to 1, 3 and back to 1 each update all eight bumps, and
    // the capture's own replay and the repeats (2 and 3) replay with no comparison and no update.
    assert_eq!(
        (g.updated_replays, g.node_updates, g.same_steps_replays),
        (4, 32, 3),
        "{g:?}"
    );
    // 128 bytes each way: a kernel-copy graph, whose first launch reads the input from the
    // mapped staging (no copy node in front) and whose output, bumped by every launch, is
    // copied out by a node the updates above skipped (all eight bumps were found and updated).
    assert_eq!(g.kernel_copy_captures, 1, "{g:?}");
    assert_eq!(
        (g.mapped_input_captures, g.mapped_output_captures),
        (1, 0),
        "{g:?}"
    );
    // The signal kernel's node after them was skipped too, and every replay waited for it.
    assert_eq!(g.signalled_replays, g.hits, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// The pool releases the idle memory of size classes nobody rented in the last period, and keeps
/// the classes in use, so that drifting shapes do not keep every class they ever touched.
#[test]
fn the_pool_releases_idle_classes_that_went_unused() {
    let _gpu = gpu_lock();
    if cuda(&BridgeConfig::default()).is_none() {
        return;
    }
    // A context current on this thread for the pool's allocations.
    let _base = gpubridge_cuda::baseline::Baseline::new().unwrap();
    let mut pool = gpubridge_cuda::DevicePool::new("cuda:0".to_owned(), 1 << 30);
    let (a, b) = (1 << 20, 3 << 20);
    let (ra, rb) = (pool.rent(a).unwrap(), pool.rent(b).unwrap());
    let (sa, sb) = (ra.size, rb.size);
    pool.give_back(ra);
    pool.give_back(rb);
    assert_eq!(pool.stats().idle, sa + sb);
    // Both classes were rented in this period: nothing is released.
    pool.release_unused();
    assert_eq!(pool.stats().idle, sa + sb);
    // Only `a` is rented in the next one: `b`'s idle buffer goes, `a`'s stays for reuse.
    let ra = pool.rent(a).unwrap();
    pool.give_back(ra);
    pool.release_unused();
    assert_eq!(pool.stats().idle, sa);
    assert_eq!(pool.stats().trimmed, sb);
    let hits = pool.stats().hits;
    let ra = pool.rent(a).unwrap();
    assert_eq!(
        pool.stats().hits,
        hits + 1,
        "the class in use is still pooled"
    );
    pool.give_back(ra);
}

#[test]
fn one_off_plan_shapes_do_not_grow_the_graph_cache_memory() {
    let _gpu = gpu_lock();
    use gpubridge::kernels::{MatMul, MatMulInput};
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = GpuBridge::builder(config)
        .kernel(MatMul)
        .unwrap()
        .backend(cuda.clone())
        .build()
        .unwrap();
    let grain = b.batch::<MatMul>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    // Multiplies are keyed by their exact shape: every size below is a shape seen once, which
    // the cache would remember for ever without its bound (the soak's ever-new multiplies).
    let side = 67;
    assert!(side * side > gpubridge::cuda::MAX_SHAPES_REMEMBERED);
    for m in 1..=side {
        for k in 1..=side {
            let input = MatMulInput {
                m,
                k,
                n: 2,
                a: (0..m * k)
                    .map(|_| rng.random_range(-3i32..=3) as f32)
                    .collect(),
                b: (0..k * 2)
                    .map(|_| rng.random_range(-3i32..=3) as f32)
                    .collect(),
            };
            let r =
                block_on(grain.execute(vec![input.clone()], ExecutionHints::default())).unwrap();
            if (m * side + k) % 97 == 0 {
                let c = &r.outputs[0];
                for i in 0..m {
                    for j in 0..2 {
                        let want: f32 = (0..k)
                            .map(|t| input.a[i * k + t] * input.b[t * 2 + j])
                            .sum();
                        assert_eq!(c.data[i * 2 + j], want, "{m}x{k}x2 at ({i},{j})");
                    }
                }
            }
        }
    }
    let g = cuda.graph_stats(0).unwrap();
    assert!(
        g.shapes_seen_once as usize <= gpubridge::cuda::MAX_SHAPES_REMEMBERED,
        "{g:?}"
    );
    assert!(g.shapes_seen_once > 0, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}

/// Bytes the C allocator has handed out and not had back, in every arena (glibc's `mallinfo2`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_live() -> i64 {
    // SAFETY: mallinfo2 has no preconditions.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as i64
}

/// The host heap must not grow while the graph cache captures and evicts graphs over and over
/// (kernel graphs of a few bucketed shapes, then multiply graphs of ever-new shapes): the GPU
/// soak saw the live heap's floor creep under such churn (TARGETS.md R1). The first multiplies
/// of new shapes do grow it, by about 370 bytes each on the H200 (CUDA 13.0), captured or not:
/// cuBLAS keeps a heuristics cache per problem size, bounded by
/// `CUBLASLT_HEURISTICS_CACHE_CAPACITY` (8192 by default). So the multiply phase first runs
/// past that capacity, then measures.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn graph_churn_keeps_the_host_heap_flat() {
    let _gpu = gpu_lock();
    use gpubridge::kernels::{MatMul, MatMulInput};
    let mut config = one_gpu();
    config.cuda.graph_cache_mb = 1;
    let Some(cuda) = cuda(&config) else { return };
    let b = GpuBridge::builder(config)
        .kernel(Sum)
        .unwrap()
        .kernel(MatMul)
        .unwrap()
        .backend(cuda.clone())
        .build()
        .unwrap();
    let sum = b.batch::<Sum>().unwrap();
    let mm = b.batch::<MatMul>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let inputs: Vec<Vec<Vec<f32>>> = [3000usize, 4000, 5000, 6000]
        .iter()
        .map(|&len| int_rows(&mut rng, 8, len))
        .collect();
    let sums = |n: usize| {
        for i in 0..n {
            let v = inputs[i % inputs.len()].clone();
            let want: Vec<f32> = v.iter().map(|x| x.iter().sum()).collect();
            let r = block_on(sum.execute(v, ExecutionHints::default())).unwrap();
            assert_eq!(r.outputs, want);
        }
    };
    let multiplies = |from: usize, n: usize, rng: &mut rand::rngs::SmallRng| {
        for i in from..from + n {
            let (m, k) = (1 + i % 40, 1 + (i / 40) % 40 + 40 * (i / 1600));
            let input = MatMulInput {
                m,
                k,
                n: 3,
                a: (0..m * k)
                    .map(|_| rng.random_range(-3i32..=3) as f32)
                    .collect(),
                b: (0..k * 3)
                    .map(|_| rng.random_range(-3i32..=3) as f32)
                    .collect(),
            };
            // Twice: captured on its second run, then evicted by later ones.
            for _ in 0..2 {
                let r =
                    block_on(mm.execute(vec![input.clone()], ExecutionHints::default())).unwrap();
                let want: f32 = (0..k).map(|t| input.a[t] * input.b[t * 3]).sum();
                assert_eq!(r.outputs[0].data[0], want, "{m}x{k}x3");
            }
        }
    };
    let evictions = || cuda.graph_stats(0).unwrap().evictions as i64;
    // Warm-up: every buffer class, staging and cache structure at its working size.
    sums(400);
    multiplies(0, 9000, &mut rng);
    let (h0, e0) = (heap_live(), evictions());
    sums(4000);
    let (h1, e1) = (heap_live(), evictions());
    multiplies(9000, 2000, &mut rng);
    let (h2, e2) = (heap_live(), evictions());
    let per = |dh: i64, n: i64| dh as f64 / n.max(1) as f64;
    eprintln!(
        "kernel graphs: {} evictions, heap {:+} B ({:+.1} B each); multiply graphs: {} evictions, heap {:+} B ({:+.1} B each)",
        e1 - e0,
        h1 - h0,
        per(h1 - h0, e1 - e0),
        e2 - e1,
        h2 - h1,
        per(h2 - h1, e2 - e1)
    );
    assert!(
        e1 - e0 >= 1000 && e2 - e1 >= 1000,
        "too little churn: {e0} {e1} {e2}"
    );
    assert!(
        per(h1 - h0, e1 - e0) < 256.0,
        "kernel-graph churn grows the heap"
    );
    assert!(
        per(h2 - h1, e2 - e1) < 256.0,
        "multiply-graph churn grows the heap"
    );
    gpubridge::testing::assert_quiescent(&b);
}

/// NVML's boards are labelled with the bridge's own device labels: the CUDA device the bridge
/// runs on is found by its PCI location and sampled as `cuda:0`, not as an anonymous
/// `nvml:<index>`, so the GPU's utilisation and memory line up with the bridge's metrics.
#[cfg(feature = "nvml")]
#[test]
fn the_nvml_sampler_labels_the_bridges_cuda_device() {
    let _gpu = gpu_lock();
    let config = BridgeConfig::default();
    let Some(cuda) = cuda(&config) else { return };
    let locations = gpubridge_cuda::pci_locations();
    assert!(
        locations.iter().any(|(ordinal, ..)| *ordinal == 0),
        "device 0 has a PCI location: {locations:?}"
    );
    let b = bridge(config, cuda);
    let sampler = gpubridge::telemetry::start_nvml_sampler(&b)
        .unwrap()
        .expect("NVML loads where a CUDA device is");
    assert!(
        sampler.devices().iter().any(|d| d == "cuda:0"),
        "{:?}",
        sampler.devices()
    );
    sampler.stop();
    gpubridge::testing::assert_quiescent(&b);
}

/// `test/read_twice`: `y = x + 1`, then `y += x` twice, so three launches read the input (more
/// than a zero-copy plan may have: it runs as a graph).
struct ReadTwice;

impl gpubridge::Kernel for ReadTwice {
    type Input = Vec<f32>;
    type Output = Vec<f32>;
    const ID: &'static str = "test/read_twice";

    fn sources(&self) -> gpubridge::KernelSources {
        gpubridge::KernelSources {
            cuda: Some(
                "extern \"C\" __global__ void plus_one(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x] + 1.0f; }\n\
                 extern \"C\" __global__ void plus_x(float* y, const float* x) { y[threadIdx.x] += x[threadIdx.x]; }\n",
            ),
            wgsl: None,
        }
    }
    fn validate(&self, index: usize, input: &Vec<f32>) -> gpubridge::Result<()> {
        thirty_two_floats(Self::ID, index, input)
    }
    fn device_bytes(&self, _input: &Vec<f32>) -> usize {
        256
    }
    fn run_cpu(
        &self,
        inputs: &[Vec<f32>],
        _ctx: &gpubridge::CpuContext,
    ) -> gpubridge::Result<Vec<Vec<f32>>> {
        Ok(inputs
            .iter()
            .map(|x| x.iter().map(|v| 3.0 * v + 1.0).collect())
            .collect())
    }
    fn plan(
        &self,
        inputs: &Arc<[Vec<f32>]>,
        _target: &gpubridge::PlanTarget,
    ) -> gpubridge::Result<gpubridge::Plan> {
        use gpubridge::plan::{pack_range, Arg, Launch};
        let first = inputs
            .first()
            .ok_or_else(|| gpubridge::Error::invalid_batch(Self::ID, "empty"))?
            .clone();
        let mut plan = gpubridge::Plan::new(Self::ID);
        let x = plan.input("x", 128, move |dst, at| pack_range(dst, at, &first));
        let y = plan.output("y", 128);
        let one = [1, 1, 1];
        plan.launch(Launch::new(
            "plus_one",
            one,
            [32, 1, 1],
            &[Arg::buf(x), Arg::buf(y)],
        ));
        for _ in 0..2 {
            plan.launch(Launch::new(
                "plus_x",
                one,
                [32, 1, 1],
                &[Arg::buf(y), Arg::buf(x)],
            ));
        }
        Ok(plan)
    }
    fn unpack(
        &self,
        _inputs: &[Vec<f32>],
        outputs: &gpubridge::plan::PlanOutputs<'_>,
    ) -> gpubridge::Result<Vec<Vec<f32>>> {
        second_buffer(outputs)
    }
}

/// An input that several launches read keeps the copy into device memory in front of its graph
/// (read from there rather than over the bus each time); the answers are exact on fresh random
/// data every call, the copy included.
#[test]
fn an_input_read_by_several_launches_is_copied_into_the_graph_block() {
    let _gpu = gpu_lock();
    let config = one_gpu();
    let Some(cuda) = cuda(&config) else { return };
    let b = bridge_of(config, cuda.clone(), ReadTwice);
    let grain = b.batch::<ReadTwice>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let mut replayed = Vec::new();
    for call in 0..6 {
        let x: Vec<f32> = (0..32)
            .map(|_| rng.random_range(-64i32..64) as f32)
            .collect();
        let r = block_on(grain.execute(
            vec![x.clone()],
            ExecutionHints::default().on_backend(BackendKind::Cuda),
        ))
        .unwrap();
        let want: Vec<f32> = x.iter().map(|v| 3.0 * v + 1.0).collect();
        assert_eq!(r.outputs[0], want, "call {call}");
        replayed.push(r.graph_replayed());
    }
    assert_eq!(replayed, [false, true, true, true, true, true]);
    let g = cuda.graph_stats(0).unwrap();
    assert_eq!((g.misses, g.kernel_copy_captures), (1, 1), "{g:?}");
    // The output too: every launch names it.
    assert_eq!(
        (g.mapped_input_captures, g.mapped_output_captures),
        (0, 0),
        "{g:?}"
    );
    assert_eq!(g.signalled_replays, g.hits, "{g:?}");
    gpubridge::testing::assert_quiescent(&b);
}
