//! Helpers the bench binaries share (`mod common;` in each; not every bench uses each one).
#![allow(dead_code)]

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

/// Peak resident memory (VmHWM) of this process, in MiB.
pub fn peak_rss_mib() -> f64 {
    peak_rss_mib_of("self")
}

/// Peak resident memory (VmHWM) of process `pid` (a number, or `self`), in MiB; NaN when
/// it cannot be read.
pub fn peak_rss_mib_of(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The `p` quantile (0 to 1) of `sorted`, the nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
