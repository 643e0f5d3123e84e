//! The shop job: all eight views of the spec, written once.
//!
//! * `revenue_by_day`, `product_revenue_by_day`, `inventory_level`, `customer_spend`,
//!   `conversion_by_product` are keyed sums: decomposable, no speed-layer seed.
//! * `customer_segments` is an aggregate of an aggregate (segment of each customer's
//!   all-time spend, then a count per segment): seeded with `customer_spend` at the cut.
//! * `daily_unique_viewers` is a distinct count: seeded with the distinct (day, customer)
//!   pairs at the cut.
//! * `top_products_by_day` is a top-k over `product_revenue_by_day`: seeded with it. The
//!   seed is that view's own file (the top-k reads the view's collection, so its seed is
//!   shared with the view: a batch run writes those 724k rows at 10M events once, not twice).
//!
//! Every sum carries a count lane of contributing events, so a key with events never
//! consolidates away (a product whose stock nets to 0 keeps level 0).
//!
//! Sums are exact for every event the parsers accept: their lanes are i128 (see
//! [`Sums`]), so two purchases of `i64::MAX` cents make a gross of 18446744073709551614,
//! not −2, and the segment and top-k logic rank that exact total. No product of two event
//! fields is ever summed (`amount_cents` is the line's total, not a unit price), so no
//! field needs a tighter bound than its type.

pub mod event;
pub mod gen;
pub mod oracle;

use lambdaflow_engine::cli::{App, Generator};
use lambdaflow_engine::Lambda;
use lambdaflow_operators::serde_json::{json, Value};
use lambdaflow_operators::{Coll, Ctx, Day, Example, Format, Job, Selection, Sums, ViewKey};
use serde::{Deserialize, Serialize};

pub use event::ShopEvent;

/// Number of products in each day's top list.
pub const TOP_K: usize = 10;

/// The key of `product_revenue_by_day`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DayProduct {
    /// The UTC day.
    pub day: Day,
    /// The product.
    pub product_id: u64,
}

impl Example for DayProduct {
    fn example() -> Self {
        DayProduct { day: Day(0), product_id: 1 }
    }
}

impl ViewKey for DayProduct {
    fn to_json(&self) -> Value {
        json!({ "day": self.day.to_string(), "product_id": self.product_id })
    }

    /// Accepts `2026-01-05/7` or `{"day":"2026-01-05","product_id":7}`.
    fn parse_key(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('{') {
            let v: Value = lambdaflow_operators::serde_json::from_str(s).map_err(|e| format!("key is not valid JSON: {e}"))?;
            let day = v.get("day").and_then(Value::as_str).ok_or("key needs a \"day\" string")?;
            let product_id = v.get("product_id").and_then(Value::as_u64).ok_or("key needs a \"product_id\" number")?;
            return Ok(DayProduct { day: Day::parse(day)?, product_id });
        }
        let (day, product) = s.split_once('/').ok_or_else(|| format!("\"{s}\" is not DAY/PRODUCT_ID (e.g. 2026-01-05/7)"))?;
        Ok(DayProduct { day: Day::parse(day)?, product_id: product.parse().map_err(|_| format!("\"{product}\" is not a product id"))? })
    }
}

/// A customer's segment by all-time net spend in cents.
pub fn segment(net_cents: i128) -> &'static str {
    match net_cents {
        i128::MIN..=0 => "none",
        1..=9_999 => "bronze",
        10_000..=99_999 => "silver",
        _ => "gold",
    }
}

/// The shop job.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shop;

impl Job for Shop {
    type Event = ShopEvent;

    fn name(&self) -> &'static str {
        "shop"
    }

    /// 2: sums became i128 lanes (batch views and seeds of version 1 hold i64 lanes).
    fn version(&self) -> u32 {
        2
    }

    fn build<'s>(&self, ctx: &mut Ctx<'s>, events: Coll<'s, ShopEvent>) {
        use ShopEvent::*;

        // Lanes: gross, refunded, orders, refunds.
        let revenue = ctx.sum("revenue_by_day", events.clone(), |e| match e {
            Purchase { ts, amount_cents, .. } => Some((Day::of_ms(*ts), Sums::of([*amount_cents, 0, 1, 0]))),
            Refund { ts, amount_cents, .. } => Some((Day::of_ms(*ts), Sums::of([0, *amount_cents, 0, 1]))),
            _ => None,
        });
        ctx.sum_view("revenue_by_day", revenue, |s: &Sums<4>| {
            json!({ "gross_cents": s.0[0], "refund_cents": s.0[1], "net_cents": s.0[0] - s.0[1], "orders": s.0[2], "refunds": s.0[3] })
        });

        // Lanes: net, units, events.
        let product_revenue = ctx.sum("product_revenue_by_day", events.clone(), |e| match e {
            Purchase { ts, product_id, quantity, amount_cents, .. } => {
                Some((DayProduct { day: Day::of_ms(*ts), product_id: *product_id }, Sums::of([*amount_cents, i64::from(*quantity), 1])))
            }
            Refund { ts, product_id, amount_cents, .. } => {
                Some((DayProduct { day: Day::of_ms(*ts), product_id: *product_id }, Sums([-i128::from(*amount_cents), 0, 1])))
            }
            _ => None,
        });
        ctx.sum_view("product_revenue_by_day", product_revenue.clone(), |s: &Sums<3>| json!({ "net_cents": s.0[0], "units": s.0[1] }));
        // Ranked per day straight from `product_revenue`, the collection the view above is
        // declared over: the top-k's seed is shared with that view (written once).
        let top = ctx.top_k_by("top_products_by_day", product_revenue, |dp| (dp.day, dp.product_id), TOP_K, |s: &Sums<3>| s.0[0]);
        ctx.value_view("top_products_by_day", top, |list: &Vec<(u64, i128)>| {
            Value::Array(list.iter().map(|(p, net)| json!({ "net_cents": net, "product_id": p })).collect())
        });

        // Lanes: level, events.
        let inventory = ctx.sum("inventory_level", events.clone(), |e| match e {
            Inventory { product_id, delta, .. } => Some((*product_id, Sums::of([*delta, 1]))),
            _ => None,
        });
        ctx.sum_view("inventory_level", inventory, |s: &Sums<2>| json!({ "level": s.0[0] }));

        // Lanes: net, events.
        let spend = ctx.sum("customer_spend", events.clone(), |e| match e {
            Purchase { customer_id, amount_cents, .. } => Some((*customer_id, Sums::of([*amount_cents, 1]))),
            Refund { customer_id, amount_cents, .. } => Some((*customer_id, Sums([-i128::from(*amount_cents), 1]))),
            _ => None,
        });
        ctx.sum_view("customer_spend", spend.clone(), |s: &Sums<2>| json!({ "net_cents": s.0[0] }));

        let segment_of_customer = ctx.per_key("customer_segment", spend, |_customer, s: &Sums<2>| segment(s.0[0]).to_string());
        let segments = ctx.count("customer_segments", segment_of_customer, |(_customer, seg)| Some(seg.clone()));
        ctx.sum_view("customer_segments", segments, |n: &Sums<1>| json!({ "customers": n.0[0] }));

        let viewers = ctx.distinct_count(
            "daily_unique_viewers",
            events.clone().flat_map(|e| match e {
                View { ts, customer_id, .. } => Some((Day::of_ms(ts), customer_id)),
                _ => None,
            }),
        );
        ctx.sum_view("daily_unique_viewers", viewers, |n: &Sums<1>| json!({ "viewers": n.0[0] }));

        // Lanes: views, purchases.
        let conversion = ctx.sum("conversion_by_product", events, |e| match e {
            View { product_id, .. } => Some((*product_id, Sums([1, 0]))),
            Purchase { product_id, .. } => Some((*product_id, Sums([0, 1]))),
            _ => None,
        });
        ctx.sum_view("conversion_by_product", conversion, |s: &Sums<2>| json!({ "views": s.0[0], "purchases": s.0[1] }));
    }
}

/// The shop generator, for `gen shop` and `demo`.
pub struct ShopGenerator;

impl Generator<ShopEvent> for ShopGenerator {
    fn write(&self, events: u64, seed: u64, format: Format, out: &mut dyn std::io::Write) -> std::io::Result<u64> {
        gen::write_events(&gen::GenConfig { events, seed, ..Default::default() }, format, out)
    }

    fn events(&self, seed: u64, count: u64, live: bool) -> Vec<ShopEvent> {
        let today = Day::of_ms(lambdaflow_engine::now_ms() as i64);
        let cfg = if live {
            // Live traffic: today, with the usual share of late events from earlier days.
            gen::GenConfig { events: count, seed, days: 1, start_ms: today.0 as i64 * 86_400_000, ..Default::default() }
        } else {
            // History: the 90 days up to and including today.
            gen::GenConfig { events: count, seed, days: 90, start_ms: (today.0 as i64 - 89) * 86_400_000, ..Default::default() }
        };
        gen::Generator::new(cfg).collect()
    }

    fn to_ndjson(&self, events: &[ShopEvent], out: &mut Vec<u8>) {
        for e in events {
            e.write_ndjson(out);
            out.push(b'\n');
        }
    }
}

/// The demo's report: today's revenue with its batch and speed parts, and a few more views.
pub fn demo_report(lambda: &Lambda<Shop>) -> lambdaflow_engine::Result<Vec<String>> {
    let today = Day::of_ms(lambdaflow_engine::now_ms() as i64).to_string();
    let mut lines = Vec::new();
    let rev = lambda.query("revenue_by_day", &Selection::Key(today.clone()))?;
    let cents =
        |v: Option<&Value>, field: &str| v.and_then(|v| v.get(field)).and_then(Value::as_number).and_then(|n| n.as_i128()).unwrap_or(0);
    let money = |c: i128| format!("{}${}.{:02}", if c < 0 { "-" } else { "" }, c.unsigned_abs() / 100, c.unsigned_abs() % 100);
    match rev.answers.first() {
        Some(a) if a.error.is_some() => lines.push(format!("revenue {today}: error: {}", a.error.as_deref().unwrap_or_default())),
        Some(a) => lines.push(format!(
            "revenue {today}: batch {} + speed {} = {} net",
            money(cents(a.batch.as_ref(), "net_cents")),
            money(cents(a.speed.as_ref(), "net_cents")),
            money(cents(Some(&a.value), "net_cents"))
        )),
        None => lines.push(format!("revenue {today}: none yet")),
    }
    if let Some(a) = lambda.query("daily_unique_viewers", &Selection::Key(today.clone()))?.answers.first() {
        lines.push(match &a.error {
            Some(e) => format!("viewers: error: {e}"),
            None => format!("viewers {}", a.value["viewers"]),
        });
    }
    if let Some(a) = lambda.query("top_products_by_day", &Selection::Key(today))?.answers.first() {
        if let Some(first) = a.value.get(0) {
            lines.push(format!(
                "top product {} ({})",
                first["product_id"],
                money(first["net_cents"].as_number().and_then(|n| n.as_i128()).unwrap_or(0))
            ));
        }
    }
    let segs = lambda.query("customer_segments", &Selection::Range { from: None, to: None, limit: 10 })?;
    let seg =
        segs.answers.iter().map(|a| format!("{}={}", a.key.as_str().unwrap_or("?"), a.value["customers"])).collect::<Vec<_>>().join(" ");
    lines.push(format!("segments {seg}"));
    for a in segs.answers.iter().filter(|a| a.error.is_some()) {
        lines.push(format!("customer_segments {}: error: {}", a.key, a.error.as_deref().unwrap_or_default()));
    }
    lines.push(format!("frontier +{} events since cut", rev.freshness.speed_events));
    Ok(lines)
}

/// The live dashboard `serve` and `demo` answer `GET /` with: today's revenue (batch +
/// speed), revenue by day, top products today, inventory alerts, freshness.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The shop job as a command-line application: what the `lambdaflow` binary runs.
pub fn app() -> App<Shop> {
    App::new(Shop).generator(ShopGenerator).demo_report(demo_report).dashboard(DASHBOARD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambdaflow_engine::testing::{test_options, TempDir};

    // Issue 11: `lambdaflow views` and `/v1/views` showed Rust type names (`Sums<4>`). Every
    // view's key and value description is its JSON form, with field names and formats.
    #[test]
    fn view_descriptions_are_readable() {
        let dir = TempDir::new("describe");
        let lambda = Lambda::open(Shop, dir.path(), test_options(1)).unwrap();
        let views = lambda.views();
        assert_eq!(views.len(), 8);
        for v in &views {
            for d in [&v.key, &v.value] {
                assert!(!d.contains('<') && !d.contains("::") && !d.is_empty(), "{}: {d}", v.name);
            }
        }
        let get = |name: &str| views.iter().find(|v| v.name == name).map(|v| (v.key.as_str(), v.value.as_str())).unwrap();
        assert_eq!(
            get("revenue_by_day"),
            ("day (YYYY-MM-DD)", "{gross_cents: integer, net_cents: integer, orders: integer, refund_cents: integer, refunds: integer}")
        );
        assert_eq!(get("product_revenue_by_day"), ("{day: day (YYYY-MM-DD), product_id: integer}", "{net_cents: integer, units: integer}"));
        assert_eq!(get("top_products_by_day"), ("day (YYYY-MM-DD)", "[{net_cents: integer, product_id: integer}]"));
        assert_eq!(get("customer_segments"), ("string", "{customers: integer}"));
        assert_eq!(get("inventory_level"), ("integer", "{level: integer}"));
    }
}
