//! Validated options: the raw flags of [`super::args`] checked and turned into the typed
//! configurations the engine takes.

use super::*;

pub(super) fn opts(workers: usize, partitions: u32) -> Options {
    // `run` has checked the variable already.
    let batch_max_rate = crate::batch::max_rate_from_env().ok().flatten();
    Options { workers: workers.max(1), log: LogConfig { partitions, ..LogConfig::default() }, batch_max_rate, ..Options::default() }
}

/// The cores this process may use (`std::thread::available_parallelism`: the CPUs of its
/// affinity mask and cgroup quota), or `None` when the platform cannot tell.
pub(super) fn cores() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// Worker threads for batch and speed dataflows: `-w N` when given (at least 1), otherwise
/// one per core the process may use (`cores`), or 2 when that is unknown.
pub(super) fn workers(flag: Option<usize>, cores: Option<usize>) -> Result<usize> {
    match flag {
        Some(0) => Err(Error::Usage("-w/--workers must be at least 1 (leave it out for one worker per core)".into())),
        Some(n) => Ok(n),
        None => Ok(cores.unwrap_or(2).max(1)),
    }
}

/// Workers per process when `processes` processes share this host (`--processes N` on
/// loopback): `-w` when given, otherwise the cores split among the processes (at least 1),
/// so N processes do not start N x cores workers.
pub(super) fn per_process_workers(workers: usize, given: bool, cores: Option<usize>, processes: usize) -> usize {
    if given || processes <= 1 {
        workers
    } else {
        (cores.unwrap_or(2) / processes).max(1)
    }
}

/// Opens the master dataset of `dir` (creating it with `partitions`), finishing any keyed
/// group append a crash interrupted.
pub(super) fn open_log(dir: &Path, partitions: u32) -> Result<Appender> {
    let o = opts(1, partitions);
    Appender::open_with_keys(dir, o.log, o.key_retention, o.max_keys)
}

pub(super) fn parse_format(s: &str) -> Result<Format> {
    match s {
        "ndjson" | "json" => Ok(Format::Ndjson),
        "csv" => Ok(Format::Csv),
        other => Err(Error::Usage(format!("--format must be ndjson or csv, not `{other}`"))),
    }
}

/// The validated global flags: what every command gets.
pub(super) struct Global {
    pub(super) data: PathBuf,
    pub(super) workers: usize,
    /// Whether `-w` was given (otherwise `workers` is the core count).
    pub(super) workers_given: bool,
    pub(super) wait: Duration,
}

/// `http://host:port[/]` → every address the host resolves to, in the resolver's order
/// (plain HTTP only).
pub(super) fn parse_server_url(url: &str) -> Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    let bad = |why: &str| Error::Usage(format!("--server `{url}`: {why} (expected e.g. http://127.0.0.1:7070)"));
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs are supported"))?;
    let host = rest.trim_end_matches('/');
    if host.contains('/') {
        return Err(bad("give the service's address, without a path"));
    }
    let host = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let addrs: Vec<_> = host.to_socket_addrs().map_err(|e| bad(&e.to_string()))?.collect();
    if addrs.is_empty() {
        return Err(bad("no address"));
    }
    Ok(addrs)
}

/// Reads a bearer token file (one token of at least 16 visible ASCII characters).
pub(super) fn read_token(path: &Path) -> Result<String> {
    let t =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "read token file".into(), source })?;
    let t = t.trim().to_string();
    if t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(Error::Usage(format!("token file {} must hold one token of at least 16 visible ASCII characters", path.display())));
    }
    Ok(t)
}

/// `10,12,9,11` → offsets per partition.
pub(super) fn serve_config(args: &ServeArgs) -> Result<crate::serve::ServeConfig> {
    use crate::serve::{parse_time_of_day, Schedule, ServeConfig};
    let schedule = match (&args.batch_every, &args.batch_at) {
        (Some(_), Some(_)) => return Err(Error::Usage("give --batch-every or --batch-at, not both".into())),
        (Some(e), None) => Schedule::Every(*e),
        (None, Some(a)) => {
            let (h, m) = parse_time_of_day(a).map_err(|m| Error::Usage(format!("--batch-at: {m}")))?;
            Schedule::DailyAt(h, m)
        }
        (None, None) => Schedule::Never,
    };
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    if args.public_reads && token.is_none() {
        return Err(Error::Usage("--public-reads only makes sense with --token-file".into()));
    }
    if args.max_body < 1024 || args.max_body > (1 << 30) {
        return Err(Error::Usage(format!("--max-body must be 1KiB to 1GiB, not {}", format_bytes(args.max_body as u64))));
    }
    Ok(ServeConfig {
        listen: args.listen,
        schedule,
        keep: args.keep.max(1),
        token,
        public_reads: args.public_reads,
        max_body_bytes: args.max_body,
        max_lag_events: args.max_lag,
        max_inflight_bytes: args.max_inflight.max(args.max_body),
        allow_hosts: args.allow_host.clone(),
        max_connections: args.max_connections,
        max_connections_per_peer: args.max_connections_per_ip,
        header_timeout: args.header_timeout,
        write_timeout: args.write_timeout,
        http_nice: args.http_nice,
        ..ServeConfig::default()
    })
}

/// A schedule as `serve` prints it: `every 10m`, `daily at 02:00 UTC`, `on demand`.
pub(super) fn describe_schedule(s: &crate::serve::Schedule) -> String {
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 14: the default worker count follows the machine; `-w` overrides it, and
    // `-w 0` is refused rather than silently raised to 1.
    #[test]
    fn processes_on_one_host_split_the_cores() {
        assert_eq!(per_process_workers(8, false, Some(8), 4), 2);
        assert_eq!(per_process_workers(8, false, Some(8), 3), 2);
        assert_eq!(per_process_workers(2, false, Some(2), 4), 1);
        assert_eq!(per_process_workers(8, false, Some(8), 1), 8);
        // An explicit -w is kept.
        assert_eq!(per_process_workers(6, true, Some(8), 4), 6);
    }

    #[test]
    fn workers_default_to_the_cores() {
        assert_eq!(workers(None, Some(16)).unwrap(), 16);
        assert_eq!(workers(None, Some(1)).unwrap(), 1);
        assert_eq!(workers(None, None).unwrap(), 2, "unknown core count: 2");
        assert_eq!(workers(Some(3), Some(16)).unwrap(), 3, "-w overrides the cores");
        assert_eq!(workers(Some(64), Some(2)).unwrap(), 64, "more workers than cores is allowed");
        let err = workers(Some(0), Some(4)).unwrap_err();
        assert!(matches!(err, Error::Usage(_)) && err.to_string().contains("-w"), "{err}");
        assert_eq!(workers(None, cores()).unwrap(), std::thread::available_parallelism().map_or(2, |n| n.get()));
    }
}
