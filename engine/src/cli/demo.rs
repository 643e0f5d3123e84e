//! `demo`: the whole loop as a service, on generated history and live events.

use super::*;

pub(super) fn demo<J: Job>(app: App<J>, dir: &Path, workers: usize, wait: Duration, args: DemoArgs) -> Result<()> {
    let g = app.generator.clone().ok_or_else(|| Error::Usage(format!("job `{}` has no generator, so no demo", app.job.name())))?;
    let mut lock = demo_lock(dir, wait, args.fresh)?;
    let report = app.demo_report.clone();
    outln!("lambdaflow demo: job `{}` in {} with {workers} worker(s)", app.job.name(), dir.display());
    let lambda = Arc::new(Lambda::open(app.job, dir, opts(workers, 4))?);
    demo_history(&lambda, g.as_ref(), args.history)?;
    let t = Instant::now();
    let r = lambda.batch_and_handover(Arc::new(Progress::default()))?;
    outln!(
        "2. batch layer: v{} over {} events (cut {:?}) in {:.2}s; speed layer seeded from it",
        r.meta.version,
        r.meta.events,
        r.meta.cut,
        t.elapsed().as_secs_f64()
    );
    let cfg =
        crate::serve::ServeConfig { listen: args.listen, schedule: crate::serve::Schedule::Every(args.batch_every), ..Default::default() };
    let running = crate::serve::start(lambda.clone(), cfg, app.dashboard, true)?;
    let addr = running.addr;
    lock.publish(addr, false)?;
    outln!("3. service: listening on http://{addr}");
    outln!();
    outln!("   open the dashboard:  http://{addr}/");
    outln!("   query the API:       curl http://{addr}/v1/views");
    outln!();
    outln!(
        "4. posting {} live events/s over HTTP; a batch run every {}; {}",
        args.rate,
        format_duration(args.batch_every),
        if args.seconds.is_zero() { "Ctrl-C to stop".to_string() } else { format!("stopping after {}", format_duration(args.seconds)) }
    );
    let posted = demo_live(&running, &lambda, g.as_ref(), report.as_ref(), &args)?;
    running.stop()?;
    let s = lambda.status();
    outln!(
        "done: posted {posted} live events; {} events in the log, batch v{}, speed frontier {:?}",
        s.log_end.iter().sum::<u64>(),
        s.batch.map(|b| b.version).unwrap_or(0),
        s.freshness.speed_frontier
    );
    outln!("serve it again: {} --data {} serve", this_binary(), dir.display());
    Ok(())
}

/// Takes `dir`'s lock for the demo; with `fresh`, then empties it (only lambdaflow data).
pub(super) fn demo_lock(dir: &Path, wait: Duration, fresh: bool) -> Result<DirLock> {
    if fresh && dir.exists() {
        check_only_ours(dir)?;
    }
    // The lock first: nothing may delete a directory another process holds.
    let lock = DirLock::acquire(dir, "demo", wait, "stop it first, or pick another --data")?;
    if fresh {
        // Re-checked under the lock; LOCK itself stays (it is what we hold).
        for name in check_only_ours(dir)? {
            if name == "LOCK" || name == HOLDER_FILE {
                continue;
            }
            let path = dir.join(&name);
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(|source| Error::Io { path, what: "remove".into(), source })?;
        }
    }
    Ok(lock)
}

/// Appends generated history until the log holds `history` events.
pub(super) fn demo_history<J: Job>(lambda: &Lambda<J>, g: &dyn Generator<J::Event>, history: u64) -> Result<()> {
    let have: u64 = lambda.log().end_offsets().iter().sum();
    if have < history {
        let t = Instant::now();
        let events = g.events(1, history - have, false);
        for chunk in events.chunks(100_000) {
            lambda.append(chunk)?;
        }
        outln!("1. master dataset: appended {} historical events durably in {:.2}s", events.len(), t.elapsed().as_secs_f64());
    } else {
        outln!("1. master dataset: {have} events already there");
    }
    Ok(())
}

/// Posts live events to the service until `--seconds` pass or it stops, printing the
/// report every two seconds; returns how many were acknowledged.
pub(super) fn demo_live<J: Job>(
    running: &crate::serve::Running,
    lambda: &Lambda<J>,
    g: &dyn Generator<J::Event>,
    report: Option<&DemoReport<J>>,
    args: &DemoArgs,
) -> Result<u64> {
    let addr = running.addr;
    let start = Instant::now();
    let mut seed = 1000u64;
    // Keys unique to this run: a rerun (same seeds, same day) must not be taken for a retry.
    let run_id = crate::clock::now_ms();
    let mut last_report = Instant::now();
    let tick = Duration::from_millis(250);
    let mut posted = 0u64;
    while !running.is_finished() {
        if !args.seconds.is_zero() && start.elapsed() >= args.seconds {
            break;
        }
        let t = Instant::now();
        let live = g.events(seed, (args.rate / 4).max(1), true);
        seed += 1;
        let mut body = Vec::with_capacity(live.len() * 160);
        g.to_ndjson(&live, &mut body);
        match http_post(addr, "/v1/events", &format!("demo-{run_id}-{seed}"), &body) {
            Ok(200) => posted += live.len() as u64,
            Ok(429) => eprintln!("   (the service asked the generator to slow down)"),
            Ok(code) => eprintln!("   posting events got HTTP {code}"),
            Err(e) if running.is_finished() => drop(e),
            Err(e) => eprintln!("   posting events failed: {e}"),
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            if let Some(report) = report {
                let lines = report(lambda)?;
                outln!("[{:>5.1}s] {}", start.elapsed().as_secs_f64(), lines.join(" | "));
            }
            last_report = Instant::now();
        }
        std::thread::sleep(tick.saturating_sub(t.elapsed()));
    }
    Ok(posted)
}

/// How to run this binary again: under `cargo run`, what the user typed (`cargo run
/// --release --`); otherwise its path as it was started (`./target/release/lambdaflow`), or
/// its name when the shell found it on `PATH`.
pub(super) fn this_binary() -> String {
    let exe = std::env::current_exe().ok();
    let in_target = |part: &str| exe.as_ref().is_some_and(|e| e.components().any(|c| c.as_os_str() == part));
    if std::env::var_os("CARGO").is_some() && in_target("target") {
        return if in_target("release") { "cargo run --release --".into() } else { "cargo run --".into() };
    }
    std::env::args().next().unwrap_or_else(|| "lambdaflow".into())
}
