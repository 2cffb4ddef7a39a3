//! The kernel catalog: register, resolve by id (with the caller's types checked), list.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernel::{DynKernel, Kernel, KernelSources};

/// What the catalog knows of a registered kernel, without its types.
#[derive(Debug, Clone)]
pub struct KernelDescriptor {
    /// Stable id.
    pub id: &'static str,
    /// Rust type name of one input item.
    pub input_type: &'static str,
    /// Rust type name of one output item.
    pub output_type: &'static str,
    /// Device sources.
    pub sources: KernelSources,
    /// Hash of the sources taken at registration ([`KernelSources::hash`]).
    pub source_hash: u64,
}

struct Entry {
    descriptor: KernelDescriptor,
    input: TypeId,
    output: TypeId,
    /// Holds an `Arc<dyn DynKernel<I, O>>` for the kernel's own `I` and `O`.
    handle: Box<dyn Any + Send + Sync>,
}

/// Every kernel a bridge can run, by id. Only registered kernels ever run: there is no path for a
/// caller to hand in code, and an unknown id is an error, never a passthrough.
#[derive(Default)]
pub struct KernelCatalog {
    entries: BTreeMap<&'static str, Entry>,
}

impl std::fmt::Debug for KernelCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl KernelCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `kernel` under [`Kernel::ID`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if a kernel with the same id is already registered.
    pub fn register<K: Kernel>(&mut self, kernel: K) -> Result<()> {
        if self.entries.contains_key(K::ID) {
            return Err(Error::invalid_batch(
                K::ID,
                "a kernel with this id is already registered",
            ));
        }
        let sources = Kernel::sources(&kernel);
        let handle: Arc<dyn DynKernel<K::Input, K::Output>> = Arc::new(kernel);
        self.entries.insert(
            K::ID,
            Entry {
                descriptor: KernelDescriptor {
                    id: K::ID,
                    input_type: std::any::type_name::<K::Input>(),
                    output_type: std::any::type_name::<K::Output>(),
                    sources,
                    source_hash: sources.hash(),
                },
                input: TypeId::of::<K::Input>(),
                output: TypeId::of::<K::Output>(),
                handle: Box::new(handle),
            },
        );
        Ok(())
    }

    /// Resolves `id` for a caller that sends `I` and expects `O`.
    ///
    /// # Errors
    /// [`Error::UnknownKernel`] if no such id is registered; [`Error::KernelTypeMismatch`] if the
    /// kernel's types are not `I -> O`.
    pub fn resolve<I: 'static, O: 'static>(&self, id: &str) -> Result<Arc<dyn DynKernel<I, O>>> {
        let entry = self.entries.get(id).ok_or_else(|| Error::UnknownKernel {
            id: id.to_owned(),
            registered: self.entries.keys().copied().collect::<Vec<_>>().join(", "),
        })?;
        let mismatch = || Error::KernelTypeMismatch {
            id: id.to_owned(),
            expected: format!(
                "{} -> {}",
                entry.descriptor.input_type, entry.descriptor.output_type
            ),
            found: format!(
                "{} -> {}",
                std::any::type_name::<I>(),
                std::any::type_name::<O>()
            ),
        };
        if entry.input != TypeId::of::<I>() || entry.output != TypeId::of::<O>() {
            return Err(mismatch());
        }
        entry
            .handle
            .downcast_ref::<Arc<dyn DynKernel<I, O>>>()
            .cloned()
            .ok_or_else(mismatch)
    }

    /// Checks that `sources` are the device code kernel `id` was registered with, before they
    /// are compiled or launched: the text must be the registered text (the same address, the
    /// common case, or the same bytes).
    ///
    /// # Errors
    /// [`Error::UnknownKernel`]; [`Error::KernelSourceChanged`] when the sources differ.
    pub fn verify_sources(&self, id: &str, sources: &KernelSources) -> Result<()> {
        let entry = self.entries.get(id).ok_or_else(|| Error::UnknownKernel {
            id: id.to_owned(),
            registered: self.entries.keys().copied().collect::<Vec<_>>().join(", "),
        })?;
        // The registered text itself is kept: comparing against it (by address first, then by
        // content) is exact and costs a `memcmp`, where hashing kilobytes of source on every
        // request cost microseconds. A literal's address is not stable: each codegen unit that
        // inlines `sources()` may hold its own copy of the text.
        let same = |a: Option<&'static str>, b: Option<&'static str>| match (a, b) {
            (Some(a), Some(b)) => {
                (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
            }
            (None, None) => true,
            _ => false,
        };
        let registered = &entry.descriptor.sources;
        if same(registered.cuda, sources.cuda) && same(registered.wgsl, sources.wgsl) {
            return Ok(());
        }
        let found = sources.hash();
        Err(Error::KernelSourceChanged {
            id: id.to_owned(),
            registered: entry.descriptor.source_hash,
            found,
        })
    }

    /// Every registered kernel id.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.keys().copied()
    }

    /// The descriptor of `id`, if registered.
    pub fn descriptor(&self, id: &str) -> Option<&KernelDescriptor> {
        self.entries.get(id).map(|e| &e.descriptor)
    }

    /// Every registered kernel, sorted by id.
    pub fn list(&self) -> Vec<&KernelDescriptor> {
        self.entries.values().map(|e| &e.descriptor).collect()
    }

    /// Number of registered kernels.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no kernel is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
