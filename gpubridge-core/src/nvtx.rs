//! NVTX ranges around every phase of a request, so that Nsight Systems shows gpubridge's own
//! structure above the CUDA API calls and kernels it issues.
//!
//! The ranges live in the `gpubridge` NVTX domain. The bridge marks each request (`batch`, named by
//! its kernel, with its item count as payload) and each micro-batch's wait for a device
//! ([`Phase::Queue`]) and unpacking ([`Phase::Unpack`]); the CUDA executor marks packing into pinned
//! staging, the uploads, the launches or the graph replay, the downloads and its wait for the
//! stream. A device phase's range covers the host side that issues it: Nsight draws the copies and
//! kernels themselves on the GPU rows under it, correlated.
//!
//! NVTX here is NVIDIA's header-only NVTX 3, compiled into this crate (no CUDA toolkit is needed
//! to build it, and nothing is linked at build time). With no tool attached, each call costs a
//! few nanoseconds. A tool attaches the usual ways: `nsys profile` sets `NVTX_INJECTION64_PATH`,
//! the CUDA driver offers its own injection, and a program (a test, say) may link a static
//! injection by defining the symbol `InitializeInjectionNvtx2_fnptr` (see
//! `gpubridge/tests/nvtx.rs`, which records every range this way and checks them).
//!
//! ```
//! use gpubridge_core::nvtx::{self, Phase};
//! let _range = nvtx::range(Phase::Pack, 4096); // ends when dropped
//! ```

use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

extern "C" {
    fn gpubridge_nvtx_domain(name: *const c_char) -> *mut c_void;
    fn gpubridge_nvtx_register(domain: *mut c_void, s: *const c_char) -> *mut c_void;
    fn gpubridge_nvtx_name_category(domain: *mut c_void, category: u32, name: *const c_char);
    fn gpubridge_nvtx_start(
        domain: *mut c_void,
        message: *mut c_void,
        argb: u32,
        category: u32,
        payload: u64,
    ) -> u64;
    fn gpubridge_nvtx_end(domain: *mut c_void, id: u64);
}

/// The NVTX domain gpubridge's ranges live in.
pub const DOMAIN: &str = "gpubridge";

/// A phase of a request, as its NVTX range names it and `gpubridge profile` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// From the start of a request to its micro-batch's submission to a device: waiting for an
    /// in-flight permit, placement (payload: items).
    Queue,
    /// Packing inputs into pinned staging (or mapped memory) on the host (payload: bytes).
    Pack,
    /// Host-to-device copies (payload: bytes).
    Upload,
    /// Kernel launches and library calls (payload: steps).
    Launch,
    /// A captured CUDA graph's replay: its copies and kernels in one launch (payload: bytes in
    /// and out).
    Replay,
    /// Device-to-host copies (payload: bytes).
    Download,
    /// The executor waiting for a stream to finish.
    Wait,
    /// Turning the downloaded bytes into typed outputs (payload: items).
    Unpack,
}

impl Phase {
    /// Every phase, in the order a request goes through them.
    pub const ALL: [Phase; 8] = [
        Phase::Queue,
        Phase::Pack,
        Phase::Upload,
        Phase::Launch,
        Phase::Replay,
        Phase::Download,
        Phase::Wait,
        Phase::Unpack,
    ];

    /// The range's name (`queue`, `pack`, `h2d`, `launch`, `replay`, `d2h`, `wait`, `unpack`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Pack => "pack",
            Phase::Upload => "h2d",
            Phase::Launch => "launch",
            Phase::Replay => "replay",
            Phase::Download => "d2h",
            Phase::Wait => "wait",
            Phase::Unpack => "unpack",
        }
    }

    /// Its NVTX category (1-based; [`BATCH_CATEGORY`] is the request's).
    pub fn category(self) -> u32 {
        self as u32 + 1
    }

    fn argb(self) -> u32 {
        match self {
            Phase::Queue => 0xff9e9e9e,
            Phase::Pack => 0xff4caf50,
            Phase::Upload => 0xff2196f3,
            Phase::Launch => 0xffff9800,
            Phase::Replay => 0xffe65100,
            Phase::Download => 0xff3f51b5,
            Phase::Wait => 0xffbdbdbd,
            Phase::Unpack => 0xff8bc34a,
        }
    }
}

/// The NVTX category of a whole request's range (named by its kernel).
pub const BATCH_CATEGORY: u32 = 100;

/// A pointer NVTX handed out: the domain, or a registered string. NVTX is thread-safe and these
/// handles are valid for the life of the process.
#[derive(Clone, Copy)]
struct Handle(*mut c_void);
// SAFETY: NVTX handles are opaque tokens valid from any thread for the life of the process.
unsafe impl Send for Handle {}
// SAFETY: as above; NVTX's functions are thread-safe.
unsafe impl Sync for Handle {}

struct Domain {
    domain: Handle,
    phases: [Handle; Phase::ALL.len()],
    /// Registered strings of kernel ids, for requests' ranges (a handful: a list, searched in
    /// order; it lives as long as the process).
    kernels: parking_lot::RwLock<Vec<(&'static str, Handle)>>,
}

fn domain() -> &'static Domain {
    static DOMAIN_STATE: OnceLock<Domain> = OnceLock::new();
    DOMAIN_STATE.get_or_init(|| {
        let name = CString::new(DOMAIN).unwrap_or_default();
        // SAFETY: `name` is a valid C string for the call; NVTX copies what it keeps.
        let domain = Handle(unsafe { gpubridge_nvtx_domain(name.as_ptr()) });
        let phases = Phase::ALL.map(|p| {
            let s = CString::new(p.name()).unwrap_or_default();
            // SAFETY: the domain came from NVTX (or is null, which NVTX accepts as the default
            // domain); `s` is a valid C string for the calls.
            unsafe {
                gpubridge_nvtx_name_category(domain.0, p.category(), s.as_ptr());
                Handle(gpubridge_nvtx_register(domain.0, s.as_ptr()))
            }
        });
        let batch = c"batch";
        // SAFETY: as above.
        unsafe { gpubridge_nvtx_name_category(domain.0, BATCH_CATEGORY, batch.as_ptr()) };
        Domain {
            domain,
            phases,
            kernels: parking_lot::RwLock::new(Vec::new()),
        }
    })
}

/// An open NVTX range; it ends when dropped, on whichever thread drops it (NVTX start/end ranges
/// may cross threads, so a guard may be held across an `.await`).
#[must_use = "a range ends when dropped"]
#[derive(Debug)]
pub struct Range {
    id: u64,
}

impl Drop for Range {
    fn drop(&mut self) {
        let d = domain();
        // SAFETY: the id came from this domain's range start and is ended once.
        unsafe { gpubridge_nvtx_end(d.domain.0, self.id) };
    }
}

/// Opens a range for `phase` with `payload` (bytes, items or steps: see [`Phase`]).
pub fn range(phase: Phase, payload: u64) -> Range {
    let d = domain();
    let message = d.phases[phase as usize];
    // SAFETY: the domain and message are handles NVTX gave this process.
    let id = unsafe {
        gpubridge_nvtx_start(
            d.domain.0,
            message.0,
            phase.argb(),
            phase.category(),
            payload,
        )
    };
    Range { id }
}

/// Opens a request's range, named by its kernel, with its item count as payload.
pub fn batch(kernel: &'static str, items: usize) -> Range {
    let d = domain();
    let find =
        |list: &[(&'static str, Handle)]| list.iter().find(|(k, _)| *k == kernel).map(|(_, h)| *h);
    let known = find(&d.kernels.read());
    let message = match known {
        Some(h) => h,
        None => {
            let s = CString::new(kernel).unwrap_or_default();
            // SAFETY: as in `domain`.
            let h = Handle(unsafe { gpubridge_nvtx_register(d.domain.0, s.as_ptr()) });
            let mut list = d.kernels.write();
            match find(&list) {
                Some(h) => h,
                None => {
                    list.push((kernel, h));
                    h
                }
            }
        }
    };
    // SAFETY: as in `range`.
    let id = unsafe {
        gpubridge_nvtx_start(
            d.domain.0,
            message.0,
            0xff607d8b,
            BATCH_CATEGORY,
            items as u64,
        )
    };
    Range { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_have_distinct_names_and_categories() {
        let mut names: Vec<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(p.category(), i as u32 + 1);
            assert_ne!(p.category(), BATCH_CATEGORY);
            assert_eq!(Phase::ALL[*p as usize], *p);
        }
    }

    #[test]
    fn ranges_open_and_close_without_a_tool() {
        // No tool is attached in unit tests: every call must be a harmless no-op.
        let outer = batch("kernels/sum", 3);
        for p in Phase::ALL {
            let r = range(p, 7);
            drop(r);
        }
        let moved = std::thread::spawn(move || drop(outer));
        moved.join().unwrap();
    }
}
