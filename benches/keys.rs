//! Memory of remembered idempotency keys.
//!
//! `cargo bench --bench keys -- [--keys N]`
//!
//! Commits N keyed requests of one shop event each (keys of 36 characters, like UUIDs) in
//! groups of 1,000 through the append path, and reports the growth of the process's
//! resident memory per remembered key. The service remembers up to `--max-keys` (1M by
//! default) keys for 24 h, so this is what a busy service holds.

use lambdaflow_engine::log::LogConfig;
use lambdaflow_engine::{Appender, Encoded, Write};
use lambdaflow_jobs::shop::gen::{GenConfig, Generator};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse().ok()).unwrap_or(0)
}

fn main() {
    let keys = arg("--keys", 100_000);
    let dir = std::env::temp_dir().join(format!("lambdaflow-bench-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let appender = Appender::open(&dir, LogConfig::default()).expect("open");
    let events: Vec<_> = Generator::new(GenConfig { events: 1000, seed: 1, ..GenConfig::default() }).collect();
    let before = rss_kib();
    let t = std::time::Instant::now();
    let mut done = 0u64;
    while done < keys {
        let group: Vec<Write> = (done..(done + 1000).min(keys))
            .map(|i| Write {
                key: Some((format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i, i % 65536, i % 4096, i % 4096, i), i)),
                encoded: Encoded::of(std::slice::from_ref(&events[(i % 1000) as usize]), 4).expect("encode"),
            })
            .collect();
        done += group.len() as u64;
        appender.commit(&group);
    }
    let after = rss_kib();
    assert_eq!(appender.keys() as u64, keys, "every key is remembered");
    println!(
        "keys {keys:>9}: RSS +{:.1} MiB, {:.0} bytes per remembered key ({:.1} s, durable group commits of 1,000)",
        after.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 * 1024.0 / keys as f64,
        t.elapsed().as_secs_f64()
    );
    drop(appender);
    let _ = std::fs::remove_dir_all(&dir);
}
