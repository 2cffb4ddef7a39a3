//! The conformance suite stamped out for the CUDA backend. Skips where there is no CUDA device,
//! unless `GPUBRIDGE_REQUIRE_GPU=1`, which makes a missing device a failure.

#![cfg(feature = "cuda")]

use gpubridge::{BackendKind, BridgeConfig, GpuBridge};

fn cuda_bridge() -> Option<GpuBridge> {
    let bridge = gpubridge::bridge(BridgeConfig::default()).ok()?;
    if bridge.backends().contains(&BackendKind::Cuda) {
        Some(bridge)
    } else {
        let why = bridge
            .reports()
            .iter()
            .find(|r| r.kind == BackendKind::Cuda)
            .and_then(|r| r.unavailable_reason());
        eprintln!("CUDA not available: {}", why.unwrap_or_default());
        None
    }
}

gpubridge_core::conformance_suite!(BackendKind::Cuda, cuda_bridge());
