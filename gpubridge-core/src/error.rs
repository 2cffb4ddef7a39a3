//! The one error type of gpubridge, with variants named by what the caller can do about them.

use std::path::PathBuf;
use std::time::Duration;

use crate::device::BackendKind;

/// Result alias used throughout gpubridge.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a caller and a device.
///
/// Variants are named by what the caller can do: fix the input ([`Error::InvalidInput`]), register
/// the kernel ([`Error::UnknownKernel`]), retry later ([`Error::QueueFull`]), and so on. The bridge's
/// fallback policy decides by [`Error::class`], never by a message string.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request itself is wrong (lengths, shapes, an empty item where one is not allowed).
    /// Retrying or another backend will not help.
    #[error("invalid input to {kernel}{}: {reason}", index.map(|i| format!(" (item {i})")).unwrap_or_default())]
    InvalidInput {
        /// The kernel id the input was meant for.
        kernel: String,
        /// The index of the offending item in the batch, when one item is at fault.
        index: Option<usize>,
        /// What is wrong, in words.
        reason: String,
    },
    /// No kernel with this id is registered. gpubridge never substitutes a passthrough kernel.
    #[error("unknown kernel {id:?} (registered: {registered})")]
    UnknownKernel {
        /// The id that was asked for.
        id: String,
        /// The ids that are registered, comma separated, to make typos obvious.
        registered: String,
    },
    /// The kernel exists but its input or output type is not the one the caller named.
    #[error("kernel {id:?} takes {expected}, not {found}")]
    KernelTypeMismatch {
        /// The kernel id.
        id: String,
        /// The kernel's real input -> output types.
        expected: String,
        /// The types the caller asked for.
        found: String,
    },
    /// The kernel's device code is not the code it was registered with (its sources hash to
    /// another value): it is neither compiled nor launched.
    #[error("kernel {id:?}: its device code is not the code registered (source hash {found:016x}, registered {registered:016x}); refusing to compile or launch it")]
    KernelSourceChanged {
        /// The kernel id.
        id: String,
        /// The hash registered with the kernel.
        registered: u64,
        /// The hash of the sources it gave now.
        found: u64,
    },
    /// A backend or device lacks a capability or a kernel form. The fallback policy moves on to the
    /// next backend; it is never counted against a device's health.
    #[error("unsupported on {backend}: {what}")]
    Unsupported {
        /// The backend that lacks it.
        backend: BackendKind,
        /// What is missing.
        what: String,
    },
    /// A device (or a pool's configured limit) could not provide the memory. Worth a retry after a
    /// trim, or on another device.
    #[error("out of memory on {device}: {requested} bytes requested ({reason})")]
    OutOfMemory {
        /// The device label, for example `cuda:0`.
        device: String,
        /// Bytes that were asked for.
        requested: usize,
        /// What refused them (the driver, the pool limit, a tenant quota).
        reason: String,
    },
    /// The device stopped working (Xid, reset, lost adapter). Its circuit opens; work moves on.
    #[error("device {device} lost: {reason}")]
    DeviceLost {
        /// The device label.
        device: String,
        /// What the driver reported.
        reason: String,
    },
    /// A bounded queue is full. Retry later or shed load.
    #[error("queue full for {kernel} ({capacity} requests waiting)")]
    QueueFull {
        /// The kernel whose queue is full.
        kernel: String,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The request did not complete within its deadline.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The request was cancelled (its caller went away, or the bridge shut down).
    #[error("cancelled: {reason}")]
    Cancelled {
        /// Why.
        reason: String,
    },
    /// A tenant exceeded its memory or rate quota.
    #[error("quota exceeded for tenant {tenant:?}: {reason}")]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// Which quota.
        reason: String,
    },
    /// A configuration value is invalid; `key` names it as `section.key`.
    #[error("invalid configuration value for `{key}`: {reason}")]
    InvalidConfig {
        /// The key, for example `batching.max_micro_batch`.
        key: String,
        /// What is wrong with it, and where it came from (file or environment variable).
        reason: String,
    },
    /// Every backend that could run the work was unavailable or failed; each one's reason is listed.
    #[error("no backend could run {kernel}: {}", format_attempts(attempts))]
    NoBackendAvailable {
        /// The kernel id.
        kernel: String,
        /// Each backend tried (or skipped) with the reason.
        attempts: Vec<(BackendKind, String)>,
    },
    /// A file could not be read or written (`gpubridge-storage`). [`IoErrorKind`] says what went
    /// wrong in terms the caller can act on; `message` carries the operating system's words.
    #[error("{kind} for {}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        kind: IoErrorKind,
        /// Details: the operation, the offsets, the OS error.
        message: String,
    },
    /// A kernel's own host code (its CPU form, a packer filling a device's input, or the
    /// unpacking of a device's outputs) panicked.
    /// The bridge caught it; the request fails, nothing else does: the device is not blamed (its
    /// circuit is untouched) and the request is not retried elsewhere, where the same code would
    /// panic again. A bug in the kernel, or an input its validation should refuse. Singles that
    /// the dynamic batcher put in one batch share one run, and all of them get this error.
    #[error("kernel {kernel} panicked on {backend}: {message}")]
    KernelPanicked {
        /// The kernel id.
        kernel: String,
        /// The backend whose run it was.
        backend: BackendKind,
        /// The panic's message (or `unknown panic` when it carried no text).
        message: String,
    },
    /// Any other failure reported by a backend (a launch error, a driver error).
    #[error("{backend} backend error: {message}")]
    Backend {
        /// The backend that failed.
        backend: BackendKind,
        /// The driver's or backend's message.
        message: String,
        /// Whether the same call may succeed if repeated.
        transient: bool,
    },
}

/// What went wrong with a file, in terms the caller can act on (see [`Error::Io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoErrorKind {
    /// The file (or its directory) does not exist.
    NotFound,
    /// The process may not open or create the file.
    PermissionDenied,
    /// The file ends before the requested range does: it is shorter than the caller expected.
    Truncated,
    /// A read returned end-of-file before the bytes the file's size promised (it shrank while
    /// being read).
    ShortRead,
    /// The file system has no room (`ENOSPC`, or `EDQUOT` for a quota).
    DiskFull,
    /// Any other operating-system error (`EIO`, a refused flag, a bad file descriptor).
    Other,
}

impl IoErrorKind {
    /// A short, stable word for logs and labels.
    pub fn name(self) -> &'static str {
        match self {
            IoErrorKind::NotFound => "not found",
            IoErrorKind::PermissionDenied => "permission denied",
            IoErrorKind::Truncated => "file truncated",
            IoErrorKind::ShortRead => "short read",
            IoErrorKind::DiskFull => "disk full",
            IoErrorKind::Other => "i/o error",
        }
    }

    /// The kind of an operating-system error.
    pub fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => IoErrorKind::NotFound,
            K::PermissionDenied => IoErrorKind::PermissionDenied,
            K::StorageFull | K::QuotaExceeded => IoErrorKind::DiskFull,
            K::UnexpectedEof => IoErrorKind::ShortRead,
            _ => IoErrorKind::Other,
        }
    }
}

impl std::fmt::Display for IoErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn format_attempts(attempts: &[(BackendKind, String)]) -> String {
    if attempts.is_empty() {
        return "no backend is enabled".to_owned();
    }
    attempts
        .iter()
        .map(|(kind, why)| format!("{kind}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How the runtime reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller's fault; returned at once, no fallback, no effect on device health.
    Caller,
    /// The backend cannot do this; fall back, device health untouched.
    Unsupported,
    /// Memory ran out; trim and retry, then fall back. Not a device fault.
    Resource,
    /// The device misbehaved; counts against its circuit breaker, then fall back.
    DeviceFault,
    /// Overload or a deadline; returned to the caller.
    Overload,
}

impl Error {
    /// Classifies this error for the fallback policy.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidInput { .. }
            | Error::UnknownKernel { .. }
            | Error::KernelTypeMismatch { .. }
            | Error::KernelSourceChanged { .. }
            | Error::KernelPanicked { .. }
            | Error::InvalidConfig { .. }
            | Error::Cancelled { .. } => ErrorClass::Caller,
            Error::Io { kind, .. } => match kind {
                IoErrorKind::DiskFull | IoErrorKind::Other => ErrorClass::Resource,
                IoErrorKind::NotFound
                | IoErrorKind::PermissionDenied
                | IoErrorKind::Truncated
                | IoErrorKind::ShortRead => ErrorClass::Caller,
            },
            Error::Unsupported { .. } | Error::NoBackendAvailable { .. } => ErrorClass::Unsupported,
            Error::OutOfMemory { .. } | Error::QuotaExceeded { .. } => ErrorClass::Resource,
            Error::DeviceLost { .. } | Error::Backend { .. } => ErrorClass::DeviceFault,
            Error::QueueFull { .. } | Error::Timeout { .. } => ErrorClass::Overload,
        }
    }

    /// A short, stable, low-cardinality word for metrics labels (`reason="out_of_memory"`).
    pub fn reason_label(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::UnknownKernel { .. } => "unknown_kernel",
            Error::KernelTypeMismatch { .. } => "kernel_type_mismatch",
            Error::KernelSourceChanged { .. } => "kernel_source_changed",
            Error::KernelPanicked { .. } => "kernel_panicked",
            Error::Unsupported { .. } => "unsupported",
            Error::OutOfMemory { .. } => "out_of_memory",
            Error::DeviceLost { .. } => "device_lost",
            Error::QueueFull { .. } => "queue_full",
            Error::Timeout { .. } => "timeout",
            Error::Cancelled { .. } => "cancelled",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::NoBackendAvailable { .. } => "no_backend",
            Error::Io { .. } => "io",
            Error::Backend { .. } => "backend_error",
        }
    }

    /// Shorthand for [`Error::InvalidInput`] about one item.
    pub fn invalid_item(kernel: &str, index: usize, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            kernel: kernel.to_owned(),
            index: Some(index),
            reason: reason.into(),
        }
    }

    /// [`Error::KernelPanicked`] from a caught panic's payload (its `&str` or `String` message).
    pub fn kernel_panicked(
        kernel: &str,
        backend: BackendKind,
        payload: &(dyn std::any::Any + Send),
    ) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Error::KernelPanicked {
            kernel: kernel.to_owned(),
            backend,
            message,
        }
    }

    /// Shorthand for [`Error::InvalidInput`] about the whole batch.
    pub fn invalid_batch(kernel: &str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            kernel: kernel.to_owned(),
            index: None,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`] from an operating-system error; `what` names the operation.
    pub fn io(path: impl Into<PathBuf>, what: &str, e: &std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            kind: IoErrorKind::of(e),
            message: format!("{what}: {e}"),
        }
    }

    /// Shorthand for [`Error::InvalidConfig`].
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
