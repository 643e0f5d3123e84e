//! Parquet out and in: the views as typed Parquet files, and Parquet files as events.
//!
//! * [`export_version`] writes a published batch version's views, one `VIEW.parquet` per
//!   view, read straight from the view store (no speed layer is started);
//!   [`export_merged`] writes the merged answers (batch + speed) of a [`Lambda`] at one speed
//!   frontier. Both go through [`write_view`], which also serves answers fetched from a
//!   running service. Every file is written to a hidden temporary name, fsync'd and renamed
//!   into place, so a reader sees the previous file or the new one, never a part; its
//!   key/value metadata records the job, the batch version, the cut and (merged) the frontier,
//!   and `_lambdaflow.json` beside the files (written last, the same way) lists them all.
//!   Column types are described in [`columns`] and docs/export.md.
//! * [`read`] yields the rows of a Parquet file as NDJSON lines for the job's own parser.

mod columns;
pub mod read;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use lambdaflow_operators::runtime::{AnyView, Mode, Registry};
use lambdaflow_operators::{Ctx, Job, Selection, ViewInfo};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::lambda::Lambda;
use crate::store::ViewStore;

pub use read::{for_each_row_as_ndjson, is_parquet, parse_parquet};

/// The manifest written beside the files (a leading `_` keeps Spark and Hive-style readers
/// from taking it for data).
pub const MANIFEST: &str = "_lambdaflow.json";

/// What an export holds: the same for every file of one export.
#[derive(Clone, Debug, Serialize)]
pub struct ExportMeta {
    /// The job's name.
    pub job: String,
    /// The job's version.
    pub job_version: u32,
    /// The batch version the answers come from (none: no batch run yet, speed layer alone).
    pub batch_version: Option<u64>,
    /// The batch version's cut: log offsets per partition.
    pub batch_cut: Option<Vec<u64>>,
    /// Whether the answers are merged batch + speed answers.
    pub merged: bool,
    /// For a merged export: the log offsets per partition the speed layer had applied. Every
    /// view of one local export is at this same frontier.
    pub frontier: Option<Vec<u64>>,
    /// When the export was made (ms since the epoch).
    pub exported_ms: u64,
}

/// One written file.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedView {
    /// The view.
    pub view: String,
    /// The file's name in the export directory.
    pub file: String,
    /// Rows (keys).
    pub rows: usize,
    /// The file's size.
    pub bytes: u64,
    /// Columns and their Arrow types, key columns first.
    pub columns: Vec<(String, String)>,
    /// How many of the columns are the key.
    pub key_columns: usize,
    /// For a merged export from a service: this view's own frontier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontier: Option<Vec<u64>>,
    /// The batch version this view's answers come from.
    pub batch_version: Option<u64>,
    /// Seconds spent building and writing the file.
    #[serde(skip)]
    pub secs: f64,
}

/// A finished export.
#[derive(Clone, Debug, Serialize)]
pub struct Export {
    /// What every file holds.
    #[serde(flatten)]
    pub meta: ExportMeta,
    /// The files, in the job's view order.
    pub views: Vec<ExportedView>,
}

/// A job's name, version and views: what exporting a stored batch version needs.
pub struct JobViews {
    /// The job's name.
    pub name: String,
    /// The job's version.
    pub version: u32,
    /// The views, as the engine holds them.
    pub views: Vec<Arc<dyn AnyView>>,
}

impl JobViews {
    /// The views of `job`, without running anything: its dataflow is built once on a
    /// throwaway worker and dropped.
    pub fn of<J: Job>(job: &J) -> JobViews {
        let alloc = timely::communication::Allocator::Thread(timely::communication::allocator::thread::Thread::default());
        let mut worker = timely::worker::Worker::new(timely::WorkerConfig::default(), alloc, None);
        let registry = Arc::new(Registry::default());
        {
            let registry = registry.clone();
            worker.dataflow::<lambdaflow_operators::Time, _, _>(move |scope| {
                use differential_dataflow::input::Input;
                let (_input, events) = scope.new_collection::<J::Event, isize>();
                let mut ctx = Ctx::new(scope, Mode::Batch, registry, None);
                job.build(&mut ctx, events);
            });
        }
        while worker.has_dataflows() {
            worker.step_or_park(None);
        }
        JobViews { name: job.name().to_string(), version: job.version(), views: registry.views() }
    }

    /// The views of the job `lambda` runs.
    pub fn of_lambda<J: Job>(lambda: &Lambda<J>) -> JobViews {
        let job = lambda.job();
        JobViews { name: job.name().to_string(), version: job.version(), views: lambda.serving().speed.views().to_vec() }
    }
}

/// The views `names` selects (all of them when empty), in the job's order; an unknown name
/// is a usage error listing the views.
fn select<'a>(views: &'a [Arc<dyn AnyView>], names: &[String]) -> Result<Vec<&'a Arc<dyn AnyView>>> {
    if let Some(unknown) = names.iter().find(|n| !views.iter().any(|v| v.info().name == **n)) {
        let all: Vec<&str> = views.iter().map(|v| v.info().name.as_str()).collect();
        return Err(Error::Usage(format!("no view named `{unknown}`; the views are: {}", all.join(", "))));
    }
    Ok(views.iter().filter(|v| names.is_empty() || names.contains(&v.info().name)).collect())
}

fn every_key() -> Selection {
    Selection::Range { from: None, to: None, limit: usize::MAX }
}

/// Writes the views `names` (all when empty) of the published batch `version` (the current
/// one when `None`) of `data_dir` to `out`, reading the view store directly: safe next to a
/// running service, which never changes a published version (only `batch --keep` removes
/// old ones).
pub fn export_version(job: &JobViews, data_dir: &Path, version: Option<u64>, names: &[String], out: &Path) -> Result<Export> {
    let store = ViewStore::open(data_dir)?;
    let meta = match version {
        Some(v) => store.meta(v).map_err(|e| {
            let published = std::cell::RefCell::new(Vec::new());
            if store
                .find_published(|m| {
                    published.borrow_mut().push(m.version.to_string());
                    false
                })
                .is_err()
                || published.borrow().contains(&v.to_string())
            {
                return e;
            }
            let mut published = published.into_inner();
            published.reverse();
            let list = if published.is_empty() { "none".to_string() } else { published.join(", ") };
            Error::Usage(format!("{} has no published batch version {v}; the published versions are: {list}", data_dir.display()))
        })?,
        None => store.current_meta()?.ok_or_else(|| {
            Error::Usage(format!(
                "{} has no batch version yet: run `batch` first (or export the speed layer's answers with --merged)",
                data_dir.display()
            ))
        })?,
    };
    if meta.job != job.name || meta.job_version != job.version {
        return Err(Error::Usage(format!(
            "batch version {} was computed by job {} version {}, not by this binary's {} version {}: run `batch` under this version first",
            meta.version, meta.job, meta.job_version, job.name, job.version
        )));
    }
    let export = ExportMeta {
        job: meta.job.clone(),
        job_version: meta.job_version,
        batch_version: Some(meta.version),
        batch_cut: Some(meta.cut.clone()),
        merged: false,
        frontier: None,
        exported_ms: crate::clock::now_ms(),
    };
    let selected = select(&job.views, names)?;
    let _lock = OutLock::acquire(out)?;
    let mut files = Vec::new();
    for view in selected {
        let t = Instant::now();
        let name = &view.info().name;
        // A version that is no longer the current one may be collected (`batch --keep`, a
        // service's gc) while it is read: that is Unavailable (retry with the current one),
        // not damage.
        let gone = |e: Error| {
            if store.current_meta().ok().flatten().map(|m| m.version) != Some(meta.version) {
                Error::Unavailable(format!(
                    "batch version {} was removed (garbage-collected) while it was exported ({e}): export the current version",
                    meta.version
                ))
            } else {
                e
            }
        };
        let bytes = store
            .read_view(meta.version, name)
            .and_then(|b| b.ok_or_else(|| Error::Inconsistent(format!("batch version {} has no view `{name}`", meta.version))))
            .map_err(gone)?;
        let table = view.decode_batch(&bytes).map_err(Error::Inconsistent).map_err(gone)?;
        drop(bytes);
        let empty = view.new_speed_table();
        let answers = view.query(Some(table.as_ref()), empty.as_ref(), &every_key()).map_err(Error::Internal)?;
        drop(table);
        refuse_error_entries(name, &answers)?;
        let mut file = write_view(out, view.info(), answers.iter().map(|a| (&a.key, &a.value)), &export, None)?;
        file.secs = t.elapsed().as_secs_f64();
        files.push(file);
    }
    finish(out, export, files)
}

/// Writes the merged answers (batch + speed) of the views `names` (all when empty) to
/// `out`. Every view is read from one serving pair at one frontier: whoever calls this keeps
/// appends out meanwhile (the CLI holds the data directory), and the export fails rather than
/// mix frontiers if one moves anyway.
pub fn export_merged<J: Job>(lambda: &Lambda<J>, names: &[String], out: &Path) -> Result<Export> {
    let serving = lambda.serving();
    let views = serving.speed.views();
    let selected: Vec<String> = select(views, names)?.iter().map(|v| v.info().name.clone()).collect();
    let _lock = OutLock::acquire(out)?;
    let frontier = serving.speed.frontier();
    let export = ExportMeta {
        job: lambda.job().name().to_string(),
        job_version: lambda.job().version(),
        batch_version: serving.batch.as_ref().map(|b| b.meta.version),
        batch_cut: Some(serving.speed.cut.clone()),
        merged: true,
        frontier: Some(frontier.clone()),
        exported_ms: crate::clock::now_ms(),
    };
    let mut files = Vec::new();
    for name in selected {
        let t = Instant::now();
        let result = lambda.query_on(&serving, &name, &every_key())?;
        if result.freshness.speed_frontier != frontier {
            return Err(Error::Unavailable(format!(
                "the speed layer moved from {frontier:?} to {:?} during the export: appends must wait for it (retry)",
                result.freshness.speed_frontier
            )));
        }
        let info = views.iter().find(|v| v.info().name == name).map(|v| v.info().clone()).expect("selected");
        refuse_error_entries(&name, &result.answers)?;
        let mut file = write_view(out, &info, result.answers.iter().map(|a| (&a.key, &a.value)), &export, None)?;
        file.secs = t.elapsed().as_secs_f64();
        files.push(file);
    }
    finish(out, export, files)
}

/// Writes the manifest last and returns the export.
pub fn finish(out: &Path, meta: ExportMeta, views: Vec<ExportedView>) -> Result<Export> {
    let export = Export { meta, views };
    let mut body = serde_json::to_vec_pretty(&export).map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    body.push(b'\n');
    crate::durable::replace(&out.join(MANIFEST), &temp_path(out, MANIFEST), &body)?;
    Ok(export)
}

fn create_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_path_buf(), what: "create directory".into(), source })
}

/// The lock file every export takes in its output directory (hidden, like the temporary
/// files, so readers globbing `*.parquet` or skipping `.`/`_` names ignore it).
pub const OUT_LOCK: &str = ".lambdaflow.lock";

/// An output directory held for one whole export (files and manifest): two exports into the
/// same directory (`serve --export-parquet D` and `export --out D`, say) take turns instead
/// of mixing their files and manifests. Released when dropped (or when the process dies).
#[derive(Debug)]
pub struct OutLock {
    _file: std::fs::File,
}

impl OutLock {
    /// Creates `out` if needed and takes its lock, waiting for another export to finish.
    pub fn acquire(out: &Path) -> Result<OutLock> {
        create_dir(out)?;
        let path = out.join(OUT_LOCK);
        let io = |what: &str, source| Error::Io { path: path.clone(), what: what.into(), source };
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io("open", e))?;
        file.lock().map_err(|e| io("lock", e))?;
        Ok(OutLock { _file: file })
    }
}

/// A temporary name for `file_name` in `out`, unique to this process and call, so writers
/// never truncate each other's half-written files.
fn temp_path(out: &Path, file_name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    out.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()))
}

/// Writes one view's answers (`(key, value)` JSON pairs, in key order) as `out/VIEW.parquet`,
/// atomically. `frontier` is this view's own frontier when it differs per view (answers from
/// a running service).
pub fn write_view<'a>(
    out: &Path,
    info: &ViewInfo,
    answers: impl Iterator<Item = (&'a Value, &'a Value)>,
    meta: &ExportMeta,
    frontier: Option<Vec<u64>>,
) -> Result<ExportedView> {
    // Answers that do not convert are refused as data (never as an internal error): the
    // "line" is the answer's number in key order.
    let bad_at = |n: usize, e: String| Error::BadInput {
        line: n as u64,
        error: lambdaflow_operators::FieldError::line(format!("view {}: answer {n} does not match the view's description: {e}", info.name)),
    };
    let bad = |e: String| bad_at(0, e);
    let mut layout = columns::Layout::of(&info.clone()).map_err(bad)?;
    let key_names: Vec<String> = layout.names().into_iter().take(layout.key_columns).collect();
    let key_columns = layout.key_columns;
    let mut rows = 0usize;
    for (key, value) in answers {
        layout.push(key, value).map_err(|e| bad_at(rows + 1, format!("key {key}: {e}")))?;
        rows += 1;
    }
    let (fields, arrays) = layout.finish().map_err(bad)?;
    let columns: Vec<(String, String)> = fields.iter().map(|f| (f.name().clone(), columns::type_name(f.data_type()))).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = if arrays.is_empty() {
        RecordBatch::new_empty(schema.clone())
    } else {
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| bad(e.to_string()))?
    };
    let frontier_kv = frontier.clone().or_else(|| meta.frontier.clone());
    let mut kv = vec![
        ("lambdaflow.job", meta.job.clone()),
        ("lambdaflow.job_version", meta.job_version.to_string()),
        ("lambdaflow.view", info.name.clone()),
        ("lambdaflow.kind", json(&info.kind)),
        ("lambdaflow.key_columns", json(&key_names)),
        ("lambdaflow.merged", meta.merged.to_string()),
        ("lambdaflow.exported_ms", meta.exported_ms.to_string()),
    ];
    if let Some(v) = meta.batch_version {
        kv.push(("lambdaflow.batch_version", v.to_string()));
    }
    if let Some(cut) = &meta.batch_cut {
        kv.push(("lambdaflow.batch_cut", json(cut)));
    }
    if let Some(f) = &frontier_kv {
        kv.push(("lambdaflow.frontier", json(f)));
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(kv.into_iter().map(|(k, v)| KeyValue::new(k.to_string(), v)).collect()))
        .build();
    let file_name = format!("{}.parquet", info.name);
    let path = out.join(&file_name);
    let tmp = temp_path(out, &file_name);
    let written = write_parquet(&tmp, schema, &batch, props);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crate::durable::rename_synced(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(ExportedView {
        view: info.name.clone(),
        file: file_name,
        rows,
        bytes,
        columns,
        key_columns,
        frontier,
        batch_version: meta.batch_version,
        secs: 0.0,
    })
}

/// Writes `batch` to `path` as Parquet and fsyncs the file.
fn write_parquet(path: &Path, schema: Arc<Schema>, batch: &RecordBatch, props: WriterProperties) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Io { path: path.to_path_buf(), what: what.into(), source: e };
    let pq = |e: parquet::errors::ParquetError| match e {
        parquet::errors::ParquetError::External(inner) => io("write Parquet", std::io::Error::other(inner)),
        other => Error::Internal(format!("writing Parquet {}: {other}", path.display())),
    };
    let file = std::fs::File::create(path).map_err(|e| io("create", e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(pq)?;
    writer.write(batch).map_err(pq)?;
    let file = writer.into_inner().map_err(pq)?;
    file.sync_all().map_err(|e| io("fsync", e))
}

/// JSON text of a value, for file metadata.
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The path of a view's file in an export directory.
pub fn view_file(out: &Path, view: &str) -> PathBuf {
    out.join(format!("{view}.parquet"))
}

/// An export holds values only: a key in error (its records did not merge to one value)
/// would be written as a null, which a reader cannot tell from a real value. Refuses the
/// export naming the view, the key and the cause instead.
fn refuse_error_entries(view: &str, answers: &[lambdaflow_operators::Answer]) -> Result<()> {
    let mut bad = answers.iter().filter_map(|a| a.error.as_deref().map(|e| (&a.key, e)));
    match bad.next() {
        None => Ok(()),
        Some((key, cause)) => {
            let more = bad.count();
            let more = if more > 0 { format!(" ({more} more keys in error)") } else { String::new() };
            Err(Error::Inconsistent(format!("view `{view}`, key {key}: {cause}{more}; nothing exported for it")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Int64Type};
    use arrow_schema::DataType;
    use lambdaflow_operators::ViewKind;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::json;

    fn meta() -> ExportMeta {
        ExportMeta {
            job: "shop".into(),
            job_version: 3,
            batch_version: Some(7),
            batch_cut: Some(vec![10, 20]),
            merged: true,
            frontier: Some(vec![11, 25]),
            exported_ms: 1,
        }
    }

    #[test]
    fn a_view_is_written_with_typed_columns_and_its_versions() {
        let dir = crate::testing::TempDir::new("export-view");
        let info = ViewInfo {
            name: "top".into(),
            kind: ViewKind::Value,
            key: "day (YYYY-MM-DD)".into(),
            value: "[{net_cents: integer, product_id: integer}]".into(),
        };
        let answers = [
            (json!("2026-01-01"), json!([{ "net_cents": 5, "product_id": 1 }, { "net_cents": -2, "product_id": 9 }])),
            (json!("2026-01-02"), json!([])),
        ];
        let file = write_view(dir.path(), &info, answers.iter().map(|(k, v)| (k, v)), &meta(), None).unwrap();
        assert_eq!((file.rows, file.key_columns, file.file.as_str()), (2, 1, "top.parquet"));
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["top.parquet"], "no temporary file is left");

        let f = std::fs::File::open(view_file(dir.path(), "top")).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let kv: std::collections::BTreeMap<String, String> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(kv["lambdaflow.batch_version"], "7");
        assert_eq!(kv["lambdaflow.batch_cut"], "[10,20]");
        assert_eq!(kv["lambdaflow.frontier"], "[11,25]");
        assert_eq!(kv["lambdaflow.merged"], "true");
        assert_eq!(kv["lambdaflow.key_columns"], "[\"key\"]");
        let batch = builder.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.schema().field(0).data_type(), &DataType::Date32);
        assert_eq!(batch.column(0).as_primitive::<Date32Type>().value(1), 20_455);
        let list = batch.column(1).as_list::<i32>();
        assert_eq!(list.value_length(0), 2);
        assert_eq!(list.value_length(1), 0);
        let items = list.value(0);
        let items = items.as_struct();
        assert_eq!(items.column_by_name("net_cents").unwrap().as_primitive::<Int64Type>().values().to_vec(), [5, -2]);
    }

    #[test]
    fn days_the_engine_displays_beyond_9999_are_written() {
        let dir = crate::testing::TempDir::new("export-far-days");
        let info = ViewInfo { name: "d".into(), kind: ViewKind::Sum, key: "day (YYYY-MM-DD)".into(), value: "integer".into() };
        let far = lambdaflow_operators::Day(3_000_000);
        let answers = [(json!(far.to_string()), json!(1))];
        write_view(dir.path(), &info, answers.iter().map(|(k, v)| (k, v)), &meta(), None).unwrap();
        let f = std::fs::File::open(view_file(dir.path(), "d")).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.column(0).as_primitive::<Date32Type>().value(0), 3_000_000);
    }

    #[test]
    fn temporary_names_are_unique_and_an_output_directory_is_held_by_one_export() {
        let dir = crate::testing::TempDir::new("export-lock");
        let a = temp_path(dir.path(), "v.parquet");
        let b = temp_path(dir.path(), "v.parquet");
        assert_ne!(a, b);
        assert!(a.to_string_lossy().contains(&std::process::id().to_string()), "{a:?}");
        let held = OutLock::acquire(dir.path()).unwrap();
        let other = std::fs::OpenOptions::new().write(true).open(dir.path().join(OUT_LOCK)).unwrap();
        assert!(matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)), "a second export must wait");
        drop(held);
        other.try_lock().unwrap();
    }

    #[test]
    fn an_answer_that_does_not_match_the_description_fails_and_leaves_nothing() {
        let dir = crate::testing::TempDir::new("export-bad");
        let info = ViewInfo { name: "v".into(), kind: ViewKind::Sum, key: "integer".into(), value: "{n: integer}".into() };
        let answers = [(json!(1), json!({ "n": "x" }))];
        let err = write_view(dir.path(), &info, answers.iter().map(|(k, v)| (k, v)), &meta(), None).unwrap_err().to_string();
        assert!(err.contains("view v") && err.contains("key 1") && err.contains("column n"), "{err}");
        let answers = [(json!(1), json!({ "n": 1 }))];
        let info = ViewInfo { name: "v".into(), kind: ViewKind::Value, key: "integer".into(), value: "{n: day (YYYY-MM-DD)}".into() };
        let e = write_view(dir.path(), &info, answers.iter().map(|(k, v)| (k, v)), &meta(), None).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::BadInput, "unconvertible data is not an internal error: {e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
