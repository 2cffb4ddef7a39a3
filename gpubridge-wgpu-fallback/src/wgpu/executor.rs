//! One executor thread per device: it takes plans from a channel, compiles the kernel's WGSL on
//! first use, runs the plan on its device and completes it, one plan at a time.
//!
//! The device is driven only from this thread (wgpu's error scopes are per thread, and mapping
//! waits on `device.poll`), so the bridge's `submit` only sends on a channel and never blocks an
//! async worker. A panic inside wgpu or a kernel's packer is caught here and completes the plan
//! with an error; the thread carries on.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use gpubridge_core::device::{Device, PlanCompletion};
use gpubridge_core::{BackendKind, Error, KernelSources, Plan};

use super::device::WgpuDevice;

/// Work for an executor thread.
pub(crate) enum Job {
    Plan {
        plan: Plan,
        sources: KernelSources,
        complete: PlanCompletion,
    },
    /// Destroys the device, as a driver reset would lose it (tests of the fallback chain).
    #[cfg(feature = "fault-injection")]
    Destroy,
    Shutdown,
}

/// Starts the executor thread of `device`.
pub(crate) fn spawn(
    device: Arc<WgpuDevice>,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("gpubridge-{}", device.label))
        .spawn(move || {
            gpubridge_core::prefault_stack();
            run(&device, &rx);
        })?;
    Ok((tx, thread))
}

fn run(dev: &WgpuDevice, rx: &mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Shutdown => break,
            #[cfg(feature = "fault-injection")]
            Job::Destroy => dev.destroy(),
            Job::Plan {
                mut plan,
                sources,
                complete,
            } => {
                let bytes = plan.device_bytes();
                let t = std::time::Instant::now();
                run_plan(dev, &mut plan, &sources, complete);
                tracing::debug!(
                    device = %dev.label,
                    kernel = plan.kernel,
                    bytes,
                    "plan done in {:?}; pool {:?}",
                    t.elapsed(),
                    dev.pool_stats()
                );
                gpubridge_core::janitor::drop_later_if_large(plan, bytes);
            }
        }
    }
}

fn run_plan(dev: &WgpuDevice, plan: &mut Plan, sources: &KernelSources, complete: PlanCompletion) {
    let mut complete = Some(complete);
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let module = dev.load_module(plan.kernel, sources)?;
        dev.execute(&module, plan, &mut |outputs| {
            if let Some(c) = complete.take() {
                c(Ok(outputs));
            }
        })
    }));
    let error = match ran {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(payload) => Some(Error::Backend {
            backend: BackendKind::Wgpu,
            message: format!(
                "{}: panicked while running {}: {}",
                dev.label,
                plan.kernel,
                panic_message(&*payload)
            ),
            transient: false,
        }),
    };
    let Some(mut error) = error else { return };
    // Whatever the call said, a device that is now lost makes it a lost-device error, so that the
    // bridge stops sending work here.
    if let Some(reason) = dev.lost() {
        if !matches!(error, Error::DeviceLost { .. }) {
            error = Error::DeviceLost {
                device: dev.label.clone(),
                reason,
            };
        }
    }
    match complete.take() {
        Some(c) => {
            // The batch's items are the request's alone when it hears of the error (a batch of
            // singles is then split to find the items that failed alone).
            plan.release_packers();
            c(Err(error))
        }
        None => tracing::error!(device = %dev.label, "after its outputs were handed over: {error}"),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
