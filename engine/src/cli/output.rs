//! What the commands print: answers, views, status, progress bars.

use super::*;

/// A progress bar style with `{rate}` (whole events per second, `1,234,567/s`) and `{eta}`
/// (`, eta 1m20s`, shown only once there is a rate to estimate from).
pub(super) fn progress_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", format_rate(s.per_sec()));
        })
        .with_key("eta", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            if let Some(eta) = format_eta(s.pos(), s.len(), s.per_sec()) {
                let _ = write!(w, ", eta {eta}");
            }
        })
}

/// `1,234,567/s`: whole events per second with thousands separators; nothing before the
/// first measurement.
pub(super) fn format_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec < 1.0 {
        return String::new();
    }
    format!("{}/s", thousands(per_sec.round() as u64))
}

/// The time left at `per_sec`, or `None` while there is no rate yet (or nothing left).
pub(super) fn format_eta(pos: u64, len: Option<u64>, per_sec: f64) -> Option<String> {
    let left = len?.checked_sub(pos).filter(|&l| l > 0)?;
    if pos == 0 || !per_sec.is_finite() || per_sec < 1.0 {
        return None;
    }
    Some(format_duration(Duration::from_secs((left as f64 / per_sec).ceil() as u64)))
}

/// `1234567` → `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn human_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else if ms < 7_200_000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    }
}

/// A merged answer set in the shapes of the HTTP API: one answer object
/// (`{"view","freshness","key","value","batch","speed"}`) for a key, and
/// `{"view","items":[...],"freshness"}` for a range.
pub(super) fn result_json(result: &QueryResult, point: bool) -> serde_json::Value {
    let f = &result.freshness;
    match (point, result.answers.first()) {
        (true, Some(a)) => {
            let mut o = serde_json::json!({ "view": result.view, "freshness": f });
            if let (Some(o), Ok(serde_json::Value::Object(a))) = (o.as_object_mut(), serde_json::to_value(a)) {
                o.extend(a);
            }
            o
        }
        (true, None) => serde_json::json!({ "view": result.view, "freshness": f }),
        (false, _) => serde_json::json!({ "view": result.view, "items": result.answers, "freshness": f }),
    }
}

/// A JSON value as text: strings without quotes.
pub(super) fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How many answers a query printed, of how many.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Count {
    /// All of them, this many.
    All(usize),
    /// The first `shown` of `total`.
    Of { shown: usize, total: usize },
    /// The first `shown`; there are more (how many, the service did not say).
    MoreThan(usize),
}

/// Keeps the first `limit` items of a range answer, and the first `top` entries of each
/// list value; `total`, when known, is how many items there were.
pub(super) fn trim_answers(answer: &mut serde_json::Value, limit: usize, top: Option<usize>, total_known: bool) -> Count {
    let trim_value = |a: &mut serde_json::Value| {
        if let (Some(top), Some(list)) = (top, a.get_mut("value").and_then(|v| v.as_array_mut())) {
            list.truncate(top);
        }
    };
    match answer.get_mut("items").and_then(|i| i.as_array_mut()) {
        Some(items) => {
            let total = items.len();
            items.truncate(limit);
            items.iter_mut().for_each(trim_value);
            match (total > items.len(), total_known) {
                (false, _) => Count::All(total),
                (true, true) => Count::Of { shown: items.len(), total },
                (true, false) => Count::MoreThan(items.len()),
            }
        }
        None => {
            trim_value(answer);
            Count::All(1)
        }
    }
}

/// `1 answer`, `2 answers`.
pub(super) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// What the footer says about how many answers were printed.
pub(super) fn count_text(c: Count) -> String {
    match c {
        Count::All(n) => plural(n, "answer"),
        Count::Of { shown, total } => format!("{shown} of {total} answers (--all for every one, or --limit N)"),
        Count::MoreThan(shown) => format!("the first {} (there are more: --all, or --limit N)", plural(shown, "answer")),
    }
}

/// Prints merged answers (see [`result_json`] for the shape); with `json`, as is.
/// `errors` is how many answers are in error, counted before `--limit`.
pub(super) fn print_answers(answer: &serde_json::Value, json: bool, count: Count, errors: usize) -> Result<()> {
    if json {
        if !matches!(count, Count::All(_)) {
            eprintln!("-- {}", count_text(count));
        }
        return out(format_args!("{answer}"));
    }
    let items: Vec<&serde_json::Value> = match answer.get("items").and_then(|i| i.as_array()) {
        Some(items) => items.iter().collect(),
        None => vec![answer],
    };
    for a in &items {
        // A key whose records did not merge to one value (a job mistake): its error, not a
        // value; the other keys' answers stand.
        if let Some(e) = a.get("error").and_then(|e| e.as_str()) {
            out(format_args!("{}\terror: {e}", plain(&a["key"])))?;
            continue;
        }
        match (a.get("batch"), a.get("speed")) {
            (Some(b), Some(s)) => {
                let part = |p: &serde_json::Value| if p.is_null() { "-".to_string() } else { p.to_string() };
                out(format_args!("{}\t{}\t(batch {} + speed {})", plain(&a["key"]), plain(&a["value"]), part(b), part(s)))?
            }
            _ => out(format_args!("{}\t{}", plain(&a["key"]), plain(&a["value"])))?,
        }
    }
    let f = &answer["freshness"];
    let failed = if errors == 0 { String::new() } else { format!(" ({} in error, see each)", plural(errors, "key")) };
    eprintln!(
        "-- {}{failed}; batch {} (cut {}, age {}); speed frontier {} ({} events since the cut)",
        count_text(count),
        f["batch_version"].as_u64().map(|v| format!("v{v}")).unwrap_or_else(|| "none".into()),
        f["batch_cut"],
        f["batch_age_ms"].as_u64().map(human_ms).unwrap_or_else(|| "-".into()),
        f["speed_frontier"],
        f["speed_events"]
    );
    Ok(())
}

/// Prints the job's views (`{"name","kind","key","value"}` each).
pub(super) fn print_views(views: &[serde_json::Value]) -> Result<()> {
    for v in views {
        let (key, value) = match v.get("example").filter(|e| !e.is_null()) {
            Some(e) => (format!("{} (e.g. {})", shape(&e["key"]), e["key"]), shape(&e["value"])),
            None => (plain(&v["key"]), format!("{} (no answers yet to show its fields)", plain(&v["value"]))),
        };
        out(format_args!("{}\t{}\tkey: {key}\tvalue: {value}", plain(&v["name"]), plain(&v["kind"])))?;
    }
    Ok(())
}

/// A JSON value's shape: an object's field names, a list's element shape.
pub(super) fn shape(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => format!("{{{}}}", m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")),
        Value::Array(a) => format!("[{}, ...]", a.first().map(shape).unwrap_or_default()),
        Value::String(_) => "text".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "true/false".into(),
        Value::Null => "null".into(),
    }
}

/// `status`'s JSON: the data directory's [`crate::lambda::Status`], or the service's
/// `GET /v1/status` when a service answered (it has `uptime_s`).
pub(super) fn status_json(s: &crate::lambda::Status) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

pub(super) fn print_status(s: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        return out(format_args!("{}", serde_json::to_string_pretty(s).unwrap_or_default()));
    }
    let remote = s.get("uptime_s").is_some();
    let sum = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).sum::<u64>()).unwrap_or(0);
    let (end, bytes) = if remote { (&s["log"]["end"], &s["log"]["bytes"]) } else { (&s["log_end"], &s["log_bytes"]) };
    let f = &s["freshness"];
    out(format_args!("job {} v{}", plain(&s["job"]), s["job_version"]))?;
    out(format_args!("log: {} events, ends {}, {} bytes", sum(end), end, sum(bytes)))?;
    let b = &s["batch"];
    if b.is_null() {
        out(format_args!("batch: none yet (run `batch`)"))?;
    } else {
        let age = human_ms(f["batch_age_ms"].as_u64().unwrap_or(0));
        out(format_args!("batch: v{} (job v{}) cut {} = {} events, age {age}", b["version"], b["job_version"], b["cut"], b["events"]))?;
    }
    let (keys, speed_bytes) = if remote {
        let keys: u64 = s["speed"]["keys"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
        (keys, s["speed"]["bytes"].as_u64().unwrap_or(0))
    } else {
        let keys: u64 = s["speed_keys"].as_array().map(|a| a.iter().filter_map(|k| k[1].as_u64()).sum()).unwrap_or(0);
        (keys, s["speed_bytes"].as_u64().unwrap_or(0))
    };
    out(format_args!(
        "speed: frontier {}, {} events since the cut, {keys} keys held (~{} KiB)",
        f["speed_frontier"],
        f["speed_events"],
        speed_bytes / 1024
    ))?;
    let k = &s["kafka"];
    if k.is_object() {
        let paused = if k["paused"] == true { " (paused: the speed layer lags)" } else { "" };
        out(format_args!("kafka: {} records in, lag {}, {} dead letters{paused}", k["records"], k["lag"], k["dead_letters"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves rates are whole numbers with separators, and no eta is shown before there is a
    // rate (or at 0%).
    #[test]
    fn progress_texts() {
        assert_eq!(format_rate(7_429_606.444_2), "7,429,606/s");
        assert_eq!(format_rate(999.6), "1,000/s");
        assert_eq!(format_rate(0.0), "");
        assert_eq!(format_rate(f64::NAN), "");
        assert_eq!(format_eta(0, Some(100), 0.0), None);
        assert_eq!(format_eta(0, Some(100), 50.0), None);
        assert_eq!(format_eta(50, Some(100), 10.0), Some("5s".into()));
        assert_eq!(format_eta(100, Some(100), 10.0), None);
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(999), "999");
    }

    // Proves the query footer's counts read as English.
    #[test]
    fn count_texts() {
        assert_eq!(count_text(Count::All(1)), "1 answer");
        assert_eq!(count_text(Count::All(0)), "0 answers");
        assert!(count_text(Count::Of { shown: 1000, total: 4321 }).starts_with("1000 of 4321 answers (--all"));
        assert!(count_text(Count::MoreThan(1)).contains("the first 1 answer (there are more"));
    }
}
