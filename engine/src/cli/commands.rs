//! The subcommands other than `demo`: one function each.

use super::*;

/// `gen`: synthetic events to stdout or --out.
pub(super) fn gen<J: Job>(app: &App<J>, args: GenArgs) -> Result<()> {
    if args.job != app.job.name() {
        return Err(Error::Usage(format!("this binary generates events for job `{}`, not `{}`", app.job.name(), args.job)));
    }
    let g = app.generator.as_ref().ok_or_else(|| Error::Usage(format!("job `{}` has no generator", args.job)))?;
    let format = parse_format(&args.format)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, what: "write".into(), source }
    };
    match &args.out {
        Some(path) => {
            let f = std::fs::File::create(path).map_err(io_err(path))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            g.write(args.events, args.seed, format, &mut w).map_err(io_err(path))?;
            w.flush().map_err(io_err(path))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            g.write(args.events, args.seed, format, &mut w).map_err(io_err(Path::new(STDOUT)))?;
            w.flush().map_err(io_err(Path::new(STDOUT)))?;
        }
    }
    Ok(())
}

/// `ingest` into the data directory: the input is streamed (memory bounded by `--memory`),
/// parsed on every core and staged as compressed segments, then published by one manifest
/// write under an idempotency key: all of it is stored, once, or nothing.
pub(super) fn ingest<J: Job>(g: &Global, args: IngestArgs) -> Result<()> {
    if let Some(url) = &args.server {
        return ingest_to_server::<J::Event>(&args.file, url, args.request_size, &args.remote);
    }
    let IngestArgs { file, partitions, print_acks, memory, format, key, threads, .. } = args;
    let format = match format.as_deref() {
        None => None,
        Some(f) => Some(
            crate::input::InputFormat::from_name(f)
                .ok_or_else(|| Error::Usage(format!("--format {f}: expected ndjson, csv or parquet")))?,
        ),
    };
    if let Some(k) = &key {
        crate::keys::validate_key(k).map_err(|why| Error::Usage(format!("--key: {why}")))?;
    }
    let (mut source, line_format, len) = crate::input::open_source(&file, format)?;
    crate::input::refuse_csv::<J::Event>(&file, line_format)?;
    // Parquet rows come through a reader thread whose errors are reported once: not peeked.
    let parquet = format == Some(crate::input::InputFormat::Parquet)
        || file != "-" && crate::export::is_parquet(std::path::Path::new(&file)).unwrap_or(false);
    if !parquet {
        refuse_csv_by_first_line::<J::Event>(&file, &mut source)?;
    }
    let t0 = Instant::now();
    let _lock = DirLock::acquire(&g.data, "ingest", g.wait, &ingest_advice(&g.data, &file))?;
    let appender = open_log(&g.data, partitions)?;
    let mut bulk = appender.bulk()?;
    let bar = progress_bar(len);
    let progress: Option<std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>> = bar.clone().map(|bar| {
        std::sync::Arc::new(move |bytes: u64, events: u64| {
            bar.set_position(bytes);
            bar.set_message(format!("{events} events"));
        }) as std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>
    });
    let workers = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let opts = crate::input::BulkOptions { memory, workers, format: line_format, progress };
    let staged = crate::input::stage_all::<J::Event>(source, &mut bulk, &opts);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = staged?;
    let parsed = t0.elapsed();
    // A file's retry appends once: its key defaults to a fingerprint of its content. Input
    // from stdin has no such identity (a scheduled `producer | ingest -` may send the same
    // bytes twice on purpose), so it is deduplicated only under an explicit --key.
    let key = match key {
        Some(k) => Some(k),
        None if file == "-" => None,
        None => Some(format!("ingest-local-{}", report.fingerprint)),
    };
    let hash = u64::from_str_radix(&report.fingerprint[..16], 16).unwrap_or(0);
    let t1 = Instant::now();
    let outcome = bulk.publish(key.clone().map(|k| (k, hash)), report.events)?;
    let key = key.unwrap_or_else(|| "none (stdin without --key)".to_string());
    let log = appender.log();
    let (verb, events) = match outcome {
        crate::append::Written::Appended(_) => ("ingested", report.events),
        crate::append::Written::Replayed { events, .. } => ("already ingested (nothing appended):", events),
        crate::append::Written::KeyConflict(why) => return Err(Error::Usage(format!("--key: {why}; nothing was stored"))),
        crate::append::Written::Failed(why) => return Err(Error::Unavailable(why)),
    };
    if print_acks && events > 0 {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ack {events}").and_then(|_| out.flush());
    }
    let secs = parsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{verb} {} events ({} bytes) in {:.2}s ({:.0} events/s; publish {:.2}s, peak memory {}); key {key}; log ends at {:?}, {} bytes",
        report.events,
        report.bytes,
        secs,
        report.events as f64 / secs,
        t1.elapsed().as_secs_f64(),
        peak_rss().map_or("unknown".to_string(), |b| format!("{} MiB", b >> 20)),
        log.end_offsets(),
        log.disk_bytes().iter().sum::<u64>()
    );
    Ok(())
}

/// A progress bar on stderr (hidden unless stderr is a terminal), over `len` input bytes if
/// known.
fn progress_bar(len: Option<u64>) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match len {
        Some(len) => indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} read, {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    Some(bar)
}

/// This process's peak resident memory (VmHWM), where the system says it.
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `batch`: one run here, or asked of the service holding the directory.
pub(super) fn batch<J: Job>(app: App<J>, g: &Global, args: BatchArgs) -> Result<()> {
    let BatchArgs { remote, keep, processes, timeout, export_parquet } = args;
    let workers = options::per_process_workers(g.workers, g.workers_given, options::cores(), processes);
    if processes == 0 {
        return Err(Error::Usage("--processes must be at least 1".into()));
    }
    let after = AfterBatch::new(&app.job, export_parquet);
    match access(&g.data, "batch", g.wait, &remote)? {
        Access::Local(_lock) => batch_local(app, &g.data, workers, keep, processes).and_then(|()| after.run(&g.data)),
        Access::Remote(service) => service.batch(timeout).and_then(|()| after.run(&g.data)),
    }
}

/// `query`: merged answers, here or from the service holding the directory.
pub(super) fn query<J: Job>(app: App<J>, g: &Global, args: QueryArgs) -> Result<()> {
    let QueryArgs { remote, view, key, from, to, limit, all, top, json } = args;
    let workers = g.workers;
    let point = key.is_some();
    let limit = if all { usize::MAX } else { limit };
    let job = app.job.name();
    // Whether the job's graph has a raw stateful operator on an unseeded input (`None`:
    // not looked at yet; a remote query lints only if an answer is in error).
    let mut unseeded: Option<bool> = None;
    let mut remote_job = None;
    let (mut answer, total_known, more) = match access(&g.data, "query", g.wait, &remote)? {
        Access::Local(_lock) => {
            let sel = match &key {
                Some(k) => Selection::Key(k.clone()),
                // Every key, to say how many there are; printed up to `limit`.
                None => Selection::Range { from, to, limit: usize::MAX },
            };
            // Only what the view needs: no speed layer, no seed it does not depend on.
            let exit_fast = local::LEAK_STATE_AT_EXIT.load(std::sync::atomic::Ordering::Relaxed);
            let (result, loaded) = local::query(app.job, &g.data, workers, &view, &sel, exit_fast)?;
            if std::env::var_os("LAMBDAFLOW_QUERY_EXPLAIN").is_some() {
                eprintln!("{}", loaded.describe(&result.freshness));
                eprintln!("{}", loaded.timings());
            }
            unseeded = Some(loaded.unseeded);
            (result_json(&result, point), true, false)
        }
        Access::Remote(service) => {
            remote_job = Some(app.job);
            match &key {
                Some(k) => (service.point(&view, k)?, false, false),
                None => {
                    let (answer, more) = service.range(&view, from.as_deref(), to.as_deref(), limit)?;
                    (answer, false, more)
                }
            }
        }
    };
    if point && answer.get("key").is_none() {
        if json {
            return Err(Error::Usage(format!("view `{view}` has no key `{}`", key.unwrap_or_default())));
        }
        answer = serde_json::json!({ "items": [], "freshness": answer["freshness"] });
    }
    // The one key asked for has no value because of a job mistake: that is the answer's
    // error (a range shows such keys beside the others instead).
    let mut lint = || match (unseeded, remote_job.take()) {
        (Some(u), _) => u,
        (None, Some(job)) => crate::cli::lint_job(Arc::new(job)).ok().flatten().is_some(),
        (None, None) => true,
    };
    if let Some(e) = answer.get("error").and_then(|e| e.as_str()).filter(|_| point) {
        return Err(key_in_error(job, lint(), e.to_string()));
    }
    // Counted before `--limit` shortens the list.
    let errors = answer.get("items").and_then(|i| i.as_array()).map_or(0, |i| i.iter().filter(|a| a.get("error").is_some()).count());
    let first_error =
        answer["items"].as_array().and_then(|i| i.iter().find_map(|a| a.get("error").and_then(|e| e.as_str()).map(str::to_string)));
    let count = match trim_answers(&mut answer, limit, top, total_known) {
        // The service said there are more than it returned (how many, it did not say).
        Count::All(n) if more => Count::MoreThan(n),
        count => count,
    };
    print_answers(&answer, json, count, errors)?;
    // The good answers are printed; the query still fails, so a script notices the keys in
    // error.
    match first_error {
        None => Ok(()),
        Some(e) => {
            let more = if errors > 1 { format!(" ({} in error in all)", plural(errors, "key")) } else { String::new() };
            Err(key_in_error(job, lint(), format!("{e}{more}")))
        }
    }
}

/// The error of a query answering a key in error: the job's mistake (exit 70) if its graph
/// has a raw stateful operator on an unseeded input, else an engine inconsistency (exit 4).
fn key_in_error(job: &str, unseeded: bool, e: String) -> Error {
    if unseeded {
        Error::Dataflow(DataflowError::InvalidJob { job: job.to_string(), detail: e })
    } else {
        Error::Inconsistent(format!(
            "{e}. The job's graph has no raw stateful operator on an unseeded input, so this is not the job's mistake \
             but an engine inconsistency: run `lambdaflow verify` and report it"
        ))
    }
}

/// `views`: the job's views with their fields.
pub(super) fn views<J: Job>(app: App<J>, g: &Global, args: ViewsArgs) -> Result<()> {
    let ViewsArgs { remote } = args;
    let workers = g.workers;
    let views = match access(&g.data, "views", g.wait, &remote)? {
        Access::Local(_lock) => {
            let lambda = Lambda::open(app.job, &g.data, opts(workers, 4))?;
            catch_up(&lambda)?;
            let sample = |name: &str| {
                let first = Selection::Range { from: None, to: None, limit: 1 };
                lambda.query(name, &first).ok().and_then(|r| r.answers.first().and_then(|a| serde_json::to_value(a).ok()))
            };
            lambda
                .views()
                .into_iter()
                .map(|v| {
                    let example = sample(&v.name);
                    serde_json::json!({ "name": v.name, "kind": v.kind, "key": v.key, "value": v.value, "example": example })
                })
                .collect()
        }
        Access::Remote(service) => service.views()?,
    };
    print_views(&views)
}

/// `status`: the log, the batch version and the speed layer.
pub(super) fn status<J: Job>(app: App<J>, g: &Global, args: StatusArgs) -> Result<()> {
    let StatusArgs { remote, json } = args;
    let workers = g.workers;
    let status = match access(&g.data, "status", g.wait, &remote)? {
        Access::Local(_lock) => {
            let lambda = open_existing(app.job, &g.data, workers)?;
            catch_up(&lambda)?;
            status_json(&lambda.status())
        }
        Access::Remote(service) => service.get("/v1/status")?,
    };
    print_status(&status, json)
}

/// `verify`: every record's checksum; read-only next to a running service.
pub(super) fn verify(g: &Global, args: VerifyArgs) -> Result<()> {
    let VerifyArgs { remote } = args;
    match access(&g.data, "verify", g.wait, &remote)? {
        Access::Local(_lock) => {
            let log = Log::open(&g.data.join("log"))?;
            let report = log.verify()?;
            out(format_args!(
                "log OK: {} records in {} bytes, every checksum verified",
                report.records.iter().sum::<u64>(),
                report.bytes.iter().sum::<u64>()
            ))
        }
        Access::Remote(service) => {
            // Read-only, next to the writer: up to the end the service has acknowledged.
            let status = service.get("/v1/status")?;
            let ends: Vec<u64> = serde_json::from_value(status["log"]["end"].clone())
                .map_err(|e| Error::Unavailable(format!("the service's /v1/status has no log end ({e})")))?;
            let log = Log::open_follower(&g.data.join("log"))?;
            log.follow_to(&ends)?;
            let report = log.verify()?;
            out(format_args!(
                "log OK up to the service's acknowledged end {ends:?}: {} records in {} bytes, every checksum verified \
                 (read-only, while {} keeps appending)",
                report.records.iter().sum::<u64>(),
                report.bytes.iter().sum::<u64>(),
                service.holder.describe()
            ))
        }
    }
}

/// `cluster`: `serve` with both layers on --processes processes.
pub(super) fn cluster<J: Job>(app: App<J>, g: &Global, args: ClusterCmdArgs) -> Result<()> {
    let ClusterCmdArgs { processes, serve: mut args } = args;
    if processes == 0 {
        return Err(Error::Usage("--processes must be at least 1".into()));
    }
    args.cluster.batch_processes.get_or_insert(processes);
    args.cluster.speed_processes.get_or_insert(processes);
    serve_cmd(app, g, args)
}

/// `serve`: without -w, a layer on several processes gives each of them its share of the
/// machine's cores (cores / processes), not every core to each.
pub(super) fn serve_cmd<J: Job>(app: App<J>, g: &Global, args: ServeArgs) -> Result<()> {
    let c = &args.cluster;
    let processes = c.batch_processes.unwrap_or(1).max(c.speed_processes.unwrap_or(1));
    let workers = options::per_process_workers(g.workers, g.workers_given, options::cores(), processes);
    serve(app, &g.data, workers, g.wait, args)
}

pub(super) fn batch_local<J: Job>(app: App<J>, dir: &Path, workers: usize, keep: usize, processes: usize) -> Result<()> {
    let log = open_log(dir, 4)?.log().clone();
    let store = crate::store::ViewStore::open(dir)?;
    let progress = Arc::new(Progress::default());
    let job = Arc::new(app.job);
    let bar = ProgressBar::new(log.end_offsets().iter().sum());
    bar.set_style(progress_style("batch {bar:40} {human_pos}/{human_len} events {rate}{eta}"));
    let handle = {
        let (log, progress) = (log.clone(), progress.clone());
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let store = crate::store::ViewStore::open(&dir)?;
            if processes > 1 {
                let exe = ClusterOptions::default().exe_path()?;
                let cut = log.end_offsets();
                crate::batch::run_batch_local(&exe, &dir, &store, processes, workers, cut, progress, crate::cluster::PEER_TIMEOUT)
            } else {
                let run = crate::batch::BatchRun { max_rate: crate::batch::max_rate_from_env()?, ..crate::batch::BatchRun::local(workers) };
                crate::batch::run_batch_on(job, log, &store, &run, progress, || Ok(())).map(|r| r.expect("process 0 publishes"))
            }
        })
    };
    while !handle.is_finished() {
        bar.set_position(progress.done.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = handle.join().map_err(|_| Error::Dataflow(DataflowError::Panicked("batch thread panicked".into())))??;
    bar.finish_and_clear();
    let removed = store.gc(keep, &[])?;
    let m = &report.meta;
    eprintln!(
        "batch v{} published: {} events at cut {:?} in {:.2}s compute + {:.2}s write ({:.0} events/s){}",
        m.version,
        m.events,
        m.cut,
        report.compute_secs,
        report.write_secs,
        m.events as f64 / report.compute_secs.max(1e-9),
        if removed.is_empty() { String::new() } else { format!("; removed old versions {removed:?}") }
    );
    Ok(())
}

/// `lambdaflow worker`: this process's part of a batch run or of a speed layer.
pub(super) fn worker<J: Job>(app: App<J>, dir: &Path, workers: usize, args: WorkerArgs) -> Result<()> {
    use crate::cluster::{protocol, Peers};
    if args.exit_with_parent {
        crate::cluster::exit_with_parent();
    }
    crate::guard::fail_fast();
    let peers = Peers::from_hostfile(&args.hostfile, args.processes, args.process, workers)?;
    let cut = args.cut.0.clone();
    let log = Log::open_follower(&dir.join("log"))?;
    if cut.len() != log.partitions() as usize {
        return Err(Error::Usage(format!("--cut has {} offsets, but the log has {} partitions", cut.len(), log.partitions())));
    }
    // Only the partitions this process reads: the others are never touched here.
    log.follow_to(&peers.own_ends(&cut))?;
    let log = Arc::new(log);
    let store = crate::store::ViewStore::open(dir)?;
    let timeout = args.peer_timeout;
    let job = Arc::new(app.job);
    match args.role {
        Role::Batch => {
            let progress = Arc::new(Progress::default());
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reporter = {
                let (progress, done) = (progress.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut last = u64::MAX;
                    while !done.load(Ordering::Relaxed) {
                        let n = progress.done.load(Ordering::Relaxed);
                        if n != last {
                            let _ = out(format_args!("{}{n}", protocol::PROGRESS));
                            last = n;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            };
            let run = crate::batch::BatchRun { peers, cut: Some(cut), peer_timeout: timeout, max_rate: crate::batch::max_rate_from_env()? };
            let report = crate::batch::run_batch_on(job, log, &store, &run, progress, || Ok(()));
            done.store(true, Ordering::Relaxed);
            let _ = reporter.join();
            if let Some(r) = report? {
                eprintln!(
                    "lambdaflow worker: batch v{} published ({} events, {:.2}s compute + {:.2}s write)",
                    r.meta.version, r.meta.events, r.compute_secs, r.write_secs
                );
                out(format_args!("{}{} {} {}", protocol::PUBLISHED, r.meta.version, r.compute_secs, r.write_secs))?;
            }
            Ok(())
        }
        Role::Speed => {
            if args.process == 0 {
                return Err(Error::Usage("process 0 of a speed layer is the serving process (`serve`/`cluster`), not a `worker`".into()));
            }
            crate::speed::run_member(
                job,
                log,
                store,
                crate::speed::Start { batch_version: args.batch_version, cut, peers, peer_timeout: timeout },
            )
        }
    }
}

pub(super) fn serve<J: Job>(app: App<J>, dir: &Path, workers: usize, wait: Duration, args: ServeArgs) -> Result<()> {
    if let Some(job) = &args.job {
        if job != app.job.name() {
            return Err(Error::Usage(format!("this binary serves job `{}`, not `{job}`", app.job.name())));
        }
    }
    let cfg = serve_config(&args)?;
    let mut lock = DirLock::acquire(dir, "serve", wait, "stop it first, or pick another --data")?;
    let t = Instant::now();
    let mut options = opts(workers, args.partitions);
    let c = &args.cluster;
    options.cluster = ClusterOptions {
        batch_processes: c.batch_processes.unwrap_or(1).max(1),
        speed_processes: c.speed_processes.unwrap_or(1).max(1),
        peer_timeout: c.peer_timeout,
        batch_attempts: c.batch_attempts.max(1),
        ..ClusterOptions::default()
    };
    let lambda = Arc::new(Lambda::open(app.job, dir, options)?);
    eprintln!(
        "lambdaflow serve: opened {} ({} events; batch {}) in {:.2}s",
        dir.display(),
        lambda.log().end_offsets().iter().sum::<u64>(),
        lambda.serving().batch.as_ref().map(|b| format!("v{}", b.meta.version)).unwrap_or_else(|| "none yet".into()),
        t.elapsed().as_secs_f64()
    );
    catch_up(&lambda)?;
    let running = crate::serve::start(lambda.clone(), cfg.clone(), app.dashboard, true)?;
    let _export = watch(&lambda, args.export_parquet.clone())?;
    lock.publish(running.addr, cfg.token.is_some())?;
    let kafka = start_kafka(&lambda, &args.kafka, dir, cfg.max_lag_events)?;
    eprintln!(
        "lambdaflow serve: listening on http://{} (dashboard at /, API under /v1, metrics at /metrics); batch runs {}{}",
        running.addr,
        describe_schedule(&cfg.schedule),
        if cfg.token.is_some() { "; token required" } else { "" }
    );
    let stopped = running.wait();
    drop(kafka);
    // The speed layer's other processes leave cleanly rather than see this one vanish.
    lambda.stop_processes();
    stopped?;
    eprintln!("lambdaflow serve: stopped");
    Ok(())
}

/// Brings the speed layer up to the log's end, with a progress bar when that is a lot of
/// events (a long tail since the last batch makes every query replay it).
pub(super) fn catch_up<J: Job>(lambda: &Lambda<J>) -> Result<()> {
    const HINT_EVENTS_MIN: u64 = 1_000_000;
    let mut bar: Option<ProgressBar> = None;
    lambda.sync_with(Duration::from_secs(3600), |done, total| {
        if bar.is_none() && total >= HINT_EVENTS_MIN {
            eprintln!("catching up {total} events since the batch cut (run `batch` to make this instant)");
            let b = ProgressBar::new(total);
            b.set_style(progress_style("speed {bar:40} {human_pos}/{human_len} events {rate}"));
            bar = Some(b);
        }
        if let Some(b) = &bar {
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

pub(super) fn open_existing<J: Job>(job: J, dir: &Path, workers: usize) -> Result<Lambda<J>> {
    if !dir.join("log").exists() {
        return Err(Error::Usage(format!("{} holds no lambdaflow data yet (run `ingest` first, or pass --data DIR)", dir.display())));
    }
    Lambda::open(job, dir, opts(workers, 4))
}

/// Refuses an input whose first non-blank line is not a JSON object (CSV found by its first
/// line, whatever the file's name), for a job whose events have no CSV form: the
/// error names the file (as [`crate::input::refuse_csv`] does for input named CSV) and the
/// line, before anything is stored. Looks only at what `source` has buffered (it consumes
/// nothing); a first line past the buffer is left to the parser's own refusal.
pub(super) fn refuse_csv_by_first_line<E: lambdaflow_operators::Event>(file: &str, source: &mut dyn std::io::BufRead) -> Result<()> {
    if E::reads_csv() {
        return Ok(());
    }
    let buf = match source.fill_buf() {
        Ok(buf) => buf,
        Err(_) => return Ok(()), // the parser reports the read error with its context
    };
    // Blank lines as the parser counts them (`str::trim`); the last line may be cut short.
    let text = String::from_utf8_lossy(buf);
    let Some((index, first)) = text.split('\n').map(str::trim).enumerate().find(|(_, l)| !l.is_empty()) else { return Ok(()) };
    if first.starts_with('{') {
        return Ok(());
    }
    let line = index as u64 + 1;
    let first: String = first.chars().take(60).collect();
    let file = if file == "-" { "<stdin>" } else { file };
    Err(Error::BadInput {
        line,
        error: lambdaflow_operators::FieldError::line(format!(
            "{file}: its first line (`{first}`) is not a JSON object (CSV?), but {}; convert it to NDJSON or Parquet \
             (nothing was stored)",
            lambdaflow_operators::NO_CSV
        )),
    })
}
