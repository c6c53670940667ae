//! What the process holds and what the machine has left (Linux `/proc`; elsewhere the figures are unknown).

/// Peak resident set size of this process so far (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<usize> {
    proc_field("/proc/self/status", "VmHWM:")
}

/// Current resident set size (VmRSS), in bytes.
pub fn rss_bytes() -> Option<usize> {
    proc_field("/proc/self/status", "VmRSS:")
}

/// Memory the kernel says can still be allocated without swapping (MemAvailable), in bytes.
pub fn available_bytes() -> Option<usize> {
    proc_field("/proc/meminfo", "MemAvailable:")
}

fn proc_field(path: &str, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: usize = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Bytes as a short human figure: "512 MiB", "1.25 GiB".
pub fn human(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    }
}
