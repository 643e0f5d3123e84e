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
        // Published versions never change: read them from the store next to the service.
        Access::Remote(_) => export_version(&JobViews::of(&app.job), &g.data, version, &names, &out)?,
    };
    print_export(&export, &out, t.elapsed())
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
        let (answer, _) = service.range(&info.name, None, None, usize::MAX)?;
        let f = &answer["freshness"];
        let frontier: Option<Vec<u64>> = serde_json::from_value(f["speed_frontier"].clone()).ok();
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
    // What DIR holds already (a restart of the service need not rewrite it).
    let mut done: Option<u64> = std::fs::read(dir.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|m| m["merged"] == false)
        .and_then(|m| m["batch_version"].as_u64());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("export-parquet".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(lambda) = lambda.upgrade() else { return };
                    let current = lambda.serving().batch.as_ref().map(|b| b.meta.version);
                    drop(lambda);
                    if let Some(v) = current.filter(|v| done != Some(*v)) {
                        let t = Instant::now();
                        match export_version(&job, &data, Some(v), &[], &dir) {
                            Ok(e) => eprintln!(
                                "lambdaflow serve: exported batch v{v} as Parquet to {} ({} rows) in {:.2}s",
                                dir.display(),
                                e.views.iter().map(|v| v.rows).sum::<usize>(),
                                t.elapsed().as_secs_f64()
                            ),
                            // Not retried: the next version is exported when it is published.
                            Err(e) => eprintln!("lambdaflow serve: exporting batch v{v} as Parquet to {} failed: {e}", dir.display()),
                        }
                        done = Some(v);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .map_err(|source| Error::System { what: "start the Parquet export thread".into(), source })?
    };
    Ok(Watch(Some((stop, handle))))
}
