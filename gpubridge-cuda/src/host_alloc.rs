//! Output vectors that fault in huge pages.
//!
//! A large output `Vec<f32>` is fresh memory: every 4 KiB page faults into the kernel on its first
//! write, and for hundreds of megabytes that costs more than copying the data. Where transparent
//! huge pages are in `madvise` mode, asking for them on the fresh range makes each fault map
//! 2 MiB. The advice is only a hint: if the kernel ignores it the vector is still correct.

/// Below this many floats the advice is not worth a system call.
const MIN_FLOATS: usize = 1 << 20;
/// Huge page size on x86-64 and aarch64 with 4 KiB base pages.
const HUGE: usize = 2 << 20;

/// An empty vector with room for `n` floats whose 2 MiB-aligned interior is advised to use huge
/// pages. Matches [`gpubridge_core::plan::AllocF32`].
pub fn huge_page_vec_f32(n: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(n);
    if n >= MIN_FLOATS {
        let start = v.as_ptr() as usize;
        let end = start + n * std::mem::size_of::<f32>();
        let (a, b) = (start.div_ceil(HUGE) * HUGE, end / HUGE * HUGE);
        if a < b {
            // SAFETY: [a, b) lies inside the allocation `v` owns and has not been touched yet;
            // MADV_HUGEPAGE only changes how its pages are faulted in, never their contents.
            let rc = unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE) };
            if rc != 0 {
                tracing::trace!(
                    "madvise(MADV_HUGEPAGE) declined: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    v
}
