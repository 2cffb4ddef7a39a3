//! The conformance suite stamped out for the CPU backend: every built-in kernel against the
//! float64 reference on fresh random inputs.

use gpubridge_core::kernels::register_builtins;
use gpubridge_core::{BackendKind, BridgeConfig, GpuBridge, KernelCatalog};
use gpubridge_wgpu_fallback::CpuBackend;

fn cpu_bridge() -> Option<GpuBridge> {
    // Check that the built-ins register cleanly on their own too.
    register_builtins(&mut KernelCatalog::new()).expect("built-ins register");
    let config = BridgeConfig::default();
    let mut b = GpuBridge::builder(config.clone());
    b.register(gpubridge_core::kernels::VectorAdd).ok()?;
    b.register(gpubridge_core::kernels::Sum).ok()?;
    b.register(gpubridge_core::kernels::Saxpy).ok()?;
    b.register(gpubridge_core::kernels::MatMul).ok()?;
    // Small chunks, as on the devices, though the CPU form does not chunk.
    b.register(gpubridge_core::kernels::ConnectedComponents::with_chunk_edges(4096))
        .ok()?;
    b.add_backend(CpuBackend::new(&config).ok()?);
    b.build().ok()
}

gpubridge_core::conformance_suite!(BackendKind::Cpu, cpu_bridge());
