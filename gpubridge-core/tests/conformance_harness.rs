//! The conformance suite must fail a kernel that is wrong. Each kernel here is a built-in one with
//! one deliberate flaw (a value off by one, a short output, NaN flushed to zero, an inexact sum,
//! a transposed shape, a wrong label, an invalid edge accepted), registered under the built-in's
//! id on a CPU bridge: every check must catch its flaw and say what it found. The harness's skip
//! and failure rules are checked too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use gpubridge_core::conformance::{self, backend_required, gpu_required, wgpu_required, Check};
use gpubridge_core::kernels::{
    union_find_labels, ConnectedComponents, Graph, MatMul, MatMulInput, Matrix, Saxpy, SaxpyInput,
    Sum, VectorAdd, VectorPair,
};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, CpuContext, Error, GpuBridge, Kernel, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// One value off by one.
    Value,
    /// One value too few.
    Length,
    /// NaN results flushed to zero.
    FlushNan,
    /// A sum off by a millionth of its magnitude: within tolerance, but not exact on integers.
    Inexact,
    /// Rows and columns swapped.
    Transposed,
    /// Every node labelled 0.
    Labels,
    /// One label missing.
    LabelCount,
    /// Edges outside the graph accepted (and ignored).
    AcceptsBadEdges,
    /// Edges outside the graph refused, but not as invalid input.
    WrongError,
}

fn bridge_with<K: Kernel>(kernel: K) -> GpuBridge {
    let mut b = GpuBridge::builder(BridgeConfig::default());
    b.register(kernel).unwrap();
    b.add_backend(FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap());
    b.build().unwrap()
}

fn fails_with(check: fn(&GpuBridge, BackendKind, u64) -> Check, bridge: &GpuBridge, want: &str) {
    for seed in [1, 2, 3] {
        match check(bridge, BackendKind::Cpu, seed) {
            Err(msg) => assert!(msg.contains(want), "seed {seed}: {msg:?} lacks {want:?}"),
            Ok(()) => panic!("seed {seed}: a flawed kernel passed (want {want:?})"),
        }
    }
}

struct BrokenAdd(Flaw);

impl Kernel for BrokenAdd {
    type Input = VectorPair;
    type Output = Vec<f32>;
    const ID: &'static str = VectorAdd::ID;

    fn validate(&self, index: usize, input: &VectorPair) -> Result<()> {
        VectorAdd.validate(index, input)
    }

    fn device_bytes(&self, input: &VectorPair) -> usize {
        VectorAdd.device_bytes(input)
    }

    fn run_cpu(&self, inputs: &[VectorPair], ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
        let mut out = VectorAdd.run_cpu(inputs, ctx)?;
        for o in &mut out {
            match self.0 {
                Flaw::Value => {
                    if let Some(x) = o.last_mut() {
                        *x += 1.0;
                    }
                }
                Flaw::Length => {
                    o.pop();
                }
                Flaw::FlushNan => o.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = 0.0),
                other => unreachable!("{other:?}"),
            }
        }
        Ok(out)
    }
}

#[test]
fn vector_add_checks_catch_wrong_values_lengths_and_special_values() {
    // Item 0 is empty; item 1 has one element, the first to show a flaw.
    fails_with(
        conformance::vector_add,
        &bridge_with(BrokenAdd(Flaw::Value)),
        "item 1 [0]: got ",
    );
    fails_with(
        conformance::vector_add,
        &bridge_with(BrokenAdd(Flaw::Length)),
        "item 1: 0 outputs for length 1",
    );
    fails_with(
        conformance::vector_add,
        &bridge_with(BrokenAdd(Flaw::FlushNan)),
        "special values not propagated per IEEE-754",
    );
}

struct BrokenSum(Flaw);

impl Kernel for BrokenSum {
    type Input = Vec<f32>;
    type Output = f32;
    const ID: &'static str = Sum::ID;

    fn validate(&self, index: usize, input: &Vec<f32>) -> Result<()> {
        Sum.validate(index, input)
    }

    fn device_bytes(&self, input: &Vec<f32>) -> usize {
        Sum.device_bytes(input)
    }

    fn run_cpu(&self, inputs: &[Vec<f32>], _ctx: &CpuContext) -> Result<Vec<f32>> {
        Ok(inputs
            .iter()
            .map(|v| {
                let sum: f64 = v.iter().map(|x| f64::from(*x)).sum();
                let mag: f64 = v.iter().map(|x| f64::from(x.abs())).sum();
                match self.0 {
                    Flaw::Value => (sum + 1.0) as f32,
                    Flaw::Inexact => (sum + 1e-6 * mag) as f32,
                    Flaw::FlushNan => v
                        .iter()
                        .filter(|x| !x.is_nan())
                        .map(|x| f64::from(*x))
                        .sum::<f64>() as f32,
                    other => unreachable!("{other:?}"),
                }
            })
            .collect())
    }
}

#[test]
fn sum_checks_catch_wrong_sums_inexact_integer_sums_and_lost_nans() {
    fails_with(
        conformance::sum,
        &bridge_with(BrokenSum(Flaw::Value)),
        // (An empty float64 sum is -0.0, which the message prints as such.)
        "vector 0 (length 0): got 1, want ",
    );
    // Within the float tolerance everywhere, so only the exact integer check sees it.
    fails_with(
        conformance::sum,
        &bridge_with(BrokenSum(Flaw::Inexact)),
        "integer vector ",
    );
    fails_with(
        conformance::sum,
        &bridge_with(BrokenSum(Flaw::FlushNan)),
        "special values not propagated per IEEE-754",
    );
}

struct BrokenSaxpy(Flaw);

impl Kernel for BrokenSaxpy {
    type Input = SaxpyInput;
    type Output = Vec<f32>;
    const ID: &'static str = Saxpy::ID;

    fn validate(&self, index: usize, input: &SaxpyInput) -> Result<()> {
        Saxpy.validate(index, input)
    }

    fn device_bytes(&self, input: &SaxpyInput) -> usize {
        Saxpy.device_bytes(input)
    }

    fn run_cpu(&self, inputs: &[SaxpyInput], ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
        let mut out = Saxpy.run_cpu(inputs, ctx)?;
        for o in &mut out {
            match self.0 {
                Flaw::Value => {
                    if let Some(x) = o.first_mut() {
                        *x += 1.0;
                    }
                }
                Flaw::Length => {
                    o.pop();
                }
                other => unreachable!("{other:?}"),
            }
        }
        Ok(out)
    }
}

#[test]
fn saxpy_checks_catch_wrong_values_and_lengths() {
    fails_with(
        conformance::saxpy,
        &bridge_with(BrokenSaxpy(Flaw::Value)),
        "item 1 [0]: got ",
    );
    fails_with(
        conformance::saxpy,
        &bridge_with(BrokenSaxpy(Flaw::Length)),
        "item 1: 0 outputs for length 1",
    );
}

struct BrokenMatMul(Flaw);

impl Kernel for BrokenMatMul {
    type Input = MatMulInput;
    type Output = Matrix;
    const ID: &'static str = MatMul::ID;

    fn validate(&self, index: usize, input: &MatMulInput) -> Result<()> {
        MatMul.validate(index, input)
    }

    fn device_bytes(&self, input: &MatMulInput) -> usize {
        MatMul.device_bytes(input)
    }

    fn run_cpu(&self, inputs: &[MatMulInput], ctx: &CpuContext) -> Result<Vec<Matrix>> {
        let mut out = MatMul.run_cpu(inputs, ctx)?;
        for c in &mut out {
            match self.0 {
                Flaw::Transposed => std::mem::swap(&mut c.rows, &mut c.cols),
                Flaw::Value => {
                    if let Some(x) = c.data.first_mut() {
                        *x += 1.0;
                    }
                }
                other => unreachable!("{other:?}"),
            }
        }
        Ok(out)
    }
}

#[test]
fn matmul_checks_catch_wrong_shapes_and_values() {
    // Shapes (0, 0, 0) and (1, 1, 1) look the same transposed; (0, 3, 2) does not.
    fails_with(
        conformance::matmul,
        &bridge_with(BrokenMatMul(Flaw::Transposed)),
        "item 2: got a 2 x 0 result of 0 values",
    );
    fails_with(
        conformance::matmul,
        &bridge_with(BrokenMatMul(Flaw::Value)),
        "item 1 (1 x 1 x 1) [0, 0]: got ",
    );
}

struct BrokenComponents(Flaw);

impl Kernel for BrokenComponents {
    type Input = Graph;
    type Output = Vec<u32>;
    const ID: &'static str = ConnectedComponents::ID;

    fn validate(&self, index: usize, g: &Graph) -> Result<()> {
        match (self.0, ConnectedComponents::default().validate(index, g)) {
            (Flaw::AcceptsBadEdges, _) => Ok(()),
            (Flaw::WrongError, Err(e)) => Err(Error::Cancelled {
                reason: e.to_string(),
            }),
            (_, r) => r,
        }
    }

    fn device_bytes(&self, g: &Graph) -> usize {
        ConnectedComponents::default().device_bytes(g)
    }

    fn run_cpu(&self, inputs: &[Graph], _ctx: &CpuContext) -> Result<Vec<Vec<u32>>> {
        Ok(inputs
            .iter()
            .map(|g| {
                let n = g.nodes as u32;
                let edges: Vec<[u32; 2]> = g
                    .edges
                    .iter()
                    .copied()
                    .filter(|e| e[0] < n && e[1] < n)
                    .collect();
                let mut labels = union_find_labels(g.nodes, &edges);
                match self.0 {
                    Flaw::Labels => labels.iter_mut().for_each(|l| *l = 0),
                    Flaw::LabelCount => {
                        labels.pop();
                    }
                    Flaw::AcceptsBadEdges | Flaw::WrongError => {}
                    other => unreachable!("{other:?}"),
                }
                labels
            })
            .collect())
    }
}

#[test]
fn connected_components_checks_catch_wrong_labels_and_bad_edges_let_through() {
    // Graph 2 has five nodes in components {0}, {1}, {2}, {3, 4}.
    fails_with(
        conformance::connected_components,
        &bridge_with(BrokenComponents(Flaw::Labels)),
        "graph 2 (5 nodes, 5 edges): node 1 labelled 0, want 1",
    );
    fails_with(
        conformance::connected_components,
        &bridge_with(BrokenComponents(Flaw::LabelCount)),
        "graph 1: 0 labels for 1 nodes",
    );
    fails_with(
        conformance::connected_components,
        &bridge_with(BrokenComponents(Flaw::AcceptsBadEdges)),
        "an edge outside its graph was accepted",
    );
    fails_with(
        conformance::connected_components,
        &bridge_with(BrokenComponents(Flaw::WrongError)),
        "an edge outside its graph gave cancelled: ",
    );
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn a_missing_backend_skips_unless_required_and_a_failed_check_panics_with_its_seed() {
    assert!(
        backend_required(BackendKind::Cpu),
        "the CPU is always there"
    );
    assert_eq!(backend_required(BackendKind::Cuda), gpu_required());
    assert_eq!(backend_required(BackendKind::Wgpu), wgpu_required());
    for backend in [BackendKind::Cpu, BackendKind::Cuda, BackendKind::Wgpu] {
        let r = catch_unwind(|| {
            conformance::run(backend, None, "vector_add", conformance::vector_add);
        });
        assert_eq!(r.is_err(), backend_required(backend), "{backend}");
        if let Err(p) = r {
            let msg = panic_text(&*p);
            assert!(
                msg.contains(&format!(
                    "the {backend} backend is not available and is required here"
                )),
                "{msg}"
            );
        }
    }

    let broken = bridge_with(BrokenAdd(Flaw::Value));
    let r = catch_unwind(AssertUnwindSafe(|| {
        conformance::run(
            BackendKind::Cpu,
            Some(broken),
            "vector_add",
            conformance::vector_add,
        );
    }));
    let msg = panic_text(&*r.expect_err("a failed check panics"));
    assert!(
        msg.starts_with("vector_add on cpu failed (GPUBRIDGE_TEST_SEED="),
        "{msg}"
    );
    assert!(msg.contains("item 1 [0]: got "), "{msg}");

    // A passing check on a quiet bridge returns normally.
    let good = bridge_with(VectorAdd);
    conformance::run(
        BackendKind::Cpu,
        Some(good),
        "vector_add",
        conformance::vector_add,
    );
}

/// The backend of the bridge [`leaves_work_on_the_device`] runs on.
static HOLDING: std::sync::OnceLock<Arc<FaultInjectingBackend>> = std::sync::OnceLock::new();
/// The request that check leaves unfinished, kept alive until the test lets it go.
static PARKED: std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>> =
    std::sync::Mutex::new(Vec::new());

/// A "check" that passes but leaves a request waiting on a device that holds its micro-batch.
fn leaves_work_on_the_device(bridge: &GpuBridge, _: BackendKind, _: u64) -> Check {
    let backend = HOLDING.get().expect("set by the test");
    backend.hold();
    let grain = bridge.batch::<VectorAdd>().map_err(|e| e.to_string())?;
    let pair = VectorPair {
        a: vec![1.0; 8],
        b: vec![2.0; 8],
    };
    let mut batch = Box::pin(async move { grain.execute(vec![pair], Default::default()).await });
    let started = std::time::Instant::now();
    while backend.held() == 0 {
        let polled = futures::executor::block_on(async { futures::poll!(batch.as_mut()) });
        assert!(polled.is_pending());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    PARKED.lock().unwrap().push(Box::new(batch));
    Ok(())
}

#[test]
fn a_check_that_leaves_the_bridge_holding_work_fails_the_suite() {
    let backend = HOLDING
        .get_or_init(|| FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap())
        .clone();
    let mut b = GpuBridge::builder(BridgeConfig::default());
    b.register(VectorAdd).unwrap();
    b.add_backend(backend.clone());
    let bridge = b.build().unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        conformance::run(
            BackendKind::Cpu,
            Some(bridge.clone()),
            "leaky",
            leaves_work_on_the_device,
        );
    }));
    let msg = panic_text(&*r.expect_err("a leak fails the suite"));
    assert!(
        msg.starts_with("leaky on cpu: the bridge is not back to zero afterwards:"),
        "{msg}"
    );
    assert!(msg.contains("1 batches pending"), "{msg}");
    assert!(msg.contains("cpu:0: 1 micro-batches in flight"), "{msg}");
    // Once the device lets the work go and the request is dropped, the bridge is back to zero.
    assert_eq!(backend.release(), 1);
    PARKED.lock().unwrap().clear();
    gpubridge_core::testing::assert_quiescent(&bridge);
}
