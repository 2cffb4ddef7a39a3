//! One executor thread per device: it owns the device's context, stream, compiled modules, memory
//! pool, pinned staging and cuBLAS handle, and runs plans sent to it in order.
//!
//! # Stream ordering
//! A plan runs as: pack inputs into pinned staging, then on the device's stream every H2D copy,
//! every step (launches, cuBLAS calls), every D2H copy, then one synchronisation; the outputs are
//! handed to the plan's completion while still in pinned staging (so unpacking is one copy), then
//! the device buffers go back to the pool.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas;
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use gpubridge_core::plan::{Arg, BufferRole, ExecStats, Plan, PlanOutputs, Step};
use gpubridge_core::{BackendKind, BridgeConfig, Error, KernelSources, Result};
use parking_lot::Mutex;

use crate::compile::PtxCache;
use crate::memory::{DeviceBuffer, DevicePool, PinnedBuffer};

/// Alignment of each buffer inside pinned staging.
const STAGING_ALIGN: usize = 256;

/// Work for an executor thread.
pub(crate) enum Job {
    Plan {
        plan: Plan,
        sources: KernelSources,
        complete: gpubridge_core::device::PlanCompletion,
    },
    Shutdown,
}

/// The shared state of an executor that other threads may read.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set when the device hit a sticky error; every later submission fails with it.
    pub lost: Mutex<Option<String>>,
    /// Pool statistics after the last plan.
    pub pool: Mutex<crate::memory::PoolStats>,
}

/// Maps a driver error to core's error, by what the caller can do.
pub(crate) fn driver_error(device: &str, what: &str, e: result::DriverError) -> Error {
    use sys::CUresult::*;
    match e.0 {
        CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfMemory {
            device: device.to_owned(),
            requested: 0,
            reason: format!("{what}: {e}"),
        },
        CUDA_ERROR_ILLEGAL_ADDRESS
        | CUDA_ERROR_LAUNCH_FAILED
        | CUDA_ERROR_ECC_UNCORRECTABLE
        | CUDA_ERROR_HARDWARE_STACK_ERROR
        | CUDA_ERROR_ILLEGAL_INSTRUCTION
        | CUDA_ERROR_MISALIGNED_ADDRESS
        | CUDA_ERROR_INVALID_ADDRESS_SPACE
        | CUDA_ERROR_INVALID_PC
        | CUDA_ERROR_CONTEXT_IS_DESTROYED
        | CUDA_ERROR_DEVICE_UNAVAILABLE
        | CUDA_ERROR_NO_DEVICE => Error::DeviceLost {
            device: device.to_owned(),
            reason: format!("{what}: {e}"),
        },
        _ => Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("{device}: {what}: {e}"),
            transient: false,
        },
    }
}

struct Blas(cublas::sys::cublasHandle_t);

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle came from `cublasCreate` and is destroyed once, on its own thread.
        if let Err(e) = unsafe { cublas::result::destroy_handle(self.0) } {
            tracing::warn!("cublasDestroy failed: {e:?}");
        }
    }
}

struct LoadedModule {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// What the executor found when it started.
pub(crate) struct Started {
    pub blas: bool,
}

struct Executor {
    label: String,
    arch: (u32, u32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Option<Blas>,
    ptx: PtxCache,
    modules: HashMap<(&'static str, u64), LoadedModule>,
    pool: DevicePool,
    staging_in: PinnedBuffer,
    staging_out: PinnedBuffer,
    events: [CudaEvent; 4],
    shared: Arc<Shared>,
}

/// Starts the executor thread of device `ordinal` and waits until its context is ready.
pub(crate) fn spawn(
    ordinal: usize,
    arch: (u32, u32),
    config: &BridgeConfig,
    ptx: PtxCache,
    shared: Arc<Shared>,
) -> Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>, Started)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Started>>();
    let label = format!("cuda:{ordinal}");
    let pool_limit = (config.memory.pool_size_mb as usize).saturating_mul(1 << 20);
    let handle = std::thread::Builder::new()
        .name(format!("gpubridge-{label}"))
        .spawn(move || {
            let mut ex = match Executor::new(ordinal, arch, label, pool_limit, ptx, shared) {
                Ok(ex) => ex,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(Started {
                blas: ex.blas.is_some(),
            }));
            while let Ok(job) = rx.recv() {
                match job {
                    Job::Plan {
                        plan,
                        sources,
                        complete,
                    } => ex.run(&plan, &sources, complete),
                    Job::Shutdown => break,
                }
            }
        })
        .map_err(|e| Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("cannot start the executor thread: {e}"),
            transient: false,
        })?;
    let started = ready_rx.recv().map_err(|_| Error::Backend {
        backend: BackendKind::Cuda,
        message: "the executor thread exited while starting".to_owned(),
        transient: false,
    })??;
    Ok((tx, handle, started))
}

impl Executor {
    fn new(
        ordinal: usize,
        arch: (u32, u32),
        label: String,
        pool_limit: usize,
        ptx: PtxCache,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let drv = |what: &str, e| driver_error(&label, what, e);
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("creating the context", e))?;
        // SAFETY: this context's streams are ordered by this thread alone (one stream, explicit
        // synchronisation), so cudarc's event tracking is not needed; it would also break capture.
        unsafe { ctx.disable_event_tracking() };
        ctx.bind_to_thread()
            .map_err(|e| drv("cuCtxSetCurrent", e))?;
        let stream = ctx.new_stream().map_err(|e| drv("cuStreamCreate", e))?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ev = || ctx.new_event(timing).map_err(|e| drv("cuEventCreate", e));
        let events = [ev()?, ev()?, ev()?, ev()?];
        // SAFETY: only probes whether libcublas can be loaded.
        let blas = if unsafe { cublas::sys::is_culib_present() } {
            match cublas::result::create_handle() {
                Ok(h) => {
                    // SAFETY: `h` is a fresh handle and the stream lives as long as the executor.
                    match unsafe { cublas::result::set_stream(h, stream.cu_stream() as _) } {
                        Ok(()) => Some(Blas(h)),
                        Err(e) => {
                            tracing::warn!(device = %label, "cublasSetStream failed, matrix multiply uses the built-in kernel: {e:?}");
                            drop(Blas(h));
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(device = %label, "cublasCreate failed, matrix multiply uses the built-in kernel: {e:?}");
                    None
                }
            }
        } else {
            tracing::info!(device = %label, "libcublas not found; matrix multiply uses the built-in kernel");
            None
        };
        Ok(Self {
            pool: DevicePool::new(label.clone(), pool_limit),
            label,
            arch,
            ctx,
            stream,
            blas,
            ptx,
            modules: HashMap::new(),
            staging_in: PinnedBuffer::empty(),
            staging_out: PinnedBuffer::empty(),
            events,
            shared,
        })
    }

    fn run(
        &mut self,
        plan: &Plan,
        sources: &KernelSources,
        complete: gpubridge_core::device::PlanCompletion,
    ) {
        if let Some(why) = self.shared.lost.lock().clone() {
            complete(Err(Error::DeviceLost {
                device: self.label.clone(),
                reason: why,
            }));
            return;
        }
        match self.execute(plan, sources) {
            Ok((layout, stats)) => {
                let total = layout
                    .iter()
                    .map(|(_, off, len)| off + len)
                    .max()
                    .unwrap_or(0);
                let staging: &[u8] = self.staging_out.slice_mut(total);
                let ids = layout.iter().map(|(id, ..)| *id).collect();
                let slices = layout
                    .iter()
                    .map(|(_, off, len)| &staging[*off..*off + *len])
                    .collect();
                complete(Ok(PlanOutputs::new(ids, slices, stats)));
            }
            Err(e) => {
                if let Error::DeviceLost { reason, .. } = &e {
                    tracing::error!(device = %self.label, "device lost: {reason}");
                    *self.shared.lost.lock() = Some(reason.clone());
                }
                complete(Err(e));
            }
        }
        *self.shared.pool.lock() = self.pool.stats();
    }

    /// The functions of `plan`'s launches, compiling and loading the kernel's module on first use.
    fn functions(&mut self, plan: &Plan, sources: &KernelSources) -> Result<Vec<sys::CUfunction>> {
        let entries: Vec<&'static str> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Launch(l) => Some(l.entry),
                Step::Gemm(_) => None,
            })
            .collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let source = sources.cuda.ok_or_else(|| Error::Unsupported {
            backend: BackendKind::Cuda,
            what: format!("kernel {} has no CUDA form", plan.kernel),
        })?;
        let key = (plan.kernel, sources.hash());
        if !self.modules.contains_key(&key) {
            let t = Instant::now();
            let (ptx, cached) = self.ptx.ptx(plan.kernel, source, key.1, self.arch)?;
            let module = self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| driver_error(&self.label, "cuModuleLoadData", e))?;
            tracing::info!(device = %self.label, kernel = plan.kernel, cached, "module ready in {:?}", t.elapsed());
            self.modules.insert(
                key,
                LoadedModule {
                    _module: module,
                    functions: HashMap::new(),
                },
            );
        }
        let loaded = self.modules.get_mut(&key).ok_or_else(|| Error::Backend {
            backend: BackendKind::Cuda,
            message: "module cache lost an entry".to_owned(),
            transient: false,
        })?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if !loaded.functions.contains_key(entry) {
                let f = loaded
                    ._module
                    .load_function(entry)
                    .map_err(|e| Error::Backend {
                        backend: BackendKind::Cuda,
                        message: format!(
                            "kernel {} has no entry point {entry:?}: {e}",
                            plan.kernel
                        ),
                        transient: false,
                    })?;
                loaded.functions.insert(entry, f);
            }
            out.push(loaded.functions[entry].cu_function());
        }
        Ok(out)
    }

    /// Runs the plan; returns the output layout in staging (id, offset, length) and timings.
    #[allow(clippy::type_complexity)] // A private return type read right below.
    fn execute(
        &mut self,
        plan: &Plan,
        sources: &KernelSources,
    ) -> Result<(
        Vec<(gpubridge_core::plan::BufferId, usize, usize)>,
        ExecStats,
    )> {
        let functions = self.functions(plan, sources)?;
        let mut in_layout = Vec::new();
        let mut out_layout = Vec::new();
        let (mut in_total, mut out_total) = (0usize, 0usize);
        for (i, b) in plan.buffers.iter().enumerate() {
            let id = gpubridge_core::plan::BufferId(i as u32);
            match b.role {
                BufferRole::Input(_) => {
                    in_layout.push((i, in_total, b.len));
                    in_total += b.len.div_ceil(STAGING_ALIGN) * STAGING_ALIGN;
                }
                BufferRole::Output => {
                    out_layout.push((id, out_total, b.len));
                    out_total += b.len.div_ceil(STAGING_ALIGN) * STAGING_ALIGN;
                }
                BufferRole::Scratch => {}
            }
        }
        self.staging_in.ensure(in_total, &self.label)?;
        self.staging_out.ensure(out_total, &self.label)?;
        {
            let staging = self.staging_in.slice_mut(in_total);
            for (i, off, len) in &in_layout {
                if let BufferRole::Input(pack) = &plan.buffers[*i].role {
                    pack(&mut staging[*off..*off + *len]);
                }
            }
        }
        let mut bufs: Vec<DeviceBuffer> = Vec::with_capacity(plan.buffers.len());
        for b in &plan.buffers {
            match self.pool.rent(b.len) {
                Ok(d) => bufs.push(d),
                Err(e) => {
                    bufs.into_iter().for_each(|d| self.pool.give_back(d));
                    return Err(e);
                }
            }
        }
        let result = self.enqueue(plan, &functions, &bufs, &in_layout, &out_layout);
        // Whatever happened, nothing may still be using the buffers when they go back.
        let synced = self
            .stream
            .synchronize()
            .map_err(|e| driver_error(&self.label, "cuStreamSynchronize", e));
        bufs.into_iter().for_each(|d| self.pool.give_back(d));
        result?;
        synced?;
        let ms = |a: usize, b: usize| {
            self.events[a]
                .elapsed_ms(&self.events[b])
                .map(|m| Duration::from_secs_f64(f64::from(m.max(0.0)) / 1e3))
                .unwrap_or_default()
        };
        let stats = ExecStats {
            compute: ms(1, 2),
            transfer: ms(0, 1) + ms(2, 3),
            graph_replayed: false,
        };
        Ok((out_layout, stats))
    }

    fn enqueue(
        &mut self,
        plan: &Plan,
        functions: &[sys::CUfunction],
        bufs: &[DeviceBuffer],
        in_layout: &[(usize, usize, usize)],
        out_layout: &[(gpubridge_core::plan::BufferId, usize, usize)],
    ) -> Result<()> {
        let label = self.label.clone();
        let drv = |what: &str, e| driver_error(&label, what, e);
        let cs = self.stream.cu_stream();
        self.events[0]
            .record(&self.stream)
            .map_err(|e| drv("cuEventRecord", e))?;
        let in_total = in_layout.last().map_or(0, |(_, off, len)| off + len);
        let staging = self.staging_in.slice_mut(in_total);
        for (i, off, len) in in_layout {
            if *len > 0 {
                // SAFETY: the device buffer holds at least `len` bytes (rented for it); the pinned
                // source stays alive and unmodified until the stream is synchronised in `execute`.
                unsafe { result::memcpy_htod_async(bufs[*i].ptr, &staging[*off..*off + *len], cs) }
                    .map_err(|e| drv("cuMemcpyHtoDAsync", e))?;
            }
        }
        self.events[1]
            .record(&self.stream)
            .map_err(|e| drv("cuEventRecord", e))?;
        let ptr = |a: &Arg| -> Result<sys::CUdeviceptr> {
            match a {
                Arg::Buffer { id, offset } => Ok(bufs[id.0 as usize].ptr + *offset as u64),
                other => Err(Error::invalid_batch(
                    plan.kernel,
                    format!("expected a buffer argument, got {other:?}"),
                )),
            }
        };
        let mut next_fn = functions.iter();
        for step in &plan.steps {
            match step {
                Step::Launch(l) => {
                    let f = *next_fn.next().ok_or_else(|| {
                        Error::invalid_batch(plan.kernel, "more launches than entry points")
                    })?;
                    let mut values: Vec<u64> = l
                        .args
                        .iter()
                        .map(|a| match a {
                            Arg::Buffer { .. } => ptr(a),
                            Arg::U32(v) => Ok(u64::from(*v)),
                            Arg::U64(v) => Ok(*v),
                            Arg::F32(v) => Ok(u64::from(v.to_bits())),
                        })
                        .collect::<Result<_>>()?;
                    let mut params: Vec<*mut c_void> = values
                        .iter_mut()
                        .map(|v| (v as *mut u64).cast::<c_void>())
                        .collect();
                    let g = (l.grid[0], l.grid[1], l.grid[2]);
                    let b = (l.block[0], l.block[1], l.block[2]);
                    // SAFETY: `f` is a function of a module loaded in this context; each parameter
                    // points to an 8-byte slot whose low bytes hold the argument in the width the
                    // kernel declares (little-endian), and the driver copies them at enqueue time.
                    // Buffer arguments are live pool buffers, checked against the plan by
                    // `Plan::check`, and stay rented until the stream is synchronised.
                    unsafe { result::launch_kernel(f, g, b, l.shared_mem_bytes, cs, &mut params) }
                        .map_err(|e| drv(&format!("cuLaunchKernel({})", l.entry), e))?;
                }
                Step::Gemm(g) => {
                    let blas = self.blas.as_ref().ok_or_else(|| Error::Unsupported {
                        backend: BackendKind::Cuda,
                        what: "cuBLAS is not loaded".to_owned(),
                    })?;
                    let (a, b, c) = (ptr(&g.a)?, ptr(&g.b)?, ptr(&g.c)?);
                    let (m, k, n) = (g.m as i32, g.k as i32, g.n as i32);
                    let (alpha, beta) = (1.0f32, 0.0f32);
                    use cublas::sys::cublasOperation_t::CUBLAS_OP_N;
                    // Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
                    // SAFETY: the handle is bound to this stream; A, B and C are live buffers
                    // holding m*k, k*n and m*n floats at these offsets (the kernel's plan sized
                    // them); leading dimensions match the row-major layout.
                    unsafe {
                        cublas::result::sgemm(
                            blas.0,
                            CUBLAS_OP_N,
                            CUBLAS_OP_N,
                            n,
                            m,
                            k,
                            &alpha,
                            b as *const f32,
                            n,
                            a as *const f32,
                            k,
                            &beta,
                            c as *mut f32,
                            n,
                        )
                    }
                    .map_err(|e| Error::Backend {
                        backend: BackendKind::Cuda,
                        message: format!("{label}: cublasSgemm: {e:?}"),
                        transient: false,
                    })?;
                }
            }
        }
        self.events[2]
            .record(&self.stream)
            .map_err(|e| drv("cuEventRecord", e))?;
        let out_total = out_layout.last().map_or(0, |(_, off, len)| off + len);
        let staging = self.staging_out.slice_mut(out_total);
        for (id, off, len) in out_layout {
            if *len > 0 {
                // SAFETY: the destination is our pinned staging (alive until after the
                // synchronisation); the source buffer holds at least `len` bytes.
                unsafe {
                    result::memcpy_dtoh_async(
                        &mut staging[*off..*off + *len],
                        bufs[id.0 as usize].ptr,
                        cs,
                    )
                }
                .map_err(|e| drv("cuMemcpyDtoHAsync", e))?;
            }
        }
        self.events[3]
            .record(&self.stream)
            .map_err(|e| drv("cuEventRecord", e))?;
        Ok(())
    }
}
