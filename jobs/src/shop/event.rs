//! The shop workload's event type, [`ShopEvent`], and its two wire formats.
//!
//! NDJSON lines carry exactly the fields of their type, e.g.
//! `{"type":"view","ts":1767225600000,"customer_id":3,"product_id":7,"session_id":9}`.
//! CSV rows follow [`CSV_HEADER`]; the columns a type does not use are empty.
//! See `shared/spec/shop-workload.md` for the schema.

use lambdaflow_operators::{Event, FieldError};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// The CSV header of the shop workload, in column order.
pub const CSV_HEADER: &str = "type,ts,order_id,customer_id,product_id,quantity,amount_cents,delta,session_id";

/// The last event time accepted: 9999-12-31T23:59:59.999Z. Event-time days are
/// `YYYY-MM-DD`, and a later time would not have one (the DSL's
/// [`lambdaflow_operators::MAX_TS_MS`]).
pub const MAX_TS_MS: i64 = lambdaflow_operators::MAX_TS_MS;

/// The CSV columns, in header order (index 0 is `type`).
const COLUMNS: [&str; 9] = ["type", "ts", "order_id", "customer_id", "product_id", "quantity", "amount_cents", "delta", "session_id"];

/// One shop event: an order line, a refund, a product page view or a stock change.
///
/// `ts` is event time in milliseconds since the Unix epoch (UTC), money is integer cents.
///
/// `Copy`: every field is a number, and a batch run hands each event to several operators;
/// a `Copy` type's buffers are cloned with one `memcpy` instead of element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ShopEvent {
    /// One order line: `quantity` units of `product_id`, `amount_cents` in total.
    Purchase {
        /// Event time, ms since the epoch.
        ts: i64,
        /// The order this line belongs to.
        order_id: u64,
        /// Who bought.
        customer_id: u64,
        /// What was bought.
        product_id: u64,
        /// Units bought, at least 1.
        quantity: u32,
        /// The line's total, in cents, at least 0.
        amount_cents: i64,
    },
    /// Money given back for an earlier order line.
    Refund {
        /// Event time, ms since the epoch.
        ts: i64,
        /// The order of the refunded line.
        order_id: u64,
        /// Who is refunded.
        customer_id: u64,
        /// The refunded product.
        product_id: u64,
        /// Money given back, in cents, at least 0.
        amount_cents: i64,
    },
    /// A product page view.
    View {
        /// Event time, ms since the epoch.
        ts: i64,
        /// Who viewed.
        customer_id: u64,
        /// What was viewed.
        product_id: u64,
        /// The browsing session.
        session_id: u64,
    },
    /// A stock change (may be negative).
    Inventory {
        /// Event time, ms since the epoch.
        ts: i64,
        /// The product whose stock changes.
        product_id: u64,
        /// The change in units.
        delta: i64,
    },
}

impl ShopEvent {
    /// The event time, ms since the Unix epoch.
    pub fn ts(&self) -> i64 {
        match self {
            ShopEvent::Purchase { ts, .. }
            | ShopEvent::Refund { ts, .. }
            | ShopEvent::View { ts, .. }
            | ShopEvent::Inventory { ts, .. } => *ts,
        }
    }

    /// The event's `type` name as used on the wire (`purchase`, `refund`, `view`, `inventory`).
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    fn kind(&self) -> Kind {
        match self {
            ShopEvent::Purchase { .. } => Kind::Purchase,
            ShopEvent::Refund { .. } => Kind::Refund,
            ShopEvent::View { .. } => Kind::View,
            ShopEvent::Inventory { .. } => Kind::Inventory,
        }
    }

    /// The event as one NDJSON line (without newline), with only its type's fields.
    pub fn to_ndjson(&self) -> String {
        let mut out = Vec::with_capacity(128);
        self.write_ndjson(&mut out);
        String::from_utf8(out).expect("NDJSON output is ASCII")
    }

    /// The event as one CSV row in [`CSV_HEADER`] order (without newline).
    pub fn to_csv_row(&self) -> String {
        let mut out = Vec::with_capacity(96);
        self.write_csv_row(&mut out);
        String::from_utf8(out).expect("CSV output is ASCII")
    }

    /// Appends the event's NDJSON line (without newline) to `out`, formatting numbers by hand.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(self.type_name().as_bytes());
        out.extend_from_slice(b"\",\"ts\":");
        push_i64(out, self.ts());
        match *self {
            ShopEvent::Purchase { order_id, customer_id, product_id, quantity, amount_cents, .. } => {
                out.extend_from_slice(b",\"order_id\":");
                push_u64(out, order_id);
                out.extend_from_slice(b",\"customer_id\":");
                push_u64(out, customer_id);
                out.extend_from_slice(b",\"product_id\":");
                push_u64(out, product_id);
                out.extend_from_slice(b",\"quantity\":");
                push_u64(out, u64::from(quantity));
                out.extend_from_slice(b",\"amount_cents\":");
                push_i64(out, amount_cents);
            }
            ShopEvent::Refund { order_id, customer_id, product_id, amount_cents, .. } => {
                out.extend_from_slice(b",\"order_id\":");
                push_u64(out, order_id);
                out.extend_from_slice(b",\"customer_id\":");
                push_u64(out, customer_id);
                out.extend_from_slice(b",\"product_id\":");
                push_u64(out, product_id);
                out.extend_from_slice(b",\"amount_cents\":");
                push_i64(out, amount_cents);
            }
            ShopEvent::View { customer_id, product_id, session_id, .. } => {
                out.extend_from_slice(b",\"customer_id\":");
                push_u64(out, customer_id);
                out.extend_from_slice(b",\"product_id\":");
                push_u64(out, product_id);
                out.extend_from_slice(b",\"session_id\":");
                push_u64(out, session_id);
            }
            ShopEvent::Inventory { product_id, delta, .. } => {
                out.extend_from_slice(b",\"product_id\":");
                push_u64(out, product_id);
                out.extend_from_slice(b",\"delta\":");
                push_i64(out, delta);
            }
        }
        out.push(b'}');
    }

    /// Appends the event's CSV row (without newline) to `out`, formatting numbers by hand.
    pub fn write_csv_row(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.type_name().as_bytes());
        out.push(b',');
        push_i64(out, self.ts());
        out.push(b',');
        match *self {
            ShopEvent::Purchase { order_id, customer_id, product_id, quantity, amount_cents, .. } => {
                push_u64(out, order_id);
                out.push(b',');
                push_u64(out, customer_id);
                out.push(b',');
                push_u64(out, product_id);
                out.push(b',');
                push_u64(out, u64::from(quantity));
                out.push(b',');
                push_i64(out, amount_cents);
                out.extend_from_slice(b",,");
            }
            ShopEvent::Refund { order_id, customer_id, product_id, amount_cents, .. } => {
                push_u64(out, order_id);
                out.push(b',');
                push_u64(out, customer_id);
                out.push(b',');
                push_u64(out, product_id);
                out.extend_from_slice(b",,");
                push_i64(out, amount_cents);
                out.extend_from_slice(b",,");
            }
            ShopEvent::View { customer_id, product_id, session_id, .. } => {
                out.push(b',');
                push_u64(out, customer_id);
                out.push(b',');
                push_u64(out, product_id);
                out.extend_from_slice(b",,,,");
                push_u64(out, session_id);
            }
            ShopEvent::Inventory { product_id, delta, .. } => {
                out.extend_from_slice(b",,");
                push_u64(out, product_id);
                out.extend_from_slice(b",,,");
                push_i64(out, delta);
                out.push(b',');
            }
        }
    }
}

/// Appends the decimal digits of `n` to `out`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends the decimal text of `n` (with a leading `-` when negative) to `out`.
fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// The four event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Purchase,
    Refund,
    View,
    Inventory,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        match name {
            "purchase" => Some(Kind::Purchase),
            "refund" => Some(Kind::Refund),
            "view" => Some(Kind::View),
            "inventory" => Some(Kind::Inventory),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Refund => "refund",
            Kind::View => "view",
            Kind::Inventory => "inventory",
        }
    }

    /// The fields this type uses, in header order.
    fn fields(self) -> &'static [Field] {
        use Field::*;
        match self {
            Kind::Purchase => &[Ts, OrderId, CustomerId, ProductId, Quantity, AmountCents],
            Kind::Refund => &[Ts, OrderId, CustomerId, ProductId, AmountCents],
            Kind::View => &[Ts, CustomerId, ProductId, SessionId],
            Kind::Inventory => &[Ts, ProductId, Delta],
        }
    }

    fn uses(self, field: Field) -> bool {
        self.fields().contains(&field)
    }

    /// Builds the event from checked values indexed by CSV column.
    fn build(self, v: &[i128; 9]) -> ShopEvent {
        // Every value was range-checked by `Field::check`, so these casts are exact.
        let ts = v[Field::Ts.col()] as i64;
        let order_id = v[Field::OrderId.col()] as u64;
        let customer_id = v[Field::CustomerId.col()] as u64;
        let product_id = v[Field::ProductId.col()] as u64;
        let quantity = v[Field::Quantity.col()] as u32;
        let amount_cents = v[Field::AmountCents.col()] as i64;
        let delta = v[Field::Delta.col()] as i64;
        let session_id = v[Field::SessionId.col()] as u64;
        match self {
            Kind::Purchase => ShopEvent::Purchase { ts, order_id, customer_id, product_id, quantity, amount_cents },
            Kind::Refund => ShopEvent::Refund { ts, order_id, customer_id, product_id, amount_cents },
            Kind::View => ShopEvent::View { ts, customer_id, product_id, session_id },
            Kind::Inventory => ShopEvent::Inventory { ts, product_id, delta },
        }
    }
}

/// The numeric fields, in header order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Ts,
    OrderId,
    CustomerId,
    ProductId,
    Quantity,
    AmountCents,
    Delta,
    SessionId,
}

impl Field {
    const ALL: [Field; 8] = [
        Field::Ts,
        Field::OrderId,
        Field::CustomerId,
        Field::ProductId,
        Field::Quantity,
        Field::AmountCents,
        Field::Delta,
        Field::SessionId,
    ];

    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// The CSV column index (1..=8; 0 is `type`).
    fn col(self) -> usize {
        match self {
            Field::Ts => 1,
            Field::OrderId => 2,
            Field::CustomerId => 3,
            Field::ProductId => 4,
            Field::Quantity => 5,
            Field::AmountCents => 6,
            Field::Delta => 7,
            Field::SessionId => 8,
        }
    }

    fn name(self) -> &'static str {
        COLUMNS[self.col()]
    }

    /// Checks the range of an integer value; `Err` holds the message.
    fn check(self, n: i128) -> Result<(), &'static str> {
        let (min, max, below, above): (i128, i128, &str, &str) = match self {
            Field::Ts => (
                0,
                MAX_TS_MS.into(),
                "must not be negative (milliseconds since the Unix epoch)",
                "is out of range: after 9999-12-31T23:59:59.999Z, the last supported event time",
            ),
            Field::OrderId | Field::CustomerId | Field::ProductId | Field::SessionId => (
                0,
                u64::MAX.into(),
                "must not be negative (ids are unsigned 64-bit integers)",
                "is out of range for an unsigned 64-bit integer",
            ),
            Field::Quantity => (1, u32::MAX.into(), "must be at least 1", "is out of range for an unsigned 32-bit integer"),
            Field::AmountCents => (0, i64::MAX.into(), "must not be negative", "is out of range for a 64-bit integer"),
            Field::Delta => {
                (i64::MIN.into(), i64::MAX.into(), "is out of range for a 64-bit integer", "is out of range for a 64-bit integer")
            }
        };
        if n < min {
            Err(below)
        } else if n > max {
            Err(above)
        } else {
            Ok(())
        }
    }
}

/// Deserializes a field that is present (possibly `null`) into `Some(..)`; absent fields
/// take the `#[serde(default)]` value `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The fast path for NDJSON: a borrowed, strictly typed view of one line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, deserialize_with = "present")]
    ts: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    order_id: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    customer_id: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    product_id: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    quantity: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    amount_cents: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    delta: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    session_id: Option<Option<u64>>,
}

impl Raw<'_> {
    /// The event, when the line is fully valid; `None` sends it to the diagnosing path.
    fn event(&self) -> Option<ShopEvent> {
        let kind = Kind::from_name(&self.ty)?;
        let values: [Option<Option<i128>>; 8] = [
            self.ts.map(|v| v.map(i128::from)),
            self.order_id.map(|v| v.map(i128::from)),
            self.customer_id.map(|v| v.map(i128::from)),
            self.product_id.map(|v| v.map(i128::from)),
            self.quantity.map(|v| v.map(i128::from)),
            self.amount_cents.map(|v| v.map(i128::from)),
            self.delta.map(|v| v.map(i128::from)),
            self.session_id.map(|v| v.map(i128::from)),
        ];
        let mut checked = [0i128; 9];
        for (field, value) in Field::ALL.into_iter().zip(values) {
            match (kind.uses(field), value) {
                (true, Some(Some(n))) => {
                    field.check(n).ok()?;
                    checked[field.col()] = n;
                }
                (false, None) => {}
                _ => return None,
            }
        }
        Some(kind.build(&checked))
    }
}

/// A JSON value as shown in an error: strings without quotes, everything else as JSON text.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The JSON type name of a value, for messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The raw text of the number after `"key":` in a flat JSON object line, when it can be
/// found; used only to show big numbers as they were written.
fn raw_number<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\"");
    let start = line.find(&pattern)? + pattern.len();
    let rest = line[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E')).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Reads an integer field from a JSON value and checks its range.
fn json_int(field: Field, value: &Value, line: &str) -> Result<i128, FieldError> {
    let name = field.name();
    let n = match value {
        Value::Number(num) => {
            if let Some(u) = num.as_u64() {
                i128::from(u)
            } else if let Some(i) = num.as_i64() {
                i128::from(i)
            } else {
                let text = raw_number(line, name).map(str::to_owned).unwrap_or_else(|| num.to_string());
                let negative = text.starts_with('-');
                let digits = text.strip_prefix('-').unwrap_or(&text);
                let message = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    // An integer too big for 64 bits: serde_json kept it as a float.
                    let huge = 10i128.pow(30);
                    let probe = if negative { -huge } else { huge };
                    field.check(probe).err().unwrap_or("is out of range")
                } else {
                    "must be an integer, not a fractional number"
                };
                return Err(FieldError::field(name, text, message));
            }
        }
        other => return Err(FieldError::field(name, shown(other), format!("must be an integer, not {}", json_type(other)))),
    };
    field.check(n).map_err(|message| FieldError::field(name, n.to_string(), message))?;
    Ok(n)
}

/// The diagnosing NDJSON path: validates through `serde_json::Value` and names what is wrong.
fn parse_ndjson_value(line: &str) -> Result<ShopEvent, FieldError> {
    let value: Value = serde_json::from_str(line).map_err(|e| FieldError::line(format!("not valid JSON: {e}")))?;
    let map = match value {
        Value::Object(map) => map,
        other => return Err(FieldError::line(format!("must be a JSON object, not {}", json_type(&other)))),
    };
    let kind = match map.get("type") {
        None => return Err(FieldError::missing("type")),
        Some(Value::String(s)) => Kind::from_name(s)
            .ok_or_else(|| FieldError::field("type", s.as_str(), "unknown event type (expected purchase, refund, view or inventory)"))?,
        Some(other) => {
            return Err(FieldError::field(
                "type",
                shown(other),
                format!("must be a string (purchase, refund, view or inventory), not {}", json_type(other)),
            ))
        }
    };
    for (key, value) in &map {
        if key == "type" {
            continue;
        }
        match Field::from_name(key) {
            Some(field) if kind.uses(field) => {}
            _ => return Err(FieldError::field(key.as_str(), shown(value), format!("not a field of {} events", kind.name()))),
        }
    }
    let mut checked = [0i128; 9];
    for &field in kind.fields() {
        let value = map.get(field.name()).ok_or_else(|| FieldError::missing(field.name()))?;
        checked[field.col()] = json_int(field, value, line)?;
    }
    Ok(kind.build(&checked))
}

/// Parses one CSV cell as an integer for `field` and checks its range.
fn csv_int(field: Field, text: &str) -> Result<i128, FieldError> {
    let name = field.name();
    let bad = |message: &str| Err(FieldError::field(name, text, message));
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        return bad("whitespace is not allowed in numbers");
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return bad("must be an integer");
    }
    let significant = digits.trim_start_matches('0');
    let n = if significant.len() > 30 {
        if negative {
            -(10i128.pow(30))
        } else {
            10i128.pow(30)
        }
    } else {
        let magnitude: i128 = if significant.is_empty() {
            0
        } else {
            significant.parse().map_err(|_| FieldError::field(name, text, "must be an integer"))?
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    };
    match field.check(n) {
        Ok(()) => Ok(n),
        Err(message) => bad(message),
    }
}

impl Event for ShopEvent {
    fn parse_ndjson(line: &str) -> Result<Self, FieldError> {
        match fast::ndjson(line.as_bytes()) {
            Some(event) => Ok(event),
            None => parse_ndjson_reference(line),
        }
    }

    fn csv_header() -> &'static str {
        CSV_HEADER
    }

    fn parse_csv(line: &str) -> Result<Self, FieldError> {
        match fast::csv(line.as_bytes()) {
            Some(event) => Ok(event),
            None => parse_csv_reference(line),
        }
    }

    fn partition_key(&self) -> u64 {
        match *self {
            ShopEvent::Purchase { customer_id, .. } | ShopEvent::Refund { customer_id, .. } | ShopEvent::View { customer_id, .. } => {
                customer_id
            }
            ShopEvent::Inventory { product_id, .. } => product_id,
        }
    }
}

/// The reference NDJSON parser: exact for every input, and the source of every error
/// message. [`ShopEvent::parse_ndjson`] tries [`fast::ndjson`] first and falls back to it.
pub fn parse_ndjson_reference(line: &str) -> Result<ShopEvent, FieldError> {
    match serde_json::from_str::<Raw<'_>>(line) {
        Ok(raw) => match raw.event() {
            Some(event) => Ok(event),
            None => parse_ndjson_value(line),
        },
        Err(fast_error) => match parse_ndjson_value(line) {
            Err(error) => Err(error),
            // The value path found nothing wrong (e.g. a duplicated field, where the
            // last one would win): report what the strict parser saw.
            Ok(_) => Err(FieldError::line(format!("invalid event: {fast_error}"))),
        },
    }
}

/// The reference CSV parser: exact for every input, and the source of every error message.
/// [`ShopEvent::parse_csv`] tries [`fast::csv`] first and falls back to it.
pub fn parse_csv_reference(line: &str) -> Result<ShopEvent, FieldError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line == CSV_HEADER {
        return Err(FieldError::line("this is the header row; a data row was expected"));
    }
    let mut cols = [""; 9];
    let mut count = 0usize;
    for (i, part) in line.split(',').enumerate() {
        if i < cols.len() {
            cols[i] = part;
        }
        count += 1;
    }
    if count != cols.len() {
        return Err(FieldError::line(format!("expected 9 comma-separated columns ({CSV_HEADER}), found {count}")));
    }
    for (name, text) in COLUMNS.iter().zip(cols) {
        if text.contains('"') {
            return Err(FieldError::field(*name, text, "quotes are not allowed (no column of this schema needs quoting)"));
        }
    }
    let kind = match cols[0] {
        "" => return Err(FieldError::missing("type")),
        name => Kind::from_name(name)
            .ok_or_else(|| FieldError::field("type", name, "unknown event type (expected purchase, refund, view or inventory)"))?,
    };
    let mut checked = [0i128; 9];
    for field in Field::ALL {
        let text = cols[field.col()];
        if kind.uses(field) {
            if text.is_empty() {
                return Err(FieldError::missing(field.name()));
            }
            checked[field.col()] = csv_int(field, text)?;
        } else if !text.is_empty() {
            return Err(FieldError::field(field.name(), text, format!("must be empty: not a field of {} events", kind.name())));
        }
    }
    Ok(kind.build(&checked))
}

/// The fast paths of [`ShopEvent::parse_csv`] and [`ShopEvent::parse_ndjson`]: byte-level
/// parsers of the common shape of a line, with no allocation. They accept only lines laid
/// out as [`ShopEvent::write_csv_row`] and [`ShopEvent::write_ndjson`] write them (CSV also
/// with leading zeros and a trailing `\r`), with numbers of at most 19 digits, and answer
/// `None` for anything else: the reference parser then reads the line and, if it is wrong,
/// names the field and value. A line the fast path accepts is one the reference parser
/// accepts as the same event (`tests::fast_paths_agree_with_the_reference`).
pub mod fast {
    use super::{ShopEvent, MAX_TS_MS};

    /// A position in one line.
    struct Cur<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Cur<'_> {
        /// 1 to 19 decimal digits (so the value cannot overflow), up to the next non-digit.
        /// With `json`, a leading zero must stand alone (JSON has no leading zeros).
        #[inline(always)]
        fn digits(&mut self, json: bool) -> Option<u64> {
            let start = self.i;
            let mut n: u64 = 0;
            while let Some(&c) = self.b.get(self.i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                n = n.wrapping_mul(10).wrapping_add(u64::from(d));
                self.i += 1;
            }
            let len = self.i - start;
            if len == 0 || len > 19 || json && len > 1 && self.b[start] == b'0' {
                return None;
            }
            Some(n)
        }

        /// Skips `lit`, which must come next.
        #[inline(always)]
        fn lit(&mut self, lit: &[u8]) -> Option<()> {
            if self.b.get(self.i..self.i + lit.len())? == lit {
                self.i += lit.len();
                Some(())
            } else {
                None
            }
        }

        #[inline(always)]
        fn ts(&mut self, json: bool) -> Option<i64> {
            let n = self.digits(json)?;
            (n <= MAX_TS_MS as u64).then_some(n as i64)
        }

        #[inline(always)]
        fn id(&mut self, json: bool) -> Option<u64> {
            self.digits(json)
        }

        #[inline(always)]
        fn quantity(&mut self, json: bool) -> Option<u32> {
            let n = self.digits(json)?;
            (1..=u64::from(u32::MAX)).contains(&n).then_some(n as u32)
        }

        #[inline(always)]
        fn amount(&mut self, json: bool) -> Option<i64> {
            let n = self.digits(json)?;
            (n <= i64::MAX as u64).then_some(n as i64)
        }

        /// An `i64`, possibly negative (`-0` is left to the reference parser).
        #[inline(always)]
        fn delta(&mut self, json: bool) -> Option<i64> {
            if self.b.get(self.i) == Some(&b'-') {
                self.i += 1;
                if self.b.get(self.i) == Some(&b'0') {
                    return None;
                }
                let n = self.digits(json)?;
                (n <= 1 << 63).then_some((n as i64).wrapping_neg())
            } else {
                let n = self.digits(json)?;
                (n <= i64::MAX as u64).then_some(n as i64)
            }
        }

        fn done(&self) -> bool {
            self.i == self.b.len()
        }
    }

    /// A CSV data row (without its newline) of the common shape, or `None`.
    pub fn csv(line: &[u8]) -> Option<ShopEvent> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut c = Cur { b: line, i: 0 };
        let event = match *line.first()? {
            b'p' => {
                c.lit(b"purchase,")?;
                let ts = c.ts(false)?;
                c.lit(b",")?;
                let order_id = c.id(false)?;
                c.lit(b",")?;
                let customer_id = c.id(false)?;
                c.lit(b",")?;
                let product_id = c.id(false)?;
                c.lit(b",")?;
                let quantity = c.quantity(false)?;
                c.lit(b",")?;
                let amount_cents = c.amount(false)?;
                c.lit(b",,")?;
                ShopEvent::Purchase { ts, order_id, customer_id, product_id, quantity, amount_cents }
            }
            b'v' => {
                c.lit(b"view,")?;
                let ts = c.ts(false)?;
                c.lit(b",,")?;
                let customer_id = c.id(false)?;
                c.lit(b",")?;
                let product_id = c.id(false)?;
                c.lit(b",,,,")?;
                let session_id = c.id(false)?;
                ShopEvent::View { ts, customer_id, product_id, session_id }
            }
            b'r' => {
                c.lit(b"refund,")?;
                let ts = c.ts(false)?;
                c.lit(b",")?;
                let order_id = c.id(false)?;
                c.lit(b",")?;
                let customer_id = c.id(false)?;
                c.lit(b",")?;
                let product_id = c.id(false)?;
                c.lit(b",,")?;
                let amount_cents = c.amount(false)?;
                c.lit(b",,")?;
                ShopEvent::Refund { ts, order_id, customer_id, product_id, amount_cents }
            }
            b'i' => {
                c.lit(b"inventory,")?;
                let ts = c.ts(false)?;
                c.lit(b",,,")?;
                let product_id = c.id(false)?;
                c.lit(b",,,")?;
                let delta = c.delta(false)?;
                c.lit(b",")?;
                ShopEvent::Inventory { ts, product_id, delta }
            }
            _ => return None,
        };
        c.done().then_some(event)
    }

    /// An NDJSON line (without its newline) of the common shape, or `None`.
    pub fn ndjson(line: &[u8]) -> Option<ShopEvent> {
        let mut c = Cur { b: line, i: 0 };
        c.lit(b"{\"type\":\"")?;
        let event = match *line.get(c.i)? {
            b'p' => {
                c.lit(b"purchase\",\"ts\":")?;
                let ts = c.ts(true)?;
                c.lit(b",\"order_id\":")?;
                let order_id = c.id(true)?;
                c.lit(b",\"customer_id\":")?;
                let customer_id = c.id(true)?;
                c.lit(b",\"product_id\":")?;
                let product_id = c.id(true)?;
                c.lit(b",\"quantity\":")?;
                let quantity = c.quantity(true)?;
                c.lit(b",\"amount_cents\":")?;
                let amount_cents = c.amount(true)?;
                ShopEvent::Purchase { ts, order_id, customer_id, product_id, quantity, amount_cents }
            }
            b'v' => {
                c.lit(b"view\",\"ts\":")?;
                let ts = c.ts(true)?;
                c.lit(b",\"customer_id\":")?;
                let customer_id = c.id(true)?;
                c.lit(b",\"product_id\":")?;
                let product_id = c.id(true)?;
                c.lit(b",\"session_id\":")?;
                let session_id = c.id(true)?;
                ShopEvent::View { ts, customer_id, product_id, session_id }
            }
            b'r' => {
                c.lit(b"refund\",\"ts\":")?;
                let ts = c.ts(true)?;
                c.lit(b",\"order_id\":")?;
                let order_id = c.id(true)?;
                c.lit(b",\"customer_id\":")?;
                let customer_id = c.id(true)?;
                c.lit(b",\"product_id\":")?;
                let product_id = c.id(true)?;
                c.lit(b",\"amount_cents\":")?;
                let amount_cents = c.amount(true)?;
                ShopEvent::Refund { ts, order_id, customer_id, product_id, amount_cents }
            }
            b'i' => {
                c.lit(b"inventory\",\"ts\":")?;
                let ts = c.ts(true)?;
                c.lit(b",\"product_id\":")?;
                let product_id = c.id(true)?;
                c.lit(b",\"delta\":")?;
                let delta = c.delta(true)?;
                ShopEvent::Inventory { ts, product_id, delta }
            }
            _ => return None,
        };
        c.lit(b"}")?;
        c.done().then_some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn purchase() -> ShopEvent {
        ShopEvent::Purchase { ts: 1_767_225_600_000, order_id: 1, customer_id: 2, product_id: 3, quantity: 4, amount_cents: 500 }
    }

    fn samples() -> Vec<ShopEvent> {
        vec![
            purchase(),
            ShopEvent::Refund { ts: 10, order_id: 1, customer_id: 2, product_id: 3, amount_cents: 0 },
            ShopEvent::View { ts: 0, customer_id: u64::MAX, product_id: 0, session_id: 9 },
            ShopEvent::Inventory { ts: MAX_TS_MS, product_id: 7, delta: -20 },
        ]
    }

    fn nd_err(line: &str) -> FieldError {
        ShopEvent::parse_ndjson(line).expect_err(line)
    }

    fn csv_err(line: &str) -> FieldError {
        ShopEvent::parse_csv(line).expect_err(line)
    }

    fn assert_field(err: &FieldError, field: &str, value: Option<&str>) {
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert_eq!(err.value.as_deref(), value, "{err}");
    }

    #[test]
    fn writes_exact_ndjson_and_csv() {
        let [p, r, v, i]: [ShopEvent; 4] = samples().try_into().unwrap();
        assert_eq!(
            p.to_ndjson(),
            r#"{"type":"purchase","ts":1767225600000,"order_id":1,"customer_id":2,"product_id":3,"quantity":4,"amount_cents":500}"#
        );
        assert_eq!(r.to_ndjson(), r#"{"type":"refund","ts":10,"order_id":1,"customer_id":2,"product_id":3,"amount_cents":0}"#);
        assert_eq!(v.to_ndjson(), r#"{"type":"view","ts":0,"customer_id":18446744073709551615,"product_id":0,"session_id":9}"#);
        assert_eq!(i.to_ndjson(), r#"{"type":"inventory","ts":253402300799999,"product_id":7,"delta":-20}"#);
        assert_eq!(p.to_csv_row(), "purchase,1767225600000,1,2,3,4,500,,");
        assert_eq!(r.to_csv_row(), "refund,10,1,2,3,,0,,");
        assert_eq!(v.to_csv_row(), "view,0,,18446744073709551615,0,,,,9");
        assert_eq!(i.to_csv_row(), "inventory,253402300799999,,,7,,,-20,");
        for e in samples() {
            assert_eq!(e.to_csv_row().split(',').count(), 9);
        }
    }

    #[test]
    fn round_trips_samples_and_header() {
        assert_eq!(ShopEvent::csv_header(), CSV_HEADER);
        assert_eq!(CSV_HEADER.split(',').collect::<Vec<_>>(), COLUMNS);
        for e in samples() {
            assert_eq!(ShopEvent::parse_ndjson(&e.to_ndjson()).unwrap(), e);
            assert_eq!(ShopEvent::parse_csv(&e.to_csv_row()).unwrap(), e);
            assert_eq!(serde_json::from_str::<ShopEvent>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
        }
    }

    #[test]
    fn accessors_and_partition_key() {
        let [p, r, v, i]: [ShopEvent; 4] = samples().try_into().unwrap();
        assert_eq!(p.ts(), 1_767_225_600_000);
        assert_eq!(i.ts(), MAX_TS_MS);
        assert_eq!(p.partition_key(), 2);
        assert_eq!(r.partition_key(), 2);
        assert_eq!(v.partition_key(), u64::MAX);
        assert_eq!(i.partition_key(), 7);
        assert_eq!([p.type_name(), r.type_name(), v.type_name(), i.type_name()], ["purchase", "refund", "view", "inventory"]);
    }

    #[test]
    fn ndjson_accepts_whitespace_any_key_order_and_escapes() {
        let line = r#"  { "amount_cents" : 500 , "quantity":4,"product_id":3,"customer_id":2,
            "order_id":1,"ts":1767225600000, "type" : "purch\u0061se" }  "#
            .replace('\n', " ");
        assert_eq!(ShopEvent::parse_ndjson(&line).unwrap(), purchase());
    }

    #[test]
    fn ndjson_type_errors() {
        let e = nd_err(r#"{"type":"order","ts":1}"#);
        assert_field(&e, "type", Some("order"));
        assert!(e.message.contains("unknown event type"), "{e}");
        assert_eq!(nd_err(r#"{"ts":1,"product_id":1,"delta":1}"#), FieldError::missing("type"));
        assert_field(&nd_err(r#"{"type":5}"#), "type", Some("5"));
        assert_field(&nd_err(r#"{"type":null}"#), "type", Some("null"));
        assert_field(&nd_err(r#"{"type":"Purchase"}"#), "type", Some("Purchase"));
    }

    #[test]
    fn ndjson_requires_every_field_of_the_type() {
        for e in samples() {
            let full: Value = serde_json::from_str(&e.to_ndjson()).unwrap();
            for field in e.kind().fields() {
                let mut map = full.as_object().unwrap().clone();
                map.remove(field.name());
                let line = Value::Object(map).to_string();
                assert_eq!(nd_err(&line), FieldError::missing(field.name()), "{line}");
            }
        }
    }

    #[test]
    fn ndjson_rejects_fields_the_type_does_not_use() {
        let e = nd_err(r#"{"type":"view","ts":1,"customer_id":1,"product_id":1,"session_id":1,"quantity":2}"#);
        assert_field(&e, "quantity", Some("2"));
        assert_eq!(e.message, "not a field of view events");
        let e =
            nd_err(r#"{"type":"purchase","ts":1,"order_id":1,"customer_id":2,"product_id":3,"quantity":4,"amount_cents":5,"coupon":"X"}"#);
        assert_field(&e, "coupon", Some("X"));
        assert_eq!(e.message, "not a field of purchase events");
        // Even a null for an unused field is rejected.
        let e = nd_err(r#"{"type":"inventory","ts":1,"product_id":1,"delta":1,"session_id":null}"#);
        assert_field(&e, "session_id", Some("null"));
    }

    #[test]
    fn ndjson_rejects_wrong_json_types() {
        let base = r#"{"type":"purchase","ts":1,"order_id":1,"customer_id":2,"product_id":3,"amount_cents":5,"quantity":Q}"#;
        for (q, shown, what) in [
            (r#""5""#, "5", "a string"),
            ("1.5", "1.5", "fractional"),
            ("2.0", "2.0", "fractional"),
            ("1e2", "1e2", "fractional"),
            ("true", "true", "a boolean"),
            ("null", "null", "null"),
            ("[1]", "[1]", "an array"),
            (r#"{"n":1}"#, r#"{"n":1}"#, "an object"),
        ] {
            let e = nd_err(&base.replace('Q', q));
            assert_field(&e, "quantity", Some(shown));
            assert!(e.message.contains(what), "{e}");
        }
    }

    #[test]
    fn ndjson_rejects_out_of_range_numbers() {
        let view =
            |ts: &str, customer: &str| format!(r#"{{"type":"view","ts":{ts},"customer_id":{customer},"product_id":1,"session_id":1}}"#);
        let e = nd_err(&view("-1", "1"));
        assert_field(&e, "ts", Some("-1"));
        assert!(e.message.contains("negative"), "{e}");
        let e = nd_err(&view("9223372036854775808", "1"));
        assert_field(&e, "ts", Some("9223372036854775808"));
        assert!(e.message.contains("out of range"), "{e}");
        let e = nd_err(&view("1", "-3"));
        assert_field(&e, "customer_id", Some("-3"));
        assert!(e.message.contains("negative"), "{e}");
        let e = nd_err(&view("1", "18446744073709551616"));
        assert_field(&e, "customer_id", Some("18446744073709551616"));
        assert!(e.message.contains("out of range"), "{e}");
        let e = nd_err(&view("1", "-18446744073709551616"));
        assert_field(&e, "customer_id", Some("-18446744073709551616"));
        assert!(e.message.contains("negative"), "{e}");

        let purchase = |q: &str, amount: &str| {
            format!(r#"{{"type":"purchase","ts":1,"order_id":1,"customer_id":2,"product_id":3,"quantity":{q},"amount_cents":{amount}}}"#)
        };
        let e = nd_err(&purchase("0", "5"));
        assert_field(&e, "quantity", Some("0"));
        assert_eq!(e.message, "must be at least 1");
        assert_field(&nd_err(&purchase("-2", "5")), "quantity", Some("-2"));
        assert_field(&nd_err(&purchase("4294967296", "5")), "quantity", Some("4294967296"));
        assert!(ShopEvent::parse_ndjson(&purchase("4294967295", "0")).is_ok());
        let e = nd_err(&purchase("1", "-1"));
        assert_field(&e, "amount_cents", Some("-1"));
        assert!(e.message.contains("negative"), "{e}");

        let inventory = |d: &str| format!(r#"{{"type":"inventory","ts":1,"product_id":1,"delta":{d}}}"#);
        assert!(ShopEvent::parse_ndjson(&inventory("-9223372036854775808")).is_ok());
        assert_field(&nd_err(&inventory("9223372036854775808")), "delta", Some("9223372036854775808"));
        assert_field(&nd_err(&inventory("-9223372036854775809")), "delta", Some("-9223372036854775809"));
    }

    #[test]
    fn ndjson_rejects_non_objects_bad_json_and_duplicates() {
        for line in ["", "[1,2]", "5", r#""view""#, "null", "{", r#"{"type":"view"} x"#] {
            let e = nd_err(line);
            assert_eq!(e.field, None, "{line}: {e}");
        }
        assert!(nd_err("[1]").message.contains("JSON object"));
        assert!(nd_err("{").message.contains("not valid JSON"));
        let e = nd_err(r#"{"type":"inventory","ts":1,"product_id":1,"delta":1,"delta":2}"#);
        assert!(e.message.contains("duplicate field"), "{e}");
    }

    #[test]
    fn csv_parses_each_type_and_tolerates_crlf() {
        for e in samples() {
            let row = e.to_csv_row() + "\r";
            assert_eq!(ShopEvent::parse_csv(&row).unwrap(), e);
        }
        assert_eq!(ShopEvent::parse_csv("purchase,1767225600000,01,2,3,4,500,,").unwrap(), purchase());
    }

    #[test]
    fn csv_rejects_header_and_wrong_column_counts() {
        assert_eq!(csv_err(CSV_HEADER).field, None);
        for line in ["", "view,1,,1,1,,,", "view,1,,1,1,,,,1,", "purchase"] {
            let e = csv_err(line);
            assert_eq!(e.field, None, "{line}: {e}");
            assert!(e.message.contains("9 comma-separated columns"), "{e}");
        }
    }

    #[test]
    fn csv_type_errors() {
        let e = csv_err("order,1,,1,1,,,,1");
        assert_field(&e, "type", Some("order"));
        assert!(e.message.contains("unknown event type"));
        assert_eq!(csv_err(",1,,1,1,,,,1"), FieldError::missing("type"));
        assert_field(&csv_err(" view,1,,1,1,,,,1"), "type", Some(" view"));
    }

    #[test]
    fn csv_rejects_quotes() {
        let e = csv_err("view,1,,\"1\",1,,,,1");
        assert_field(&e, "customer_id", Some("\"1\""));
        assert!(e.message.contains("quotes"));
        assert_field(&csv_err("\"view\",1,,1,1,,,,1"), "type", Some("\"view\""));
    }

    #[test]
    fn csv_requires_used_and_forbids_unused_columns() {
        for e in samples() {
            let row = e.to_csv_row();
            let cols: Vec<&str> = row.split(',').collect();
            for field in Field::ALL {
                let mut changed = cols.clone();
                if e.kind().uses(field) {
                    changed[field.col()] = "";
                    assert_eq!(csv_err(&changed.join(",")), FieldError::missing(field.name()));
                } else {
                    changed[field.col()] = "5";
                    let err = csv_err(&changed.join(","));
                    assert_field(&err, field.name(), Some("5"));
                    assert!(err.message.contains(&format!("not a field of {} events", e.type_name())), "{err}");
                }
            }
        }
    }

    #[test]
    fn csv_number_rules() {
        let view = |ts: &str, customer: &str| format!("view,{ts},,{customer},1,,,,1");
        for (ts, what) in [
            (" 5", "whitespace"),
            ("5 ", "whitespace"),
            ("5\t", "whitespace"),
            ("+5", "integer"),
            ("1.5", "integer"),
            ("1e3", "integer"),
            ("0x10", "integer"),
            ("-", "integer"),
            ("--1", "integer"),
            ("five", "integer"),
            ("-1", "negative"),
            ("9223372036854775808", "out of range"),
            ("99999999999999999999999999999999999999999999", "out of range"),
        ] {
            let e = csv_err(&view(ts, "1"));
            assert_field(&e, "ts", Some(ts));
            assert!(e.message.contains(what), "{ts}: {e}");
        }
        assert_field(&csv_err(&view("1", "-1")), "customer_id", Some("-1"));
        assert_field(&csv_err(&view("1", "18446744073709551616")), "customer_id", Some("18446744073709551616"));
        assert_eq!(
            ShopEvent::parse_csv(&view("0", "18446744073709551615")).unwrap(),
            ShopEvent::View { ts: 0, customer_id: u64::MAX, product_id: 1, session_id: 1 }
        );
        let e = csv_err("purchase,1,1,2,3,0,5,,");
        assert_field(&e, "quantity", Some("0"));
        assert_eq!(e.message, "must be at least 1");
        assert_field(&csv_err("purchase,1,1,2,3,1,-5,,"), "amount_cents", Some("-5"));
        assert_field(&csv_err("refund,1,1,2,3,,-5,,"), "amount_cents", Some("-5"));
        assert!(ShopEvent::parse_csv("inventory,1,,,1,,,-9223372036854775808,").is_ok());
    }

    #[test]
    fn error_display_names_field_and_value() {
        let e = nd_err(r#"{"type":"purchase","ts":1,"order_id":1,"customer_id":2,"product_id":3,"quantity":-3,"amount_cents":5}"#);
        assert_eq!(e.to_string(), r#"field "quantity": value "-3": must be at least 1"#);
    }

    /// Numbers at and around the edges of every field's range and of the fast path's
    /// 19 digits, and shapes only the reference parser reads.
    const EDGES: [&str; 22] = [
        "0",
        "00",
        "-0",
        "01",
        "-",
        "1",
        "-1",
        "4294967295",
        "4294967296",
        "253402300799999",
        "253402300800000",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "9999999999999999999",
        "18446744073709551615",
        "18446744073709551616",
        "0000000000000000000001",
        "1.0",
        "1e3",
        " 1",
    ];

    /// Bytes that matter to one of the two formats.
    const BYTES: &[u8] = b"0123456789,-+ \"\r\t{}:.eEnx";

    /// Applies `(what, where, byte, edge)` mutations to `line`: replace, insert or delete a
    /// byte, swap a number for an edge value, or truncate.
    fn mutate(line: &str, mutations: &[(usize, usize, u8, usize)]) -> String {
        let mut b = line.as_bytes().to_vec();
        for &(what, at, byte, edge) in mutations {
            let byte = BYTES[byte as usize % BYTES.len()];
            match what {
                0 if !b.is_empty() => {
                    let i = at % b.len();
                    b[i] = byte;
                }
                1 => {
                    let i = at % (b.len() + 1);
                    b.insert(i, byte);
                }
                2 if !b.is_empty() => {
                    b.remove(at % b.len());
                }
                3 | 4 => {
                    // The `at`-th run of digits (with a leading '-') becomes an edge value.
                    let mut runs = Vec::new();
                    let mut i = 0;
                    while i < b.len() {
                        if b[i].is_ascii_digit() || b[i] == b'-' {
                            let start = i;
                            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'-') {
                                i += 1;
                            }
                            runs.push((start, i));
                        } else {
                            i += 1;
                        }
                    }
                    if !runs.is_empty() {
                        let (s, e) = runs[at % runs.len()];
                        b.splice(s..e, EDGES[edge].bytes());
                    }
                }
                5 => b.truncate(at % (b.len() + 1)),
                _ => {}
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    fn arb_event() -> impl Strategy<Value = ShopEvent> {
        prop_oneof![
            (0..=MAX_TS_MS, any::<u64>(), any::<u64>(), any::<u64>(), 1..=u32::MAX, 0..=i64::MAX).prop_map(
                |(ts, order_id, customer_id, product_id, quantity, amount_cents)| {
                    ShopEvent::Purchase { ts, order_id, customer_id, product_id, quantity, amount_cents }
                }
            ),
            (0..=MAX_TS_MS, any::<u64>(), any::<u64>(), any::<u64>(), 0..=i64::MAX).prop_map(
                |(ts, order_id, customer_id, product_id, amount_cents)| {
                    ShopEvent::Refund { ts, order_id, customer_id, product_id, amount_cents }
                }
            ),
            (0..=MAX_TS_MS, any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(ts, customer_id, product_id, session_id)| ShopEvent::View { ts, customer_id, product_id, session_id }),
            (0..=MAX_TS_MS, any::<u64>(), any::<i64>())
                .prop_map(|(ts, product_id, delta)| { ShopEvent::Inventory { ts, product_id, delta } }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn ndjson_round_trip(event in arb_event()) {
            let line = event.to_ndjson();
            prop_assert_eq!(ShopEvent::parse_ndjson(&line), Ok(event));
            // What we write is what serde_json would read as the same object.
            let value: Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(value["type"].as_str(), Some(event.type_name()));
        }

        #[test]
        fn csv_round_trip(event in arb_event()) {
            prop_assert_eq!(ShopEvent::parse_csv(&event.to_csv_row()), Ok(event));
        }

        // The fast paths never disagree with the reference parsers: on canonical lines
        // (which they must take) and on lines mutated at a byte or at a number, every line
        // gets the same event or the same error (field, value and message) either way.
        #[test]
        fn fast_paths_agree_with_the_reference(
            event in arb_event(),
            mutations in proptest::collection::vec((0usize..6, any::<usize>(), any::<u8>(), 0usize..EDGES.len()), 0..3),
        ) {
            let csv = event.to_csv_row();
            let nd = event.to_ndjson();
            // Numbers of 20 digits (ids past 10^19) are left to the reference parser.
            let short = csv.split(',').all(|f| f.trim_start_matches('-').len() <= 19);
            if short {
                prop_assert_eq!(fast::csv(csv.as_bytes()), Some(event));
                prop_assert_eq!(fast::ndjson(nd.as_bytes()), Some(event));
            }
            for line in [csv, nd] {
                let line = mutate(&line, &mutations);
                prop_assert_eq!(ShopEvent::parse_csv(&line), parse_csv_reference(&line), "csv {}", line);
                prop_assert_eq!(ShopEvent::parse_ndjson(&line), parse_ndjson_reference(&line), "ndjson {}", line);
                if let Some(e) = fast::csv(line.as_bytes()) {
                    prop_assert_eq!(parse_csv_reference(&line), Ok(e));
                }
                if let Some(e) = fast::ndjson(line.as_bytes()) {
                    prop_assert_eq!(parse_ndjson_reference(&line), Ok(e));
                }
            }
        }

        #[test]
        fn parsers_never_panic(line in "\\PC{0,80}") {
            let _ = ShopEvent::parse_ndjson(&line);
            let _ = ShopEvent::parse_csv(&line);
        }
    }

    // Event times past 9999-12-31 are rejected by both parsers: their day would not be a
    // YYYY-MM-DD and, before this bound, wrapped into a real day (a wrong answer).
    #[test]
    fn far_future_ts_is_rejected() {
        let line = r#"{"type":"inventory","ts":371086941945600000,"product_id":1,"delta":1}"#;
        let e = ShopEvent::parse_ndjson(line).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ts"), "{e}");
        assert!(e.to_string().contains("9999-12-31"), "{e}");
        let e = ShopEvent::parse_csv("inventory,253402300800000,,,1,,,1,").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ts"), "{e}");
        assert!(ShopEvent::parse_csv("inventory,253402300799999,,,1,,,1,").is_ok());
    }
}
