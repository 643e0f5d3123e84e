//! Views: what a job declares, how the engine stores, merges and presents them.
//!
//! Every view is a differential collection of `(K, V)` records with difference `R`. A batch
//! view is that collection consolidated at a cut; the speed layer produces signed updates
//! since the cut; the merged answer is the consolidation of both. For a *sum view*, `V` is
//! `()` and the aggregate lives in `R` (see [`crate::Sums`]); for a *value view* (top-k, a
//! derived value per key) `R` is a count and a live key holds exactly one value with count 1.
//!
//! The engine never sees `K`, `V` or `R`: it holds [`AnyView`] trait objects whose typed
//! implementation ([`ViewCell`]) encodes batch views, folds speed updates, and answers
//! queries in JSON.

use differential_dataflow::difference::Abelian;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crate::day::Day;

/// A record type usable as a view key or value, inside the dataflow and in stored views.
pub trait Data: differential_dataflow::ExchangeData + std::hash::Hash + Send + Sync + Debug + Serialize + DeserializeOwned {}
impl<T> Data for T where T: differential_dataflow::ExchangeData + std::hash::Hash + Send + Sync + Debug + Serialize + DeserializeOwned {}

/// A difference type: how records accumulate. `isize` counts; [`crate::Sums`] sums.
pub trait Diff: differential_dataflow::ExchangeData + Abelian + Send + Sync + Debug + Serialize + DeserializeOwned {}
impl<T> Diff for T where T: differential_dataflow::ExchangeData + Abelian + Send + Sync + Debug + Serialize + DeserializeOwned {}

/// A view key: its JSON form for serving, and how to read it from a query argument.
pub trait ViewKey: Data {
    /// The key's JSON form, with field names as the job's spec names them.
    fn to_json(&self) -> Value;
    /// Parses a key from a query argument (the key's plain text, or its JSON text).
    fn parse_key(s: &str) -> Result<Self, String>;
}

impl ViewKey for u64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    fn parse_key(s: &str) -> Result<Self, String> {
        s.trim().parse().map_err(|_| format!("\"{s}\" is not an unsigned integer key"))
    }
}

impl ViewKey for i64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    fn parse_key(s: &str) -> Result<Self, String> {
        s.trim().parse().map_err(|_| format!("\"{s}\" is not an integer key"))
    }
}

impl ViewKey for String {
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
    fn parse_key(s: &str) -> Result<Self, String> {
        match serde_json::from_str::<String>(s) {
            Ok(v) => Ok(v),
            Err(_) => Ok(s.to_string()),
        }
    }
}

impl ViewKey for Day {
    fn to_json(&self) -> Value {
        Value::from(self.to_string())
    }
    fn parse_key(s: &str) -> Result<Self, String> {
        Day::parse(s.trim().trim_matches('"'))
    }
}

/// Whether a view's value is a sum of parts (batch part + speed part) or a value replaced
/// as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewKind {
    /// `V = ()`, the value is the accumulated difference: merged = batch + speed.
    Sum,
    /// The value is a record; the merged value is the consolidation of batch and speed.
    Value,
}

/// What a view is, for listings and schema endpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViewInfo {
    /// The view's name, unique within the job.
    pub name: String,
    /// How the view merges.
    pub kind: ViewKind,
    /// Human-readable description of the key.
    pub key: String,
    /// Human-readable description of the value.
    pub value: String,
}

/// One merged answer: a key and its value, as JSON, and for sum views the two parts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    /// The key's JSON form.
    pub key: Value,
    /// The merged value's JSON form.
    pub value: Value,
    /// For sum views: the batch view's part (`null` when the key is not in the batch view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<Value>,
    /// For sum views: the speed layer's part since the cut (`null` when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<Value>,
}

/// Which keys a query asks for.
#[derive(Clone, Debug)]
pub enum Selection {
    /// One key, in its textual form.
    Key(String),
    /// Keys in `[from, to]` (inclusive, either side open), at most `limit` of them.
    Range {
        /// Lowest key, inclusive.
        from: Option<String>,
        /// Highest key, inclusive.
        to: Option<String>,
        /// At most this many answers.
        limit: usize,
    },
}

/// A decoded, immutable batch view.
pub trait BatchTable: Send + Sync {
    /// Number of records.
    fn len(&self) -> usize;
    /// Whether there are no records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// For downcasting to the typed table.
    fn as_any(&self) -> &dyn Any;
}

/// The speed layer's accumulated updates for one view since the cut.
pub trait SpeedTable: Send + Sync {
    /// Number of keys with updates.
    fn keys(&self) -> usize;
    /// An estimate of the memory held, in bytes.
    fn approx_bytes(&self) -> usize;
    /// For downcasting to the typed table.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the typed table.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A view as the engine sees it: type-erased.
pub trait AnyView: Send + Sync {
    /// What the view is.
    fn info(&self) -> &ViewInfo;
    /// Batch mode: consolidates everything the workers produced and encodes it.
    fn take_batch_encoded(&self) -> Result<(Vec<u8>, usize), String>;
    /// Decodes a stored batch view.
    fn decode_batch(&self, bytes: &[u8]) -> Result<Arc<dyn BatchTable>, String>;
    /// An empty speed table.
    fn new_speed_table(&self) -> Box<dyn SpeedTable>;
    /// Speed mode: moves produced updates with `1 <= time <= upto` into `table`. Updates at
    /// time 0 restate the seeded batch state and are dropped; later ones stay pending.
    fn drain_speed(&self, upto: u64, table: &mut dyn SpeedTable);
    /// Merges the batch view and the speed table for the selected keys.
    fn query(&self, batch: Option<&dyn BatchTable>, speed: &dyn SpeedTable, sel: &Selection) -> Result<Vec<Answer>, String>;
}

/// The typed batch table: consolidated `((K, V), R)` sorted by `(K, V)`.
pub struct Table<K, V, R> {
    /// The records.
    pub rows: Vec<((K, V), R)>,
}

impl<K: Data, V: Data, R: Diff> BatchTable for Table<K, V, R> {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The typed speed table: per key, the consolidated updates since the cut.
pub struct Speed<K, V, R> {
    /// Updates by key.
    pub rows: BTreeMap<K, Vec<(V, R)>>,
    bytes: usize,
}

impl<K: Data, V: Data, R: Diff> SpeedTable for Speed<K, V, R> {
    fn keys(&self) -> usize {
        self.rows.len()
    }
    fn approx_bytes(&self) -> usize {
        self.bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

type Present<V, R> = Arc<dyn Fn(&V, &R) -> Value + Send + Sync>;

/// A declared view, shared by all workers of one run: collects what they produce.
pub struct ViewCell<K, V, R> {
    info: ViewInfo,
    present: Present<V, R>,
    produced: Mutex<Vec<((K, V), u64, R)>>,
}

impl<K: ViewKey, V: Data, R: Diff> ViewCell<K, V, R> {
    /// A new view cell.
    pub fn new(info: ViewInfo, present: Present<V, R>) -> Self {
        ViewCell { info, present, produced: Mutex::new(Vec::new()) }
    }

    /// Called by the workers' sinks with updates they produced.
    pub fn push(&self, updates: &mut Vec<((K, V), u64, R)>) {
        let mut produced = self.produced.lock().unwrap_or_else(|e| e.into_inner());
        produced.append(updates);
    }

    fn typed_batch<'a>(&self, t: &'a dyn BatchTable) -> Result<&'a Table<K, V, R>, String> {
        t.as_any().downcast_ref().ok_or_else(|| format!("view {}: batch table of the wrong type", self.info.name))
    }

    fn present_parts(&self, v: &V, parts: &[(V, R)]) -> Option<Value> {
        let mut acc: Option<R> = None;
        for (pv, r) in parts {
            if pv == v {
                match &mut acc {
                    Some(a) => a.plus_equals(r),
                    None => acc = Some(r.clone()),
                }
            }
        }
        acc.filter(|r| !r.is_zero()).map(|r| (self.present)(v, &r))
    }

    fn answer(&self, key: &K, batch: &[(V, R)], speed: &[(V, R)]) -> Result<Option<Answer>, String> {
        let mut merged: Vec<(V, R)> = batch.iter().chain(speed.iter()).cloned().collect();
        differential_dataflow::consolidation::consolidate(&mut merged);
        match (self.info.kind, merged.as_slice()) {
            (_, []) => Ok(None),
            (ViewKind::Sum, [(v, r)]) => Ok(Some(Answer {
                key: key.to_json(),
                value: (self.present)(v, r),
                batch: Some(self.present_parts(v, batch).unwrap_or(Value::Null)),
                speed: Some(self.present_parts(v, speed).unwrap_or(Value::Null)),
            })),
            (ViewKind::Value, [(v, r)]) if is_one(r) => {
                Ok(Some(Answer { key: key.to_json(), value: (self.present)(v, r), batch: None, speed: None }))
            }
            (_, many) => Err(format!(
                "view {}: key {} merged to {} records (or a count other than 1); the job must produce one value per key",
                self.info.name,
                key.to_json(),
                many.len()
            )),
        }
    }
}

/// Whether a value view's merged count is exactly 1 (one live value). Value views are
/// declared with `isize` counts (`Ctx::value_view`); other diff types are not counts.
fn is_one<R: Diff>(r: &R) -> bool {
    match (r as &dyn Any).downcast_ref::<isize>() {
        Some(n) => *n == 1,
        None => true,
    }
}

fn key_range<K: Ord, V, R>(rows: &[((K, V), R)], key: &K) -> std::ops::Range<usize> {
    let lo = rows.partition_point(|((k, _), _)| k < key);
    let hi = rows.partition_point(|((k, _), _)| k <= key);
    lo..hi
}

impl<K: ViewKey, V: Data, R: Diff> AnyView for ViewCell<K, V, R> {
    fn info(&self) -> &ViewInfo {
        &self.info
    }

    fn take_batch_encoded(&self) -> Result<(Vec<u8>, usize), String> {
        let produced = std::mem::take(&mut *self.produced.lock().unwrap_or_else(|e| e.into_inner()));
        let mut rows: Vec<((K, V), R)> = produced.into_iter().map(|(d, _t, r)| (d, r)).collect();
        differential_dataflow::consolidation::consolidate(&mut rows);
        let n = rows.len();
        bincode::serialize(&rows).map(|b| (b, n)).map_err(|e| format!("view {}: encode failed: {e}", self.info.name))
    }

    fn decode_batch(&self, bytes: &[u8]) -> Result<Arc<dyn BatchTable>, String> {
        let rows: Vec<((K, V), R)> =
            bincode::deserialize(bytes).map_err(|e| format!("view {}: stored batch view does not decode: {e}", self.info.name))?;
        // A stored view is written sorted and consolidated; check rather than trust.
        if rows.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(format!("view {}: stored batch view is not sorted and consolidated", self.info.name));
        }
        Ok(Arc::new(Table { rows }))
    }

    fn new_speed_table(&self) -> Box<dyn SpeedTable> {
        Box::new(Speed::<K, V, R> { rows: BTreeMap::new(), bytes: 0 })
    }

    fn drain_speed(&self, upto: u64, table: &mut dyn SpeedTable) {
        let Some(table) = table.as_any_mut().downcast_mut::<Speed<K, V, R>>() else {
            panic!("view {}: speed table of the wrong type", self.info.name);
        };
        let ready: Vec<((K, V), u64, R)> = {
            let mut produced = self.produced.lock().unwrap_or_else(|e| e.into_inner());
            let (ready, pending): (Vec<_>, Vec<_>) = produced.drain(..).partition(|(_, t, _)| *t <= upto);
            *produced = pending;
            ready
        };
        let entry_bytes = std::mem::size_of::<(K, V, R)>() + 32;
        // Work proportional to the updates, never to the table: keys whose updates cancel
        // are removed where it happens.
        for ((k, v), t, r) in ready {
            if t == 0 {
                continue;
            }
            match table.rows.get_mut(&k) {
                None => {
                    table.rows.insert(k, vec![(v, r)]);
                    table.bytes += entry_bytes;
                }
                Some(slot) => {
                    match slot.iter().position(|(sv, _)| *sv == v) {
                        Some(i) => {
                            slot[i].1.plus_equals(&r);
                            if slot[i].1.is_zero() {
                                slot.swap_remove(i);
                                table.bytes = table.bytes.saturating_sub(entry_bytes);
                            }
                        }
                        None => {
                            slot.push((v, r));
                            table.bytes += entry_bytes;
                        }
                    }
                    if slot.is_empty() {
                        table.rows.remove(&k);
                    }
                }
            }
        }
    }

    fn query(&self, batch: Option<&dyn BatchTable>, speed: &dyn SpeedTable, sel: &Selection) -> Result<Vec<Answer>, String> {
        let empty = Table::<K, V, R> { rows: Vec::new() };
        let batch = match batch {
            Some(b) => self.typed_batch(b)?,
            None => &empty,
        };
        let speed = speed
            .as_any()
            .downcast_ref::<Speed<K, V, R>>()
            .ok_or_else(|| format!("view {}: speed table of the wrong type", self.info.name))?;
        let batch_part =
            |key: &K| -> Vec<(V, R)> { batch.rows[key_range(&batch.rows, key)].iter().map(|((_, v), r)| (v.clone(), r.clone())).collect() };
        match sel {
            Selection::Key(text) => {
                let key = K::parse_key(text).map_err(|e| format!("view {}: bad key: {e}", self.info.name))?;
                let sp = speed.rows.get(&key).cloned().unwrap_or_default();
                Ok(self.answer(&key, &batch_part(&key), &sp)?.into_iter().collect())
            }
            Selection::Range { from, to, limit } => {
                let parse = |s: &Option<String>| -> Result<Option<K>, String> {
                    s.as_deref().map(K::parse_key).transpose().map_err(|e| format!("view {}: bad key: {e}", self.info.name))
                };
                let (from, to) = (parse(from)?, parse(to)?);
                let above_to = |k: &K| to.as_ref().is_some_and(|t| k > t);
                // Walk the union of both sides' keys in order, merging as we go, until
                // `limit` live answers (a key the speed layer cancelled yields none).
                let mut bi = from.as_ref().map(|f| batch.rows.partition_point(|((k, _), _)| k < f)).unwrap_or(0);
                let lower = match &from {
                    Some(f) => std::ops::Bound::Included(f.clone()),
                    None => std::ops::Bound::Unbounded,
                };
                let mut si = speed.rows.range((lower, std::ops::Bound::Unbounded)).peekable();
                let mut out = Vec::new();
                while out.len() < *limit {
                    let key = match (batch.rows.get(bi).map(|((k, _), _)| k), si.peek().map(|(k, _)| *k)) {
                        (None, None) => break,
                        (Some(b), None) => b.clone(),
                        (None, Some(s)) => s.clone(),
                        (Some(b), Some(s)) => b.min(s).clone(),
                    };
                    if above_to(&key) {
                        break;
                    }
                    let range = key_range(&batch.rows[bi..], &key);
                    let batch_part: Vec<(V, R)> =
                        batch.rows[bi + range.start..bi + range.end].iter().map(|((_, v), r)| (v.clone(), r.clone())).collect();
                    bi += range.end;
                    let speed_part = match si.peek() {
                        Some((k, _)) if **k == key => si.next().map(|(_, p)| p.clone()).unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    if let Some(a) = self.answer(&key, &batch_part, &speed_part)? {
                        out.push(a);
                    }
                }
                Ok(out)
            }
        }
    }
}
