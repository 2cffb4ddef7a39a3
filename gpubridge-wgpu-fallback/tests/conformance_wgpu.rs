//! The conformance suite stamped out for the wgpu backend: every built-in kernel's WGSL form
//! against the float64 reference on fresh random inputs. In CI it runs on Mesa's llvmpipe (Debian's
//! `mesa-vulkan-drivers`); without an adapter it skips, unless `GPUBRIDGE_REQUIRE_WGPU=1`, which
//! makes a missing adapter a failure. The log names the adapter used.

#![cfg(feature = "wgpu")]

use std::io::Write;

use gpubridge_core::kernels::{ConnectedComponents, MatMul, Saxpy, Sum, VectorAdd};
use gpubridge_core::{Backend, BackendKind, BridgeConfig, GpuBridge};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;

fn wgpu_bridge() -> Option<GpuBridge> {
    let config = BridgeConfig::default();
    let backend = match WgpuBackend::new(&config) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("wgpu not available: {why}");
            return None;
        }
    };
    // Once per test binary, straight to stderr (libtest captures `eprintln!` of passing tests),
    // so that the CI log names the adapter the suite ran on.
    static NAMED: std::sync::Once = std::sync::Once::new();
    NAMED.call_once(|| {
        for (i, d) in backend.devices().iter().enumerate() {
            let a = backend.device(i).map(|d| d.adapter_info().clone());
            let _ = writeln!(
                std::io::stderr(),
                "conformance_wgpu runs on {}: {} (backend {}, device type {:?}; {})",
                d.id,
                d.name,
                a.as_ref().map(|a| a.backend.to_str()).unwrap_or("?"),
                a.as_ref().map(|a| a.device_type),
                d.details
            );
        }
    });
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).ok()?;
    b.register(Sum).ok()?;
    b.register(Saxpy).ok()?;
    b.register(MatMul).ok()?;
    // Small chunks, so that the suite's larger graphs cross many chunk boundaries.
    b.register(ConnectedComponents::with_chunk_edges(4096))
        .ok()?;
    b.add_backend(backend);
    b.build().ok()
}

gpubridge_core::conformance_suite!(BackendKind::Wgpu, wgpu_bridge());
