//! Every built-in kernel's device sources and plans: WGSL validated by naga, plans consistent.

use std::sync::Arc;

use gpubridge_core::kernels::{
    ConnectedComponents, Graph, MatMul, MatMulInput, Saxpy, SaxpyInput, Sum, VectorAdd, VectorPair,
};
use gpubridge_core::plan::{BufferRole, Step};
use gpubridge_core::{Kernel, KernelSources, PlanTarget};

fn all_sources() -> Vec<(&'static str, KernelSources)> {
    vec![
        (VectorAdd::ID, VectorAdd.sources()),
        (Sum::ID, Sum.sources()),
        (Saxpy::ID, Saxpy.sources()),
        (MatMul::ID, MatMul.sources()),
        (
            ConnectedComponents::ID,
            ConnectedComponents::default().sources(),
        ),
    ]
}

#[test]
fn every_wgsl_source_parses_and_validates() {
    for (id, s) in all_sources() {
        let wgsl = s.wgsl.unwrap_or_else(|| panic!("{id} has no WGSL form"));
        let module = naga::front::wgsl::parse_str(wgsl)
            .unwrap_or_else(|e| panic!("{id}: {}", e.emit_to_string(wgsl)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
}

#[test]
fn every_kernel_has_a_cuda_entry_point_for_each_launch() {
    let cuda = PlanTarget::Cuda {
        compute_capability: (9, 0),
        blas: false,
        max_grid_yz: 65535,
    };
    let wgsl = PlanTarget::Wgsl {
        max_workgroups_per_dim: 65535,
        max_storage_buffer_bytes: 1 << 30,
    };
    let plans = |t: &PlanTarget| {
        vec![
            (
                VectorAdd.sources(),
                VectorAdd
                    .plan(
                        &Arc::from(vec![VectorPair {
                            a: vec![1.0; 10],
                            b: vec![1.0; 10],
                        }]),
                        t,
                    )
                    .unwrap(),
            ),
            (
                Sum.sources(),
                Sum.plan(&Arc::from(vec![vec![1.0; 10], vec![]]), t)
                    .unwrap(),
            ),
            (
                Saxpy.sources(),
                Saxpy
                    .plan(
                        &Arc::from(vec![SaxpyInput {
                            alpha: 2.0,
                            x: vec![1.0; 3],
                            y: vec![1.0; 3],
                        }]),
                        t,
                    )
                    .unwrap(),
            ),
            (
                MatMul.sources(),
                MatMul
                    .plan(
                        &Arc::from(vec![MatMulInput {
                            m: 2,
                            k: 3,
                            n: 4,
                            a: vec![1.0; 6],
                            b: vec![1.0; 12],
                        }]),
                        t,
                    )
                    .unwrap(),
            ),
            (
                ConnectedComponents::default().sources(),
                ConnectedComponents::with_chunk_edges(2)
                    .plan(
                        &Arc::from(vec![Graph {
                            nodes: 4,
                            edges: vec![[0, 1], [2, 3], [3, 1]],
                        }]),
                        t,
                    )
                    .unwrap(),
            ),
        ]
    };
    for (sources, plan) in plans(&cuda) {
        plan.check().unwrap();
        for step in &plan.steps {
            if let Step::Launch(l) = step {
                let src = sources.cuda.unwrap();
                assert!(
                    src.contains(&format!("void {}(", l.entry)),
                    "{}: no CUDA entry {}",
                    plan.kernel,
                    l.entry
                );
                assert!(src.contains("extern \"C\" __global__"), "{}", plan.kernel);
            }
        }
    }
    for (sources, plan) in plans(&wgsl) {
        plan.check().unwrap();
        for step in &plan.steps {
            match step {
                Step::Launch(l) => {
                    assert!(
                        sources.wgsl.unwrap().contains(&format!("fn {}(", l.entry)),
                        "{}: no WGSL entry {}",
                        plan.kernel,
                        l.entry
                    );
                    assert!(
                        l.args
                            .iter()
                            .all(|a| !matches!(a, gpubridge_core::plan::Arg::U64(_))),
                        "WGSL has no u64"
                    );
                }
                Step::Gemm(_) => panic!("no GEMM steps without BLAS"),
            }
        }
    }
}

#[test]
fn plans_size_buffers_from_the_batch_and_keep_shapes_stable() {
    let t = PlanTarget::Cuda {
        compute_capability: (9, 0),
        blas: true,
        max_grid_yz: 65535,
    };
    let batch = |n: usize| {
        Arc::from(vec![
            VectorPair {
                a: vec![1.0; n],
                b: vec![2.0; n]
            };
            3
        ])
    };
    let p = VectorAdd.plan(&batch(100), &t).unwrap();
    let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
    assert_eq!(lens, [1200, 1200, 1200]);
    assert!(matches!(p.buffers[2].role, BufferRole::Output));
    assert_eq!(
        p.shape(),
        VectorAdd.plan(&batch(100), &t).unwrap().shape(),
        "same shape, same key"
    );
    assert_ne!(p.shape(), VectorAdd.plan(&batch(101), &t).unwrap().shape());
    // Packing writes every input byte.
    let mut a = vec![0u8; 1200];
    if let BufferRole::Input(pack) = &p.buffers[0].role {
        pack(&mut a, 0);
    }
    assert!(a
        .chunks_exact(4)
        .all(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]) == 1.0));
    // With BLAS, matrix multiply is a GEMM step per item; with k = 0 it launches the kernel instead.
    let mm = MatMul
        .plan(
            &Arc::from(vec![MatMulInput {
                m: 2,
                k: 2,
                n: 2,
                a: vec![0.0; 4],
                b: vec![0.0; 4],
            }]),
            &t,
        )
        .unwrap();
    assert!(matches!(mm.steps[0], Step::Gemm(_)));
}

#[test]
fn oversized_wgsl_plans_are_unsupported_not_wrong() {
    let tiny = PlanTarget::Wgsl {
        max_workgroups_per_dim: 65535,
        max_storage_buffer_bytes: 64,
    };
    let err = VectorAdd
        .plan(
            &Arc::from(vec![VectorPair {
                a: vec![1.0; 100],
                b: vec![1.0; 100],
            }]),
            &tiny,
        )
        .unwrap_err();
    assert!(
        matches!(err, gpubridge_core::Error::Unsupported { .. }),
        "{err:?}"
    );
}

#[test]
fn source_hash_is_stable_and_distinguishes_sources() {
    let hashes: Vec<u64> = all_sources().iter().map(|(_, s)| s.hash()).collect();
    for (i, h) in hashes.iter().enumerate() {
        assert!(!hashes[..i].contains(h));
    }
    assert_eq!(VectorAdd.sources().hash(), VectorAdd.sources().hash());
}

#[test]
fn concat_packs_any_range_exactly_like_the_whole() {
    use gpubridge_core::plan::Concat;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for align in [1usize, 256] {
        let items: Vec<Vec<f32>> = (0..20)
            .map(|_| {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random::<f32>())
                    .collect()
            })
            .collect();
        let cat = Concat::aligned(Arc::from(items.clone()), |v: &Vec<f32>| v, align);
        // The reference: every item at its start, gaps zero.
        let mut whole = vec![0u8; cat.len()];
        for (i, v) in items.iter().enumerate() {
            let bytes: &[u8] = bytemuck::cast_slice(v);
            whole[cat.start(i)..cat.start(i) + bytes.len()].copy_from_slice(bytes);
        }
        let mut packed = vec![0xAAu8; cat.len()];
        cat.pack(&mut packed, 0);
        assert_eq!(packed, whole);
        for _ in 0..200 {
            let a = rng.random_range(0..=cat.len());
            let b = rng.random_range(a..=cat.len());
            let mut part = vec![0xAAu8; b - a];
            cat.pack(&mut part, a);
            assert_eq!(part, &whole[a..b], "range {a}..{b} (align {align})");
        }
    }
}
