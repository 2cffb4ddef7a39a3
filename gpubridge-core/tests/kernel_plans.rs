//! The built-in kernels' device forms without a device: the plans they make for each target
//! (launches, library steps, pipelined stages, and every size they refuse, by variant), and their
//! unpacking of device outputs, the donating form checked against the plain one and against the
//! CPU reference on outputs laid out as the plan's own arguments place them.

use std::sync::Arc;

use gpubridge_core::kernels::{
    MatMul, MatMulInput, Matrix, Saxpy, SaxpyInput, VectorAdd, VectorPair,
};
use gpubridge_core::plan::{Arg, BufferId, BufferRole, ExecStats, Step};
use gpubridge_core::{BackendKind, CpuContext, Error, Kernel, Plan, PlanOutputs, PlanTarget};

fn wgsl() -> PlanTarget {
    PlanTarget::Wgsl {
        max_workgroups_per_dim: 65_535,
        max_storage_buffer_bytes: 1 << 30,
    }
}

fn cuda(blas: bool) -> PlanTarget {
    PlanTarget::Cuda {
        compute_capability: (9, 0),
        blas,
        max_grid_yz: 65_535,
    }
}

/// Deterministic values, distinct per seed, exact in f32.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 - 1000.0)
        .collect()
}

fn as_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// The single output buffer of `plan`, filled as a device would leave it: `place(bytes)` writes
/// the results in, everything else zero.
fn outputs_of(plan: &Plan, place: impl FnOnce(&mut [u8])) -> (BufferId, Vec<u8>) {
    let ids = plan.output_ids();
    assert_eq!(ids.len(), 1, "one output buffer");
    let mut bytes = vec![0u8; plan.buffers[ids[0].0 as usize].len];
    place(&mut bytes);
    (ids[0], bytes)
}

fn vector_pairs(lens: &[usize]) -> Vec<VectorPair> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| VectorPair {
            a: values(n, 2 * i as u32),
            b: values(n, 2 * i as u32 + 1),
        })
        .collect()
}

/// Unpacks VectorAdd outputs (the CPU reference, concatenated) both ways and checks both against
/// the reference; the donating form must hand back the inputs' own allocations.
fn check_vector_add_unpack(lens: &[usize]) {
    let ctx = CpuContext::new(2).unwrap();
    let inputs = vector_pairs(lens);
    let want = VectorAdd.run_cpu(&inputs, &ctx).unwrap();
    let shared: Arc<[VectorPair]> = Arc::from(inputs.clone());
    let plan = VectorAdd.plan(&shared, &wgsl()).unwrap();
    plan.check().unwrap();
    let (id, bytes) = outputs_of(&plan, |b| b.copy_from_slice(&as_bytes(&want.concat())));
    let outs = PlanOutputs::new(vec![id], vec![&bytes[..]], ExecStats::default());
    assert_eq!(VectorAdd.unpack(&inputs, &outs).unwrap(), want);

    let mut donated = inputs.clone();
    let donors: Vec<*const f32> = donated.iter().map(|p| p.a.as_ptr()).collect();
    let got = VectorAdd.unpack_donated(&mut donated, &outs).unwrap();
    assert_eq!(got, want);
    for (i, (o, d)) in got.iter().zip(&donors).enumerate() {
        if !o.is_empty() {
            assert_eq!(o.as_ptr(), *d, "item {i}: its `a` allocation was reused");
        }
    }
    assert!(
        donated.iter().all(|p| p.a.is_empty()),
        "the donors were taken"
    );
}

#[test]
fn vector_add_unpacks_donated_inputs_in_place_small_and_large() {
    check_vector_add_unpack(&[0, 1, 1001, 7]);
    // Past the parallel-copy threshold (2^18 elements), over several items.
    check_vector_add_unpack(&[(1 << 18) + 5, 3, 1 << 17]);
}

#[test]
fn vector_add_plans_no_launch_for_empty_vectors() {
    let inputs: Arc<[VectorPair]> = Arc::from(vector_pairs(&[0, 0]));
    for target in [wgsl(), cuda(false)] {
        let plan = VectorAdd.plan(&inputs, &target).unwrap();
        assert!(plan.steps.is_empty(), "{target:?}: {:?}", plan.steps);
        assert_eq!(plan.device_bytes(), 0);
        plan.check().unwrap();
    }
}

#[test]
fn short_device_outputs_are_refused_before_any_input_is_touched() {
    let inputs = vector_pairs(&[10, 20]);
    let short = as_bytes(&[0.0; 29]);
    let outs = PlanOutputs::new(vec![BufferId(2)], vec![&short[..]], ExecStats::default());
    let mut donated = inputs.clone();
    let e = VectorAdd.unpack_donated(&mut donated, &outs).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { kernel, index: None, reason } if kernel == VectorAdd::ID && reason.contains("29 of 30")),
        "{e:?}"
    );
    assert_eq!(
        donated, inputs,
        "a refused unpack leaves the inputs as they were"
    );

    let saxpy = vec![SaxpyInput {
        alpha: 2.0,
        x: vec![1.0; 8],
        y: vec![1.0; 8],
    }];
    let mut donated = saxpy.clone();
    let outs = PlanOutputs::new(
        vec![BufferId(3)],
        vec![&short[..7 * 4]],
        ExecStats::default(),
    );
    let e = Saxpy.unpack_donated(&mut donated, &outs).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { kernel, .. } if kernel == Saxpy::ID),
        "{e:?}"
    );
    assert_eq!(donated, saxpy);

    let mm = vec![MatMulInput {
        m: 4,
        k: 1,
        n: 4,
        a: vec![1.0; 4],
        b: vec![1.0; 4],
    }];
    let mut donated = mm.clone();
    let outs = PlanOutputs::new(
        vec![BufferId(2)],
        vec![&short[..15 * 4]],
        ExecStats::default(),
    );
    let e = MatMul.unpack_donated(&mut donated, &outs).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { kernel, reason, .. } if kernel == MatMul::ID && reason.contains("15 floats, 16 needed")),
        "{e:?}"
    );
    assert_eq!(donated, mm);

    // An output buffer the backend did not return at all: a backend error, not a panic.
    let outs = PlanOutputs::new(vec![BufferId(9)], vec![&short[..]], ExecStats::default());
    for e in [
        VectorAdd
            .unpack_donated(&mut inputs.clone(), &outs)
            .unwrap_err(),
        Saxpy.unpack_donated(&mut saxpy.clone(), &outs).unwrap_err(),
        MatMul.unpack_donated(&mut mm.clone(), &outs).unwrap_err(),
    ] {
        assert!(matches!(e, Error::Backend { .. }), "{e:?}");
    }
}

fn check_saxpy_unpack(lens: &[usize]) {
    let ctx = CpuContext::new(2).unwrap();
    let inputs: Vec<SaxpyInput> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| SaxpyInput {
            alpha: i as f32 - 1.5,
            x: values(n, 3 * i as u32),
            y: values(n, 3 * i as u32 + 1),
        })
        .collect();
    let want = Saxpy.run_cpu(&inputs, &ctx).unwrap();
    for target in [wgsl(), cuda(true)] {
        let shared: Arc<[SaxpyInput]> = Arc::from(inputs.clone());
        let plan = Saxpy.plan(&shared, &target).unwrap();
        plan.check().unwrap();
        let total: usize = lens.iter().sum();
        match plan.steps.as_slice() {
            [] => assert_eq!(total, 0),
            [Step::Launch(l)] => {
                assert_eq!(l.entry, "saxpy");
                assert_eq!(l.args.last(), Some(&Arg::U32(lens.len() as u32)));
                assert!(l.grid[1] >= 1 && l.grid[1] as usize <= lens.len().max(1));
            }
            other => panic!("one launch expected, got {other:?}"),
        }
        check_offsets(&plan, lens, &target);
        let (id, bytes) = outputs_of(&plan, |b| b.copy_from_slice(&as_bytes(&want.concat())));
        assert_eq!(id, BufferId(3));
        let outs = PlanOutputs::new(vec![id], vec![&bytes[..]], ExecStats::default());
        assert_eq!(Saxpy.unpack(&inputs, &outs).unwrap(), want);
        let mut donated = inputs.clone();
        let donors: Vec<*const f32> = donated.iter().map(|s| s.y.as_ptr()).collect();
        let got = Saxpy.unpack_donated(&mut donated, &outs).unwrap();
        assert_eq!(got, want);
        for (o, d) in got.iter().zip(&donors) {
            if !o.is_empty() {
                assert_eq!(o.as_ptr(), *d, "the `y` allocation was reused");
            }
        }
    }
}

/// The segment offsets input holds the prefix sums of the lengths, as `u64` for CUDA and `u32`
/// for WGSL (which has no 64-bit integers).
fn check_offsets(plan: &Plan, lens: &[usize], target: &PlanTarget) {
    let buf = plan
        .buffers
        .iter()
        .find(|b| b.name == "offsets")
        .expect("an offsets input");
    let BufferRole::Input(pack) = &buf.role else {
        panic!("offsets is an input, not {:?}", buf.role)
    };
    let mut bytes = vec![0xffu8; buf.len];
    pack(&mut bytes, 0);
    let mut want = vec![0u64];
    for l in lens {
        want.push(want.last().unwrap() + *l as u64);
    }
    let got: Vec<u64> = match target {
        PlanTarget::Cuda { .. } => bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect(),
        PlanTarget::Wgsl { .. } => bytes
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_ne_bytes(c.try_into().unwrap())))
            .collect(),
    };
    assert_eq!(got, want, "{target:?}");
    // A packer fills any window of its buffer the same way.
    if buf.len > 4 {
        let mut tail = vec![0xffu8; buf.len - 4];
        pack(&mut tail, 4);
        assert_eq!(tail, bytes[4..]);
    }
}

#[test]
fn saxpy_plans_one_launch_and_unpacks_donated_inputs_in_place() {
    check_saxpy_unpack(&[0, 1, 513, 4]);
    check_saxpy_unpack(&[(1 << 18) + 1, 1 << 16]);
    check_saxpy_unpack(&[]);
}

fn matmul_inputs(shapes: &[(usize, usize, usize)]) -> Vec<MatMulInput> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, &(m, k, n))| MatMulInput {
            m,
            k,
            n,
            a: values(m * k, 5 * i as u32)
                .iter()
                .map(|v| v / 64.0)
                .collect(),
            b: values(k * n, 5 * i as u32 + 1)
                .iter()
                .map(|v| v / 64.0)
                .collect(),
        })
        .collect()
}

/// Lays the reference products out where the plan's launches write them (their `c` offsets).
fn matmul_outputs(plan: &Plan, inputs: &[MatMulInput], want: &[Matrix]) -> (BufferId, Vec<u8>) {
    let mut offsets = plan.steps.iter().map(|s| match s {
        Step::Launch(l) => match l.args[2] {
            Arg::Buffer { offset, .. } => offset,
            other => panic!("c is a buffer, got {other:?}"),
        },
        Step::Gemm(g) => panic!("a WGSL plan has no library step: {g:?}"),
    });
    outputs_of(plan, |bytes| {
        for (x, c) in inputs.iter().zip(want) {
            if x.m == 0 || x.n == 0 {
                continue;
            }
            let at = offsets.next().expect("one launch per non-empty product");
            let data = as_bytes(&c.data);
            bytes[at..at + data.len()].copy_from_slice(&data);
        }
    })
}

#[test]
fn matmul_unpacks_donated_operands_and_fresh_memory_alike() {
    let ctx = CpuContext::new(2).unwrap();
    // (2, 1, 300): c is larger than both operands, so it cannot reuse either; (300, 2, 1) and
    // (1, 300, 2): c fits in `a` or in `b`; (513, 513, 513): a product past the parallel-copy
    // threshold (2^18 values) reusing `a`; (600, 1, 600): one past it in fresh memory; zero
    // dimensions give empty or zero matrices.
    let shapes = [
        (2, 1, 300),
        (300, 2, 1),
        (1, 300, 2),
        (0, 3, 2),
        (3, 0, 2),
        (513, 513, 513),
        (600, 1, 600),
    ];
    let inputs = matmul_inputs(&shapes);
    let want = MatMul.run_cpu(&inputs, &ctx).unwrap();
    let shared: Arc<[MatMulInput]> = Arc::from(inputs.clone());
    let plan = MatMul.plan(&shared, &wgsl()).unwrap();
    plan.check().unwrap();
    let (id, bytes) = matmul_outputs(&plan, &inputs, &want);
    let outs = PlanOutputs::new(vec![id], vec![&bytes[..]], ExecStats::default());
    let plain = MatMul.unpack(&inputs, &outs).unwrap();
    let mut donated = inputs.clone();
    let got = MatMul.unpack_donated(&mut donated, &outs).unwrap();
    for (i, ((p, g), w)) in plain.iter().zip(&got).zip(&want).enumerate() {
        assert_eq!((p.rows, p.cols), (w.rows, w.cols), "item {i}");
        assert_eq!(p.data, w.data, "item {i}: unpack");
        assert_eq!((g.rows, g.cols), (w.rows, w.cols), "item {i}");
        assert_eq!(g.data, w.data, "item {i}: unpack_donated");
    }
    // Each operand pair gave up the larger of its vectors.
    for (i, (x, d)) in inputs.iter().zip(&donated).enumerate() {
        let (a_taken, b_taken) = (d.a.is_empty(), d.b.is_empty());
        if x.a.len() >= x.b.len() {
            assert!(a_taken && d.b == x.b, "item {i}");
        } else {
            assert!(b_taken && d.a == x.a, "item {i}");
        }
    }
}

#[test]
fn matmul_with_a_blas_pipelines_large_products_in_staged_row_blocks() {
    // 2048 x 4096 x 4: `a` alone is 32 MiB, past the 32 MiB a product must move to be staged.
    let (m, k, n) = (2048usize, 4096usize, 4usize);
    let big = MatMulInput {
        m,
        k,
        n,
        a: vec![0.0; m * k],
        b: vec![0.0; k * n],
    };
    let small = MatMulInput {
        m: 3,
        k: 2,
        n: 5,
        a: vec![1.0; 6],
        b: vec![1.0; 10],
    };
    let inputs: Arc<[MatMulInput]> = Arc::from(vec![small, big]);
    let plan = MatMul.plan(&inputs, &cuda(true)).unwrap();
    plan.check().unwrap();
    let gemms: Vec<_> = plan
        .steps
        .iter()
        .map(|s| match s {
            Step::Gemm(g) => *g,
            Step::Launch(l) => panic!("a BLAS target multiplies with library steps, got {l:?}"),
        })
        .collect();
    // The small product is one step; the large one is row blocks of a multiple of 64 rows.
    assert_eq!((gemms[0].m, gemms[0].k, gemms[0].n), (3, 2, 5));
    let blocks = &gemms[1..];
    assert!(blocks.len() > 1, "{} blocks", blocks.len());
    assert_eq!(blocks.iter().map(|g| g.m as usize).sum::<usize>(), m);
    assert!(blocks[..blocks.len() - 1].iter().all(|g| g.m % 64 == 0));
    assert!(blocks.iter().all(|g| (g.k, g.n) == (k as u32, n as u32)));
    // Each block has a stage: it needs its rows of `a` (buffer 1) and yields its rows of `c`,
    // and the yields tile c's range of the large product without gaps.
    assert_eq!(plan.stages.len(), plan.steps.len());
    assert_eq!(plan.stage_of(0), Default::default());
    let mut expect_start = None;
    let mut needs_before = 0;
    for (i, g) in blocks.iter().enumerate() {
        let st = plan.stage_of(i + 1);
        let (need_buf, need) = st.needs.expect("a staged block needs its rows");
        assert_eq!(need_buf, BufferId(1));
        assert!(need > needs_before, "needs grow block by block");
        needs_before = need;
        let (yield_buf, range) = st.yields.expect("a staged block yields its rows");
        assert_eq!(yield_buf, BufferId(2));
        assert_eq!(range.len(), 4 * g.m as usize * n);
        if let Some(s) = expect_start {
            assert_eq!(range.start, s);
        }
        expect_start = Some(range.end);
        let Arg::Buffer { offset, .. } = g.c else {
            panic!("c is a buffer")
        };
        assert_eq!(offset, range.start, "block {i} writes what it yields");
    }

    // Without a BLAS the same product is one tiled launch per product, unstaged.
    let plan = MatMul.plan(&inputs, &cuda(false)).unwrap();
    assert!(plan
        .steps
        .iter()
        .all(|s| matches!(s, Step::Launch(l) if l.entry == "matmul_f32")));
    assert_eq!(plan.steps.len(), 2);
    assert!(plan.stages.is_empty());
}

#[test]
fn matmul_refuses_shapes_no_target_can_hold() {
    // c = m x n overflows even though a and b (k = 0) are empty: the caller's input is wrong.
    let overflow = MatMulInput {
        m: usize::MAX / 2,
        k: 0,
        n: 3,
        a: Vec::new(),
        b: Vec::new(),
    };
    let e = MatMul.validate(4, &overflow).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { index: Some(4), reason, .. } if reason.contains("c shape")),
        "{e:?}"
    );

    // m x n fits a usize but its bytes do not fit the address space: no target can run it.
    let huge = MatMulInput {
        m: 1 << 31,
        k: 0,
        n: 1 << 31,
        a: Vec::new(),
        b: Vec::new(),
    };
    MatMul.validate(0, &huge).unwrap();
    for target in [wgsl(), cuda(true)] {
        let e = MatMul
            .plan(&Arc::from(vec![huge.clone()]), &target)
            .unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { backend, what } if *backend == target.backend() && what.contains("address space")),
            "{e:?}"
        );
    }

    // A dimension past u32 (k = 0, so no data): the device forms index with 32-bit integers.
    let tall = MatMulInput {
        m: 1 << 32,
        k: 0,
        n: 1,
        a: Vec::new(),
        b: Vec::new(),
    };
    let e = MatMul
        .plan(&Arc::from(vec![tall]), &cuda(false))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { backend: BackendKind::Cuda, what } if what.contains("exceeds u32")),
        "{e:?}"
    );

    let inputs: Arc<[MatMulInput]> = Arc::from(matmul_inputs(&[(40, 8, 40)]));
    // An adapter whose storage bindings cannot hold the operands.
    let tiny = PlanTarget::Wgsl {
        max_workgroups_per_dim: 65_535,
        max_storage_buffer_bytes: 1024,
    };
    let e = MatMul.plan(&inputs, &tiny).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { backend: BackendKind::Wgpu, what } if what.contains("storage binding limit")),
        "{e:?}"
    );
    // An adapter with too few workgroups per dimension for 40 / 16 = 3 tiles.
    let narrow = PlanTarget::Wgsl {
        max_workgroups_per_dim: 2,
        max_storage_buffer_bytes: 1 << 30,
    };
    let e = MatMul.plan(&inputs, &narrow).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { backend: BackendKind::Wgpu, what } if what.contains("tiles per dimension")),
        "{e:?}"
    );
    // Three tiles are allowed at three.
    let three = PlanTarget::Wgsl {
        max_workgroups_per_dim: 3,
        max_storage_buffer_bytes: 1 << 30,
    };
    let plan = MatMul.plan(&inputs, &three).unwrap();
    assert!(matches!(&plan.steps[..], [Step::Launch(l)] if l.grid == [3, 3, 1]));
}

/// A kernel with only a CPU form: the trait's defaults refuse device plans and unpacking.
struct CpuOnly;

impl Kernel for CpuOnly {
    type Input = u32;
    type Output = u32;
    const ID: &'static str = "tests/cpu_only";

    fn validate(&self, _index: usize, _input: &u32) -> gpubridge_core::Result<()> {
        Ok(())
    }

    fn device_bytes(&self, _input: &u32) -> usize {
        4
    }

    fn run_cpu(&self, inputs: &[u32], _ctx: &CpuContext) -> gpubridge_core::Result<Vec<u32>> {
        Ok(inputs.iter().map(|x| x * 2).collect())
    }
}

#[test]
fn a_kernel_without_device_forms_is_unsupported_on_every_target() {
    assert_eq!(CpuOnly.sources(), Default::default());
    let inputs: Arc<[u32]> = Arc::from(vec![1, 2]);
    for target in [wgsl(), cuda(true)] {
        let e = CpuOnly.plan(&inputs, &target).unwrap_err();
        match e {
            Error::Unsupported { backend, what } => {
                assert_eq!(backend, target.backend());
                assert!(what.contains("tests/cpu_only has no"), "{what}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    let outs = PlanOutputs::new(Vec::new(), Vec::new(), ExecStats::default());
    for e in [
        CpuOnly.unpack(&inputs, &outs).unwrap_err(),
        CpuOnly.unpack_donated(&mut [1, 2], &outs).unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::Unsupported { what, .. } if what.contains("no device form")),
            "{e:?}"
        );
    }
    let ctx = CpuContext::new(1).unwrap();
    assert_eq!(
        CpuOnly.run_cpu_donated(&mut [3, 4], &ctx).unwrap(),
        vec![6, 8]
    );
}
