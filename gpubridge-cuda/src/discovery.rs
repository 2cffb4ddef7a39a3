//! Finding CUDA devices without panicking when CUDA is absent.

use cudarc::driver::{result, sys};

/// Why CUDA cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaUnavailable(pub String);

impl std::fmt::Display for CudaUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CudaUnavailable {}

/// Facts about one CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDevice {
    /// Ordinal.
    pub ordinal: usize,
    /// Name, for example `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability.
    pub compute_capability: (u32, u32),
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Streaming multiprocessors.
    pub sm_count: u32,
}

/// The driver library cudarc loads, as its loader names it.
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Loads the CUDA driver and lists its devices.
///
/// # Errors
/// [`CudaUnavailable`] with a precise reason: the driver library is missing, `cuInit` failed (and
/// its error), or there are no devices.
pub fn probe() -> Result<Vec<CudaDevice>, CudaUnavailable> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library; it has no preconditions.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaUnavailable(format!(
            "{DRIVER_LIBRARY} not found (no NVIDIA driver installed)"
        )));
    }
    result::init().map_err(|e| CudaUnavailable(format!("cuInit failed: {e}")))?;
    let count = result::device::get_count()
        .map_err(|e| CudaUnavailable(format!("cuDeviceGetCount failed: {e}")))?;
    if count <= 0 {
        return Err(CudaUnavailable(
            "the driver is loaded but reports no CUDA device".to_owned(),
        ));
    }
    (0..count)
        .map(|ordinal| {
            let fail = |what: &str, e: result::DriverError| {
                CudaUnavailable(format!("device {ordinal}: {what} failed: {e}"))
            };
            let dev = result::device::get(ordinal).map_err(|e| fail("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).map_err(|e| fail("cuDeviceGetName", e))?;
            // SAFETY: `dev` is a valid device handle from `cuDeviceGet`, after a successful `cuInit`.
            let total = unsafe { result::device::total_mem(dev) }
                .map_err(|e| fail("cuDeviceTotalMem", e))?;
            let attr = |a: sys::CUdevice_attribute| -> Result<u32, CudaUnavailable> {
                // SAFETY: as above; the attribute enum value comes from the bindings.
                unsafe { result::device::get_attribute(dev, a) }
                    .map(|v| v.max(0) as u32)
                    .map_err(|e| fail("cuDeviceGetAttribute", e))
            };
            use sys::CUdevice_attribute::*;
            Ok(CudaDevice {
                ordinal: ordinal as usize,
                name,
                compute_capability: (
                    attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                ),
                total_memory: total as u64,
                sm_count: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            })
        })
        .collect()
}

/// Each CUDA device's PCI location `(domain, bus, device)`, by ordinal, so that tools numbering
/// boards their own way (NVML) can be matched to the bridge's `cuda:<ordinal>` labels. Empty when
/// the driver is missing or does not answer.
pub fn pci_locations() -> Vec<(usize, u32, u32, u32)> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library; it has no preconditions.
    if !unsafe { sys::is_culib_present() } || result::init().is_err() {
        return Vec::new();
    }
    let count = result::device::get_count().unwrap_or(0).max(0);
    (0..count)
        .filter_map(|ordinal| {
            let dev = result::device::get(ordinal).ok()?;
            let attr = |a: sys::CUdevice_attribute| -> Option<u32> {
                // SAFETY: `dev` is a valid device handle from `cuDeviceGet`, after a successful
                // `cuInit`; the attribute enum value comes from the bindings.
                unsafe { result::device::get_attribute(dev, a) }
                    .ok()
                    .map(|v| v.max(0) as u32)
            };
            use sys::CUdevice_attribute::*;
            Some((
                ordinal as usize,
                attr(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
                attr(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
                attr(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
            ))
        })
        .collect()
}
