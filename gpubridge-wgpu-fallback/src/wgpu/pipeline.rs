//! Compiled WGSL: one shader module per kernel source, one compute pipeline per entry point, each
//! made once per device and cached; sources or entry points that failed to compile are remembered
//! with wgpu's message, so later requests fall back without compiling again.

use std::collections::HashMap;
use std::sync::Arc;

use gpubridge_core::{BackendKind, Error, Result};
use parking_lot::Mutex;

use super::error::{map_error, Scopes};

/// A kernel's WGSL compiled for one device: the bridge-facing module type of the wgpu backend
/// (its [`Api::Module`](gpubridge_core::Api::Module)). Cheap to clone.
#[derive(Clone)]
pub struct WgpuModule {
    inner: Arc<ModuleInner>,
}

impl std::fmt::Debug for WgpuModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuModule")
            .field("kernel", &self.inner.kernel)
            .finish_non_exhaustive()
    }
}

struct ModuleInner {
    kernel: String,
    shader: wgpu::ShaderModule,
    /// Pipelines by entry point, or the reason the entry point does not compile.
    pipelines: Mutex<HashMap<&'static str, std::result::Result<Arc<Pipeline>, String>>>,
}

/// One entry point's pipeline and the layout of its bind group 0.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl WgpuModule {
    /// Whether `other` is this very module (not a second compilation of the same source).
    pub fn same_as(&self, other: &WgpuModule) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The kernel this module was compiled for.
    pub fn kernel(&self) -> &str {
        &self.inner.kernel
    }

    /// The pipeline of `entry`, made on first use.
    ///
    /// # Errors
    /// [`Error::Unsupported`] with wgpu's message when the entry point does not exist or its
    /// pipeline is refused (remembered: the next call fails the same way without retrying).
    pub(crate) fn pipeline(
        &self,
        device: &wgpu::Device,
        label: &str,
        entry: &'static str,
    ) -> Result<Arc<Pipeline>> {
        let mut cache = self.inner.pipelines.lock();
        if let Some(found) = cache.get(entry) {
            return found.clone().map_err(unsupported);
        }
        let scopes = Scopes::push(device);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &self.inner.shader,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        let made = match scopes.pop() {
            None => {
                let layout = pipeline.get_bind_group_layout(0);
                Ok(Arc::new(Pipeline { pipeline, layout }))
            }
            Some(wgpu::Error::OutOfMemory { .. }) => {
                // Not remembered: memory may be available next time.
                return Err(Error::OutOfMemory {
                    device: label.to_owned(),
                    requested: 0,
                    reason: format!("wgpu: creating the pipeline of {}", self.inner.kernel),
                });
            }
            Some(e) => Err(reason(map_error(
                label,
                &format!("the pipeline of {}::{entry}", self.inner.kernel),
                e,
            ))),
        };
        if let Err(why) = &made {
            tracing::warn!(kernel = %self.inner.kernel, entry, "{why}");
        }
        cache.insert(entry, made.clone());
        made.map_err(unsupported)
    }
}

/// The words of an error, without the "unsupported on wgpu" its re-raising will add.
fn reason(e: Error) -> String {
    match e {
        Error::Unsupported { what, .. } => what,
        other => other.to_string(),
    }
}

fn unsupported(why: String) -> Error {
    Error::Unsupported {
        backend: BackendKind::Wgpu,
        what: why,
    }
}

/// A device's compiled modules, by kernel source (its address: sources are `&'static str`s).
#[derive(Default)]
pub(crate) struct ModuleCache {
    modules: HashMap<(usize, usize), std::result::Result<WgpuModule, String>>,
}

impl ModuleCache {
    /// The module of `wgsl`, compiled on first use.
    ///
    /// # Errors
    /// [`Error::Unsupported`] with wgpu's compiler message when the source does not compile
    /// (remembered, as above).
    pub(crate) fn load(
        &mut self,
        device: &wgpu::Device,
        label: &str,
        kernel: &str,
        wgsl: &'static str,
    ) -> Result<WgpuModule> {
        let key = (wgsl.as_ptr() as usize, wgsl.len());
        if let Some(found) = self.modules.get(&key) {
            return found.clone().map_err(unsupported);
        }
        let scopes = Scopes::push(device);
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel),
            source: wgpu::ShaderSource::Wgsl(wgsl.into()),
        });
        let made = match scopes.pop() {
            None => Ok(WgpuModule {
                inner: Arc::new(ModuleInner {
                    kernel: kernel.to_owned(),
                    shader,
                    pipelines: Mutex::new(HashMap::new()),
                }),
            }),
            Some(wgpu::Error::OutOfMemory { .. }) => {
                return Err(Error::OutOfMemory {
                    device: label.to_owned(),
                    requested: 0,
                    reason: format!("wgpu: compiling {kernel}"),
                });
            }
            Some(e) => Err(reason(map_error(
                label,
                &format!("compiling {kernel}'s WGSL"),
                e,
            ))),
        };
        if let Err(why) = &made {
            tracing::warn!(kernel, "{why}");
        }
        self.modules.insert(key, made.clone());
        made.map_err(unsupported)
    }
}
