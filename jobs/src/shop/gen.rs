//! A fast, deterministic generator of shop events with the spec's default mix.
//!
//! The same [`GenConfig`] (in particular the same `seed`) always yields the same events in
//! the same order. Event times move forward across `days` days from `start_ms` as the
//! stream progresses, with a few minutes of jitter; `late_fraction` of the events are 1–30
//! days late. Product popularity is skewed (a product near id 1 is far more popular than
//! one near `products`), customers are uniform. Refunds always refer to a purchase emitted
//! earlier in the stream.

use super::event::ShopEvent;
use lambdaflow_operators::Format;
use std::collections::VecDeque;
use std::io::Write;

/// Milliseconds in one day.
const DAY_MS: i64 = 86_400_000;
/// How far a late event may lie before `start_ms`, at most.
const MAX_LATE_MS: i64 = 30 * DAY_MS;
/// Jitter added to an event's time, either way, at most (5 minutes).
const JITTER_MS: i64 = 5 * 60_000;
/// How many recent purchases a refund can refer to.
const RECENT_PURCHASES: usize = 4096;
/// Bytes buffered before a write to the output.
const CHUNK_BYTES: usize = 1 << 20;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// How many events.
    pub events: u64,
    /// The PRNG seed: the same seed yields the same events.
    pub seed: u64,
    /// Customer ids are uniform in `1..=customers`.
    pub customers: u64,
    /// Product ids are in `1..=products`, skewed towards small ids.
    pub products: u64,
    /// How many days the event times span.
    pub days: u32,
    /// The fraction of events (0.0..=1.0) that arrive 1–30 days late.
    pub late_fraction: f64,
    /// The event time of the stream's start, ms since the Unix epoch.
    pub start_ms: i64,
}

impl Default for GenConfig {
    /// The spec's defaults: 100,000 customers, 10,000 products, 90 days from
    /// 2026-01-01T00:00:00Z, 2% late, 10,000 events (the `tiny` scale point), seed 1.
    fn default() -> Self {
        GenConfig {
            events: 10_000,
            seed: 1,
            customers: 100_000,
            products: 10_000,
            days: 90,
            late_fraction: 0.02,
            start_ms: 1_767_225_600_000,
        }
    }
}

/// xoshiro256** seeded through splitmix64.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

/// One splitmix64 step: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// The splitmix64 finaliser: a good 64-bit hash.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut state = seed;
        Rng { s: [splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state)] }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n` ≥ 1), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The price of one unit of `product_id`, deterministic, in `100..=50_000` cents.
pub fn unit_price_cents(product_id: u64) -> i64 {
    100 + (mix64(product_id ^ 0x5EED_0F9A_1CE5) % 49_901) as i64
}

/// A purchase a later refund may refer to.
#[derive(Clone, Copy, Debug)]
struct Recent {
    order_id: u64,
    customer_id: u64,
    product_id: u64,
    amount_cents: i64,
}

/// An iterator over the generated events.
#[derive(Clone, Debug)]
pub struct Generator {
    cfg: GenConfig,
    rng: Rng,
    /// How many events were produced so far.
    index: u64,
    /// The last order id handed out.
    order_id: u64,
    /// Recent purchases not yet refunded, oldest first.
    recent: VecDeque<Recent>,
    /// `late_fraction` as a threshold on a uniform `u64`.
    late_threshold: u64,
    /// The span of event times, ms.
    span_ms: i64,
}

impl Generator {
    /// A generator for `cfg`.
    pub fn new(cfg: GenConfig) -> Self {
        let fraction = if cfg.late_fraction.is_nan() { 0.0 } else { cfg.late_fraction.clamp(0.0, 1.0) };
        let late_threshold = if fraction >= 1.0 { u64::MAX } else { (fraction * 18_446_744_073_709_551_616.0) as u64 };
        let span_ms = i64::from(cfg.days.max(1)).saturating_mul(DAY_MS);
        Generator {
            rng: Rng::new(cfg.seed),
            cfg,
            index: 0,
            order_id: 0,
            recent: VecDeque::with_capacity(RECENT_PURCHASES),
            late_threshold,
            span_ms,
        }
    }

    /// The event time of the current event: its place in the stream, jitter, lateness.
    fn next_ts(&mut self) -> i64 {
        let events = self.cfg.events.max(1);
        let offset = (i128::from(self.index) * i128::from(self.span_ms) / i128::from(events)) as i64;
        let jitter = self.rng.below(2 * JITTER_MS as u64 + 1) as i64 - JITTER_MS;
        let offset = (offset + jitter).clamp(0, self.span_ms - 1);
        let mut ts = self.cfg.start_ms.saturating_add(offset);
        if self.late_threshold > 0 && self.rng.next_u64() <= self.late_threshold {
            let late = DAY_MS + self.rng.below((MAX_LATE_MS - DAY_MS) as u64 + 1) as i64;
            ts = (ts - late).max(self.cfg.start_ms.saturating_sub(MAX_LATE_MS));
        }
        ts.max(0)
    }

    fn customer(&mut self) -> u64 {
        1 + self.rng.below(self.cfg.customers.max(1))
    }

    /// A product id in `1..=products`, skewed: `1 + floor(products × u³)`.
    fn popular_product(&mut self) -> u64 {
        let products = self.cfg.products.max(1);
        let u = self.rng.unit();
        let pick = (products as f64 * u * u * u) as u64;
        1 + pick.min(products - 1)
    }

    fn purchase(&mut self, ts: i64) -> ShopEvent {
        self.order_id += 1;
        let customer_id = self.customer();
        let product_id = self.popular_product();
        let quantity = 1 + self.rng.below(5) as u32;
        let amount_cents = i64::from(quantity) * unit_price_cents(product_id);
        if self.recent.len() == RECENT_PURCHASES {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { order_id: self.order_id, customer_id, product_id, amount_cents });
        ShopEvent::Purchase { ts, order_id: self.order_id, customer_id, product_id, quantity, amount_cents }
    }

    fn refund(&mut self, ts: i64) -> ShopEvent {
        if self.recent.is_empty() {
            return self.purchase(ts);
        }
        let pick = self.rng.below(self.recent.len() as u64) as usize;
        let bought = self.recent.swap_remove_back(pick).expect("index is within the queue");
        // Half of the refunds are full, the rest give back 1..=amount cents.
        let amount_cents = if bought.amount_cents == 0 || self.rng.next_u64() >> 63 == 0 {
            bought.amount_cents
        } else {
            1 + self.rng.below(bought.amount_cents as u64) as i64
        };
        ShopEvent::Refund { ts, order_id: bought.order_id, customer_id: bought.customer_id, product_id: bought.product_id, amount_cents }
    }
}

impl Iterator for Generator {
    type Item = ShopEvent;

    fn next(&mut self) -> Option<ShopEvent> {
        if self.index >= self.cfg.events {
            return None;
        }
        let ts = self.next_ts();
        // 60% view, 25% purchase, 5% refund, 10% inventory.
        let event = match self.rng.below(100) {
            0..=59 => {
                let customer_id = self.customer();
                let product_id = self.popular_product();
                // A session is a customer's half hour of browsing.
                let session_id = customer_id.wrapping_mul(100_000).wrapping_add((ts / 1_800_000) as u64 % 100_000);
                ShopEvent::View { ts, customer_id, product_id, session_id }
            }
            60..=84 => self.purchase(ts),
            85..=89 => self.refund(ts),
            _ => {
                let product_id = 1 + self.rng.below(self.cfg.products.max(1));
                let delta = self.rng.below(121) as i64 - 20;
                ShopEvent::Inventory { ts, product_id, delta }
            }
        };
        self.index += 1;
        Some(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.cfg.events - self.index;
        match usize::try_from(left) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }
}

/// Writes the events of `cfg` to `out` in `format`, one a line (the CSV header first for
/// [`Format::Csv`]), and returns how many events were written.
///
/// Numbers are formatted by hand into a reused buffer that is written in 1 MiB chunks.
pub fn write_events(cfg: &GenConfig, format: Format, out: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + 256);
    if format == Format::Csv {
        buf.extend_from_slice(super::event::CSV_HEADER.as_bytes());
        buf.push(b'\n');
    }
    let mut written = 0u64;
    for event in Generator::new(cfg.clone()) {
        match format {
            Format::Ndjson => event.write_ndjson(&mut buf),
            Format::Csv => event.write_csv_row(&mut buf),
        }
        buf.push(b'\n');
        written += 1;
        if buf.len() >= CHUNK_BYTES {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambdaflow_operators::Event;
    use std::collections::HashMap;

    fn cfg(events: u64, seed: u64) -> GenConfig {
        GenConfig { events, seed, ..GenConfig::default() }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = GenConfig::default();
        assert_eq!(c.customers, 100_000);
        assert_eq!(c.products, 10_000);
        assert_eq!(c.days, 90);
        assert_eq!(c.late_fraction, 0.02);
        assert_eq!(c.start_ms, 1_767_225_600_000);
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a: Vec<ShopEvent> = Generator::new(cfg(5_000, 7)).collect();
        let b: Vec<ShopEvent> = Generator::new(cfg(5_000, 7)).collect();
        let c: Vec<ShopEvent> = Generator::new(cfg(5_000, 8)).collect();
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut out_a = Vec::new();
        let mut out_b = Vec::new();
        write_events(&cfg(5_000, 7), Format::Ndjson, &mut out_a).unwrap();
        write_events(&cfg(5_000, 7), Format::Ndjson, &mut out_b).unwrap();
        assert_eq!(out_a, out_b);
    }

    #[test]
    fn exact_count_and_size_hint() {
        let mut g = Generator::new(cfg(3, 1));
        assert_eq!(g.size_hint(), (3, Some(3)));
        g.next();
        assert_eq!(g.size_hint(), (2, Some(2)));
        assert_eq!(g.count(), 2);
        assert_eq!(Generator::new(cfg(0, 1)).count(), 0);
    }

    #[test]
    fn mix_ids_amounts_and_deltas() {
        let n = 200_000u64;
        let c = cfg(n, 42);
        let mut counts: HashMap<&str, u64> = HashMap::new();
        let mut views_of_top_percent = 0u64;
        let mut views = 0u64;
        let (mut min_delta, mut max_delta) = (i64::MAX, i64::MIN);
        for e in Generator::new(c.clone()) {
            *counts.entry(e.type_name()).or_default() += 1;
            match e {
                ShopEvent::Purchase { customer_id, product_id, quantity, amount_cents, .. } => {
                    assert!((1..=c.customers).contains(&customer_id));
                    assert!((1..=c.products).contains(&product_id));
                    assert!((1..=5).contains(&quantity));
                    assert_eq!(amount_cents, i64::from(quantity) * unit_price_cents(product_id));
                }
                ShopEvent::View { customer_id, product_id, .. } => {
                    assert!((1..=c.customers).contains(&customer_id));
                    assert!((1..=c.products).contains(&product_id));
                    views += 1;
                    if product_id <= c.products / 100 {
                        views_of_top_percent += 1;
                    }
                }
                ShopEvent::Inventory { product_id, delta, .. } => {
                    assert!((1..=c.products).contains(&product_id));
                    assert!((-20..=100).contains(&delta));
                    min_delta = min_delta.min(delta);
                    max_delta = max_delta.max(delta);
                }
                ShopEvent::Refund { .. } => {}
            }
        }
        let share = |t: &str| counts.get(t).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share("view") - 0.60).abs() < 0.01, "{counts:?}");
        assert!((share("purchase") - 0.25).abs() < 0.01, "{counts:?}");
        assert!((share("refund") - 0.05).abs() < 0.01, "{counts:?}");
        assert!((share("inventory") - 0.10).abs() < 0.01, "{counts:?}");
        assert_eq!((min_delta, max_delta), (-20, 100));
        // 1% of the products get about 21.5% of the views (u³ < 0.01 ⇔ u < 0.215).
        let top = views_of_top_percent as f64 / views as f64;
        assert!((0.18..0.25).contains(&top), "{top}");
    }

    #[test]
    fn prices_are_deterministic_and_in_range() {
        for p in 0..100_000 {
            let price = unit_price_cents(p);
            assert!((100..=50_000).contains(&price));
            assert_eq!(price, unit_price_cents(p));
        }
    }

    #[test]
    fn refunds_refer_to_earlier_purchases() {
        let mut purchases: HashMap<u64, (u64, u64, i64)> = HashMap::new();
        let mut refunded = std::collections::HashSet::new();
        let mut last_order = 0;
        let mut refunds = 0;
        for e in Generator::new(cfg(100_000, 3)) {
            match e {
                ShopEvent::Purchase { order_id, customer_id, product_id, amount_cents, .. } => {
                    assert_eq!(order_id, last_order + 1, "order ids increase by one");
                    last_order = order_id;
                    purchases.insert(order_id, (customer_id, product_id, amount_cents));
                }
                ShopEvent::Refund { order_id, customer_id, product_id, amount_cents, .. } => {
                    refunds += 1;
                    let (c, p, amount) = purchases[&order_id];
                    assert_eq!((customer_id, product_id), (c, p));
                    assert!((0..=amount).contains(&amount_cents));
                    assert!(refunded.insert(order_id), "refunded twice");
                }
                _ => {}
            }
        }
        assert!(refunds > 4_000);
        // With only refunds possible before the first purchase, a purchase comes first.
        let first_money = Generator::new(cfg(1_000, 3)).find(|e| matches!(e, ShopEvent::Purchase { .. } | ShopEvent::Refund { .. }));
        assert!(matches!(first_money, Some(ShopEvent::Purchase { .. })));
    }

    #[test]
    fn times_move_forward_with_some_late_events() {
        let c = cfg(100_000, 9);
        let span = i64::from(c.days) * DAY_MS;
        let mut late = 0u64;
        for (i, e) in Generator::new(c.clone()).enumerate() {
            let expected = c.start_ms + (i as i64) * span / c.events as i64;
            let ts = e.ts();
            assert!(ts < c.start_ms + span);
            assert!(ts >= c.start_ms - MAX_LATE_MS);
            if ts < c.start_ms || ts < expected - JITTER_MS - 1 {
                late += 1;
                assert!(ts <= expected + JITTER_MS - DAY_MS, "late by at least a day");
            } else {
                assert!((ts - expected).abs() <= JITTER_MS + 1, "{i}: {ts} vs {expected}");
            }
        }
        let fraction = late as f64 / c.events as f64;
        assert!((0.015..0.025).contains(&fraction), "{fraction}");

        let on_time = GenConfig { late_fraction: 0.0, ..cfg(10_000, 9) };
        assert!(Generator::new(on_time.clone()).all(|e| e.ts() >= on_time.start_ms));
        let all_late_from_zero = GenConfig { late_fraction: 1.0, start_ms: 0, ..cfg(10_000, 9) };
        assert!(Generator::new(all_late_from_zero).all(|e| e.ts() >= 0));
    }

    #[test]
    fn write_events_ndjson_parses_back() {
        let c = cfg(20_000, 5);
        let mut out = Vec::new();
        assert_eq!(write_events(&c, Format::Ndjson, &mut out).unwrap(), 20_000);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let parsed: Vec<ShopEvent> = text.lines().map(|l| ShopEvent::parse_ndjson(l).unwrap()).collect();
        assert_eq!(parsed, Generator::new(c).collect::<Vec<_>>());
    }

    #[test]
    fn write_events_csv_has_header_and_parses_back() {
        let c = cfg(20_000, 5);
        let mut out = Vec::new();
        assert_eq!(write_events(&c, Format::Csv, &mut out).unwrap(), 20_000);
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(ShopEvent::csv_header()));
        let parsed: Vec<ShopEvent> = lines.map(|l| ShopEvent::parse_csv(l).unwrap()).collect();
        assert_eq!(parsed, Generator::new(c).collect::<Vec<_>>());

        let mut empty = Vec::new();
        assert_eq!(write_events(&cfg(0, 1), Format::Csv, &mut empty).unwrap(), 0);
        assert_eq!(empty, format!("{}\n", ShopEvent::csv_header()).into_bytes());
    }
}
