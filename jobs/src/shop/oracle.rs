//! The exactness oracle: the shop workload's eight views computed naively from scratch.
//!
//! This is deliberately the dumbest obviously-correct code, written straight from the SQL
//! in `shared/spec/shop-workload.md`. The engine's merged answer for each view must equal
//! what [`expected_views`] returns for every acknowledged event.

use super::event::ShopEvent;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Milliseconds in one day.
const DAY_MS: i64 = 86_400_000;

/// How many products `top_products_by_day` keeps a day.
pub const TOP_K: usize = 10;

/// The view names, in the spec's order.
pub const VIEW_NAMES: [&str; 8] = [
    "revenue_by_day",
    "product_revenue_by_day",
    "inventory_level",
    "customer_spend",
    "customer_segments",
    "daily_unique_viewers",
    "top_products_by_day",
    "conversion_by_product",
];

/// The civil (proleptic Gregorian) date of `days` days since 1970-01-01, as
/// `(year, month 1..=12, day 1..=31)` (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    (y, m as u32, d as u32)
}

/// `day(ts)`: the UTC calendar day of `ts` (ms since the epoch) as `YYYY-MM-DD`.
pub fn day_of(ts: i64) -> String {
    let (y, m, d) = civil_from_days(ts.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The segment of a customer with all-time net spend `net_cents`.
pub fn segment_of(net_cents: i128) -> &'static str {
    if net_cents <= 0 {
        "none"
    } else if net_cents < 10_000 {
        "bronze"
    } else if net_cents < 100_000 {
        "silver"
    } else {
        "gold"
    }
}

/// A view key rendered as compact JSON text.
fn key_text(key: &Value) -> String {
    serde_json::to_string(key).expect("a JSON value always serializes")
}

/// All eight views over `events`: view name → (key as compact JSON text → value JSON).
///
/// Every view name is present, with an empty inner map when the view has no keys.
pub fn expected_views(events: &[ShopEvent]) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut views: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for name in VIEW_NAMES {
        views.insert(name.to_string(), BTreeMap::new());
    }

    // revenue_by_day: day -> (gross, refund, orders, refunds)
    // Sums are i128: exact for any accepted events (amounts up to i64::MAX each).
    let mut revenue: BTreeMap<String, (i128, i128, i128, i128)> = BTreeMap::new();
    // product_revenue_by_day: (day, product) -> (net, units)
    let mut product_revenue: BTreeMap<(String, u64), (i128, i128)> = BTreeMap::new();
    // inventory_level: product -> level
    let mut inventory: BTreeMap<u64, i128> = BTreeMap::new();
    // customer_spend: customer -> net
    let mut spend: BTreeMap<u64, i128> = BTreeMap::new();
    // daily_unique_viewers: day -> set of customers
    let mut viewers: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    // conversion_by_product: product -> (views, purchases)
    let mut conversion: BTreeMap<u64, (i64, i64)> = BTreeMap::new();

    for event in events {
        match event {
            ShopEvent::Purchase { ts, customer_id, product_id, quantity, amount_cents, .. } => {
                let day = day_of(*ts);
                let r = revenue.entry(day.clone()).or_insert((0, 0, 0, 0));
                r.0 += i128::from(*amount_cents);
                r.2 += 1;
                let p = product_revenue.entry((day, *product_id)).or_insert((0, 0));
                p.0 += i128::from(*amount_cents);
                p.1 += i128::from(*quantity);
                *spend.entry(*customer_id).or_insert(0) += i128::from(*amount_cents);
                conversion.entry(*product_id).or_insert((0, 0)).1 += 1;
            }
            ShopEvent::Refund { ts, customer_id, product_id, amount_cents, .. } => {
                let day = day_of(*ts);
                let r = revenue.entry(day.clone()).or_insert((0, 0, 0, 0));
                r.1 += i128::from(*amount_cents);
                r.3 += 1;
                let p = product_revenue.entry((day, *product_id)).or_insert((0, 0));
                p.0 -= i128::from(*amount_cents);
                *spend.entry(*customer_id).or_insert(0) -= i128::from(*amount_cents);
            }
            ShopEvent::View { ts, customer_id, product_id, .. } => {
                viewers.entry(day_of(*ts)).or_default().insert(*customer_id);
                conversion.entry(*product_id).or_insert((0, 0)).0 += 1;
            }
            ShopEvent::Inventory { product_id, delta, .. } => {
                *inventory.entry(*product_id).or_insert(0) += i128::from(*delta);
            }
        }
    }

    let view = views.get_mut("revenue_by_day").expect("inserted above");
    for (day, (gross, refund, orders, refunds)) in &revenue {
        view.insert(
            key_text(&json!(day)),
            json!({
                "gross_cents": gross,
                "refund_cents": refund,
                "net_cents": gross - refund,
                "orders": orders,
                "refunds": refunds,
            }),
        );
    }

    let view = views.get_mut("product_revenue_by_day").expect("inserted above");
    for ((day, product), (net, units)) in &product_revenue {
        view.insert(key_text(&json!({"day": day, "product_id": product})), json!({"net_cents": net, "units": units}));
    }

    let view = views.get_mut("inventory_level").expect("inserted above");
    for (product, level) in &inventory {
        view.insert(key_text(&json!(product)), json!({"level": level}));
    }

    let view = views.get_mut("customer_spend").expect("inserted above");
    for (customer, net) in &spend {
        view.insert(key_text(&json!(customer)), json!({"net_cents": net}));
    }

    let mut segments: BTreeMap<&str, i64> = BTreeMap::new();
    for net in spend.values() {
        *segments.entry(segment_of(*net)).or_insert(0) += 1;
    }
    let view = views.get_mut("customer_segments").expect("inserted above");
    for (segment, customers) in &segments {
        view.insert(key_text(&json!(segment)), json!({"customers": customers}));
    }

    let view = views.get_mut("daily_unique_viewers").expect("inserted above");
    for (day, customers) in &viewers {
        view.insert(key_text(&json!(day)), json!({"viewers": customers.len() as i64}));
    }

    let mut by_day: BTreeMap<&str, Vec<(i128, u64)>> = BTreeMap::new();
    for ((day, product), (net, _)) in &product_revenue {
        by_day.entry(day.as_str()).or_default().push((*net, *product));
    }
    let view = views.get_mut("top_products_by_day").expect("inserted above");
    for (day, mut products) in by_day {
        // net_cents descending, then product_id ascending.
        products.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let top: Vec<Value> = products.iter().take(TOP_K).map(|(net, product)| json!({"net_cents": net, "product_id": product})).collect();
        view.insert(key_text(&json!(day)), Value::Array(top));
    }

    let view = views.get_mut("conversion_by_product").expect("inserted above");
    for (product, (view_count, purchases)) in &conversion {
        view.insert(key_text(&json!(product)), json!({"purchases": purchases, "views": view_count}));
    }

    views
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-05T00:00:00Z.
    const JAN5: i64 = 1_767_571_200_000;

    fn at(day: i64, ms: i64) -> i64 {
        JAN5 + day * DAY_MS + ms
    }

    fn buy(ts: i64, customer: u64, product: u64, quantity: u32, amount: i64) -> ShopEvent {
        ShopEvent::Purchase { ts, order_id: ts as u64, customer_id: customer, product_id: product, quantity, amount_cents: amount }
    }

    fn refund(ts: i64, customer: u64, product: u64, amount: i64) -> ShopEvent {
        ShopEvent::Refund { ts, order_id: 1, customer_id: customer, product_id: product, amount_cents: amount }
    }

    fn view(ts: i64, customer: u64, product: u64) -> ShopEvent {
        ShopEvent::View { ts, customer_id: customer, product_id: product, session_id: customer }
    }

    fn stock(ts: i64, product: u64, delta: i64) -> ShopEvent {
        ShopEvent::Inventory { ts, product_id: product, delta }
    }

    /// One view as a list of (key text, value).
    fn entries(events: &[ShopEvent], name: &str) -> Vec<(String, Value)> {
        expected_views(events)[name].iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn days_are_utc_civil_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(DAY_MS - 1), "1970-01-01");
        assert_eq!(day_of(DAY_MS), "1970-01-02");
        assert_eq!(day_of(-1), "1969-12-31");
        assert_eq!(day_of(1_767_225_600_000), "2026-01-01");
        assert_eq!(day_of(JAN5), "2026-01-05");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(951_868_800_000), "2000-03-01");
        assert_eq!(day_of(4_107_542_400_000), "2100-03-01");
        assert_eq!(day_of(1_774_915_199_999), "2026-03-30");
        assert_eq!(day_of(1_774_915_200_000), "2026-03-31");
        // Every day of 1970..2400 is the day after the previous one.
        let mut previous = civil_from_days(-1);
        for d in 0..157_000 {
            let (y, m, day) = civil_from_days(d);
            let (py, pm, pd) = previous;
            assert!((y, m, day) == (py, pm, pd + 1) || (y, m, day) == (py, pm + 1, 1) || (y, m, day) == (py + 1, 1, 1));
            previous = (y, m, day);
        }
    }

    #[test]
    fn every_view_is_present_even_when_empty() {
        let views = expected_views(&[]);
        assert_eq!(views.len(), 8);
        for name in VIEW_NAMES {
            assert!(views[name].is_empty(), "{name}");
        }
    }

    #[test]
    fn revenue_by_day() {
        let events = [
            buy(at(0, 1), 1, 7, 2, 1_000),
            buy(at(0, 2), 2, 8, 1, 500),
            refund(at(0, 3), 1, 7, 300),
            buy(at(1, 0), 1, 7, 1, 50),
            view(at(2, 0), 1, 7),
            stock(at(2, 0), 7, 5),
        ];
        assert_eq!(
            entries(&events, "revenue_by_day"),
            vec![
                (r#""2026-01-05""#.to_string(), json!({"gross_cents":1500,"refund_cents":300,"net_cents":1200,"orders":2,"refunds":1})),
                (r#""2026-01-06""#.to_string(), json!({"gross_cents":50,"refund_cents":0,"net_cents":50,"orders":1,"refunds":0})),
            ]
        );
        // The value's JSON text has exactly these fields.
        let v = &expected_views(&events)["revenue_by_day"][r#""2026-01-05""#];
        assert_eq!(v.to_string(), r#"{"gross_cents":1500,"net_cents":1200,"orders":2,"refund_cents":300,"refunds":1}"#);
    }

    #[test]
    fn refund_only_day_has_gross_zero() {
        let events = [buy(at(0, 0), 1, 7, 1, 900), refund(at(3, 0), 1, 7, 900)];
        let view = &expected_views(&events)["revenue_by_day"];
        assert_eq!(view[r#""2026-01-08""#], json!({"gross_cents":0,"refund_cents":900,"net_cents":-900,"orders":0,"refunds":1}));
        let top = &expected_views(&events)["top_products_by_day"];
        assert_eq!(top[r#""2026-01-08""#], json!([{"net_cents":-900,"product_id":7}]));
    }

    #[test]
    fn product_revenue_by_day() {
        let events = [
            buy(at(0, 0), 1, 7, 2, 1_000),
            buy(at(0, 5), 2, 7, 3, 1_500),
            refund(at(0, 9), 1, 7, 1_000),
            refund(at(0, 9), 1, 9, 40),
            buy(at(1, 0), 1, 7, 1, 500),
        ];
        assert_eq!(
            entries(&events, "product_revenue_by_day"),
            vec![
                (r#"{"day":"2026-01-05","product_id":7}"#.to_string(), json!({"net_cents":1500,"units":5})),
                (r#"{"day":"2026-01-05","product_id":9}"#.to_string(), json!({"net_cents":-40,"units":0})),
                (r#"{"day":"2026-01-06","product_id":7}"#.to_string(), json!({"net_cents":500,"units":1})),
            ]
        );
    }

    #[test]
    fn inventory_level_keeps_zero() {
        let events =
            [stock(at(0, 0), 7, 10), stock(at(5, 0), 7, -10), stock(at(1, 0), 3, -4), stock(at(1, 0), 3, 100), buy(at(0, 0), 1, 8, 1, 5)];
        assert_eq!(
            entries(&events, "inventory_level"),
            vec![("3".to_string(), json!({"level":96})), ("7".to_string(), json!({"level":0})),]
        );
    }

    #[test]
    fn customer_spend_and_segments() {
        let events = [
            buy(at(0, 0), 1, 7, 1, 1_000),
            refund(at(9, 0), 1, 7, 1_000), // cancels: net 0, segment none
            buy(at(0, 0), 2, 7, 1, 20_000),
            refund(at(1, 0), 2, 7, 5_000), // net 15000: silver
            refund(at(1, 0), 3, 7, 10),    // refund only: -10, none
            view(at(1, 0), 4, 7),          // no money: not a customer here
        ];
        assert_eq!(
            entries(&events, "customer_spend"),
            vec![
                ("1".to_string(), json!({"net_cents":0})),
                ("2".to_string(), json!({"net_cents":15_000})),
                ("3".to_string(), json!({"net_cents":-10})),
            ]
        );
        assert_eq!(
            entries(&events, "customer_segments"),
            vec![(r#""none""#.to_string(), json!({"customers":2})), (r#""silver""#.to_string(), json!({"customers":1})),]
        );
    }

    #[test]
    fn segment_boundaries() {
        let cases = [(0, "none"), (1, "bronze"), (9_999, "bronze"), (10_000, "silver"), (99_999, "silver"), (100_000, "gold")];
        for (net, segment) in cases {
            assert_eq!(segment_of(net), segment, "{net}");
        }
        assert_eq!(segment_of(-1), "none");
        let events: Vec<ShopEvent> = cases.iter().enumerate().map(|(i, (net, _))| buy(at(0, 0), i as u64 + 1, 7, 1, *net as i64)).collect();
        assert_eq!(
            entries(&events, "customer_segments"),
            vec![
                (r#""bronze""#.to_string(), json!({"customers":2})),
                (r#""gold""#.to_string(), json!({"customers":1})),
                (r#""none""#.to_string(), json!({"customers":1})),
                (r#""silver""#.to_string(), json!({"customers":2})),
            ]
        );
    }

    #[test]
    fn daily_unique_viewers() {
        let events = [
            view(at(0, 0), 1, 7),
            view(at(0, 1), 1, 8),
            view(at(0, 2), 2, 7),
            view(at(1, 0), 1, 7),
            view(at(0, DAY_MS - 1), 3, 7),
            buy(at(2, 0), 5, 7, 1, 10),
        ];
        assert_eq!(
            entries(&events, "daily_unique_viewers"),
            vec![(r#""2026-01-05""#.to_string(), json!({"viewers":3})), (r#""2026-01-06""#.to_string(), json!({"viewers":1})),]
        );
    }

    #[test]
    fn top_products_ties_and_more_than_ten() {
        let mut events = Vec::new();
        // Day 0: products 1..=12 with nets 100,200,...; products 20 and 21 tie with 5 at 500.
        for p in 1..=12u64 {
            events.push(buy(at(0, 0), 1, p, 1, 100 * p as i64));
        }
        events.push(buy(at(0, 0), 1, 21, 1, 500));
        events.push(buy(at(0, 0), 1, 20, 1, 500));
        // Day 1: few products, one negative.
        events.push(buy(at(1, 0), 1, 4, 1, 10));
        events.push(refund(at(1, 0), 1, 3, 10));
        events.push(buy(at(1, 0), 1, 2, 1, 10));
        let views = expected_views(&events);
        let top = &views["top_products_by_day"];
        let day0: Vec<(i64, u64)> = top[r#""2026-01-05""#]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["net_cents"].as_i64().unwrap(), o["product_id"].as_u64().unwrap()))
            .collect();
        assert_eq!(day0, vec![(1200, 12), (1100, 11), (1000, 10), (900, 9), (800, 8), (700, 7), (600, 6), (500, 5), (500, 20), (500, 21),]);
        assert_eq!(
            top[r#""2026-01-06""#].to_string(),
            r#"[{"net_cents":10,"product_id":2},{"net_cents":10,"product_id":4},{"net_cents":-10,"product_id":3}]"#
        );
        assert_eq!(top.len(), 2);
    }

    #[test]
    fn conversion_by_product() {
        let events = [
            view(at(0, 0), 1, 7),
            view(at(0, 0), 1, 7),
            view(at(0, 0), 2, 7),
            buy(at(0, 0), 1, 7, 5, 100),
            buy(at(0, 0), 1, 8, 5, 100),
            refund(at(0, 0), 1, 9, 100), // refunds are not purchases
            stock(at(0, 0), 10, 1),
        ];
        assert_eq!(
            entries(&events, "conversion_by_product"),
            vec![("7".to_string(), json!({"purchases":1,"views":3})), ("8".to_string(), json!({"purchases":1,"views":0})),]
        );
    }

    #[test]
    fn generated_stream_is_self_consistent() {
        use super::super::gen::{GenConfig, Generator};
        let events: Vec<ShopEvent> = Generator::new(GenConfig { events: 20_000, ..GenConfig::default() }).collect();
        let views = expected_views(&events);
        let sum = |name: &str, field: &str| -> i64 { views[name].values().map(|v| v[field].as_i64().unwrap()).sum() };
        let net = sum("revenue_by_day", "net_cents");
        assert_eq!(net, sum("product_revenue_by_day", "net_cents"));
        assert_eq!(net, sum("customer_spend", "net_cents"));
        assert_eq!(sum("customer_segments", "customers"), views["customer_spend"].len() as i64);
        assert_eq!(views["revenue_by_day"].len(), views["top_products_by_day"].len());
        let purchases = events.iter().filter(|e| matches!(e, ShopEvent::Purchase { .. })).count() as i64;
        assert_eq!(sum("revenue_by_day", "orders"), purchases);
        assert_eq!(sum("conversion_by_product", "purchases"), purchases);
        for list in views["top_products_by_day"].values() {
            let list = list.as_array().unwrap();
            assert!(!list.is_empty() && list.len() <= TOP_K);
        }
    }
}
