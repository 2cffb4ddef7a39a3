//! wgpu's errors as core's [`Error`], by what the caller can do, and error scopes that catch them.
//!
//! wgpu reports most failures asynchronously: by default an uncaptured error panics. Every device
//! operation of this backend runs inside [`Scopes`] (out of memory, validation, internal), and the
//! device also has an uncaptured-error handler that logs instead of panicking, so nothing a driver
//! or a plan does can panic the process.

use gpubridge_core::{BackendKind, Error};

/// Maps a wgpu error raised while doing `what` on device `label`.
///
/// - out of memory -> [`Error::OutOfMemory`] (worth a retry after a trim, or another device);
/// - validation -> [`Error::Unsupported`]: the adapter refuses this plan (a limit, a binding it
///   does not accept, WGSL it cannot compile); another backend can run it, and the device is fine;
/// - internal -> [`Error::Backend`]: the driver misbehaved, which counts against the device.
pub(crate) fn map_error(label: &str, what: &str, e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
            device: label.to_owned(),
            requested: 0,
            reason: format!("wgpu: {what}"),
        },
        wgpu::Error::Validation { description, .. } => Error::Unsupported {
            backend: BackendKind::Wgpu,
            what: format!(
                "{label}: {what} refused by wgpu: {}",
                one_line(&description)
            ),
        },
        wgpu::Error::Internal { description, .. } => Error::Backend {
            backend: BackendKind::Wgpu,
            message: format!("{label}: {what}: {}", one_line(&description)),
            transient: false,
        },
    }
}

/// wgpu's descriptions span lines; labels and logs want one.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Error scopes for out-of-memory, validation and internal errors, pushed together on the
/// calling thread and popped together (wgpu's scopes are per thread).
pub(crate) struct Scopes {
    guards: Vec<wgpu::ErrorScopeGuard>,
}

impl Scopes {
    /// Pushes the three scopes.
    pub(crate) fn push(device: &wgpu::Device) -> Self {
        Self {
            guards: vec![
                device.push_error_scope(wgpu::ErrorFilter::Internal),
                device.push_error_scope(wgpu::ErrorFilter::Validation),
                device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            ],
        }
    }

    /// Pops the scopes (innermost first) and returns the first error caught, out of memory before
    /// validation before internal.
    pub(crate) fn pop(mut self) -> Option<wgpu::Error> {
        let mut first = None;
        while let Some(g) = self.guards.pop() {
            // On native wgpu the future is ready at once; this blocks only the calling thread.
            let e = futures::executor::block_on(g.pop());
            if first.is_none() {
                first = e;
            }
        }
        first
    }

    /// Pops the scopes and maps the first error caught (see [`map_error`]).
    pub(crate) fn check(self, label: &str, what: &str) -> Result<(), Error> {
        match self.pop() {
            Some(e) => Err(map_error(label, what, e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpubridge_core::ErrorClass;

    #[test]
    fn wgpu_errors_map_to_what_the_caller_can_do_on_one_line() {
        let oom = map_error(
            "wgpu:0",
            "creating a 64-byte buffer",
            wgpu::Error::OutOfMemory {
                source: "the driver has no room".into(),
            },
        );
        match &oom {
            Error::OutOfMemory {
                device,
                requested,
                reason,
            } => {
                assert_eq!(device, "wgpu:0");
                assert_eq!(*requested, 0);
                assert_eq!(reason, "wgpu: creating a 64-byte buffer");
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        assert_eq!(
            oom.class(),
            ErrorClass::Resource,
            "worth a retry, not a fault"
        );

        let refused = map_error(
            "wgpu:1",
            "binding the plan",
            wgpu::Error::Validation {
                source: "invalid".into(),
                description: "Binding 2\n    is missing\tfrom the layout\n".to_owned(),
            },
        );
        match &refused {
            Error::Unsupported { backend, what } => {
                assert_eq!(*backend, BackendKind::Wgpu);
                assert_eq!(
                    what,
                    "wgpu:1: binding the plan refused by wgpu: Binding 2 is missing from the layout"
                );
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert_eq!(refused.class(), ErrorClass::Unsupported);

        let internal = map_error(
            "wgpu:2",
            "submitting",
            wgpu::Error::Internal {
                source: "vk".into(),
                description: "VK_ERROR_DEVICE_LOST\n  (driver reset)".to_owned(),
            },
        );
        match &internal {
            Error::Backend {
                backend,
                message,
                transient,
            } => {
                assert_eq!(*backend, BackendKind::Wgpu);
                assert_eq!(
                    message,
                    "wgpu:2: submitting: VK_ERROR_DEVICE_LOST (driver reset)"
                );
                assert!(!transient);
            }
            other => panic!("expected Backend, got {other:?}"),
        }
        assert_eq!(
            internal.class(),
            ErrorClass::DeviceFault,
            "a driver fault counts against the device"
        );
        assert_eq!(one_line("  a\n\tb  c \n"), "a b c");
        assert_eq!(one_line(""), "");
    }
}
