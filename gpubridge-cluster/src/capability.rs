//! What a request requires of the worker that runs it.

use std::fmt;
use std::str::FromStr;

use gpubridge::BackendKind;
use serde::{Deserialize, Serialize};

/// What a request requires of its worker's backend; part of the request's subject
/// (`gpubridge.work.<capability>.<kernel>`), so only workers that satisfy it ever pull it.
///
/// | capability | served by a worker whose bridge has | the batch runs on |
/// |---|---|---|
/// | `any` (the default) | any backend | the worker's fallback chain |
/// | `gpu` | CUDA or wgpu | the first GPU backend in the worker's chain, no fallback |
/// | `cuda` | CUDA | CUDA, no fallback |
/// | `wgpu` | wgpu | wgpu, no fallback |
/// | `cpu` | the CPU backend | the CPU backend, no fallback |
///
/// ```
/// use gpubridge_cluster::Capability;
/// let gpu: Capability = "gpu".parse().unwrap();
/// assert_eq!(gpu.to_string(), "gpu");
/// assert!("tpu".parse::<Capability>().is_err());
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Whatever the worker has: its fallback chain decides.
    #[default]
    Any,
    /// A GPU backend: CUDA or wgpu.
    Gpu,
    /// The CUDA backend.
    Cuda,
    /// The wgpu backend.
    Wgpu,
    /// The CPU backend.
    Cpu,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] = [
        Capability::Any,
        Capability::Gpu,
        Capability::Cuda,
        Capability::Wgpu,
        Capability::Cpu,
    ];

    /// The lower-case name used in subjects, consumer names, announcements and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Any => "any",
            Capability::Gpu => "gpu",
            Capability::Cuda => "cuda",
            Capability::Wgpu => "wgpu",
            Capability::Cpu => "cpu",
        }
    }

    /// Whether a backend of kind `backend` satisfies this capability.
    pub fn satisfied_by(self, backend: BackendKind) -> bool {
        match self {
            Capability::Any => true,
            Capability::Gpu => backend.is_gpu(),
            Capability::Cuda => backend == BackendKind::Cuda,
            Capability::Wgpu => backend == BackendKind::Wgpu,
            Capability::Cpu => backend == BackendKind::Cpu,
        }
    }

    /// The capabilities a worker with `backends` (its usable backends) serves, in
    /// [`Capability::ALL`]'s order; none when it has no backend.
    pub fn served_by(backends: &[BackendKind]) -> Vec<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|c| backends.iter().any(|&b| c.satisfied_by(b)))
            .collect()
    }

    /// The backend a batch requiring this capability runs on, given the worker's `backends` in
    /// fallback order: the first that satisfies it, pinned (no fallback to another); `None` for
    /// [`Capability::Any`] (the whole chain) and when none satisfies it (a worker never serves
    /// such a capability: [`Capability::served_by`]).
    pub fn pinned_backend(self, backends: &[BackendKind]) -> Option<BackendKind> {
        if self == Capability::Any {
            return None;
        }
        backends.iter().copied().find(|&b| self.satisfied_by(b))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A capability name that is not one of `any`, `gpu`, `cuda`, `wgpu`, `cpu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?} (expected any, gpu, cuda, wgpu or cpu)")]
pub struct ParseCapabilityError(pub String);

impl FromStr for Capability {
    type Err = ParseCapabilityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == lower)
            .ok_or_else(|| ParseCapabilityError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendKind::{Cpu, Cuda, Wgpu};

    #[test]
    fn names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(c.to_string().parse::<Capability>(), Ok(c));
        }
        assert_eq!(" GPU ".parse::<Capability>(), Ok(Capability::Gpu));
        assert_eq!(
            "tpu".parse::<Capability>(),
            Err(ParseCapabilityError("tpu".to_owned()))
        );
        assert_eq!(Capability::default(), Capability::Any);
    }

    #[test]
    fn backends_serve_their_capabilities() {
        use Capability as C;
        assert_eq!(Capability::served_by(&[Cuda]), [C::Any, C::Gpu, C::Cuda]);
        assert_eq!(Capability::served_by(&[Wgpu]), [C::Any, C::Gpu, C::Wgpu]);
        assert_eq!(Capability::served_by(&[Cpu]), [C::Any, C::Cpu]);
        assert_eq!(
            Capability::served_by(&[Wgpu, Cpu]),
            [C::Any, C::Gpu, C::Wgpu, C::Cpu]
        );
        assert!(Capability::served_by(&[]).is_empty());
    }

    #[test]
    fn pins_the_first_satisfying_backend() {
        let chain = [Cuda, Wgpu, Cpu];
        assert_eq!(Capability::Any.pinned_backend(&chain), None);
        assert_eq!(Capability::Gpu.pinned_backend(&chain), Some(Cuda));
        assert_eq!(Capability::Gpu.pinned_backend(&[Wgpu, Cpu]), Some(Wgpu));
        assert_eq!(Capability::Wgpu.pinned_backend(&chain), Some(Wgpu));
        assert_eq!(Capability::Cpu.pinned_backend(&chain), Some(Cpu));
        assert_eq!(Capability::Cuda.pinned_backend(&[Wgpu, Cpu]), None);
        assert_eq!(Capability::Gpu.pinned_backend(&[Cpu]), None);
    }
}
