//! Raw CUDA baselines for the benchmarks: the same operations the bridge performs, called straight
//! through cudarc with nothing of gpubridge in between, so that every benchmark row can be a ratio
//! against a figure measured in the same run on the same card.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas;
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaStream};
use gpubridge_core::{BackendKind, Error, Result};

use crate::executor::driver_error;
use crate::memory::{DevicePool, PinnedBuffer};

const SOURCE: &str = r#"
extern "C" __global__ void empty_kernel() {}
extern "C" __global__ void bump(float* x) { x[threadIdx.x] += 1.0f; }
"#;

/// A context, a stream and the baseline kernels on device 0, bound to the calling thread.
pub struct Baseline {
    last_chain_spin: Option<Duration>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    empty: CudaFunction,
    bump: CudaFunction,
    /// The bridge's graph copy kernel (`executor::COPY_SOURCE`).
    copy: CudaFunction,
}

fn drv(what: &str) -> impl Fn(result::DriverError) -> Error + '_ {
    move |e| driver_error("cuda:0", what, e)
}

/// Host memory pinned by the driver, freed on drop.
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: a context is current on this thread (the `Baseline` bound it).
        let ptr = unsafe { result::malloc_host(len.max(1), 0) }
            .map_err(drv("cuMemHostAlloc"))?
            .cast::<u8>();
        Ok(Self { ptr, len })
    }
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `len` bytes for our lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemHostAlloc`; callers synchronise before dropping.
        let _ = unsafe { result::free_host(self.ptr.cast::<c_void>()) };
    }
}

/// A raw device allocation, freed on drop.
struct DevMem(sys::CUdeviceptr);

impl DevMem {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: a context is current on this thread.
        Ok(Self(
            unsafe { result::malloc_sync(len.max(1)) }.map_err(drv("cuMemAlloc"))?,
        ))
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemAlloc` in the current context; callers synchronise first.
        let _ = unsafe { result::free_sync(self.0) };
    }
}

/// The chain baseline's memory: 32 floats uploaded from pinned memory, bumped on the device and
/// downloaded into pinned memory. The pinned buffers are the executor's mapped staging, so that
/// the copies can also be made by a kernel (`kernel_copies`).
struct ChainBuffers {
    /// The device bytes the chain bumps: `own`'s, or another owner's ([`ChainBuffers::at`]).
    dev: sys::CUdeviceptr,
    /// Freed when the chain's buffers go (held only for that).
    _own: Option<DevMem>,
    host: PinnedBuffer,
    back: PinnedBuffer,
}

impl ChainBuffers {
    fn new() -> Result<Self> {
        Self::at(None)
    }

    /// The chain's buffers, bumping the 128 bytes at `dev` when given (the caller vouches for
    /// them), else 1024 bytes of its own.
    fn at(dev: Option<sys::CUdeviceptr>) -> Result<Self> {
        let mapped = || -> Result<PinnedBuffer> {
            let mut b = PinnedBuffer::mapped();
            b.ensure(128, "cuda:0")?;
            Ok(b)
        };
        let mut host = mapped()?;
        for (i, x) in host.slice_mut(128).chunks_exact_mut(4).enumerate() {
            x.copy_from_slice(&(i as f32).to_ne_bytes());
        }
        let (dev, own) = match dev {
            Some(dev) => (dev, None),
            None => {
                let own = DevMem::new(1024)?;
                (own.0, Some(own))
            }
        };
        Ok(Self {
            dev,
            _own: own,
            host,
            back: mapped()?,
        })
    }

    /// Whether the last download holds the uploaded values bumped `n` times (call after a
    /// synchronisation).
    fn check(&mut self, n: usize) -> Result<()> {
        let wrong = self
            .back
            .slice_mut(128)
            .chunks_exact(4)
            .enumerate()
            .find(|(i, x)| f32::from_ne_bytes([x[0], x[1], x[2], x[3]]) != (i + n) as f32);
        match wrong {
            None => Ok(()),
            Some((i, _)) => Err(Error::Backend {
                backend: BackendKind::Cuda,
                message: format!("baseline chain of {n} kernels computed a wrong value at {i}"),
                transient: false,
            }),
        }
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    percentile(samples, 0.5)
}

/// The `q`-quantile of `samples` (sorted in place), nearest rank.
pub fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

impl Baseline {
    /// Opens device 0 and compiles the baseline kernels.
    ///
    /// # Errors
    /// When CUDA or NVRTC is not usable.
    pub fn new() -> Result<Self> {
        crate::probe().map_err(|e| Error::Unsupported {
            backend: BackendKind::Cuda,
            what: e.0,
        })?;
        let ctx = CudaContext::new(0).map_err(drv("creating the context"))?;
        // SAFETY: only this thread uses the context's streams; capture needs tracking off.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let ptx = crate::compile("baseline", SOURCE, (major as u32, minor as u32))?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(drv("cuModuleLoadData"))?;
        let empty = module
            .load_function("empty_kernel")
            .map_err(drv("cuModuleGetFunction"))?;
        let bump = module
            .load_function("bump")
            .map_err(drv("cuModuleGetFunction"))?;
        let ptx = crate::compile(
            "gpubridge_copy",
            crate::executor::COPY_SOURCE,
            (major as u32, minor as u32),
        )?;
        let copy = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(drv("cuModuleLoadData"))?
            .load_function("gpubridge_copy")
            .map_err(drv("cuModuleGetFunction"))?;
        Ok(Self {
            last_chain_spin: None,
            ctx,
            stream,
            empty,
            bump,
            copy,
        })
    }

    /// Ends a capture begun on the stream (whatever `captured` says, so the stream leaves capture
    /// mode) and instantiates the graph. Not uploaded ahead, as the executor's graphs (an
    /// uploaded graph not yet launched slows every graph of the context).
    fn end_capture(&self, captured: Result<()>) -> Result<cudarc::driver::CudaGraph> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(drv("cuStreamEndCapture"))?;
        captured?;
        let graph = graph.ok_or_else(|| Error::Backend {
            backend: BackendKind::Cuda,
            message: "empty graph".to_owned(),
            transient: false,
        })?;
        Ok(graph)
    }

    fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }

    /// Pinned host-to-device bandwidth in GB/s for one copy of `bytes` (best of `reps`).
    ///
    /// # Errors
    /// Driver errors.
    pub fn h2d_pinned_gbps(&self, bytes: usize, reps: usize) -> Result<f64> {
        let mut host = Pinned::new(bytes)?;
        host.slice().fill(1);
        let dev = DevMem::new(bytes)?;
        let mut best = Duration::MAX;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            // SAFETY: both ranges are `bytes` long and alive until the synchronisation below.
            unsafe { result::memcpy_htod_async(dev.0, host.slice(), self.stream.cu_stream()) }
                .map_err(drv("cuMemcpyHtoDAsync"))?;
            self.sync()?;
            best = best.min(t.elapsed());
        }
        Ok(gbps(bytes, best))
    }

    /// Pinned device-to-host bandwidth in GB/s (best of `reps`).
    ///
    /// # Errors
    /// Driver errors.
    pub fn d2h_pinned_gbps(&self, bytes: usize, reps: usize) -> Result<f64> {
        let mut host = Pinned::new(bytes)?;
        let dev = DevMem::new(bytes)?;
        let mut best = Duration::MAX;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            // SAFETY: as in `h2d_pinned_gbps`.
            unsafe { result::memcpy_dtoh_async(host.slice(), dev.0, self.stream.cu_stream()) }
                .map_err(drv("cuMemcpyDtoHAsync"))?;
            self.sync()?;
            best = best.min(t.elapsed());
        }
        Ok(gbps(bytes, best))
    }

    /// `cuMemAllocAsync` + `cuMemFreeAsync` of `bytes` on the default memory pool: one time per
    /// pair, `iters` pairs.
    ///
    /// # Errors
    /// Driver errors.
    pub fn alloc_async_pairs(&self, bytes: usize, iters: usize) -> Result<Vec<Duration>> {
        let cs = self.stream.cu_stream();
        let mut out = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            // SAFETY: the pointer is freed on the same stream right after.
            let p = unsafe { result::malloc_async(cs, bytes) }.map_err(drv("cuMemAllocAsync"))?;
            // SAFETY: `p` came from `cuMemAllocAsync` on this stream.
            unsafe { result::free_async(p, cs) }.map_err(drv("cuMemFreeAsync"))?;
            out.push(t.elapsed());
        }
        self.sync()?;
        Ok(out)
    }

    /// gpubridge's device pool rent + return of `bytes`: one time per pair, `iters` pairs (after a
    /// first warm-up rent, as a running service has).
    ///
    /// # Errors
    /// Driver errors.
    pub fn pool_pairs(&self, bytes: usize, iters: usize) -> Result<Vec<Duration>> {
        let mut pool = DevicePool::new("cuda:0".to_owned(), 1 << 30);
        let warm = pool.rent(bytes)?;
        pool.give_back(warm);
        let mut out = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            let b = pool.rent(bytes)?;
            pool.give_back(std::hint::black_box(b));
            out.push(t.elapsed());
        }
        Ok(out)
    }

    /// Empty kernel launch then wait for completion, `iters` round trips.
    ///
    /// # Errors
    /// Driver errors.
    pub fn launch_round_trips(&self, iters: usize) -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            // SAFETY: `empty_kernel` takes no parameters.
            unsafe {
                result::launch_kernel(
                    self.empty.cu_function(),
                    (1, 1, 1),
                    (1, 1, 1),
                    0,
                    self.stream.cu_stream(),
                    &mut [],
                )
            }
            .map_err(drv("cuLaunchKernel"))?;
            self.sync()?;
            out.push(t.elapsed());
        }
        Ok(out)
    }

    /// Per-kernel time of a chain of `n` small kernels with a 128-byte upload before and download
    /// after (the same work as the bridge's chain plan): (stream launches, one graph replay),
    /// each the median of `reps` runs after a warm-up. The downloaded values are checked after
    /// each way of running.
    ///
    /// # Errors
    /// Driver errors; [`Error::Backend`] if the chain computed a wrong value.
    pub fn chain_per_kernel(&mut self, n: usize, reps: usize) -> Result<(Duration, Duration)> {
        let mut chain = ChainBuffers::new()?;
        self.enqueue_chain(&mut chain, n, false)?;
        self.sync()?;
        chain.check(n)?;
        let mut stream_times = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            self.enqueue_chain(&mut chain, n, false)?;
            self.sync()?;
            stream_times.push(t.elapsed());
        }
        chain.check(n)?;
        let graph = self.capture_chain(&mut chain, n, false)?;
        let mut graph_times = self.replays(&graph, reps.max(1), || Ok(()))?;
        chain.check(n)?;
        let mut spun = Vec::new();
        let cs = self.stream.cu_stream();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            graph.launch().map_err(drv("cuGraphLaunch"))?;
            // SAFETY: `cs` is our live stream.
            while unsafe { sys::cuStreamQuery(cs) } == sys::CUresult::CUDA_ERROR_NOT_READY {
                std::hint::spin_loop();
            }
            spun.push(t.elapsed());
        }
        chain.check(n)?;
        drop(graph);
        self.last_chain_spin = Some(median(&mut spun) / n as u32);
        Ok((
            median(&mut stream_times) / n as u32,
            median(&mut graph_times) / n as u32,
        ))
    }

    /// The graph of [`Baseline::chain_per_kernel`] replayed `reps` times (launch and
    /// `cuStreamSynchronize`, as there), with `between` called after each replay: another
    /// measurement of the same work (the bridge's call of its chain) interleaved with the
    /// baseline's, so that both see the machine in the same state (launch latency on a virtual
    /// machine drifts between runs of a few seconds). Returns the replays' times; the chain's
    /// values are checked at the end.
    ///
    /// # Errors
    /// Driver errors, a wrong value, or `between`'s error.
    pub fn chain_graph_interleaved(
        &mut self,
        n: usize,
        reps: usize,
        between: impl FnMut() -> Result<()>,
    ) -> Result<Vec<Duration>> {
        self.interleaved(ChainBuffers::new()?, n, reps, between)
    }

    /// The replays of [`Baseline::chain_graph_interleaved`] over `chain`'s bytes.
    fn interleaved(
        &mut self,
        mut chain: ChainBuffers,
        n: usize,
        reps: usize,
        between: impl FnMut() -> Result<()>,
    ) -> Result<Vec<Duration>> {
        let graph = self.capture_chain(&mut chain, n, false)?;
        let times = self.replays(&graph, reps, between)?;
        chain.check(n)?;
        Ok(times)
    }

    /// [`Baseline::chain_graph_interleaved`] over the 128 device bytes at `at` rather than bytes
    /// of its own. On the H200 the same chain runs up to ~17% faster or slower depending on
    /// where its bytes sit (which L2 slice holds them; docs/PERFORMANCE.md, nineteenth
    /// session), so a raw graph compared with the bridge's is made over the bridge graph's own
    /// bytes ([`crate::CudaBackend::graph_outputs`]).
    ///
    /// # Safety
    /// `at` must be 128 bytes of device memory of this device's primary context that nothing
    /// else uses while this runs: `between` may use them only as the chain does, one at a time
    /// (the bridge's graph writes them afresh with its first kernel before it bumps them, so a
    /// call of it between the replays is such a use).
    ///
    /// # Errors
    /// As [`Baseline::chain_graph_interleaved`].
    pub unsafe fn chain_graph_interleaved_at(
        &mut self,
        n: usize,
        reps: usize,
        at: sys::CUdeviceptr,
        between: impl FnMut() -> Result<()>,
    ) -> Result<Vec<Duration>> {
        self.interleaved(ChainBuffers::at(Some(at))?, n, reps, between)
    }

    /// [`Baseline::chain_graph_kernel_copies`] over the 128 device bytes at `at`.
    ///
    /// # Safety
    /// As [`Baseline::chain_graph_interleaved_at`], with nothing else using them meanwhile.
    ///
    /// # Errors
    /// As [`Baseline::chain_graph_kernel_copies`].
    pub unsafe fn chain_graph_kernel_copies_at(
        &mut self,
        n: usize,
        reps: usize,
        at: sys::CUdeviceptr,
    ) -> Result<Duration> {
        self.kernel_copies(ChainBuffers::at(Some(at))?, n, reps)
    }

    /// The per-kernel time of [`Baseline::chain_graph_kernel_copies`] over `chain`'s bytes.
    fn kernel_copies(
        &mut self,
        mut chain: ChainBuffers,
        n: usize,
        reps: usize,
    ) -> Result<Duration> {
        let graph = self.capture_chain(&mut chain, n, true)?;
        chain.check(n)?;
        let mut times = self.replays(&graph, reps.max(1), || Ok(()))?;
        chain.check(n)?;
        Ok(median(&mut times) / n as u32)
    }

    /// Times `reps` replays of `graph` (launch and `cuStreamSynchronize`), calling `between`
    /// after each.
    fn replays(
        &self,
        graph: &cudarc::driver::CudaGraph,
        reps: usize,
        mut between: impl FnMut() -> Result<()>,
    ) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            graph.launch().map_err(drv("cuGraphLaunch"))?;
            self.sync()?;
            times.push(t.elapsed());
            between()?;
        }
        Ok(times)
    }

    /// Enqueues the chain on the stream: the 128-byte upload, `n` bumps, the download; the two
    /// copies made by the bridge's copy kernel through the mapped host buffers when
    /// `kernel_copies`, by `cuMemcpy*Async` otherwise.
    fn enqueue_chain(&self, chain: &mut ChainBuffers, n: usize, kernel_copies: bool) -> Result<()> {
        let cs = self.stream.cu_stream();
        let dev = chain.dev;
        let copy = self.copy.cu_function();
        if kernel_copies {
            crate::executor::launch_copy(
                &self.stream,
                copy,
                chain.host.device_ptr(),
                dev,
                128,
                "cuda:0",
            )?;
        } else {
            // SAFETY: 128 pinned bytes to a 1024-byte device buffer, on this stream; the host
            // buffer outlives every use (callers synchronise before `chain` goes).
            unsafe { result::memcpy_htod_async(dev, &*chain.host.slice_mut(128), cs) }
                .map_err(drv("cuMemcpyHtoDAsync"))?;
        }
        for _ in 0..n {
            let mut p = dev;
            let mut params = [(&mut p as *mut u64).cast::<c_void>()];
            // SAFETY: `bump` takes one float pointer; the buffer holds 1024 bytes >= 32 floats.
            unsafe {
                result::launch_kernel(
                    self.bump.cu_function(),
                    (1, 1, 1),
                    (32, 1, 1),
                    0,
                    cs,
                    &mut params,
                )
            }
            .map_err(drv("cuLaunchKernel"))?;
        }
        if kernel_copies {
            crate::executor::launch_copy(
                &self.stream,
                copy,
                dev,
                chain.back.device_ptr(),
                128,
                "cuda:0",
            )?;
        } else {
            // SAFETY: as above, back into 128 pinned bytes.
            unsafe { result::memcpy_dtoh_async(chain.back.slice_mut(128), dev, cs) }
                .map_err(drv("cuMemcpyDtoHAsync"))?;
        }
        Ok(())
    }

    /// The per-kernel time (median of `reps` replays, launch and `cuStreamSynchronize`) of the
    /// chain's graph with its two copies made by the bridge's copy kernel through mapped host
    /// memory, as the bridge's graphs of small plans copy, rather than by memcpy nodes. The
    /// downloaded values are checked.
    ///
    /// # Errors
    /// Driver errors; [`Error::Backend`] if the chain computed a wrong value.
    pub fn chain_graph_kernel_copies(&mut self, n: usize, reps: usize) -> Result<Duration> {
        self.kernel_copies(ChainBuffers::new()?, n, reps)
    }

    /// [`Baseline::chain_graph_kernel_copies`] timed two ways per replay: on the host (launch and
    /// `cuStreamSynchronize`) and on the device (events recorded before and after the launch);
    /// the medians per kernel. When the host figure moves and the device one does not, what
    /// changed is the launch or the wait, not the GPU's execution.
    ///
    /// # Errors
    /// Driver errors; [`Error::Backend`] if the chain computed a wrong value.
    pub fn chain_graph_kernel_copies_timed(
        &mut self,
        n: usize,
        reps: usize,
    ) -> Result<(Duration, Duration)> {
        let mut chain = ChainBuffers::new()?;
        let graph = self.capture_chain(&mut chain, n, true)?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(timing).map_err(drv("cuEventCreate"))?;
        let end = self.ctx.new_event(timing).map_err(drv("cuEventCreate"))?;
        let (mut host, mut device) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            start.record(&self.stream).map_err(drv("cuEventRecord"))?;
            graph.launch().map_err(drv("cuGraphLaunch"))?;
            end.record(&self.stream).map_err(drv("cuEventRecord"))?;
            self.sync()?;
            host.push(t.elapsed());
            let ms = start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))?;
            device.push(Duration::from_secs_f64(f64::from(ms) / 1e3));
        }
        chain.check(n)?;
        Ok((median(&mut host) / n as u32, median(&mut device) / n as u32))
    }

    /// Captures [`Baseline::enqueue_chain`] into a graph and replays it once (warm-up).
    fn capture_chain(
        &self,
        chain: &mut ChainBuffers,
        n: usize,
        kernel_copies: bool,
    ) -> Result<cudarc::driver::CudaGraph> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("cuStreamBeginCapture"))?;
        let captured = self.enqueue_chain(chain, n, kernel_copies);
        let graph = self.end_capture(captured)?;
        graph.launch().map_err(drv("cuGraphLaunch"))?;
        self.sync()?;
        Ok(graph)
    }

    /// The per-kernel time of the last [`Baseline::chain_per_kernel`] graph when waited for by
    /// spinning on `cuStreamQuery` instead of blocking in `cuStreamSynchronize`.
    pub fn last_chain_spin(&self) -> Option<Duration> {
        self.last_chain_spin
    }

    /// cuBLAS SGEMM of two `n x n` matrices from pinned host memory and back (H2D, SGEMM, D2H,
    /// synchronise), the best of `reps` after a warm-up; and the SGEMM alone.
    ///
    /// # Errors
    /// Driver or cuBLAS errors; [`Error::Unsupported`] without cuBLAS; [`Error::Backend`] if the
    /// product (of constant matrices, so known exactly) is wrong.
    pub fn cublas_sgemm(&self, n: usize, reps: usize) -> Result<(Duration, Duration, Duration)> {
        // SAFETY: only probes for the library.
        if !unsafe { cublas::sys::is_culib_present() } {
            return Err(Error::Unsupported {
                backend: BackendKind::Cuda,
                what: "cuBLAS not found".to_owned(),
            });
        }
        let bytes = n * n * 4;
        let mut a = Pinned::new(bytes)?;
        let mut b = Pinned::new(bytes)?;
        let mut c = Pinned::new(bytes)?;
        a.slice()
            .chunks_exact_mut(4)
            .for_each(|x| x.copy_from_slice(&0.5f32.to_ne_bytes()));
        b.slice()
            .chunks_exact_mut(4)
            .for_each(|x| x.copy_from_slice(&0.25f32.to_ne_bytes()));
        let (da, db, dc) = (
            DevMem::new(bytes)?,
            DevMem::new(bytes)?,
            DevMem::new(bytes)?,
        );
        let handle = cublas::result::create_handle().map_err(|e| Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("cublasCreate: {e:?}"),
            transient: false,
        })?;
        let cs = self.stream.cu_stream();
        let blas_err = |e: cublas::result::CublasError| Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("{e:?}"),
            transient: false,
        };
        let n32 = n as i32;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Rows `r0 .. r0 + rows` of the row-major product (all of it with `r0 = 0, rows = n`).
        let gemm_rows = |r0: usize, rows: usize| -> Result<()> {
            let off = (r0 * n * 4) as u64;
            // SAFETY: handle bound to this stream below; all three buffers hold n*n floats and
            // the row range lies inside them.
            unsafe {
                cublas::result::sgemm(
                    handle,
                    cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                    cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                    n32,
                    rows as i32,
                    n32,
                    &alpha,
                    db.0 as *const f32,
                    n32,
                    (da.0 + off) as *const f32,
                    n32,
                    &beta,
                    (dc.0 + off) as *mut f32,
                    n32,
                )
            }
            .map_err(blas_err)
        };
        let gemm = || gemm_rows(0, n);
        let result = (|| -> Result<(Duration, Duration, Duration)> {
            // SAFETY: the stream outlives the handle's use here.
            unsafe { cublas::result::set_stream(handle, cs as _) }.map_err(blas_err)?;
            let mut round = || -> Result<Duration> {
                let t = Instant::now();
                // SAFETY: pinned sources and device destinations of `bytes`, synchronised below.
                unsafe {
                    result::memcpy_htod_async(da.0, a.slice(), cs)
                        .map_err(drv("cuMemcpyHtoDAsync"))?;
                    result::memcpy_htod_async(db.0, b.slice(), cs)
                        .map_err(drv("cuMemcpyHtoDAsync"))?;
                }
                gemm()?;
                // SAFETY: as above.
                unsafe { result::memcpy_dtoh_async(c.slice(), dc.0, cs) }
                    .map_err(drv("cuMemcpyDtoHAsync"))?;
                self.sync()?;
                Ok(t.elapsed())
            };
            round()?;
            let mut best_round = Duration::MAX;
            for _ in 0..reps.max(1) {
                best_round = best_round.min(round()?);
            }
            // A and B hold 0.5 and 0.25 everywhere: every entry of the product is n / 8.
            let want = n as f32 * 0.125;
            let wrong = c.slice().chunks_exact(4).position(|x| {
                (f32::from_ne_bytes([x[0], x[1], x[2], x[3]]) - want).abs() > want * 1e-5
            });
            if let Some(i) = wrong {
                return Err(Error::Backend {
                    backend: BackendKind::Cuda,
                    message: format!("baseline SGEMM {n}^3 computed a wrong entry at {i}"),
                    transient: false,
                });
            }
            let mut best_gemm = Duration::MAX;
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                gemm()?;
                self.sync()?;
                best_gemm = best_gemm.min(t.elapsed());
            }
            // The same product as eight row blocks, as a staged plan runs it.
            let mut best_blocks = Duration::MAX;
            let rows = n.div_ceil(8);
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                let mut r0 = 0;
                while r0 < n {
                    gemm_rows(r0, rows.min(n - r0))?;
                    r0 += rows;
                }
                self.sync()?;
                best_blocks = best_blocks.min(t.elapsed());
            }
            Ok((best_round, best_gemm, best_blocks))
        })();
        // SAFETY: the handle is not used after this.
        let _ = unsafe { cublas::result::destroy_handle(handle) };
        result
    }

    /// The round trip of TARGETS.md P2's workload done raw: 10 vectors of 100 floats (and their
    /// offsets) in pinned memory, uploaded, summed by gpubridge's own `segmented_sum` kernel,
    /// downloaded, all captured as one graph, replayed `iters` times with a spinning wait.
    ///
    /// # Errors
    /// Driver or NVRTC errors; [`Error::Backend`] if the last replay's sums are wrong.
    pub fn small_batch_graph(&self, iters: usize) -> Result<Vec<Duration>> {
        use gpubridge_core::Kernel;
        let src = gpubridge_core::kernels::Sum
            .sources()
            .cuda
            .unwrap_or_default();
        let (major, minor) = self
            .ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let ptx = crate::compile("baseline/sum", src, (major as u32, minor as u32))?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(drv("cuModuleLoadData"))?;
        let f = module
            .load_function("segmented_sum")
            .map_err(drv("cuModuleGetFunction"))?;
        let (segments, len) = (10usize, 100usize);
        let data_bytes = segments * len * 4;
        let in_bytes = data_bytes + (segments + 1) * 8;
        let mut host_in = Pinned::new(in_bytes)?;
        let mut host_out = Pinned::new(segments * 4)?;
        {
            let h = host_in.slice();
            for (i, c) in h[..data_bytes].chunks_exact_mut(4).enumerate() {
                c.copy_from_slice(&((i % 7) as f32).to_ne_bytes());
            }
            for s in 0..=segments {
                h[data_bytes + s * 8..data_bytes + s * 8 + 8]
                    .copy_from_slice(&((s * len) as u64).to_ne_bytes());
            }
        }
        let dev_in = DevMem::new(in_bytes)?;
        let dev_out = DevMem::new(segments * 4)?;
        let cs = self.stream.cu_stream();
        let (in_ptr, out_ptr) = (host_in.slice().as_mut_ptr(), host_out.slice().as_mut_ptr());
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("cuStreamBeginCapture"))?;
        let enqueue = || -> Result<()> {
            // SAFETY: pinned buffers of `in_bytes` and 40 bytes, device buffers of the same sizes;
            // they outlive the graph, which is dropped at the end of this function.
            unsafe {
                result::memcpy_htod_async(
                    dev_in.0,
                    std::slice::from_raw_parts(in_ptr, in_bytes),
                    cs,
                )
                .map_err(drv("cuMemcpyHtoDAsync"))?;
            }
            let (mut d, mut o, mut r, mut n) = (
                dev_in.0,
                dev_in.0 + data_bytes as u64,
                dev_out.0,
                segments as u32,
            );
            let mut params = [
                (&mut d as *mut u64).cast::<c_void>(),
                (&mut o as *mut u64).cast::<c_void>(),
                (&mut r as *mut u64).cast::<c_void>(),
                (&mut n as *mut u32).cast::<c_void>(),
            ];
            // SAFETY: `segmented_sum(const float*, const u64*, float*, unsigned)` with buffers sized above.
            unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    (segments as u32, 1, 1),
                    (256, 1, 1),
                    0,
                    cs,
                    &mut params,
                )
            }
            .map_err(drv("cuLaunchKernel"))?;
            // SAFETY: as above.
            unsafe {
                result::memcpy_dtoh_async(
                    std::slice::from_raw_parts_mut(out_ptr, segments * 4),
                    dev_out.0,
                    cs,
                )
                .map_err(drv("cuMemcpyDtoHAsync"))?;
            }
            Ok(())
        };
        let captured = enqueue();
        let graph = self.end_capture(captured)?;
        let spin = || {
            // SAFETY: `cs` is our live stream.
            while unsafe { sys::cuStreamQuery(cs) } == sys::CUresult::CUDA_ERROR_NOT_READY {
                std::hint::spin_loop();
            }
        };
        let mut out = Vec::with_capacity(iters);
        for i in 0..iters + 100 {
            let t = Instant::now();
            graph.launch().map_err(drv("cuGraphLaunch"))?;
            spin();
            if i >= 100 {
                out.push(t.elapsed());
            }
        }
        drop(graph);
        // SAFETY: 40 pinned bytes, read after the last replay finished.
        let sums = unsafe { std::slice::from_raw_parts(out_ptr, segments * 4) };
        for (seg, x) in sums.chunks_exact(4).enumerate() {
            let want: f32 = (seg * len..(seg + 1) * len).map(|i| (i % 7) as f32).sum();
            if f32::from_ne_bytes([x[0], x[1], x[2], x[3]]) != want {
                return Err(Error::Backend {
                    backend: BackendKind::Cuda,
                    message: format!("baseline small batch summed segment {seg} wrong"),
                    transient: false,
                });
            }
        }
        Ok(out)
    }

    /// Seconds to page-lock (`cuMemHostRegister`) and unlock `bytes` of ordinary, already-touched
    /// host memory: what DMA straight from a caller's `Vec` would cost before any copy.
    ///
    /// # Errors
    /// Driver errors.
    pub fn host_register_seconds(&self, bytes: usize) -> Result<f64> {
        let mut v = vec![1u8; bytes];
        let t = Instant::now();
        // SAFETY: `v` is a live allocation of `bytes` bytes, unregistered below before it drops.
        unsafe { sys::cuMemHostRegister_v2(v.as_mut_ptr().cast::<c_void>(), bytes, 0) }
            .result()
            .map_err(drv("cuMemHostRegister"))?;
        // SAFETY: registered just above.
        unsafe { sys::cuMemHostUnregister(v.as_mut_ptr().cast::<c_void>()) }
            .result()
            .map_err(drv("cuMemHostUnregister"))?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Host-side copy rates in GB/s, all cores (the rayon pool), for `bytes` of data: a pageable
    /// `Vec` into pinned memory in one parallel copy; the same in 8 MiB pieces, each piece one
    /// parallel copy (as the executor packs); and pinned memory into a fresh `Vec` (as an unpack
    /// does, page faults included). What the host can do around the PCIe copies.
    ///
    /// # Errors
    /// Driver errors allocating the pinned memory.
    pub fn host_copy_gbps(&self, bytes: usize) -> Result<(f64, f64, f64)> {
        use rayon::prelude::*;
        const TASK: usize = 256 << 10;
        const PIECE: usize = 8 << 20;
        let src = vec![3u8; bytes];
        let mut pinned = Pinned::new(bytes)?;
        let dst = pinned.slice();
        let copy = |d: &mut [u8], s: &[u8]| {
            let per = d.len().div_ceil(rayon::current_num_threads() * 2).max(TASK);
            d.par_chunks_mut(per)
                .zip(s.par_chunks(per))
                .for_each(|(d, s)| d.copy_from_slice(s));
        };
        copy(dst, &src);
        let best = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        let whole = best(&mut || copy(dst, &src));
        let pieces = best(&mut || {
            for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
                copy(d, s);
            }
        });
        let floats: &[f32] = bytemuck::cast_slice(&dst[..bytes / 4 * 4]);
        let fresh = best(&mut || {
            // As the built-in kernels unpack: a parallel extend of a fresh vector.
            let mut out: Vec<f32> = Vec::with_capacity(floats.len());
            out.par_extend(floats.par_iter().copied());
            std::hint::black_box(&out);
        });
        Ok((gbps(bytes, whole), gbps(bytes, pieces), gbps(bytes, fresh)))
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_default()
    }
}
