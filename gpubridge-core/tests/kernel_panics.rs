//! A kernel whose CPU form panics fails its request with `Error::KernelPanicked` (the kernel, the
//! backend, the panic's message), and disturbs nothing else: the device is not blamed (before, a
//! panicking kernel counted as a device fault, and twenty of them opened the device's circuit for
//! every kernel), the bridge keeps serving on the same device, and holds nothing afterwards.

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
