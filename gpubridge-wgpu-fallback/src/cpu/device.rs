//! The CPU device: host facts, host buffers, and the pool that runs kernels' CPU forms.

use std::sync::Arc;

use gpubridge_core::device::{Api, Device, Instance, Work};
use gpubridge_core::plan::{Plan, PlanOutputs, PlanTarget};
use gpubridge_core::{
    Backend, BackendKind, BridgeConfig, CpuContext, DeviceId, DeviceInfo, DeviceType, Error,
    Health, KernelSources, MemoryInfo, NoGraph, Result,
};

use crate::host::{cpu_model_name, meminfo_kib};

/// The CPU backend's type family.
#[derive(Debug)]
pub enum Cpu {}

impl Api for Cpu {
    const KIND: BackendKind = BackendKind::Cpu;
    type Instance = CpuInstance;
    type Device = CpuDevice;
    type Buffer = Vec<u8>;
    type Module = NoModule;
    type Graph = NoGraph;
}

/// The CPU has no compiled modules: it runs kernels' CPU forms.
#[derive(Debug)]
pub enum NoModule {}

/// Opens the CPU backend.
#[derive(Debug)]
pub struct CpuInstance {
    threads: usize,
}

impl Instance for CpuInstance {
    type A = Cpu;

    fn open(config: &BridgeConfig) -> Result<Self> {
        Ok(Self {
            threads: config.cpu.threads,
        })
    }

    fn enumerate(&self) -> Result<Vec<CpuDevice>> {
        Ok(vec![CpuDevice::new(self.threads)?])
    }
}

/// The host as one device.
#[derive(Debug)]
pub struct CpuDevice {
    info: DeviceInfo,
    ctx: CpuContext,
}

impl CpuDevice {
    /// The host with a pool of `threads` workers (0: one per logical core).
    ///
    /// # Errors
    /// If the pool cannot start.
    pub fn new(threads: usize) -> Result<Self> {
        let ctx = CpuContext::new(threads)?;
        let info = DeviceInfo {
            id: DeviceId {
                backend: BackendKind::Cpu,
                index: 0,
            },
            name: cpu_model_name().unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
            device_type: DeviceType::Cpu,
            total_memory: meminfo_kib("MemTotal:").map_or(0, |k| k * 1024),
            compute_units: ctx.threads() as u32,
            compute_capability: None,
            details: format!("{} worker threads", ctx.threads()),
        };
        Ok(Self { info, ctx })
    }

    /// The pool kernels' CPU forms run on.
    pub fn context(&self) -> &CpuContext {
        &self.ctx
    }
}

impl Device for CpuDevice {
    type A = Cpu;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        Ok(MemoryInfo {
            total: self.info.total_memory,
            free: meminfo_kib("MemAvailable:").map_or(0, |k| k * 1024),
        })
    }

    fn health(&self) -> Health {
        Health::Healthy
    }

    fn alloc(&self, bytes: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        v.try_reserve_exact(bytes).map_err(|e| Error::OutOfMemory {
            device: self.info.id.to_string(),
            requested: bytes,
            reason: e.to_string(),
        })?;
        v.resize(bytes, 0);
        Ok(v)
    }

    fn write(&self, dst: &mut Vec<u8>, offset: usize, src: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(src.len())
            .filter(|e| *e <= dst.len())
            .ok_or_else(|| {
                Error::invalid_batch(
                    "cpu:write",
                    format!(
                        "{} bytes at {offset} overrun a {}-byte buffer",
                        src.len(),
                        dst.len()
                    ),
                )
            })?;
        dst[offset..end].copy_from_slice(src);
        Ok(())
    }

    fn read(&self, src: &Vec<u8>, offset: usize, dst: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(dst.len())
            .filter(|e| *e <= src.len())
            .ok_or_else(|| {
                Error::invalid_batch(
                    "cpu:read",
                    format!(
                        "{} bytes at {offset} overrun a {}-byte buffer",
                        dst.len(),
                        src.len()
                    ),
                )
            })?;
        dst.copy_from_slice(&src[offset..end]);
        Ok(())
    }

    fn load_module(&self, kernel: &str, _sources: &KernelSources) -> Result<NoModule> {
        Err(Error::Unsupported {
            backend: BackendKind::Cpu,
            what: format!("device modules (the CPU runs {kernel}'s CPU form)"),
        })
    }

    fn execute(
        &self,
        module: &NoModule,
        _plan: &mut Plan,
        _f: &mut dyn FnMut(PlanOutputs<'_>),
    ) -> Result<()> {
        match *module {}
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// The CPU backend as the bridge sees it.
#[derive(Debug)]
pub struct CpuBackend {
    device: CpuDevice,
    infos: Vec<DeviceInfo>,
}

impl CpuBackend {
    /// Opens the CPU backend with `config.cpu.threads` workers.
    ///
    /// # Errors
    /// If the pool cannot start.
    pub fn new(config: &BridgeConfig) -> Result<Arc<Self>> {
        let device = CpuInstance::open(config)?
            .enumerate()?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Backend {
                backend: BackendKind::Cpu,
                message: "no CPU device".to_owned(),
                transient: false,
            })?;
        let infos = vec![device.info.clone()];
        Ok(Arc::new(Self { device, infos }))
    }

    /// The one CPU device.
    pub fn device(&self) -> &CpuDevice {
        &self.device
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn plan_target(&self, _device: usize) -> Option<PlanTarget> {
        None
    }

    fn memory_budget(&self, _device: usize) -> Option<u64> {
        None
    }

    fn health(&self, _device: usize) -> Health {
        Health::Healthy
    }

    fn submit(&self, device: usize, work: Work) -> Result<()> {
        if device != 0 {
            return Err(Error::DeviceLost {
                device: format!("cpu:{device}"),
                reason: "the CPU backend has one device".to_owned(),
            });
        }
        match work {
            Work::Cpu(job) => {
                let ctx = self.device.ctx.clone();
                self.device.ctx.spawn(move || job(&ctx));
                Ok(())
            }
            Work::Plan { .. } => Err(Error::Unsupported {
                backend: BackendKind::Cpu,
                what: "device plans (the CPU runs kernels' CPU forms)".to_owned(),
            }),
        }
    }
}
