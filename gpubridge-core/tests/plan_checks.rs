//! Plans as backends receive them: the consistency check refuses every malformed plan by variant
//! before a device is touched, buffers keep their roles, shapes bucket what may share a graph,
//! and the outputs handed back are found by id, in any alignment.

use std::sync::Arc;

use gpubridge_core::plan::{
    Arg, BufferId, BufferRole, Concat, ExecStats, Gemm, Launch, Stage, Step,
};
use gpubridge_core::{BackendKind, Error, Plan, PlanOutputs, PlanTarget};

fn base() -> (Plan, BufferId, BufferId, BufferId) {
    let mut p = Plan::new("tests/plan");
    let a = p.input("a", 64, |dst, _| dst.fill(1));
    let s = p.scratch("tmp", 32);
    let out = p.output("out", 64);
    (p, a, s, out)
}

/// [`base`] with one launch reading `a` and writing `out`; returns the plan, `a` and `out`.
fn launched() -> (Plan, BufferId, BufferId) {
    let (mut p, a, _, out) = base();
    p.launch(Launch::new(
        "k",
        [1, 1, 1],
        [1, 1, 1],
        &[Arg::buf(a), Arg::buf(out)],
    ));
    (p, a, out)
}

fn refused(p: &Plan, want: &str) {
    match p.check() {
        Err(Error::InvalidInput {
            kernel,
            index: None,
            reason,
        }) => {
            assert_eq!(kernel, "tests/plan");
            assert!(reason.contains(want), "{reason:?} lacks {want:?}");
        }
        other => panic!("expected InvalidInput({want}), got {other:?}"),
    }
}

#[test]
fn buffers_keep_their_roles_and_outputs_are_listed_in_order() {
    let (mut p, a, s, out) = base();
    let out2 = p.output("out2", 8);
    assert_eq!(
        (a, s, out, out2),
        (BufferId(0), BufferId(1), BufferId(2), BufferId(3))
    );
    assert_eq!(p.output_ids(), vec![out, out2]);
    assert_eq!(p.device_bytes(), 64 + 32 + 64 + 8);
    let roles: Vec<String> = p.buffers.iter().map(|b| format!("{:?}", b.role)).collect();
    assert_eq!(roles, ["Input", "Scratch", "Output", "Output"]);
    assert!(matches!(p.buffers[1].role, BufferRole::Scratch));
    assert_eq!(p.buffers[1].name, "tmp");
    // A stage before any step has nothing to describe and is dropped.
    p.stage(Stage {
        needs: Some((a, 64)),
        yields: None,
    });
    assert!(p.stages.is_empty());
    p.launch(Launch::new(
        "k",
        [1, 1, 1],
        [64, 1, 1],
        &[Arg::buf(a), Arg::buf(s), Arg::buf(out)],
    ));
    p.check().unwrap();
    assert_eq!(
        PlanTarget::Cuda {
            compute_capability: (8, 0),
            blas: false,
            max_grid_yz: 65_535
        }
        .backend(),
        BackendKind::Cuda
    );
}

#[test]
fn malformed_plans_are_refused_before_they_run() {
    // An argument naming a buffer the plan does not have.
    let (mut p, a, _, _) = base();
    p.launch(Launch::new(
        "k",
        [1, 1, 1],
        [1, 1, 1],
        &[Arg::buf(a), Arg::buf(BufferId(7))],
    ));
    refused(&p, "plan names buffer 7 of 3");

    // An offset past the end of its buffer (the end itself is allowed).
    let (mut p, a, _, out) = base();
    p.launch(Launch::new(
        "k",
        [1, 1, 1],
        [1, 1, 1],
        &[Arg::Buffer { id: a, offset: 64 }, Arg::buf(out)],
    ));
    p.check().unwrap();
    p.gemm(Gemm {
        m: 1,
        k: 1,
        n: 1,
        a: Arg::buf(a),
        b: Arg::buf(a),
        c: Arg::Buffer {
            id: out,
            offset: 65,
        },
    });
    refused(&p, "offset 65 past the end of buffer \"out\" (64 bytes)");

    // More stages than steps.
    let (mut p, _, _) = launched();
    p.stages = vec![Stage::default(), Stage::default()];
    refused(&p, "2 stages for 1 steps");

    // A stage yielding a range that runs backwards.
    let (mut p, _, out) = launched();
    #[allow(clippy::reversed_empty_ranges)] // The point: a range that ends before it starts.
    let backwards = 32..16;
    p.stage(Stage {
        needs: None,
        yields: Some((out, backwards)),
    });
    refused(&p, "stage yields an empty range backwards");

    // Stages naming a buffer of the wrong role, or past its end.
    for stage in [
        Stage {
            needs: Some((out, 8)),
            yields: None,
        },
        Stage {
            needs: Some((a, 65)),
            yields: None,
        },
        Stage {
            needs: None,
            yields: Some((a, 0..8)),
        },
        Stage {
            needs: None,
            yields: Some((out, 0..65)),
        },
    ] {
        let (mut p, _, _) = launched();
        p.stage(stage);
        refused(&p, "which it does not have");
    }
}

fn scalar_plan(arg: Arg) -> Plan {
    let (mut p, a, _, out) = base();
    p.launch(Launch::new(
        "k",
        [4, 1, 1],
        [64, 1, 1],
        &[Arg::buf(a), Arg::buf(out), arg],
    ));
    p
}

#[test]
fn bucketed_shapes_ignore_scalar_values_but_not_scalar_types() {
    let u64_a = scalar_plan(Arg::U64(10));
    let u64_b = scalar_plan(Arg::U64(1 << 40));
    let u32_a = scalar_plan(Arg::U32(10));
    let f32_a = scalar_plan(Arg::F32(10.0));
    assert_eq!(u64_a.bucket_shape(), u64_b.bucket_shape());
    assert_ne!(
        u64_a.shape(),
        u64_b.shape(),
        "the exact shape has the value"
    );
    assert_ne!(u64_a.bucket_shape(), u32_a.bucket_shape());
    assert_ne!(u64_a.bucket_shape(), f32_a.bucket_shape());
    assert_ne!(u32_a.bucket_shape(), f32_a.bucket_shape());
}

#[test]
fn outputs_are_found_by_id_and_read_at_any_alignment() {
    let values = [1.5f32, -2.0, 3.25, f32::INFINITY];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    // The same bytes one past a 4-byte boundary: not castable in place, so copied.
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let outs = PlanOutputs::new(
        vec![BufferId(2), BufferId(5)],
        vec![&bytes[..], &shifted[1..]],
        ExecStats::default(),
    );
    let aligned = outs.f32s(BufferId(2)).unwrap();
    let unaligned = outs.f32s(BufferId(5)).unwrap();
    assert_eq!(&*aligned, &values);
    assert_eq!(&*unaligned, &values);
    if !(shifted[1..].as_ptr() as usize).is_multiple_of(4) {
        assert!(matches!(unaligned, std::borrow::Cow::Owned(_)));
    }
    assert_eq!(outs.bytes(BufferId(5)).unwrap(), &bytes[..]);
    for e in [
        outs.bytes(BufferId(3)).unwrap_err(),
        outs.f32s(BufferId(0)).unwrap_err(),
    ] {
        match e {
            Error::Backend {
                message, transient, ..
            } => {
                assert!(message.starts_with("plan output buffer "), "{message}");
                assert!(message.ends_with(" missing"), "{message}");
                assert!(!transient);
            }
            other => panic!("expected Backend, got {other:?}"),
        }
    }

    // A backend may supply its own allocator for the unpacked vectors.
    fn roomy(n: usize) -> Vec<f32> {
        Vec::with_capacity(n + 1000)
    }
    let outs = outs.with_allocator(roomy);
    let v = (outs.allocator())(3);
    assert!(v.is_empty() && v.capacity() >= 1003);
}

#[test]
fn concatenations_know_when_they_are_empty() {
    let items: Arc<[Vec<f32>]> = Arc::from(vec![Vec::new(), Vec::new()]);
    let empty = Concat::new(items, |v: &Vec<f32>| v.as_slice());
    assert!(empty.is_empty());
    assert_eq!((empty.len(), empty.start(1)), (0, 0));
    let items: Arc<[Vec<f32>]> = Arc::from(vec![vec![1.0], Vec::new(), vec![2.0, 3.0]]);
    let c = Concat::aligned(items, |v: &Vec<f32>| v.as_slice(), 16);
    assert!(!c.is_empty());
    assert_eq!(
        (c.start(0), c.start(1), c.start(2), c.len()),
        (0, 16, 16, 32)
    );
    let mut dst = [0xffu8; 32];
    c.pack(&mut dst, 0);
    let mut want = [0u8; 32];
    want[..4].copy_from_slice(&1.0f32.to_ne_bytes());
    want[16..20].copy_from_slice(&2.0f32.to_ne_bytes());
    want[20..24].copy_from_slice(&3.0f32.to_ne_bytes());
    assert_eq!(dst, want);
    // Any window packs the same bytes as the whole.
    let mut window = [0xffu8; 10];
    c.pack(&mut window, 14);
    assert_eq!(window, want[14..24]);
}

#[test]
fn steps_record_library_calls_and_launches_as_given() {
    let (mut p, a, _, out) = base();
    let g = Gemm {
        m: 2,
        k: 4,
        n: 2,
        a: Arg::buf(a),
        b: Arg::Buffer { id: a, offset: 32 },
        c: Arg::buf(out),
    };
    p.gemm(g);
    p.stage(Stage {
        needs: Some((a, 64)),
        yields: Some((out, 0..16)),
    });
    p.check().unwrap();
    assert_eq!(p.steps.as_slice(), [Step::Gemm(g)]);
    assert_eq!(p.stage_of(0).yields, Some((out, 0..16)));
    assert_eq!(
        p.stage_of(1),
        Stage::default(),
        "steps past the stages get the default"
    );
    // A plan with a library step buckets to its exact shape.
    assert_eq!(p.bucket_shape(), p.shape());
}
