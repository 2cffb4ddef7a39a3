//! The execution context that a kernel's CPU form runs in: a dedicated rayon pool.
//!
//! Kernels parallelise with rayon inside [`CpuContext::install`], so CPU work never runs on the
//! caller's tokio workers and its thread count comes from configuration (`cpu.threads`).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::BackendKind;

/// A handle on the CPU backend's thread pool, passed to every kernel's CPU form.
#[derive(Clone)]
pub struct CpuContext {
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for CpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuContext")
            .field("threads", &self.threads())
            .finish()
    }
}

impl CpuContext {
    /// A context with its own pool of `threads` workers (`0` means one per logical core).
    ///
    /// # Errors
    /// [`Error::Backend`] if the operating system refuses to start the threads.
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gpubridge-cpu-{i}"))
            .start_handler(|_| crate::threads::prefault_stack())
            .build()
            .map_err(|e| Error::Backend {
                backend: BackendKind::Cpu,
                message: format!("cannot start the CPU thread pool: {e}"),
                transient: false,
            })?;
        Ok(Self {
            pool: Arc::new(pool),
        })
    }

    /// Runs `f` inside the pool, so rayon's parallel iterators in `f` use the pool's threads.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Starts `f` on the pool without waiting for it.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        self.pool.spawn(f)
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}
