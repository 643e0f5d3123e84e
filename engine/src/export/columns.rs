//! From a view's JSON answers to typed Arrow columns.
//!
//! A view describes its key and value to users as JSON shapes ([`ViewInfo::key`],
//! [`ViewInfo::value`]: `integer`, `day (YYYY-MM-DD)`, `{net_cents: integer, units: integer}`,
//! `[{net_cents: integer, product_id: integer}]`, ...). [`Shape::parse`] reads that description
//! back, so the Parquet schema of a view is fixed by the job, not by the rows of one export,
//! and an empty view still gets its columns. [`Col`] collects one column's JSON values and
//! turns them into an Arrow array of the shape's type:
//!
//! | shape | Arrow / Parquet type |
//! | --- | --- |
//! | `integer` in the value of a `sum` view | `Decimal128(38, 0)` (sums can pass 64 bits) |
//! | `integer` anywhere else | `Int64` (a value outside the 64-bit range is an error) |
//! | `number` | `Float64` |
//! | `string` | `Utf8` |
//! | `day (YYYY-MM-DD)` | `Date32` (days since 1970-01-01) |
//! | `boolean` | `Boolean` |
//! | `[T]` | `List<T>` |
//! | `{a: A, b: B}`, `[A, B]` | `Struct<a: A, b: B>`, `Struct<_0: A, _1: B>` |
//! | `null`, `{}`, anything else (`[]`) | `Utf8` holding the JSON text |
//!
//! The types depend on the description alone, never on the rows. An answer that does not
//! fit its description (an object field not described, a non-object where an object is
//! described, a value of the wrong type) is an error naming the column, field and value.

use arrow_array::{ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, ListArray, StringArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields};
use lambdaflow_operators::{Day, ViewInfo};
use serde_json::Value;
use std::sync::Arc;

/// The largest magnitude a `Decimal128(38, 0)` holds: 38 nines.
const DECIMAL38_MAX: i128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

/// The JSON shape of a key or value, as [`ViewInfo`] describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Shape {
    Int,
    Float,
    Bool,
    Str,
    Day,
    Null,
    /// Unknown element type (an empty example list): the JSON text.
    Json,
    List(Box<Shape>),
    /// An object's fields, or a fixed-length array's elements named `_0`, `_1`, ...
    Struct {
        fields: Vec<(String, Shape)>,
        tuple: bool,
    },
}

impl Shape {
    /// Reads a description made by the operators' `describe` back into a shape.
    pub(crate) fn parse(text: &str) -> Result<Shape, String> {
        let mut p = Parser { s: text, at: 0 };
        let shape = p.shape()?;
        if p.at != text.len() {
            return Err(format!("unexpected `{}` at byte {} of the description `{text}`", &text[p.at..], p.at));
        }
        Ok(shape)
    }
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.at..]
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn shape(&mut self) -> Result<Shape, String> {
        for (word, shape) in [
            ("integer", Shape::Int),
            ("number", Shape::Float),
            ("boolean", Shape::Bool),
            ("day (YYYY-MM-DD)", Shape::Day),
            ("string", Shape::Str),
            ("null", Shape::Null),
        ] {
            if self.eat(word) {
                return Ok(shape);
            }
        }
        if self.eat("[") {
            if self.eat("]") {
                return Ok(Shape::List(Box::new(Shape::Json)));
            }
            let mut items = vec![self.shape()?];
            while self.eat(", ") {
                items.push(self.shape()?);
            }
            self.expect("]")?;
            return Ok(if items.len() == 1 {
                Shape::List(Box::new(items.remove(0)))
            } else {
                Shape::Struct { fields: items.into_iter().enumerate().map(|(i, s)| (format!("_{i}"), s)).collect(), tuple: true }
            });
        }
        if self.eat("{") {
            let mut fields = Vec::new();
            if !self.eat("}") {
                loop {
                    let end = self.rest().find(": ").ok_or_else(|| self.error("a field name and `: `"))?;
                    let name = self.rest()[..end].to_string();
                    self.at += end + 2;
                    fields.push((name, self.shape()?));
                    if self.eat("}") {
                        break;
                    }
                    self.expect(", ")?;
                }
            }
            return Ok(Shape::Struct { fields, tuple: false });
        }
        Err(self.error("a shape"))
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("`{token}`")))
        }
    }

    fn error(&self, wanted: &str) -> String {
        format!("expected {wanted} at byte {} of the description `{}`", self.at, self.s)
    }
}

/// One column's values, collected from JSON, in the type its shape gives.
pub(crate) enum Col {
    /// Integers; `wide`: written as `Decimal128(38, 0)`, else `Int64`.
    Int {
        wide: bool,
        vals: Vec<Option<i128>>,
    },
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Str(Vec<Option<String>>),
    Day(Vec<Option<i32>>),
    Json(Vec<Option<String>>),
    List {
        offsets: Vec<i32>,
        valid: Vec<bool>,
        child: Box<Col>,
    },
    Struct {
        names: Vec<String>,
        tuple: bool,
        valid: Vec<bool>,
        children: Vec<Col>,
    },
}

impl Col {
    /// An empty column for `shape`; `wide`: integers as `Decimal128(38, 0)`.
    pub(crate) fn new(shape: &Shape, wide: bool) -> Col {
        match shape {
            Shape::Int => Col::Int { wide, vals: Vec::new() },
            Shape::Float => Col::Float(Vec::new()),
            Shape::Bool => Col::Bool(Vec::new()),
            Shape::Str => Col::Str(Vec::new()),
            Shape::Day => Col::Day(Vec::new()),
            Shape::Json | Shape::Null => Col::Json(Vec::new()),
            Shape::Struct { fields, .. } if fields.is_empty() => Col::Json(Vec::new()),
            Shape::List(item) => Col::List { offsets: vec![0], valid: Vec::new(), child: Box::new(Col::new(item, wide)) },
            Shape::Struct { fields, tuple } => {
                let (names, children) = fields.iter().map(|(n, s)| (n.clone(), Col::new(s, wide))).unzip();
                Col::Struct { names, tuple: *tuple, valid: Vec::new(), children }
            }
        }
    }

    /// Appends one value (`null` for a missing one). An error says what was expected.
    pub(crate) fn push(&mut self, v: &Value) -> Result<(), String> {
        let wrong = |what: &str| Err(format!("value {} is not {what}", short(v)));
        match self {
            Col::Int { vals, .. } => match v {
                Value::Null => vals.push(None),
                Value::Number(n) => match n.as_i128().or_else(|| n.as_u128().and_then(|u| i128::try_from(u).ok())) {
                    Some(i) => vals.push(Some(i)),
                    None => return wrong("an integer in the 128-bit range"),
                },
                _ => return wrong("an integer"),
            },
            Col::Float(vals) => match v {
                Value::Null => vals.push(None),
                Value::Number(n) => vals.push(n.as_f64()),
                _ => return wrong("a number"),
            },
            Col::Bool(vals) => match v {
                Value::Null => vals.push(None),
                Value::Bool(b) => vals.push(Some(*b)),
                _ => return wrong("a boolean"),
            },
            Col::Str(vals) => match v {
                Value::Null => vals.push(None),
                Value::String(s) => vals.push(Some(s.clone())),
                _ => return wrong("a string"),
            },
            Col::Day(vals) => match v {
                Value::Null => vals.push(None),
                Value::String(s) => match Day::parse(s) {
                    Ok(d) => vals.push(Some(d.0)),
                    Err(e) => return Err(format!("value {}: {e}", short(v))),
                },
                _ => return wrong("a day (YYYY-MM-DD)"),
            },
            Col::Json(vals) => match v {
                Value::Null => vals.push(None),
                other => vals.push(Some(other.to_string())),
            },
            Col::List { offsets, valid, child } => {
                match v {
                    Value::Null => valid.push(false),
                    Value::Array(items) => {
                        for item in items {
                            child.push(item)?;
                        }
                        valid.push(true);
                    }
                    _ => return wrong("a list"),
                }
                let len = i32::try_from(child.len()).map_err(|_| "more than 2^31 list items in one column".to_string())?;
                offsets.push(len);
            }
            Col::Struct { names, tuple, valid, children } => {
                let parts: Vec<&Value> = match (v, *tuple) {
                    (Value::Null, _) => vec![&Value::Null; names.len()],
                    (Value::Object(fields), false) => {
                        unknown_field(fields, names)?;
                        names.iter().map(|n| fields.get(n).unwrap_or(&Value::Null)).collect()
                    }
                    (Value::Array(items), true) if items.len() == names.len() => items.iter().collect(),
                    _ => return wrong(if *tuple { "an array of the described length" } else { "an object" }),
                };
                for ((child, part), name) in children.iter_mut().zip(parts).zip(names.iter()) {
                    child.push(part).map_err(|e| format!("field {name}: {e}"))?;
                }
                valid.push(!v.is_null());
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Col::Int { vals, .. } => vals.len(),
            Col::Float(v) => v.len(),
            Col::Bool(v) => v.len(),
            Col::Str(v) | Col::Json(v) => v.len(),
            Col::Day(v) => v.len(),
            Col::List { valid, .. } | Col::Struct { valid, .. } => valid.len(),
        }
    }

    /// The Arrow field named `name` and the array.
    pub(crate) fn finish(self, name: &str) -> Result<(Field, ArrayRef), String> {
        let array: ArrayRef = match self {
            Col::Int { wide: false, vals } => {
                if let Some(v) = vals.iter().flatten().find(|v| i64::try_from(**v).is_err()) {
                    return Err(format!("column {name}: value {v} is outside the 64-bit range of its Int64 column"));
                }
                Arc::new(Int64Array::from(vals.into_iter().map(|v| v.map(|v| v as i64)).collect::<Vec<_>>()))
            }
            Col::Int { wide: true, vals } => {
                if let Some(v) = vals.iter().flatten().find(|v| v.unsigned_abs() > DECIMAL38_MAX as u128) {
                    return Err(format!("column {name}: value {v} has more than the 38 digits of a Parquet DECIMAL(38, 0)"));
                } else {
                    let a = Decimal128Array::from(vals).with_precision_and_scale(38, 0).map_err(|e| format!("column {name}: {e}"))?;
                    Arc::new(a)
                }
            }
            Col::Float(vals) => Arc::new(Float64Array::from(vals)),
            Col::Bool(vals) => Arc::new(BooleanArray::from(vals)),
            Col::Str(vals) | Col::Json(vals) => Arc::new(StringArray::from(vals)),
            Col::Day(vals) => Arc::new(Date32Array::from(vals)),
            Col::List { offsets, valid, child } => {
                let (item, values) = child.finish("item")?;
                let nulls = nulls_of(valid);
                let list = ListArray::try_new(Arc::new(item), OffsetBuffer::new(ScalarBuffer::from(offsets)), values, nulls)
                    .map_err(|e| format!("column {name}: {e}"))?;
                Arc::new(list)
            }
            Col::Struct { names, valid, children, .. } => {
                let mut fields = Vec::new();
                let mut arrays = Vec::new();
                for (n, c) in names.iter().zip(children) {
                    let (f, a) = c.finish(n)?;
                    fields.push(f);
                    arrays.push(a);
                }
                let len = valid.len();
                let nulls = nulls_of(valid);
                let s = if fields.is_empty() {
                    StructArray::new_empty_fields(len, nulls)
                } else {
                    StructArray::try_new(Fields::from(fields), arrays, nulls).map_err(|e| format!("column {name}: {e}"))?
                };
                Arc::new(s)
            }
        };
        Ok((Field::new(name, array.data_type().clone(), true), array))
    }
}

/// An error naming the first field of `fields` not among the described `names`.
fn unknown_field(fields: &serde_json::Map<String, Value>, names: &[String]) -> Result<(), String> {
    match fields.iter().find(|(k, _)| !names.contains(k)) {
        Some((k, v)) => Err(format!("field {k} (value {}) is not in the description (fields: {})", short(v), names.join(", "))),
        None => Ok(()),
    }
}

fn nulls_of(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

/// A JSON value for an error message, cut to a readable length.
fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 64;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Where a column's values come from in an answer.
#[derive(Clone, Debug)]
enum Source {
    /// The whole key, or one field of an object key.
    Key(Option<String>),
    /// The whole value, or one field of an object value.
    Value(Option<String>),
}

/// A view's columns: key columns first, then value columns.
pub(crate) struct Layout {
    columns: Vec<(String, Source, Col)>,
    /// The described fields of an object key and an object value.
    key_fields: Option<Vec<String>>,
    value_fields: Option<Vec<String>>,
    /// How many of the columns are key columns.
    pub(crate) key_columns: usize,
}

impl Layout {
    /// The columns of `info`'s view: an object key's fields (or one column `key`), then an
    /// object value's fields (or one column `value`); a value field named like a key field
    /// is prefixed `value_`.
    pub(crate) fn of(info: &ViewInfo) -> Result<Layout, String> {
        let key = Shape::parse(&info.key).map_err(|e| format!("view {}: key: {e}", info.name))?;
        let wide_values = matches!(info.kind, lambdaflow_operators::ViewKind::Sum);
        let value = Shape::parse(&info.value).map_err(|e| format!("view {}: value: {e}", info.name))?;
        let mut columns: Vec<(String, Source, Col)> = Vec::new();
        let split = |shape: &Shape, whole: &str| -> Vec<(String, Option<String>, Shape)> {
            match shape {
                Shape::Struct { fields, tuple: false } if !fields.is_empty() => {
                    fields.iter().map(|(n, s)| (n.clone(), Some(n.clone()), s.clone())).collect()
                }
                other => vec![(whole.to_string(), None, other.clone())],
            }
        };
        let fields_of =
            |parts: &[(String, Option<String>, Shape)]| -> Option<Vec<String>> { parts.iter().map(|(_, f, _)| f.clone()).collect() };
        let key_parts = split(&key, "key");
        let value_parts = split(&value, "value");
        let (key_fields, value_fields) = (fields_of(&key_parts), fields_of(&value_parts));
        for (name, field, shape) in key_parts {
            columns.push((name, Source::Key(field), Col::new(&shape, false)));
        }
        let key_columns = columns.len();
        for (mut name, field, shape) in value_parts {
            while columns.iter().any(|(n, _, _)| *n == name) {
                name = format!("value_{name}");
            }
            columns.push((name, Source::Value(field), Col::new(&shape, wide_values)));
        }
        Ok(Layout { columns, key_columns, key_fields, value_fields })
    }

    /// The column names, in order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.columns.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Appends one answer. An error names the column.
    pub(crate) fn push(&mut self, key: &Value, value: &Value) -> Result<(), String> {
        for (what, v, fields) in [("key", key, &self.key_fields), ("value", value, &self.value_fields)] {
            let Some(names) = fields else { continue };
            match v {
                Value::Object(map) => unknown_field(map, names).map_err(|e| format!("{what}: {e}"))?,
                Value::Null => {}
                other => return Err(format!("{what}: value {} is not an object (fields: {})", short(other), names.join(", "))),
            }
        }
        for (name, source, col) in &mut self.columns {
            let v = match source {
                Source::Key(None) => key,
                Source::Value(None) => value,
                Source::Key(Some(f)) => key.get(f.as_str()).unwrap_or(&Value::Null),
                Source::Value(Some(f)) => value.get(f.as_str()).unwrap_or(&Value::Null),
            };
            col.push(v).map_err(|e| format!("column {name}: {e}"))?;
        }
        Ok(())
    }

    /// The fields and arrays.
    pub(crate) fn finish(self) -> Result<(Vec<Field>, Vec<ArrayRef>), String> {
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for (name, _, col) in self.columns {
            let (f, a) = col.finish(&name)?;
            fields.push(f);
            arrays.push(a);
        }
        Ok((fields, arrays))
    }
}

/// A readable name for an Arrow type, for manifests and listings (`BIGINT`-like names are
/// DuckDB's; these are Arrow's).
pub(crate) fn type_name(t: &DataType) -> String {
    match t {
        DataType::List(item) => format!("List<{}>", type_name(item.data_type())),
        DataType::Struct(fields) => {
            let parts: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.name(), type_name(f.data_type()))).collect();
            format!("Struct<{}>", parts.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use serde_json::json;

    #[test]
    fn descriptions_parse_back_into_shapes() {
        assert_eq!(Shape::parse("integer").unwrap(), Shape::Int);
        assert_eq!(Shape::parse("day (YYYY-MM-DD)").unwrap(), Shape::Day);
        assert_eq!(
            Shape::parse("[{net_cents: integer, product_id: integer}]").unwrap(),
            Shape::List(Box::new(Shape::Struct {
                fields: vec![("net_cents".into(), Shape::Int), ("product_id".into(), Shape::Int)],
                tuple: false
            }))
        );
        assert_eq!(
            Shape::parse("[integer, string]").unwrap(),
            Shape::Struct { fields: vec![("_0".into(), Shape::Int), ("_1".into(), Shape::Str)], tuple: true }
        );
        assert_eq!(Shape::parse("[]").unwrap(), Shape::List(Box::new(Shape::Json)));
        assert_eq!(Shape::parse("{}").unwrap(), Shape::Struct { fields: vec![], tuple: false });
        let err = Shape::parse("{a: integer").unwrap_err();
        assert!(err.contains("expected"), "{err}");
        assert!(Shape::parse("integer!").is_err());
    }

    fn view(key: &str, value: &str) -> ViewInfo {
        ViewInfo { name: "v".into(), kind: lambdaflow_operators::ViewKind::Sum, key: key.into(), value: value.into() }
    }

    #[test]
    fn integer_types_come_from_the_description_not_the_data() {
        // A sum view's value integers are always Decimal128(38, 0), small or not.
        let mut l = Layout::of(&view("integer", "{n: integer}")).unwrap();
        l.push(&json!(1), &json!({ "n": 5 })).unwrap();
        let (fields, _) = l.finish().unwrap();
        assert_eq!((fields[0].data_type(), fields[1].data_type()), (&DataType::Int64, &DataType::Decimal128(38, 0)));

        let mut l = Layout::of(&view("integer", "{n: integer}")).unwrap();
        let big: i128 = i128::from(i64::MAX) * 4;
        l.push(&json!(1), &serde_json::from_str::<Value>(&format!("{{\"n\": {big}}}")).unwrap()).unwrap();
        let (fields, arrays) = l.finish().unwrap();
        assert_eq!(fields[1].data_type(), &DataType::Decimal128(38, 0));
        let d = arrays[1].as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(d.value(0), big);

        let mut l = Layout::of(&view("integer", "{n: integer}")).unwrap();
        l.push(&json!(1), &serde_json::from_str::<Value>(&format!("{{\"n\": {}}}", i128::MAX)).unwrap()).unwrap();
        let err = l.finish().unwrap_err();
        assert!(err.contains("column n") && err.contains("38 digits"), "{err}");

        // Any other integer is Int64, and one that does not fit is an error, not a new type.
        let mut value_view = view("integer", "{n: integer}");
        value_view.kind = lambdaflow_operators::ViewKind::Value;
        let mut l = Layout::of(&value_view).unwrap();
        l.push(&json!(1), &json!({ "n": 5 })).unwrap();
        assert_eq!(l.finish().unwrap().0[1].data_type(), &DataType::Int64);
        let mut l = Layout::of(&value_view).unwrap();
        l.push(&json!(1), &serde_json::from_str::<Value>(&format!("{{\"n\": {big}}}")).unwrap()).unwrap();
        let err = l.finish().unwrap_err();
        assert!(err.contains("column n") && err.contains(&big.to_string()), "{err}");
    }

    #[test]
    fn answers_that_do_not_fit_the_description_are_errors_not_dropped_or_nulled() {
        // A value field that is not described.
        let mut l = Layout::of(&view("integer", "{n: integer}")).unwrap();
        let err = l.push(&json!(1), &json!({ "n": 1, "extra": 7 })).unwrap_err();
        assert!(err.contains("value") && err.contains("field extra") && err.contains('7'), "{err}");
        // A non-object where an object is described.
        let err = l.push(&json!(1), &json!(5)).unwrap_err();
        assert!(err.contains("value 5 is not an object"), "{err}");
        // Also inside lists of objects.
        let mut l = Layout::of(&view("integer", "[{p: integer}]")).unwrap();
        let err = l.push(&json!(1), &json!([{ "p": 1, "q": 2 }])).unwrap_err();
        assert!(err.contains("field q"), "{err}");
        let err = l.push(&json!(1), &json!([3])).unwrap_err();
        assert!(err.contains("is not an object"), "{err}");
    }

    #[test]
    fn null_and_empty_object_shapes_become_json_text_columns() {
        for desc in ["null", "{}"] {
            let mut l = Layout::of(&view("integer", desc)).unwrap();
            assert_eq!(l.names(), ["key", "value"], "{desc}");
            l.push(&json!(1), &json!({})).unwrap();
            l.push(&json!(2), &Value::Null).unwrap();
            let (fields, arrays) = l.finish().unwrap();
            assert_eq!(fields[1].data_type(), &DataType::Utf8, "{desc}");
            let s = arrays[1].as_any().downcast_ref::<StringArray>().unwrap();
            assert_eq!(s.value(0), "{}");
            assert!(s.is_null(1));
        }
        let mut l = Layout::of(&view("{a: integer, b: null}", "integer")).unwrap();
        assert_eq!(l.names(), ["a", "b", "value"]);
        l.push(&json!({ "a": 1, "b": null }), &json!(3)).unwrap();
        l.finish().unwrap();
    }

    #[test]
    fn object_keys_and_values_become_columns() {
        let mut l = Layout::of(&view("{day: day (YYYY-MM-DD), product_id: integer}", "{net_cents: integer, product_id: integer}")).unwrap();
        assert_eq!(l.names(), ["day", "product_id", "net_cents", "value_product_id"]);
        assert_eq!(l.key_columns, 2);
        l.push(&json!({ "day": "1970-01-03", "product_id": 7 }), &json!({ "net_cents": -5, "product_id": 8 })).unwrap();
        let (fields, arrays) = l.finish().unwrap();
        assert_eq!(fields[0].data_type(), &DataType::Date32);
        assert_eq!(arrays[0].as_any().downcast_ref::<Date32Array>().unwrap().value(0), 2);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_column_and_value() {
        let mut l = Layout::of(&view("day (YYYY-MM-DD)", "[{p: integer}]")).unwrap();
        let err = l.push(&json!("2026-01-01"), &json!([{ "p": "x" }])).unwrap_err();
        assert!(err.contains("column value") && err.contains("field p") && err.contains("\"x\""), "{err}");
        let err = l.push(&json!("not a day"), &json!([])).unwrap_err();
        assert!(err.contains("column key") && err.contains("not a day"), "{err}");
    }
}
