//! The units every flag takes: durations (`30`, `30s`, `10m`, `2h`, `1d`, `250ms`) and byte
//! sizes (`1024`, `64KiB`, `64MiB`, `1GiB`, `10MB`). One parser each, so that every flag
//! accepts the same forms and refuses the same mistakes. Absurd values are refused, not
//! capped: a typo must not turn into "forever".

use std::time::Duration;

/// The longest duration any flag accepts: ten years.
pub(crate) const DURATION_MAX: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Parses a duration: whole numbers each with a unit `ms`, `s`, `m` (or `min`), `h` or `d`
/// (`90s`, `1h30m`); a bare number is seconds. Zero is allowed (see
/// [`parse_positive_duration`]).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration such as 30s, 10m, 2h or 1d (a bare number is seconds)");
    let too_long = || format!("`{s}` is longer than the {} days any flag accepts", DURATION_MAX.as_secs() / 86_400);
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        if num.is_empty() {
            return Err(bad());
        }
        let unit_end = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let ms_per: u64 = match unit.trim() {
            "ms" => 1,
            "" | "s" | "sec" | "secs" => 1000,
            "m" | "min" | "mins" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("unknown unit `{other}` in `{s}`: use ms, s, m, h or d")),
        };
        let n: u64 = num.parse().map_err(|_| too_long())?;
        total_ms = n.checked_mul(ms_per).and_then(|ms| total_ms.checked_add(ms)).ok_or_else(too_long)?;
        rest = tail;
    }
    let d = Duration::from_millis(total_ms);
    if d > DURATION_MAX {
        return Err(too_long());
    }
    Ok(d)
}

/// Like [`parse_duration`], but zero is refused.
pub(crate) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("duration `{}` must be more than zero", s.trim()));
    }
    Ok(d)
}

/// Parses a byte size: a whole number with an optional unit `B`, `KiB`, `MiB`, `GiB`, `TiB`
/// (powers of 1024; `K`, `M`, `G`, `T` mean the same) or `KB`, `MB`, `GB`, `TB` (powers of
/// 1000). Units are case-insensitive; a bare number is bytes.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("`{s}` is not a size such as 1024, 64KiB, 64MiB or 1GiB"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("unknown unit `{}` in `{s}`: use B, KiB, MiB, GiB (or KB, MB, GB)", unit.trim())),
    };
    let too_big = || format!("`{s}` is too large a size");
    num.parse::<u64>().map_err(|_| too_big())?.checked_mul(mult).ok_or_else(too_big)
}

/// A byte size as `usize` (for in-memory limits).
pub(crate) fn parse_bytes_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(s)?).map_err(|_| format!("`{s}` is too large a size for this machine"))
}

/// A duration as people write it: `250ms`, `45s`, `10m`, `1h30m`, `2d`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out += &format!("{}{unit}", s / secs);
            s %= secs;
        }
    }
    out
}

/// A byte size as people write it: `1024 B`, `64 MiB`, `1.5 GiB`.
pub(crate) fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) { format!("{} {unit}", n / size) } else { format!("{:.1} {unit}", n as f64 / size as f64) };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every duration form parses to what it says, and mistakes are refused naming the
    // input rather than capped.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 5s "), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_positive_duration("0s").unwrap_err().contains("more than zero"));
        assert!(parse_duration("999999999999999d").unwrap_err().contains("999999999999999d"));
        assert!(parse_duration("99999999999999999999999").unwrap_err().contains("longer than"));
        assert!(parse_duration("3661d").is_err());
        assert!(parse_duration("3660d").is_ok());
        assert!(parse_duration("10 parsecs").unwrap_err().contains("10 parsecs"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    }

    // Proves every byte-size form parses to what it says, and overflow is refused.
    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64mib"), Ok(64 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("5 B"), Ok(5));
        assert!(parse_bytes("99999999999TiB").unwrap_err().contains("too large"));
        assert!(parse_bytes("64 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    // Proves the formatting used in messages reads back as the same value.
    #[test]
    fn formats_round_trip() {
        for d in ["250ms", "45s", "10m", "1h30m", "2d", "1d1h1m1s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(100), "100 B");
    }
}
