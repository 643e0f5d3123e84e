//! NDJSON parsing for serde event types, with errors that name the field, the value and
//! what was expected.
//!
//! `serde_json::from_str` reports `invalid type: string "x", expected u64 at line 1 column
//! 37`: no field name, and a column that means little in a log of errors. [`from_ndjson`]
//! tracks the path of the value being deserialized (`bid.price`, `items[2]`) and reports
//! it as a [`FieldError`] with the offending value, so the engine can print
//! `line 17: field "bid.price": value "x": expected u64, found a string` and the HTTP API can answer with
//! the same field and value.
//!
//! It is the default of [`Event::parse_ndjson`](crate::Event::parse_ndjson), so a serde
//! event type gets it by not implementing that method. Structs, externally tagged enums
//! (`{"Bid": {...}}`), nested structs and sequences get the full path. Internally tagged
//! enums (`#[serde(tag = "type")]`) and `#[serde(flatten)]` fields are buffered by serde
//! before they are read, which loses the path: their errors say what was expected and the
//! value, but not the field.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::event::FieldError;

/// Parses one NDJSON line (without its newline) into `T`, naming the field, the value and
/// the expected type when it fails.
///
/// ```
/// use lambdaflow_operators::from_ndjson;
///
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Bid { auction: u64, price: u64 }
///
/// let bid: Bid = from_ndjson(r#"{"auction": 7, "price": 120}"#).unwrap();
/// assert_eq!(bid, Bid { auction: 7, price: 120 });
///
/// let e = from_ndjson::<Bid>(r#"{"auction": 7, "price": "cheap"}"#).unwrap_err();
/// assert_eq!(e.to_string(), r#"field "price": value "cheap": expected u64, found a string"#);
/// ```
pub fn from_ndjson<T: DeserializeOwned>(line: &str) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| describe(line, e.path(), e.inner()))?;
    de.end().map_err(|e| FieldError::line(format!("not valid JSON: {} (column {})", without_position(&e), e.column())))?;
    Ok(value)
}

fn describe(line: &str, path: &serde_path_to_error::Path, e: &serde_json::Error) -> FieldError {
    use serde_json::error::Category;
    let message = without_position(e);
    let at = render_path(path);
    match e.classify() {
        // Valid JSON that serde_json will not hold (`1e400`, nesting beyond 128 levels).
        Category::Syntax if message.starts_with("number out of range") || message.starts_with("recursion limit") => {
            return match at.is_empty() {
                true => FieldError::line(short(&message)),
                false => FieldError { field: Some(at), value: None, message },
            };
        }
        Category::Syntax | Category::Eof | Category::Io => {
            return FieldError::line(format!("not valid JSON: {} (column {})", short(&message), e.column()));
        }
        Category::Data => {}
    }
    // serde's data errors, by the shape of their message (serde::de::Error's defaults).
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        return FieldError::missing(join(&at, field));
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, _) = rest.split_once('`').unwrap_or((rest, ""));
        // The path already ends at the unknown key.
        let field = if at.is_empty() { field.to_string() } else { at };
        return FieldError { field: Some(field), value: None, message: "is not a field of this event".into() };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        // An externally tagged enum's variant is a key of the line, not a field: name the
        // path to the enum when there is one, and the variant as the value.
        let (variant, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches(',').trim();
        let message =
            if expected.is_empty() { "is not a known variant".to_string() } else { format!("is not a known variant; {expected}") };
        let mut error = FieldError::field(at.clone(), variant, message);
        if at.is_empty() {
            error.field = None;
        }
        return error;
    }
    if message.starts_with("invalid type: ") || message.starts_with("invalid value: ") || message.starts_with("invalid length ") {
        if at.is_empty() {
            // The line as a whole has the wrong shape (a string, a number, ...).
            return FieldError::line(short(&message));
        }
        let found = found_at(line, path);
        let mut expected = message.split_once(", expected ").map(|(_, x)| format!("expected {x}")).unwrap_or_else(|| message.clone());
        // `"1"` and `1` print alike once unquoted: say which JSON type was there.
        if message.starts_with("invalid type: ") {
            if let Some((_, kind)) = &found {
                expected = format!("{expected}, found {kind}");
            }
        }
        let value = found.map(|(v, _)| v).unwrap_or_else(|| short(&message));
        return FieldError::field(at, value, expected);
    }
    // A type's own `Deserialize` error (`serde::de::Error::custom`): keep its words.
    match (at.is_empty(), found_at(line, path)) {
        (true, _) => FieldError::line(short(&message)),
        (false, Some((value, _))) => FieldError::field(at, value, message),
        (false, None) => FieldError { field: Some(at), value: None, message },
    }
}

/// A message about the whole line, cut to a readable length (it may quote the line).
fn short(message: &str) -> String {
    crate::event::truncated(message.to_string(), 200)
}

fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) if e.line() > 0 => text[..i].to_string(),
        _ => text,
    }
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

/// `a.b[2].c`, without serde_path_to_error's `?` for segments it could not name (an
/// internally tagged enum's content, for one).
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// The input's value at `path`, as the user wrote it (strings without their quotes), and
/// its JSON type. Only called on the error path, so the second parse costs nothing on good
/// input.
fn found_at(line: &str, path: &serde_path_to_error::Path) -> Option<(String, &'static str)> {
    use serde_path_to_error::Segment;
    let mut v: Value = serde_json::from_str(line).ok()?;
    for segment in path.iter() {
        v = match (segment, v) {
            (Segment::Seq { index }, Value::Array(mut a)) if *index < a.len() => a.swap_remove(*index),
            (Segment::Map { key }, Value::Object(mut o)) => o.remove(key.as_str())?,
            // An externally tagged enum: `{"Variant": content}`.
            (Segment::Enum { variant }, Value::Object(mut o)) if o.len() == 1 => o.remove(variant.as_str())?,
            (Segment::Enum { .. }, v @ Value::String(_)) => v,
            _ => return None,
        };
    }
    let kind = match &v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Some((
        match v {
            Value::String(s) => s,
            other => other.to_string(),
        },
        kind,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Person {
        id: u64,
        name: String,
        age: u8,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        id: u64,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    enum External {
        Bid { auction: u64, price: u64 },
        Person(Person),
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Internal {
        Bid { auction: u64, price: u64 },
        Refund { order: u64 },
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Basket {
        items: Vec<u32>,
    }

    fn err<T: DeserializeOwned + std::fmt::Debug>(line: &str) -> String {
        from_ndjson::<T>(line).unwrap_err().to_string()
    }

    #[test]
    fn good_lines_parse() {
        assert_eq!(from_ndjson::<Person>(r#"{"id":1,"name":"ann","age":30}"#).unwrap(), Person { id: 1, name: "ann".into(), age: 30 });
        assert_eq!(from_ndjson::<External>(r#"{"Bid":{"auction":3,"price":9}}"#).unwrap(), External::Bid { auction: 3, price: 9 });
        assert_eq!(from_ndjson::<Internal>(r#"{"type":"refund","order":4}"#).unwrap(), Internal::Refund { order: 4 });
    }

    #[test]
    fn wrong_types_name_field_value_and_expectation() {
        assert_eq!(err::<Person>(r#"{"id":"x1","name":"ann","age":30}"#), r#"field "id": value "x1": expected u64, found a string"#);
        // A quoted number is not a number: the message says so.
        assert_eq!(err::<Person>(r#"{"id":"1","name":"ann","age":30}"#), r#"field "id": value "1": expected u64, found a string"#);
        assert_eq!(err::<Person>(r#"{"id":1,"name":"ann","age":300}"#), r#"field "age": value "300": expected u8"#);
        assert_eq!(err::<Person>(r#"{"id":-1,"name":"ann","age":3}"#), r#"field "id": value "-1": expected u64"#);
        assert_eq!(err::<Person>(r#"{"id":1,"name":7,"age":3}"#), r#"field "name": value "7": expected a string, found a number"#);
        assert_eq!(err::<Basket>(r#"{"items":[1,2,"three"]}"#), r#"field "items[2]": value "three": expected u32, found a string"#);
    }

    #[test]
    fn missing_and_unknown_fields() {
        assert_eq!(err::<Person>(r#"{"id":1,"age":3}"#), r#"field "name": is required but missing"#);
        assert_eq!(err::<Strict>(r#"{"id":1,"colour":"red"}"#), r#"field "colour": is not a field of this event"#);
        assert_eq!(err::<External>(r#"{"Bid":{"auction":3}}"#), r#"field "Bid.price": is required but missing"#);
    }

    #[test]
    fn enums_name_the_variant_path() {
        assert_eq!(
            err::<External>(r#"{"Bid":{"auction":3,"price":"high"}}"#),
            r#"field "Bid.price": value "high": expected u64, found a string"#
        );
        assert_eq!(err::<External>(r#"{"Person":{"id":1,"name":"a","age":-2}}"#), r#"field "Person.age": value "-2": expected u8"#);
        let unknown = err::<External>(r#"{"Ask":{"auction":3}}"#);
        assert_eq!(unknown, r#"value "Ask": is not a known variant; expected `Bid` or `Person`"#);
        let unknown = err::<Internal>(r#"{"type":"ask","order":4}"#);
        // An internal tag is a field of the line: it is named.
        assert_eq!(unknown, r#"field "type": value "ask": is not a known variant; expected `bid` or `refund`"#);
        // Internally tagged content is buffered by serde, which loses the path (documented):
        // the error still says what was expected and what was there.
        let inner = from_ndjson::<Internal>(r#"{"type":"bid","auction":"a","price":1}"#).unwrap_err();
        assert_eq!((inner.field.as_deref(), inner.to_string().as_str()), (None, r#"invalid type: string "a", expected u64"#));
    }

    #[test]
    fn syntax_errors_are_about_the_line() {
        let e = from_ndjson::<Person>(r#"{"id":1,"name":"ann""#).unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.message.starts_with("not valid JSON"), "{e}");
        let trailing = from_ndjson::<Strict>(r#"{"id":1} {"id":2}"#).unwrap_err();
        assert!(trailing.message.contains("trailing characters"), "{trailing}");
        let not_object = err::<Person>(r#""hello""#);
        assert_eq!(not_object, r#"invalid type: string "hello", expected struct Person"#);
    }

    #[test]
    fn valid_json_serde_json_cannot_hold_names_the_field() {
        #[derive(Deserialize, Debug)]
        struct Reading {
            #[allow(dead_code)]
            value: f64,
        }
        let e = from_ndjson::<Reading>(r#"{"value":1e400}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("value"));
        assert!(e.message.starts_with("number out of range"), "{e}");
    }

    #[test]
    fn long_lines_give_short_errors() {
        let huge = format!("\"{}\"", "y".repeat(100_000));
        assert!(err::<Person>(&huge).len() < 300);
        assert!(err::<Person>(&format!("{{\"id\": {}", "1".repeat(100_000))).len() < 300);
    }

    #[test]
    fn long_values_are_truncated() {
        let long = "x".repeat(500);
        let e = from_ndjson::<Person>(&format!(r#"{{"id":"{long}","name":"a","age":1}}"#)).unwrap_err();
        assert!(e.value.unwrap().chars().count() <= 65);
    }
}
