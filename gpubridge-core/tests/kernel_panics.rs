//! A kernel whose CPU form panics fails its request with `Error::KernelPanicked` (the kernel, the
//! backend, the panic's message), and disturbs nothing else: the device is not blamed (before, a
//! panicking kernel counted as a device fault, and twenty of them opened the device's circuit for
//! every kernel), the bridge keeps serving on the same device, and holds nothing afterwards.
//! The same for a kernel whose device plan panics while it is built.

use gpubridge_core::testing::{assert_quiescent, FaultInjectingBackend};
use gpubridge_core::CpuContext;
use gpubridge_core::{
    BackendKind, BridgeConfig, CircuitState, DeviceId, Error, ErrorClass, GpuBridge, Kernel, Result,
};

/// Doubles its inputs; panics on a negative one, with a static or a formatted message.
struct Fragile;

impl Kernel for Fragile {
    type Input = f32;
    type Output = f32;
    const ID: &'static str = "tests/fragile";

    fn validate(&self, _index: usize, _input: &f32) -> Result<()> {
        Ok(())
    }

    fn device_bytes(&self, _input: &f32) -> usize {
        8
    }

    fn run_cpu(&self, inputs: &[f32], _ctx: &CpuContext) -> Result<Vec<f32>> {
        inputs
            .iter()
            .map(|&x| {
                if x == -1.0 {
                    panic!("a static message");
                }
                if x < 0.0 {
                    panic!("a formatted message about {x}");
                }
                Ok(x * 2.0)
            })
            .collect()
    }
}

fn bridge() -> GpuBridge {
    // The CPU forms run on the test backend's pool, as on the CPU backend's (no fault is set).
    let mut b = GpuBridge::builder(BridgeConfig::default());
    b.register(Fragile).unwrap();
    b.add_backend(FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap());
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_kernel_fails_its_request_and_nothing_else() {
    let b = bridge();
    let grain = b.batch::<Fragile>().unwrap();
    for (input, message) in [
        (-1.0f32, "a static message"),
        (-2.5, "a formatted message about -2.5"),
    ] {
        let e = grain
            .execute(vec![1.0, input, 3.0], Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::KernelPanicked { kernel, backend: BackendKind::Cpu, message: m } if kernel == "tests/fragile" && m == message),
            "{e:?}"
        );
        assert_eq!(e.class(), ErrorClass::Caller);
        assert_eq!(e.reason_label(), "kernel_panicked");
        // The next request, on the same device, is served.
        let ok = grain
            .execute(vec![1.0, 2.0], Default::default())
            .await
            .unwrap();
        assert_eq!(ok.outputs, vec![2.0, 4.0]);
    }
    // Many panics in a row are the kernel's fault, not the device's: the device stays in service.
    for _ in 0..20 {
        let e = grain
            .execute(vec![-1.0], Default::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::KernelPanicked { .. }), "{e:?}");
    }
    assert_eq!(
        b.circuit_state(DeviceId {
            backend: BackendKind::Cpu,
            index: 0
        }),
        Some(CircuitState::Closed)
    );
    let ok = grain.execute(vec![5.0], Default::default()).await.unwrap();
    assert_eq!(ok.outputs, vec![10.0]);
    let one = b.single::<Fragile>(4.0, Default::default()).await.unwrap();
    assert_eq!(one.output, 8.0);
    assert_quiescent(&b);
}

/// Plans a copy of its inputs; panics while planning a batch holding a negative one.
struct FragilePlanner;

impl Kernel for FragilePlanner {
    type Input = f32;
    type Output = f32;
    const ID: &'static str = "tests/fragile-planner";

    fn sources(&self) -> gpubridge_core::KernelSources {
        gpubridge_core::KernelSources {
            cuda: Some("extern \"C\" __global__ void copy(const float* x, float* y) {}\n"),
            wgsl: None,
        }
    }

    fn validate(&self, _index: usize, _input: &f32) -> Result<()> {
        Ok(())
    }

    fn device_bytes(&self, _input: &f32) -> usize {
        8
    }

    fn run_cpu(&self, inputs: &[f32], _ctx: &CpuContext) -> Result<Vec<f32>> {
        Ok(inputs.to_vec())
    }

    fn plan(
        &self,
        inputs: &std::sync::Arc<[f32]>,
        _target: &gpubridge_core::PlanTarget,
    ) -> Result<gpubridge_core::Plan> {
        use gpubridge_core::plan::{Arg, Launch, Plan};
        assert!(inputs.iter().all(|x| *x >= 0.0), "a planning panic");
        let mut plan = Plan::new(Self::ID);
        let items = inputs.clone();
        let x = plan.input("x", 4 * inputs.len(), move |dst, at| {
            gpubridge_core::plan::pack_range(dst, at, &items);
        });
        let y = plan.output("y", 4 * inputs.len());
        plan.launch(Launch::new(
            "copy",
            [1, 1, 1],
            [1, 1, 1],
            &[Arg::buf(x), Arg::buf(y)],
        ));
        Ok(plan)
    }

    fn unpack(
        &self,
        _inputs: &[f32],
        outputs: &gpubridge_core::plan::PlanOutputs<'_>,
    ) -> Result<Vec<f32>> {
        Ok(outputs
            .f32s(gpubridge_core::plan::BufferId(1))?
            .into_owned())
    }
}

/// A planning double (named as one): one CUDA-kind device that answers every plan at once with
/// its first input's bytes as its output, and counts the plans it was given.
struct PlanningDouble {
    devices: Vec<gpubridge_core::device::DeviceInfo>,
    plans: std::sync::atomic::AtomicUsize,
}

impl gpubridge_core::device::Backend for PlanningDouble {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn devices(&self) -> &[gpubridge_core::device::DeviceInfo] {
        &self.devices
    }
    fn plan_target(&self, _device: usize) -> Option<gpubridge_core::PlanTarget> {
        Some(gpubridge_core::PlanTarget::Cuda {
            compute_capability: (9, 0),
            blas: false,
            max_grid_yz: 65535,
        })
    }
    fn can_run(&self, _sources: &gpubridge_core::KernelSources) -> bool {
        true
    }
    fn memory_budget(&self, _device: usize) -> Option<u64> {
        None
    }
    fn health(&self, _device: usize) -> gpubridge_core::device::Health {
        gpubridge_core::device::Health::Healthy
    }
    fn submit(&self, _device: usize, work: gpubridge_core::Work) -> Result<()> {
        use gpubridge_core::plan::{BufferRole, PlanOutputs};
        if let gpubridge_core::Work::Plan { plan, complete, .. } = work {
            self.plans.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut input = vec![0u8; plan.buffers[0].len];
            if let BufferRole::Input(pack) = &plan.buffers[0].role {
                pack(&mut input, 0);
            }
            let ids = plan.output_ids();
            complete(Ok(PlanOutputs::new(
                ids,
                vec![&input[..]],
                Default::default(),
            )));
        }
        Ok(())
    }
}

fn planning_double() -> std::sync::Arc<PlanningDouble> {
    std::sync::Arc::new(PlanningDouble {
        devices: vec![gpubridge_core::device::DeviceInfo {
            id: DeviceId {
                backend: BackendKind::Cuda,
                index: 0,
            },
            name: "planning double".into(),
            device_type: gpubridge_core::device::DeviceType::DiscreteGpu,
            total_memory: 1 << 30,
            compute_units: 1,
            compute_capability: Some((9, 0)),
            details: String::new(),
        }],
        plans: std::sync::atomic::AtomicUsize::new(0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_panics_while_planning_fails_its_request_and_nothing_else() {
    let double = planning_double();
    let mut builder = GpuBridge::builder(BridgeConfig::default());
    builder.register(FragilePlanner).unwrap();
    builder.add_backend(double.clone());
    let b = builder.build().unwrap();
    let grain = b.batch::<FragilePlanner>().unwrap();
    let on_device = gpubridge_core::ExecutionHints::default().on_backend(BackendKind::Cuda);
    for _ in 0..20 {
        let e = grain
            .execute(vec![1.0, -1.0], on_device.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::KernelPanicked { kernel, backend: BackendKind::Cuda, message } if kernel == FragilePlanner::ID && message == "a planning panic"),
            "{e:?}"
        );
        assert_eq!(e.class(), ErrorClass::Caller);
    }
    assert_eq!(double.plans.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The device is not blamed, and the next batch is planned and served.
    assert_eq!(
        b.circuit_state(DeviceId {
            backend: BackendKind::Cuda,
            index: 0
        }),
        Some(CircuitState::Closed)
    );
    let ok = grain.execute(vec![1.5, 2.5], on_device).await.unwrap();
    assert_eq!(ok.outputs, vec![1.5, 2.5]);
    assert_eq!(double.plans.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_whose_item_panics_the_planner_fails_alone() {
    // Thirty-two callers' singles in one batch for the device; one of them makes the plan
    // panic. The batch is planned again in halves: that caller gets the panic, the others
    // their answers from the device.
    let double = planning_double();
    let mut config = BridgeConfig::default();
    config.batching.max_batch = 32;
    config.batching.max_queue_delay_us = 10_000_000;
    let mut builder = GpuBridge::builder(config);
    builder.register(FragilePlanner).unwrap();
    builder.add_backend(double.clone());
    let b = builder.build().unwrap();
    let bad = (rand::random::<u64>() % 32) as usize;
    let on_device = gpubridge_core::ExecutionHints::default().on_backend(BackendKind::Cuda);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let b = b.clone();
            let hints = on_device.clone();
            let x = if i == bad { -1.0 } else { i as f32 + 0.5 };
            tokio::spawn(async move { (x, b.single::<FragilePlanner>(x, hints).await) })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            (x, Ok(r)) => {
                assert!(x >= 0.0);
                assert_eq!(r.output, x);
                assert_eq!(r.batch_size, 32);
                assert_eq!(r.backend, Some(BackendKind::Cuda));
            }
            (x, Err(e)) => {
                assert_eq!(x, -1.0, "{e:?}");
                assert!(
                    matches!(&e, Error::KernelPanicked { backend: BackendKind::Cuda, message, .. } if message == "a planning panic"),
                    "{e:?}"
                );
            }
        }
    }
    // The plans that reached the device: the halves without the bad item, at most two per
    // level of the search.
    let plans = double.plans.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=5).contains(&plans), "{plans} plans");
    assert_eq!(
        b.circuit_state(DeviceId {
            backend: BackendKind::Cuda,
            index: 0
        }),
        Some(CircuitState::Closed)
    );
    assert_quiescent(&b);
}
