//! Batch semantics: validation errors by variant, empty batches, splitting and re-assembly.

use futures::executor::block_on;
use gpubridge_core::kernels::{MatMul, MatMulInput, Saxpy, SaxpyInput, Sum, VectorAdd, VectorPair};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge};

fn bridge(config: BridgeConfig, budget: Option<u64>) -> GpuBridge {
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).unwrap();
    b.register(Sum).unwrap();
    b.register(Saxpy).unwrap();
    b.register(MatMul).unwrap();
    b.add_backend(FaultInjectingBackend::with_budget(BackendKind::Cpu, 1, budget).unwrap());
    b.build().unwrap()
}

#[test]
fn empty_batch_gives_empty_result_without_running() {
    let b = bridge(BridgeConfig::default(), None);
    let r = block_on(
        b.batch::<VectorAdd>()
            .unwrap()
            .execute(Vec::new(), ExecutionHints::default()),
    )
    .unwrap();
    assert!(r.outputs.is_empty());
    assert!(r.chunks.is_empty());
    assert_eq!(r.backend(), None);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn unequal_vector_lengths_are_invalid_input_naming_the_item() {
    let b = bridge(BridgeConfig::default(), None);
    let batch = vec![
        VectorPair {
            a: vec![1.0],
            b: vec![2.0],
        },
        VectorPair {
            a: vec![1.0, 2.0],
            b: vec![2.0],
        },
    ];
    let err = block_on(
        b.batch::<VectorAdd>()
            .unwrap()
            .execute(batch, ExecutionHints::default()),
    )
    .unwrap_err();
    match &err {
        Error::InvalidInput { kernel, index, .. } => {
            assert_eq!(kernel, "kernels/vector/add");
            assert_eq!(*index, Some(1));
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let err = block_on(b.batch::<Saxpy>().unwrap().execute(
        vec![SaxpyInput {
            alpha: 1.0,
            x: vec![1.0; 3],
            y: vec![1.0; 4],
        }],
        ExecutionHints::default(),
    ))
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { index: Some(0), .. }),
        "{err:?}"
    );
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn mismatched_matrix_shapes_are_invalid_input() {
    let b = bridge(BridgeConfig::default(), None);
    let bad = [
        MatMulInput {
            m: 2,
            k: 3,
            n: 2,
            a: vec![0.0; 5],
            b: vec![0.0; 6],
        },
        MatMulInput {
            m: 2,
            k: 3,
            n: 2,
            a: vec![0.0; 6],
            b: vec![0.0; 7],
        },
        MatMulInput {
            m: usize::MAX,
            k: 2,
            n: 1,
            a: vec![],
            b: vec![0.0; 2],
        },
    ];
    for x in bad {
        let err = block_on(
            b.batch::<MatMul>()
                .unwrap()
                .execute(vec![x], ExecutionHints::default()),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { index: Some(0), .. }),
            "{err:?}"
        );
    }
    gpubridge_core::testing::assert_quiescent(&b);
}

/// `k = 0` makes any `m x n` product valid with no data; one larger than memory can ever be is
/// refused with the CPU's `OutOfMemory` as the reason, not an aborted process (found by the batch_decode fuzz target).
#[test]
fn a_product_larger_than_memory_is_out_of_memory() {
    let b = bridge(BridgeConfig::default(), None);
    // 2^63 bytes of output; and 3 * 2^62 values, whose byte count overflowed while the batch
    // was split (a panic with overflow checks, a wrong budget without).
    for (m, n) in [(1usize << 40, 1usize << 21), (1 << 62, 3)] {
        let x = MatMulInput {
            m,
            k: 0,
            n,
            a: vec![],
            b: vec![],
        };
        let err = block_on(
            b.batch::<MatMul>()
                .unwrap()
                .execute(vec![x], ExecutionHints::default()),
        )
        .unwrap_err();
        // Every backend was tried: the CPU's out-of-memory is the recorded reason.
        match &err {
            Error::NoBackendAvailable { attempts, .. } => assert!(
                attempts
                    .iter()
                    .any(|(k, why)| *k == BackendKind::Cpu && why.starts_with("out of memory")),
                "{err:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn unknown_kernel_and_wrong_types_are_typed_errors() {
    let b = bridge(BridgeConfig::default(), None);
    match b.batch_by_id::<Vec<f32>, f32>("kernels/does/not/exist") {
        Err(Error::UnknownKernel { id, registered }) => {
            assert_eq!(id, "kernels/does/not/exist");
            assert!(registered.contains("kernels/sum"));
        }
        other => panic!("expected UnknownKernel, got {other:?}"),
    }
    assert!(matches!(
        b.batch_by_id::<Vec<f32>, f64>("kernels/sum"),
        Err(Error::KernelTypeMismatch { .. })
    ));
    let ok = b.batch_by_id::<Vec<f32>, f32>("kernels/sum").unwrap();
    let r = block_on(ok.execute(vec![vec![1.0, 2.0]], ExecutionHints::default())).unwrap();
    assert_eq!(r.outputs, vec![3.0]);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn duplicate_registration_is_rejected() {
    let mut b = GpuBridge::builder(BridgeConfig::default());
    b.register(Sum).unwrap();
    assert!(matches!(b.register(Sum), Err(Error::InvalidInput { .. })));
}

#[test]
fn batch_over_max_micro_batch_is_split_and_reassembled_in_order() {
    let mut cfg = BridgeConfig::default();
    cfg.batching.max_micro_batch = 3;
    let b = bridge(cfg, None);
    let batch: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32, 0.5]).collect();
    let r = block_on(
        b.batch::<Sum>()
            .unwrap()
            .execute(batch, ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(
        r.outputs,
        (0..10).map(|i| i as f32 + 0.5).collect::<Vec<_>>()
    );
    assert_eq!(
        r.chunks.iter().map(|c| c.items).collect::<Vec<_>>(),
        [3, 3, 3, 1]
    );
    assert_eq!(
        r.chunks.iter().map(|c| c.first_item).collect::<Vec<_>>(),
        [0, 3, 6, 9]
    );
    // A hint lowers the limit further.
    let batch: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32]).collect();
    let r = block_on(
        b.batch::<Sum>()
            .unwrap()
            .execute(batch, ExecutionHints::default().max_micro_batch(5)),
    )
    .unwrap();
    assert_eq!(
        r.chunks.len(),
        4,
        "the configured 3 is lower than the hint's 5"
    );
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn batch_larger_than_device_memory_budget_is_split() {
    // Each pair of 1000 floats needs 12 000 device bytes; a 30 000-byte budget fits two.
    let b = bridge(BridgeConfig::default(), Some(30_000));
    let batch: Vec<VectorPair> = (0..7)
        .map(|i| VectorPair {
            a: vec![i as f32; 1000],
            b: vec![1.0; 1000],
        })
        .collect();
    let r = block_on(
        b.batch::<VectorAdd>()
            .unwrap()
            .execute(batch, ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(
        r.chunks.iter().map(|c| c.items).collect::<Vec<_>>(),
        [2, 2, 2, 1]
    );
    for (i, o) in r.outputs.iter().enumerate() {
        assert!(o.iter().all(|v| *v == i as f32 + 1.0));
    }
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn timeout_hint_is_enforced() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = bridge(BridgeConfig::default(), None);
    // A zero deadline passes before any work can complete.
    let err = rt
        .block_on(b.batch::<Sum>().unwrap().execute(
            vec![vec![1.0; 1 << 20]; 64],
            ExecutionHints::default().timeout(std::time::Duration::ZERO),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // The bridge is undisturbed.
    let r = rt
        .block_on(
            b.batch::<Sum>()
                .unwrap()
                .execute(vec![vec![2.0]], ExecutionHints::default()),
        )
        .unwrap();
    assert_eq!(r.outputs, vec![2.0]);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn cpu_results_reuse_the_donated_inputs_memory() {
    let b = bridge(BridgeConfig::default(), None);
    let batch: Vec<VectorPair> = (0..4)
        .map(|p| VectorPair {
            a: (0..300_000).map(|i| (i % 97) as f32 + p as f32).collect(),
            b: (0..300_000).map(|i| (i % 89) as f32 * 0.5).collect(),
        })
        .collect();
    let expected: Vec<Vec<f32>> = batch
        .iter()
        .map(|p| p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect())
        .collect();
    let donors: Vec<usize> = batch.iter().map(|p| p.a.as_ptr() as usize).collect();
    let r = block_on(
        b.batch::<VectorAdd>()
            .unwrap()
            .execute(batch, ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(r.outputs, expected);
    let reused: Vec<usize> = r.outputs.iter().map(|o| o.as_ptr() as usize).collect();
    assert_eq!(reused, donors, "each sum was computed in place in its `a`");
    gpubridge_core::testing::assert_quiescent(&b);
}

/// A kernel whose donated CPU form changes its inputs and then fails.
struct Clobber;

impl gpubridge_core::Kernel for Clobber {
    type Input = Vec<f32>;
    type Output = f32;
    const ID: &'static str = "test/clobber";

    fn validate(&self, _index: usize, _input: &Vec<f32>) -> gpubridge_core::Result<()> {
        Ok(())
    }
    fn device_bytes(&self, input: &Vec<f32>) -> usize {
        4 * input.len()
    }
    fn run_cpu(
        &self,
        inputs: &[Vec<f32>],
        _ctx: &gpubridge_core::CpuContext,
    ) -> gpubridge_core::Result<Vec<f32>> {
        Ok(inputs.iter().map(|v| v.iter().sum()).collect())
    }
    fn run_cpu_donated(
        &self,
        inputs: &mut [Vec<f32>],
        _ctx: &gpubridge_core::CpuContext,
    ) -> gpubridge_core::Result<Vec<f32>> {
        inputs.iter_mut().for_each(Vec::clear);
        Err(Error::Backend {
            backend: BackendKind::Cpu,
            message: "failed after reusing its inputs".to_owned(),
            transient: true,
        })
    }
}

#[test]
fn a_donated_run_that_fails_is_not_retried_with_its_changed_inputs() {
    let mut builder = GpuBridge::builder(BridgeConfig::default());
    builder.register(Clobber).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 2).unwrap();
    builder.add_backend(backend.clone());
    let b = builder.build().unwrap();
    let err = block_on(
        b.batch::<Clobber>()
            .unwrap()
            .execute(vec![vec![1.0, 2.0], vec![3.0]], ExecutionHints::default()),
    )
    .unwrap_err();
    match &err {
        Error::Backend { message, .. } => {
            assert!(message.contains("cannot be retried"), "{message}");
            assert!(message.contains("failed after reusing"), "{message}");
        }
        other => panic!("expected Backend, got {other:?}"),
    }
    assert_eq!(
        backend.submissions(),
        1,
        "the second device never saw the clobbered inputs"
    );
    gpubridge_core::testing::assert_quiescent(&b);
}
