//! `export`: views as Parquet files; and the `--export-parquet DIR` hooks of `batch` and
//! `serve`, which write them after every published batch version. See docs/export.md.

use super::*;
use crate::export::{export_merged, export_version, finish, write_view, Export, ExportMeta, ExportedView, JobViews, OutLock, MANIFEST};

/// `export`'s flags.
#[derive(Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
    /// The view to export (see `views`); or --all.
    #[arg(required_unless_present = "all")]
    pub(super) view: Option<String>,
    /// Every view.
    #[arg(long, conflicts_with = "view")]
    pub(super) all: bool,
    /// The file format (Parquet: one `VIEW.parquet` per view, typed columns).
    #[arg(long, value_enum, default_value = "parquet")]
    pub(super) format: ExportFormat,
    /// The directory to write to (created if missing; files of the same names are replaced
    /// atomically).
    #[arg(long, value_name = "DIR")]
    pub(super) out: PathBuf,
    /// The merged answers (batch + speed, as `query` gives them) at the speed layer's
    /// frontier, instead of the batch version alone.
    #[arg(long)]
    pub(super) merged: bool,
    /// A published batch version other than the current one (see `status`).
    #[arg(long, value_name = "N", conflicts_with = "merged")]
    pub(super) version: Option<u64>,
}

/// The formats `export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum ExportFormat {
    /// Apache Parquet.
    Parquet,
}

/// `export`: here, or next to the service holding the directory.
pub(super) fn export<J: Job>(app: App<J>, g: &Global, args: ExportArgs) -> Result<()> {
    let ExportArgs { remote, view, all: _, format: ExportFormat::Parquet, out, merged, version } = args;
    let names: Vec<String> = view.into_iter().collect();
    let t = Instant::now();
    let export = match access(&g.data, "export", g.wait, &remote)? {
        Access::Local(_lock) if merged => {
            let lambda = open_existing(app.job, &g.data, g.workers)?;
            catch_up(&lambda)?;
            export_merged(&lambda, &names, &out)?
        }
        Access::Local(_lock) => export_version(&JobViews::of(&app.job), &g.data, version, &names, &out)?,
        Access::Remote(service) if merged => export_remote_merged(&JobViews::of(&app.job), &service, &names, &out)?,
        // Published versions never change: read them from the store next to the service,
        // whose gc may remove the version being read; then again with the current one.
        Access::Remote(_) => {
            let job = JobViews::of(&app.job);
            retry_unavailable(EXPORT_ATTEMPTS, || export_version(&job, &g.data, version, &names, &out))?
        }
    };
    print_export(&export, &out, t.elapsed())
}

/// A view's whole merged answer from `service`, every page of it at one speed frontier and
/// batch version: Unavailable if they differ (the service moved between pages).
fn one_snapshot(service: &Service, view: &str) -> Result<serde_json::Value> {
    let (answer, pages) = service.range_pages(view)?;
    pages_agree(view, &pages)?;
    Ok(answer)
}

/// Unavailable unless every page's freshness has the first page's speed frontier and batch
/// version.
fn pages_agree(view: &str, pages: &[serde_json::Value]) -> Result<()> {
    let at = |f: &serde_json::Value| (f["speed_frontier"].clone(), f["batch_version"].clone());
    if let Some(first) = pages.first() {
        if let Some(other) = pages.iter().find(|p| at(p) != at(first)) {
            return Err(Error::Unavailable(format!(
                "view {view}: the service moved between pages of its answer (frontier/batch version {:?} then {:?}): retry",
                at(first),
                at(other)
            )));
        }
    }
    Ok(())
}

/// How often an export is tried when what it reads goes away meanwhile.
const EXPORT_ATTEMPTS: usize = 5;

/// `f()`, again (up to `attempts` times in all) while it fails with an Unavailable-kind
/// error; the last error otherwise.
fn retry_unavailable<T>(attempts: usize, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tried = 1;
    loop {
        match f() {
            Err(e) if e.kind() == crate::error::ErrorKind::Unavailable && tried < attempts => tried += 1,
            other => return other,
        }
    }
}

/// The merged answers of a running service, view by view (each with its own freshness:
/// the service keeps ingesting meanwhile).
fn export_remote_merged(job: &JobViews, service: &Service, names: &[String], out: &Path) -> Result<Export> {
    if let Some(unknown) = names.iter().find(|n| !job.views.iter().any(|v| v.info().name == **n)) {
        let all: Vec<&str> = job.views.iter().map(|v| v.info().name.as_str()).collect();
        return Err(Error::Usage(format!("no view named `{unknown}`; the views are: {}", all.join(", "))));
    }
    let _lock = OutLock::acquire(out)?;
    let mut meta: Option<ExportMeta> = None;
    let mut files: Vec<ExportedView> = Vec::new();
    for view in job.views.iter().filter(|v| names.is_empty() || names.contains(&v.info().name)) {
        let t = Instant::now();
        let info = view.info();
        let answer = retry_unavailable(EXPORT_ATTEMPTS, || one_snapshot(service, &info.name))?;
        let f = &answer["freshness"];
        let frontier: Option<Vec<u64>> = serde_json::from_value(f["speed_frontier"].clone()).ok();
        if let Some(m) = &meta {
            if f["batch_version"].as_u64() != m.batch_version {
                return Err(Error::Unavailable(format!(
                    "the service published batch version {:?} during the export (it began at {:?}): export again",
                    f["batch_version"].as_u64(),
                    m.batch_version
                )));
            }
        }
        let m = meta.get_or_insert_with(|| ExportMeta {
            job: job.name.clone(),
            job_version: job.version,
            batch_version: f["batch_version"].as_u64(),
            batch_cut: serde_json::from_value(f["batch_cut"].clone()).ok(),
            merged: true,
            frontier: None,
            exported_ms: crate::clock::now_ms(),
        });
        let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut file = write_view(out, info, items.iter().map(|a| (&a["key"], &a["value"])), m, frontier)?;
        file.secs = t.elapsed().as_secs_f64();
        files.push(file);
    }
    let meta = meta.unwrap_or_else(|| ExportMeta {
        job: job.name.clone(),
        job_version: job.version,
        batch_version: None,
        batch_cut: None,
        merged: true,
        frontier: None,
        exported_ms: crate::clock::now_ms(),
    });
    finish(out, meta, files)
}

fn print_export(export: &Export, out: &Path, took: Duration) -> Result<()> {
    let m = &export.meta;
    let what = match (m.merged, m.batch_version) {
        (false, Some(v)) => format!("batch version {v} (cut {:?})", m.batch_cut.clone().unwrap_or_default()),
        (true, Some(v)) => format!("merged answers: batch version {v} + speed layer at {:?}", m.frontier.clone().unwrap_or_default()),
        (true, None) => format!("merged answers: no batch version, speed layer at {:?}", m.frontier.clone().unwrap_or_default()),
        (false, None) => "nothing".into(),
    };
    outln!("exported {what} of job {} v{} to {}", m.job, m.job_version, out.display());
    for v in &export.views {
        outln!("  {:<34} {:>10} rows {:>10}  {:.2}s", v.file, v.rows, format_bytes(v.bytes), v.secs);
    }
    outln!("  {MANIFEST} lists the files, columns and versions ({:.2}s in all)", took.as_secs_f64());
    Ok(())
}

/// `batch --export-parquet DIR`: what to export after the run, prepared before the job is
/// handed to it.
pub(super) struct AfterBatch(Option<(JobViews, PathBuf)>);

impl AfterBatch {
    pub(super) fn new<J: Job>(job: &J, dir: Option<PathBuf>) -> AfterBatch {
        AfterBatch(dir.map(|d| (JobViews::of(job), d)))
    }

    /// Exports the version the run published (the current one).
    pub(super) fn run(&self, data: &Path) -> Result<()> {
        let Some((job, dir)) = &self.0 else { return Ok(()) };
        let t = Instant::now();
        let export = export_version(job, data, None, &[], dir)?;
        eprintln!(
            "exported batch v{} as Parquet to {} ({} views, {} rows, {}) in {:.2}s",
            export.meta.batch_version.unwrap_or(0),
            dir.display(),
            export.views.len(),
            export.views.iter().map(|v| v.rows).sum::<usize>(),
            format_bytes(export.views.iter().map(|v| v.bytes).sum()),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// `serve --export-parquet DIR`: a thread that exports every batch version the service
/// publishes (and the current one at start, unless DIR already holds it). Stops when
/// dropped.
pub(super) struct Watch(Option<(Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>);

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.0.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

pub(super) fn watch<J: Job>(lambda: &Arc<Lambda<J>>, dir: Option<PathBuf>) -> Result<Watch> {
    let Some(dir) = dir else { return Ok(Watch(None)) };
    let job = JobViews::of_lambda(lambda);
    let data = lambda.dir().to_path_buf();
    let lambda = Arc::downgrade(lambda);
    // What DIR holds already (a restart of the service need not rewrite it): a batch export
    // of this job and version, of the same batch version and cut.
    let mut done: Option<Done> = std::fs::read(dir.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|m| m["merged"] == false && m["job"] == job.name.as_str() && m["job_version"] == job.version)
        .and_then(|m| Some((m["batch_version"].as_u64()?, serde_json::from_value(m["batch_cut"].clone()).ok()?)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("export-parquet".into())
            .spawn(move || {
                let mut last_error: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    let Some(lambda) = lambda.upgrade() else { return };
                    let current = lambda.serving().batch.as_ref().map(|b| (b.meta.version, b.meta.cut.clone()));
                    drop(lambda);
                    export_step(&mut done, current, &mut last_error, |v| export_version(&job, &data, Some(v), &[], &dir), &dir);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .map_err(|source| Error::System { what: "start the Parquet export thread".into(), source })?
    };
    Ok(Watch(Some((stop, handle))))
}

/// A batch version and its cut: what an export directory holds.
type Done = (u64, Vec<u64>);

/// One poll of `serve --export-parquet`: exports `current` unless `done` is it. `done` is
/// set only after a success, so a failed export (the version collected meanwhile, a full
/// disk) is tried again at the next poll, with whatever version is current then. A failure
/// is reported once until it changes.
fn export_step(
    done: &mut Option<Done>,
    current: Option<Done>,
    last_error: &mut Option<String>,
    export: impl FnOnce(u64) -> Result<Export>,
    dir: &Path,
) {
    let Some(current) = current.filter(|c| done.as_ref() != Some(c)) else { return };
    let v = current.0;
    let t = Instant::now();
    match export(v) {
        Ok(e) => {
            eprintln!(
                "lambdaflow serve: exported batch v{v} as Parquet to {} ({} rows) in {:.2}s",
                dir.display(),
                e.views.iter().map(|v| v.rows).sum::<usize>(),
                t.elapsed().as_secs_f64()
            );
            *done = Some(current);
            *last_error = None;
        }
        Err(e) => {
            let msg = format!("lambdaflow serve: exporting batch v{v} as Parquet to {} failed (retrying): {e}", dir.display());
            if last_error.as_ref() != Some(&msg) {
                eprintln!("{msg}");
            }
            *last_error = Some(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_of(v: u64) -> Export {
        Export {
            meta: ExportMeta {
                job: "j".into(),
                job_version: 1,
                batch_version: Some(v),
                batch_cut: None,
                merged: false,
                frontier: None,
                exported_ms: 0,
            },
            views: vec![],
        }
    }

    #[test]
    fn export_a_failed_serve_export_is_retried_and_a_same_numbered_version_of_another_cut_is_exported() {
        let dir = Path::new("/nonexistent");
        let (mut done, mut last) = (None, None);
        export_step(&mut done, Some((3, vec![10])), &mut last, |_| Err(Error::Unavailable("collected".into())), dir);
        assert_eq!(done, None, "a failure does not count as done");
        let mut asked = None;
        export_step(
            &mut done,
            Some((3, vec![10])),
            &mut last,
            |v| {
                asked = Some(v);
                Ok(export_of(v))
            },
            dir,
        );
        assert_eq!((asked, done.clone()), (Some(3), Some((3, vec![10]))), "retried at the next poll");
        let mut asked = None;
        export_step(
            &mut done,
            Some((3, vec![10])),
            &mut last,
            |v| {
                asked = Some(v);
                Ok(export_of(v))
            },
            dir,
        );
        assert_eq!(asked, None, "not exported twice");
        // The same number with another cut (a new data directory, say) is another version.
        export_step(&mut done, Some((3, vec![12])), &mut last, |v| Ok(export_of(v)), dir);
        assert_eq!(done, Some((3, vec![12])));
    }

    #[test]
    fn export_remote_pages_of_one_view_must_share_frontier_and_batch_version() {
        let page = |f: u64, b: u64| serde_json::json!({ "speed_frontier": [f], "batch_version": b });
        pages_agree("v", &[page(5, 1), page(5, 1)]).unwrap();
        let e = pages_agree("v", &[page(5, 1), page(6, 1)]).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable, "{e}");
        assert!(pages_agree("v", &[page(5, 1), page(5, 2)]).is_err());
    }

    #[test]
    fn export_retries_while_what_it_reads_is_unavailable_then_reports_unavailable() {
        let mut calls = 0;
        let r = retry_unavailable(5, || {
            calls += 1;
            if calls < 3 {
                Err(Error::Unavailable("gone".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: Result<()> = retry_unavailable(5, || {
            calls += 1;
            Err(Error::Unavailable("gone".into()))
        });
        assert_eq!((r.unwrap_err().kind(), calls), (crate::error::ErrorKind::Unavailable, 5));
        let mut calls = 0;
        let r: Result<()> = retry_unavailable(5, || {
            calls += 1;
            Err(Error::Usage("no".into()))
        });
        assert!(r.is_err() && calls == 1, "other errors are not retried");
    }
}
