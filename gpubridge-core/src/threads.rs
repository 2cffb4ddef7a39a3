//! What every thread the library starts does first.

/// Bytes of its stack each of the library's threads touches when it starts.
///
/// A thread's stack becomes resident page by page, as calls first reach each depth; the deepest
/// paths (a fault's failover, an error formatted, a panic caught) are rare, so a long-running
/// process kept gaining a few KiB of resident stack here and there for minutes after its
/// start, which a leak check cannot tell from growth (the soak saw 60 threads add 120 KiB over
/// two minutes). Touching the first 64 KiB at once (about 1.5 times the deepest use measured
/// under the soak's faults) makes the resident stack what it will stay, and keeps the page
/// faults of a first deep call off the request path. The cost is 64 KiB of resident memory per
/// thread.
pub const PREFAULTED_STACK_BYTES: usize = 64 * 1024;

/// Touches the top [`PREFAULTED_STACK_BYTES`] of the calling thread's stack (every page of it),
/// so that they are resident from now on. Call it first thing in a long-lived thread (the
/// library's own threads do; a service can pass it to `tokio::runtime::Builder::on_thread_start`).
#[inline(never)]
pub fn prefault_stack() {
    let mut buf = [0u8; PREFAULTED_STACK_BYTES];
    // Opaque to the optimiser, so the frame (and the stack probe that touches each of its
    // pages on the way down) is kept.
    std::hint::black_box(&mut buf);
}

#[cfg(test)]
mod tests {
    /// Resident KiB of the mapping holding `addr`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn resident_kib_around(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("Rss:") {
                    return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fresh_threads_stack_is_resident_to_the_prefaulted_depth() {
        let kib = super::PREFAULTED_STACK_BYTES as u64 / 1024;
        let (before, after) = std::thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(move || {
                let here = 0u8;
                let addr = std::ptr::addr_of!(here) as usize;
                let before = resident_kib_around(addr);
                super::prefault_stack();
                (before, resident_kib_around(addr))
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(before < kib, "{before} KiB resident before");
        assert!(after >= kib, "{after} KiB resident after, want {kib}");
    }
}
