//! Facts about the host read from `/proc`: its processor's name and its memory, for the CPU
//! device and for software adapters (which run on the host and use its memory).

/// The processor's model name.
pub(crate) fn cpu_model_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// A `/proc/meminfo` value in KiB, for example `MemTotal:`.
pub(crate) fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
