//! The conformance suite: every kernel, on a given backend, against a float64 reference on fresh
//! random inputs of edge sizes (0, 1, odd, large), plus IEEE special values.
//!
//! Backend crates stamp it out with [`crate::conformance_suite!`]. A failure message carries the
//! random seed; set `GPUBRIDGE_TEST_SEED` to replay it.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::device::BackendKind;
use crate::hints::{BatchResult, ExecutionHints};
use crate::kernels::{
    union_find_labels, ConnectedComponents, Graph, MatMul, MatMulInput, Saxpy, SaxpyInput, Sum,
    VectorAdd, VectorPair,
};
use crate::GpuBridge;

/// Vector lengths every 1-D kernel is checked at: empty, one, odd, and large (not a multiple of
/// any block size).
pub const SIZES: [usize; 4] = [0, 1, 1001, (1 << 20) + 3];

/// Matrix shapes `(m, k, n)` checked, zero dimensions and odd sizes included.
pub const SHAPES: [(usize, usize, usize); 8] = [
    (0, 0, 0),
    (1, 1, 1),
    (0, 3, 2),
    (2, 0, 3),
    (3, 2, 0),
    (17, 33, 9),
    (64, 64, 64),
    (129, 257, 67),
];

/// Outcome of one check: `Err` says what differed, with the seed.
pub type Check = Result<(), String>;

/// Whether CUDA tests must run: `GPUBRIDGE_REQUIRE_GPU=1` turns a skip into a failure.
pub fn gpu_required() -> bool {
    env_flag("GPUBRIDGE_REQUIRE_GPU")
}

/// Whether wgpu tests must run: `GPUBRIDGE_REQUIRE_WGPU=1` (set by CI, which installs Mesa's
/// Vulkan driver) turns a missing adapter into a failure instead of a skip.
pub fn wgpu_required() -> bool {
    env_flag("GPUBRIDGE_REQUIRE_WGPU")
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Whether a missing `backend` must fail a test rather than skip it: CUDA under
/// [`gpu_required`], wgpu under [`wgpu_required`], the CPU always.
pub fn backend_required(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Cuda => gpu_required(),
        BackendKind::Wgpu => wgpu_required(),
        BackendKind::Cpu => true,
    }
}

/// Runs `check` on `bridge` if there is one; without one, skips (or fails when
/// [`backend_required`]).
///
/// # Panics
/// When the check fails, a required GPU backend is missing, or the bridge still holds something
/// afterwards ([`crate::testing::check_quiescent`]): this is a test harness.
pub fn run(
    backend: BackendKind,
    bridge: Option<GpuBridge>,
    name: &str,
    check: fn(&GpuBridge, BackendKind, u64) -> Check,
) {
    let Some(bridge) = bridge else {
        if backend_required(backend) {
            panic!("{name}: the {backend} backend is not available and is required here (GPUBRIDGE_REQUIRE_GPU / GPUBRIDGE_REQUIRE_WGPU)");
        }
        eprintln!("skipped {name}: the {backend} backend is not available here");
        return;
    };
    let seed = std::env::var("GPUBRIDGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    if let Err(msg) = check(&bridge, backend, seed) {
        panic!("{name} on {backend} failed (GPUBRIDGE_TEST_SEED={seed}): {msg}");
    }
    if let Err(leaks) = crate::testing::check_quiescent(&bridge) {
        panic!(
            "{name} on {backend}: the bridge is not back to zero afterwards:\n  {}",
            leaks.join("\n  ")
        );
    }
}

fn on(backend: BackendKind) -> ExecutionHints {
    ExecutionHints::default().on_backend(backend)
}

fn ran_on<O>(r: &BatchResult<O>, backend: BackendKind) -> Check {
    match r.chunks.iter().find(|c| c.device.backend != backend) {
        Some(c) => Err(format!(
            "a micro-batch ran on {} instead of {backend}",
            c.device
        )),
        None => Ok(()),
    }
}

fn random_vec(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

/// `kernels/vector/add` against `a + b` in float64, then IEEE special values.
pub fn vector_add(bridge: &GpuBridge, backend: BackendKind, seed: u64) -> Check {
    let mut rng = SmallRng::seed_from_u64(seed);
    let grain = bridge.batch::<VectorAdd>().map_err(|e| e.to_string())?;
    let inputs: Vec<VectorPair> = SIZES
        .iter()
        .map(|&n| VectorPair {
            a: random_vec(&mut rng, n, 100.0),
            b: random_vec(&mut rng, n, 100.0),
        })
        .collect();
    let r = block_on(grain.execute(inputs.clone(), on(backend))).map_err(|e| e.to_string())?;
    ran_on(&r, backend)?;
    if r.outputs.len() != inputs.len() {
        return Err(format!(
            "{} outputs for {} inputs",
            r.outputs.len(),
            inputs.len()
        ));
    }
    for (i, (p, out)) in inputs.iter().zip(&r.outputs).enumerate() {
        if out.len() != p.a.len() {
            return Err(format!(
                "item {i}: {} outputs for length {}",
                out.len(),
                p.a.len()
            ));
        }
        for (j, got) in out.iter().enumerate() {
            let want = f64::from(p.a[j]) + f64::from(p.b[j]);
            let tol = f64::from(f32::EPSILON) * want.abs();
            if (f64::from(*got) - want).abs() > tol {
                return Err(format!("item {i} [{j}]: got {got}, want {want}"));
            }
        }
    }
    let special = VectorPair {
        a: vec![f32::NAN, f32::INFINITY, f32::INFINITY, f32::MAX, -0.0],
        b: vec![1.0, 1.0, f32::NEG_INFINITY, f32::MAX, -0.0],
    };
    let r = block_on(grain.execute(vec![special], on(backend))).map_err(|e| e.to_string())?;
    let o = &r.outputs[0];
    let ok = o[0].is_nan()
        && o[1] == f32::INFINITY
        && o[2].is_nan()
        && o[3] == f32::INFINITY
        && o[4] == 0.0
        && o[4].is_sign_negative();
    if !ok {
        return Err(format!("special values not propagated per IEEE-754: {o:?}"));
    }
    let r = block_on(grain.execute(Vec::new(), on(backend))).map_err(|e| e.to_string())?;
    if !r.outputs.is_empty() || !r.chunks.is_empty() {
        return Err("an empty batch did not give an empty result".to_owned());
    }
    Ok(())
}

/// `kernels/sum` against a float64 sum (tolerance `1e-5 sum |x|`), exactly on small-integer data,
/// then IEEE special values.
pub fn sum(bridge: &GpuBridge, backend: BackendKind, seed: u64) -> Check {
    let mut rng = SmallRng::seed_from_u64(seed);
    let grain = bridge.batch::<Sum>().map_err(|e| e.to_string())?;
    let mut inputs: Vec<Vec<f32>> = SIZES
        .iter()
        .map(|&n| random_vec(&mut rng, n, 1.0))
        .collect();
    // Many short vectors too, as the original's benchmark sends (1000 x 100).
    inputs.extend((0..37).map(|_| random_vec(&mut rng, 100, 1.0)));
    let r = block_on(grain.execute(inputs.clone(), on(backend))).map_err(|e| e.to_string())?;
    ran_on(&r, backend)?;
    for (i, (v, got)) in inputs.iter().zip(&r.outputs).enumerate() {
        let want: f64 = v.iter().map(|x| f64::from(*x)).sum();
        let mag: f64 = v.iter().map(|x| f64::from(x.abs())).sum();
        if (f64::from(*got) - want).abs() > 1e-5 * mag + 1e-30 {
            return Err(format!(
                "vector {i} (length {}): got {got}, want {want}",
                v.len()
            ));
        }
    }
    // Small integers: every partial sum is exact in f32, so any order must give the exact answer;
    // a dropped or doubled element shows.
    let ints: Vec<Vec<f32>> = SIZES
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(-8i32..=8) as f32).collect())
        .collect();
    let r = block_on(grain.execute(ints.clone(), on(backend))).map_err(|e| e.to_string())?;
    for (i, (v, got)) in ints.iter().zip(&r.outputs).enumerate() {
        let want: f64 = v.iter().map(|x| f64::from(*x)).sum();
        if f64::from(*got) != want {
            return Err(format!(
                "integer vector {i} (length {}): got {got}, want exactly {want}",
                v.len()
            ));
        }
    }
    let special = vec![
        vec![1.0, f32::NAN, 2.0],
        vec![1.0, f32::INFINITY],
        vec![f32::INFINITY, f32::NEG_INFINITY],
    ];
    let r = block_on(grain.execute(special, on(backend))).map_err(|e| e.to_string())?;
    let o = &r.outputs;
    if !(o[0].is_nan() && o[1] == f32::INFINITY && o[2].is_nan()) {
        return Err(format!("special values not propagated per IEEE-754: {o:?}"));
    }
    Ok(())
}

/// `kernels/blas/saxpy` against `alpha x + y` in float64 (tolerance `2 eps (|a x| + |y|)`).
pub fn saxpy(bridge: &GpuBridge, backend: BackendKind, seed: u64) -> Check {
    let mut rng = SmallRng::seed_from_u64(seed);
    let grain = bridge.batch::<Saxpy>().map_err(|e| e.to_string())?;
    let inputs: Vec<SaxpyInput> = SIZES
        .iter()
        .map(|&n| SaxpyInput {
            alpha: rng.random_range(-4.0..4.0),
            x: random_vec(&mut rng, n, 10.0),
            y: random_vec(&mut rng, n, 10.0),
        })
        .collect();
    let r = block_on(grain.execute(inputs.clone(), on(backend))).map_err(|e| e.to_string())?;
    ran_on(&r, backend)?;
    for (i, (s, out)) in inputs.iter().zip(&r.outputs).enumerate() {
        if out.len() != s.x.len() {
            return Err(format!(
                "item {i}: {} outputs for length {}",
                out.len(),
                s.x.len()
            ));
        }
        for (j, got) in out.iter().enumerate() {
            let ax = f64::from(s.alpha) * f64::from(s.x[j]);
            let want = ax + f64::from(s.y[j]);
            let tol = 2.0 * f64::from(f32::EPSILON) * (ax.abs() + f64::from(s.y[j].abs()));
            if (f64::from(*got) - want).abs() > tol {
                return Err(format!("item {i} [{j}]: got {got}, want {want}"));
            }
        }
    }
    Ok(())
}

/// `kernels/matrix/multiply` against a float64 product (tolerance `(k + 2) eps sum |a b|`).
pub fn matmul(bridge: &GpuBridge, backend: BackendKind, seed: u64) -> Check {
    let mut rng = SmallRng::seed_from_u64(seed);
    let grain = bridge.batch::<MatMul>().map_err(|e| e.to_string())?;
    let inputs: Vec<MatMulInput> = SHAPES
        .iter()
        .map(|&(m, k, n)| MatMulInput {
            m,
            k,
            n,
            a: random_vec(&mut rng, m * k, 1.0),
            b: random_vec(&mut rng, k * n, 1.0),
        })
        .collect();
    let r = block_on(grain.execute(inputs.clone(), on(backend))).map_err(|e| e.to_string())?;
    ran_on(&r, backend)?;
    for (i, (x, c)) in inputs.iter().zip(&r.outputs).enumerate() {
        if (c.rows, c.cols, c.data.len()) != (x.m, x.n, x.m * x.n) {
            return Err(format!(
                "item {i}: got a {} x {} result of {} values",
                c.rows,
                c.cols,
                c.data.len()
            ));
        }
        for row in 0..x.m {
            for col in 0..x.n {
                let (mut want, mut mag) = (0f64, 0f64);
                for j in 0..x.k {
                    let p = f64::from(x.a[row * x.k + j]) * f64::from(x.b[j * x.n + col]);
                    want += p;
                    mag += p.abs();
                }
                let got = f64::from(c.data[row * x.n + col]);
                let tol = (x.k as f64 + 2.0) * f64::from(f32::EPSILON) * mag;
                if (got - want).abs() > tol {
                    return Err(format!(
                        "item {i} ({} x {} x {}) [{row}, {col}]: got {got}, want {want}",
                        x.m, x.k, x.n
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Random graphs whose components the conformance suite checks: empty, one node, self-loops and
/// duplicates, a shuffled path (deep trees), a star, sparse and dense random graphs. Register the
/// kernel with small chunks ([`ConnectedComponents::with_chunk_edges`], as the stamped bridges
/// do) and the larger graphs cross many chunk boundaries.
pub fn random_graphs(rng: &mut SmallRng) -> Vec<Graph> {
    let mut graphs = vec![
        Graph::default(),
        Graph {
            nodes: 1,
            edges: vec![[0, 0]],
        },
        Graph {
            nodes: 5,
            edges: vec![[1, 1], [3, 4], [4, 3], [3, 4], [2, 2]],
        },
    ];
    let path = 3000u32;
    let mut order: Vec<u32> = (0..path).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut edges: Vec<[u32; 2]> = order.windows(2).map(|w| [w[0], w[1]]).collect();
    for i in (1..edges.len()).rev() {
        edges.swap(i, rng.random_range(0..=i));
    }
    graphs.push(Graph {
        nodes: path as usize,
        edges,
    });
    let hub = rng.random_range(0..1000u32);
    graphs.push(Graph {
        nodes: 1000,
        edges: (0..1000).filter(|v| *v != hub).map(|v| [v, hub]).collect(),
    });
    for (nodes, edges) in [(20_000u32, 12_000usize), (5_000, 40_000), (65_537, 70_001)] {
        graphs.push(Graph {
            nodes: nodes as usize,
            edges: (0..edges)
                .map(|_| [rng.random_range(0..nodes), rng.random_range(0..nodes)])
                .collect(),
        });
    }
    graphs
}

/// `kernels/graph/connected_components` against a single-threaded union-find, label for label
/// (every form labels a component by its smallest node), on [`random_graphs`] in one batch and
/// one at a time; then an edge outside its graph, which must be rejected.
pub fn connected_components(bridge: &GpuBridge, backend: BackendKind, seed: u64) -> Check {
    let mut rng = SmallRng::seed_from_u64(seed);
    let grain = bridge
        .batch::<ConnectedComponents>()
        .map_err(|e| e.to_string())?;
    let graphs = random_graphs(&mut rng);
    let check = |gs: &[Graph], r: &BatchResult<Vec<u32>>| -> Check {
        if r.outputs.len() != gs.len() {
            return Err(format!(
                "{} outputs for {} graphs",
                r.outputs.len(),
                gs.len()
            ));
        }
        for (i, (g, got)) in gs.iter().zip(&r.outputs).enumerate() {
            let want = union_find_labels(g.nodes, &g.edges);
            if got.len() != want.len() {
                return Err(format!(
                    "graph {i}: {} labels for {} nodes",
                    got.len(),
                    g.nodes
                ));
            }
            if let Some(v) = (0..want.len()).find(|&v| got[v] != want[v]) {
                return Err(format!(
                    "graph {i} ({} nodes, {} edges): node {v} labelled {}, want {}",
                    g.nodes,
                    g.edges.len(),
                    got[v],
                    want[v]
                ));
            }
        }
        Ok(())
    };
    let r = block_on(grain.execute(graphs.clone(), on(backend))).map_err(|e| e.to_string())?;
    ran_on(&r, backend)?;
    check(&graphs, &r)?;
    let last = graphs.len() - 1;
    let r = block_on(grain.execute(vec![graphs[last].clone()], on(backend)))
        .map_err(|e| e.to_string())?;
    ran_on(&r, backend)?;
    check(&graphs[last..], &r)?;
    // Alone, an empty graph plans no launch, and a graph without edges no hook.
    for alone in [
        Graph::default(),
        Graph {
            nodes: 3,
            edges: Vec::new(),
        },
    ] {
        let r =
            block_on(grain.execute(vec![alone.clone()], on(backend))).map_err(|e| e.to_string())?;
        check(std::slice::from_ref(&alone), &r)?;
    }
    let bad = Graph {
        nodes: 4,
        edges: vec![[0, 1], [2, 4]],
    };
    match block_on(grain.execute(vec![bad], on(backend))) {
        Err(crate::Error::InvalidInput { .. }) => Ok(()),
        Err(e) => Err(format!(
            "an edge outside its graph gave {e}, not InvalidInput"
        )),
        Ok(_) => Err("an edge outside its graph was accepted".to_owned()),
    }
}

/// Stamps out the conformance suite for one backend: one `#[test]` per kernel.
///
/// `$make` is an expression giving `Option<GpuBridge>` with the backend in it (`None` when the
/// backend is not available here, which skips, or fails under `GPUBRIDGE_REQUIRE_GPU=1`).
///
/// ```no_run
/// use gpubridge_core::BackendKind;
/// // In a test file: `None` here stands for "build the bridge with your backend, if present".
/// gpubridge_core::conformance_suite!(BackendKind::Cpu, None);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr, $make:expr) => {
        fn __conformance_bridge() -> Option<$crate::GpuBridge> {
            $make
        }
        #[test]
        fn conformance_vector_add() {
            $crate::conformance::run(
                $backend,
                __conformance_bridge(),
                "vector_add",
                $crate::conformance::vector_add,
            );
        }
        #[test]
        fn conformance_sum() {
            $crate::conformance::run(
                $backend,
                __conformance_bridge(),
                "sum",
                $crate::conformance::sum,
            );
        }
        #[test]
        fn conformance_saxpy() {
            $crate::conformance::run(
                $backend,
                __conformance_bridge(),
                "saxpy",
                $crate::conformance::saxpy,
            );
        }
        #[test]
        fn conformance_matmul() {
            $crate::conformance::run(
                $backend,
                __conformance_bridge(),
                "matmul",
                $crate::conformance::matmul,
            );
        }
        #[test]
        fn conformance_connected_components() {
            $crate::conformance::run(
                $backend,
                __conformance_bridge(),
                "connected_components",
                $crate::conformance::connected_components,
            );
        }
    };
}
