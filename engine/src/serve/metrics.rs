//! Counters and histograms for `GET /metrics`, in the Prometheus text format (0.0.4).
//!
//! Lock-free: every counter and histogram bucket is an atomic, so recording costs a few
//! relaxed increments on the request path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 16] = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Observations so far.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// The service's metrics.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Events acknowledged.
    pub ingest_events: AtomicU64,
    /// Requests acknowledged (including idempotent replays).
    pub ingest_requests: AtomicU64,
    /// Requests answered from the idempotency journal without appending.
    pub ingest_replays: AtomicU64,
    /// Requests rejected as bad input (400/413/422).
    pub ingest_rejected: AtomicU64,
    /// Requests whose group commit failed (503; see the server's stderr).
    pub ingest_failed: AtomicU64,
    /// Requests told to slow down (429).
    pub ingest_throttled: AtomicU64,
    /// Group commits (journal + log fsyncs).
    pub group_commits: AtomicU64,
    /// Time from receiving a request to its acknowledgement.
    pub ack_latency: Histogram,
    /// Time to answer a view query.
    pub query_latency: Histogram,
    /// Queries answered.
    pub queries: AtomicU64,
    /// Queries answered from the cache.
    pub cache_hits: AtomicU64,
    /// Requests for more than `KEYS_INLINE_MAX` keys, answered on the blocking pool.
    pub keys_offloaded: AtomicU64,
    /// Batch runs that published and handed over.
    pub batch_ok: AtomicU64,
    /// Batch runs that failed (the previous views kept serving).
    pub batch_failed: AtomicU64,
    /// Wall time of the last successful batch run, ms.
    pub batch_last_ms: AtomicU64,
    /// Requests refused for a missing or wrong token.
    pub auth_refused: AtomicU64,
    /// Idempotency keys remembered (kept by the committer, so readers never wait for it).
    pub idempotency_keys: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections refused at the connection bounds.
    pub connections_refused: AtomicU64,
}

/// Point-in-time values rendered next to the counters.
pub(crate) struct Gauges {
    /// Events per partition in the log.
    pub log_end: Vec<u64>,
    /// Bytes per partition in the log.
    pub log_bytes: Vec<u64>,
    /// Events acknowledged but not yet in the speed layer.
    pub speed_lag_events: u64,
    /// Events in the speed layer since the cut.
    pub speed_events: u64,
    /// Approximate bytes of speed state.
    pub speed_bytes: usize,
    /// Publications of the serving speed layer.
    pub speed_publications: u64,
    /// Of those, the ones that copied the speed tables rather than wait for a reader.
    pub speed_snapshot_copies: u64,
    /// Keys per view in the speed tables.
    pub speed_keys: Vec<(String, usize)>,
    /// Keys per view in the batch views.
    pub batch_keys: Vec<(String, usize)>,
    /// Serving batch version (0: none).
    pub batch_version: u64,
    /// Age of the serving batch version, seconds.
    pub batch_age_s: f64,
    /// Whether a batch run is in progress.
    pub batch_running: bool,
}

impl Metrics {
    /// Renders everything in the Prometheus text format.
    pub(crate) fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(&mut out, "lambdaflow_ingest_events_total", "Events acknowledged (durable).", self.ingest_events.load(Relaxed));
        counter(&mut out, "lambdaflow_ingest_requests_total", "Ingest requests acknowledged.", self.ingest_requests.load(Relaxed));
        counter(
            &mut out,
            "lambdaflow_ingest_replays_total",
            "Ingest requests answered from the idempotency journal.",
            self.ingest_replays.load(Relaxed),
        );
        counter(&mut out, "lambdaflow_ingest_rejected_total", "Ingest requests rejected as bad input.", self.ingest_rejected.load(Relaxed));
        counter(
            &mut out,
            "lambdaflow_ingest_failed_total",
            "Ingest requests whose group commit failed (503).",
            self.ingest_failed.load(Relaxed),
        );
        counter(
            &mut out,
            "lambdaflow_ingest_throttled_total",
            "Ingest requests told to slow down (429).",
            self.ingest_throttled.load(Relaxed),
        );
        counter(&mut out, "lambdaflow_group_commits_total", "Group commits to the log.", self.group_commits.load(Relaxed));
        gauge(&mut out, "lambdaflow_http_connections", "HTTP connections open.", self.connections_open.load(Relaxed) as f64);
        counter(
            &mut out,
            "lambdaflow_http_connections_refused_total",
            "HTTP connections refused at --max-connections or --max-connections-per-ip.",
            self.connections_refused.load(Relaxed),
        );
        self.ack_latency.render(
            &mut out,
            "lambdaflow_ack_latency_seconds",
            "Time from receiving an ingest request to its acknowledgement.",
        );
        self.query_latency.render(&mut out, "lambdaflow_query_latency_seconds", "Time to answer a view query.");
        counter(&mut out, "lambdaflow_queries_total", "View queries answered.", self.queries.load(Relaxed));
        counter(&mut out, "lambdaflow_query_cache_hits_total", "View queries answered from the cache.", self.cache_hits.load(Relaxed));
        counter(
            &mut out,
            "lambdaflow_query_keys_offloaded_total",
            "Requests for more than 32 keys, answered on the blocking pool rather than the async thread.",
            self.keys_offloaded.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP lambdaflow_batch_runs_total Batch runs by outcome.\n# TYPE lambdaflow_batch_runs_total counter\n\
             lambdaflow_batch_runs_total{{result=\"ok\"}} {}\nlambdaflow_batch_runs_total{{result=\"failed\"}} {}",
            self.batch_ok.load(Relaxed),
            self.batch_failed.load(Relaxed)
        );
        gauge(
            &mut out,
            "lambdaflow_batch_duration_seconds",
            "Wall time of the last successful batch run.",
            self.batch_last_ms.load(Relaxed) as f64 / 1e3,
        );
        gauge(&mut out, "lambdaflow_batch_running", "1 while a batch run is in progress.", g.batch_running as u8 as f64);
        gauge(&mut out, "lambdaflow_batch_version", "The serving batch version (0: none).", g.batch_version as f64);
        gauge(&mut out, "lambdaflow_batch_age_seconds", "Age of the serving batch version.", g.batch_age_s);
        gauge(
            &mut out,
            "lambdaflow_speed_lag_events",
            "Acknowledged events not yet applied by the speed layer.",
            g.speed_lag_events as f64,
        );
        gauge(&mut out, "lambdaflow_speed_events", "Events in the speed layer since the batch cut.", g.speed_events as f64);
        gauge(&mut out, "lambdaflow_speed_state_bytes", "Approximate bytes held in the speed tables.", g.speed_bytes as f64);
        gauge(&mut out, "lambdaflow_speed_publications", "Publications (epochs) of the serving speed layer.", g.speed_publications as f64);
        gauge(
            &mut out,
            "lambdaflow_speed_snapshot_copies",
            "Speed publications that copied the tables because a reader held the spare copy (none waits for a reader).",
            g.speed_snapshot_copies as f64,
        );
        gauge(&mut out, "lambdaflow_idempotency_keys", "Idempotency keys remembered.", self.idempotency_keys.load(Relaxed) as f64);
        counter(
            &mut out,
            "lambdaflow_auth_refused_total",
            "Requests refused for a missing or wrong token.",
            self.auth_refused.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP lambdaflow_log_events Events in the log per partition.\n# TYPE lambdaflow_log_events gauge");
        for (p, v) in g.log_end.iter().enumerate() {
            let _ = writeln!(out, "lambdaflow_log_events{{partition=\"{p}\"}} {v}");
        }
        let _ = writeln!(out, "# HELP lambdaflow_log_bytes Bytes of the log per partition.\n# TYPE lambdaflow_log_bytes gauge");
        for (p, v) in g.log_bytes.iter().enumerate() {
            let _ = writeln!(out, "lambdaflow_log_bytes{{partition=\"{p}\"}} {v}");
        }
        let _ = writeln!(out, "# HELP lambdaflow_view_keys Keys per view and layer.\n# TYPE lambdaflow_view_keys gauge");
        for (layer, keys) in [("speed", &g.speed_keys), ("batch", &g.batch_keys)] {
            for (view, n) in keys {
                let _ = writeln!(out, "lambdaflow_view_keys{{view=\"{view}\",layer=\"{layer}\"}} {n}");
            }
        }
        crate::connect::render_metrics(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // Proves histogram buckets are cumulative and the +Inf bucket equals the count.
    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        for us in [50, 300, 300, 4_000, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5\nx_sum 20.0046"), "{out}");
        assert_eq!(h.count(), 5);
    }
}
