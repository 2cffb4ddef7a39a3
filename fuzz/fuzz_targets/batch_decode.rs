//! Fuzzes batch decoding: typed items built from arbitrary bytes (lengths that disagree, empty
//! vectors, NaN and infinities, shapes that lie about their data, edges naming missing nodes,
//! odd hints) run through `bridge.batch::<K>()` and the dynamic batcher (`bridge.single`) on the
//! CPU backend.
//!
//! Contract: `Ok` with one output per item, or a typed `Err`; never a panic (libFuzzer's panic
//! hook aborts even on a panic the bridge would catch, so a kernel panicking on input is found);
//! and once every answer is in, the bridge's queues, tenants and pools are back to zero.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use gpubridge_core::kernels::{
    ConnectedComponents, Graph, MatMul, MatMulInput, Saxpy, SaxpyInput, Sum, VectorAdd, VectorPair,
};
use gpubridge_core::{BridgeConfig, ExecutionHints, GpuBridge, Kernel, Preference, Priority};
use gpubridge_wgpu_fallback::cpu::CpuBackend;
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;

struct Harness {
    rt: tokio::runtime::Runtime,
    bridge: GpuBridge,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // Small micro-batches so that splitting and in-order reassembly are exercised too.
        let cfg = BridgeConfig::from_toml_str(
            "[batching]\nmax_micro_batch = 3\nmax_micro_batch_mb = 1\nmax_in_flight = 2\n\
             max_queue_delay_us = 50\nqueue_capacity = 64\nrunner_spin_us = 0\n\
             [cpu]\nthreads = 2\n\
             [tenants.overrides.small]\nmax_concurrent = 1\nmemory_quota_mb = 1\n",
        )
        .expect("the harness's configuration is valid");
        let cpu = CpuBackend::new(&cfg).expect("the CPU backend opens");
        let bridge = GpuBridge::builder(cfg)
            .kernel(VectorAdd)
            .and_then(|b| b.kernel(Saxpy))
            .and_then(|b| b.kernel(Sum))
            .and_then(|b| b.kernel(MatMul))
            .and_then(|b| b.kernel(ConnectedComponents::default()))
            .expect("the built-in kernels register")
            .backend(cpu)
            .build()
            .expect("the bridge builds");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime starts");
        Harness { rt, bridge }
    })
}

/// A float that is often special.
fn float(u: &mut Unstructured<'_>) -> AResult<f32> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => -0.0,
        4 => f32::MAX,
        5 => f32::MIN_POSITIVE / 2.0,
        _ => f32::from_bits(u.arbitrary()?),
    })
}

fn floats(u: &mut Unstructured<'_>) -> AResult<Vec<f32>> {
    let len = u.int_in_range(0usize..=64)?;
    (0..len).map(|_| float(u)).collect()
}

/// A declared length: usually small, sometimes not matching anything.
fn dim(u: &mut Unstructured<'_>) -> AResult<usize> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => usize::MAX,
        1 => u.arbitrary::<u32>()? as usize,
        2 => 1 << 33,
        _ => u.int_in_range(0usize..=9)?,
    })
}

fn hints(u: &mut Unstructured<'_>) -> AResult<ExecutionHints> {
    let mut h = ExecutionHints {
        prefer: *u.choose(&[Preference::Auto, Preference::Cpu, Preference::Gpu])?,
        priority: *u.choose(&[Priority::Low, Priority::Normal, Priority::High])?,
        ..ExecutionHints::default()
    };
    if u.ratio(1, 4)? {
        h.max_micro_batch = Some(u.int_in_range(0usize..=5)?);
    }
    if u.ratio(1, 8)? {
        h.preferred_device = Some(u.int_in_range(0usize..=3)?);
    }
    if u.ratio(1, 6)? {
        h.timeout = Some(Duration::from_micros(u.int_in_range(0u64..=2000)?));
    }
    if u.ratio(1, 4)? {
        h.tenant = Some((*u.choose(&["small", "free", ""])?).to_owned());
    }
    h.persistent = u.arbitrary()?;
    Ok(h)
}

fn items<T>(
    u: &mut Unstructured<'_>,
    mut one: impl FnMut(&mut Unstructured<'_>) -> AResult<T>,
) -> AResult<Vec<T>> {
    let n = u.int_in_range(0usize..=8)?;
    (0..n).map(|_| one(u)).collect()
}

/// Runs `inputs` as a batch (or, with `single`, each as a single request) and checks the answers.
fn run<K: Kernel>(inputs: Vec<K::Input>, hints: ExecutionHints, single: bool) {
    let h = harness();
    let n = inputs.len();
    if single {
        let grain = &h.bridge;
        h.rt.block_on(async {
            let answers = inputs
                .into_iter()
                .map(|i| grain.single::<K>(i, hints.clone()));
            // Each answer is Ok or a typed error; a panic would have aborted.
            let answers = futures::future::join_all(answers).await;
            assert_eq!(answers.len(), n, "one answer per request");
        });
    } else {
        let grain = h.bridge.batch::<K>().expect("registered kernel");
        match h.rt.block_on(grain.execute(inputs, hints)) {
            Ok(r) => assert_eq!(r.outputs.len(), n, "one output per item"),
            Err(e) => {
                let _ = e.class();
            }
        }
    }
    gpubridge_core::testing::assert_quiescent(&h.bridge);
}

fn one(u: &mut Unstructured<'_>) -> AResult<()> {
    let kernel = u.int_in_range(0u8..=4)?;
    let single = u.ratio(1, 4)?;
    let hints = hints(u)?;
    match kernel {
        0 => {
            let inputs = items(u, |u| {
                Ok(VectorPair {
                    a: floats(u)?,
                    b: floats(u)?,
                })
            })?;
            run::<VectorAdd>(inputs, hints, single);
        }
        1 => {
            let inputs = items(u, |u| {
                Ok(SaxpyInput {
                    alpha: float(u)?,
                    x: floats(u)?,
                    y: floats(u)?,
                })
            })?;
            run::<Saxpy>(inputs, hints, single);
        }
        2 => {
            let inputs = items(u, floats)?;
            run::<Sum>(inputs, hints, single);
        }
        3 => {
            let inputs = items(u, |u| {
                let (mut m, k, mut n) = (dim(u)?, dim(u)?, dim(u)?);
                // With `k = 0` any `m x n` is valid with no data, and its output is really
                // allocated: outputs that could fit in memory are kept to 16 MiB here so that a
                // run does not measure the machine's memory. Larger ones stay only where they
                // cannot fit anywhere (the `OutOfMemory` path) or overflow (`InvalidInput`).
                if m.checked_mul(n)
                    .is_some_and(|c| c > 1 << 22 && c <= isize::MAX as usize / 4)
                {
                    (m, n) = (m.min(1 << 22), 1);
                }
                Ok(MatMulInput {
                    m,
                    k,
                    n,
                    a: floats(u)?,
                    b: floats(u)?,
                })
            })?;
            run::<MatMul>(inputs, hints, single);
        }
        _ => {
            let inputs = items(u, |u| {
                // A graph's node count is a declared size the kernel allocates labels for; it is
                // kept to 2^20 here so that a run does not measure the machine's memory (see
                // docs/SECURITY.md).
                let nodes = u.int_in_range(0usize..=1 << 20)?;
                let len = u.int_in_range(0usize..=64)?;
                let edges = (0..len)
                    .map(|_| {
                        let pick = |u: &mut Unstructured<'_>| -> AResult<u32> {
                            Ok(if u.ratio(1, 8)? {
                                u.arbitrary()?
                            } else {
                                u.int_in_range(0u32..=(nodes as u32).saturating_add(1))?
                            })
                        };
                        Ok([pick(u)?, pick(u)?])
                    })
                    .collect::<AResult<Vec<_>>>()?;
                Ok(Graph { nodes, edges })
            })?;
            run::<ConnectedComponents>(inputs, hints, single);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = one(&mut u);
});
