//! What the operating system says about the machine and this process, where it says it
//! (Linux's /proc); None elsewhere.

/// The value in KiB of the line `key: N kB` of a /proc file such as `/proc/meminfo` (MemTotal)
/// or `/proc/self/status` (VmHWM).
pub fn proc_kib(file: &str, key: &str) -> Option<u128> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machines_memory_and_this_processs_peak() {
        if !std::path::Path::new("/proc/meminfo").exists() {
            return; // not Linux: nothing to read
        }
        let total = proc_kib("/proc/meminfo", "MemTotal").expect("MemTotal");
        let peak = proc_kib("/proc/self/status", "VmHWM").expect("VmHWM");
        assert!(peak > 0 && peak < total, "peak {peak} KiB of {total}");
        assert_eq!(proc_kib("/proc/meminfo", "Mem"), None, "a key is matched whole");
        assert_eq!(proc_kib("/nonexistent", "MemTotal"), None);
    }
}
