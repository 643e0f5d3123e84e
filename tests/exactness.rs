//! Exactness: every merged view equals a naive from-scratch computation over all events.
//!
//! Method: random shop event sequences over a small id space (so keys collide, segments are
//! crossed, viewers repeat), in shuffled arrival order (so late events are common), are run
//! through the engine with 1, 2 or 4 worker threads, with batch runs and handovers at random
//! cut points and a random number of later events in the speed layer. `check_exact` compares
//! the merged views after every step with a batch run from scratch; this test also compares
//! the final merged views with `oracle::expected_views`, plain Rust straight from the spec's
//! SQL, so the batch runner itself is checked too. The named scenarios below pin the cases
//! the spec calls out.

use lambdaflow_engine::testing::{check_exact, diff};
use lambdaflow_jobs::shop::{oracle::expected_views, Shop, ShopEvent};
use proptest::prelude::*;

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01

fn ts(day: i64, ms: i64) -> i64 {
    T0 + day * DAY_MS + ms
}

/// Amounts chosen to land on and around the segment boundaries.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(4_999),
        Just(5_000),
        Just(9_999),
        Just(10_000),
        Just(50_000),
        Just(90_001),
        Just(100_000),
        0i64..200_000
    ]
}

fn event() -> impl Strategy<Value = ShopEvent> {
    let day = 0i64..5;
    let ms = 0i64..DAY_MS;
    let customer = 1u64..8;
    let product = 1u64..14;
    prop_oneof![
        4 => (day.clone(), ms.clone(), 1u64..50, customer.clone(), product.clone(), 1u32..5, amount()).prop_map(
            |(d, m, order_id, customer_id, product_id, quantity, amount_cents)| ShopEvent::Purchase {
                ts: ts(d, m), order_id, customer_id, product_id, quantity, amount_cents
            }
        ),
        2 => (day.clone(), ms.clone(), 1u64..50, customer.clone(), product.clone(), amount()).prop_map(
            |(d, m, order_id, customer_id, product_id, amount_cents)| ShopEvent::Refund {
                ts: ts(d, m), order_id, customer_id, product_id, amount_cents
            }
        ),
        4 => (day.clone(), ms.clone(), customer, product.clone(), 0u64..3).prop_map(
            |(d, m, customer_id, product_id, session_id)| ShopEvent::View { ts: ts(d, m), customer_id, product_id, session_id }
        ),
        2 => (day, ms, product, -50i64..50).prop_map(|(d, m, product_id, delta)| ShopEvent::Inventory { ts: ts(d, m), product_id, delta }),
    ]
}

fn run(events: &[ShopEvent], cuts: &[usize], workers: usize) -> Result<(), String> {
    let report = check_exact(Shop, events, cuts, workers)?;
    let expected = expected_views(events);
    match diff(&expected, &report.final_views) {
        None => Ok(()),
        Some(d) => Err(format!("merged views differ from the naive oracle ({workers} workers, cuts {cuts:?}): {d}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn merged_views_equal_from_scratch(
        events in prop::collection::vec(event(), 1..120),
        cut_fracs in prop::collection::vec(0.0f64..1.0, 0..3),
        workers in prop::sample::select(vec![1usize, 2, 4]),
    ) {
        let mut cuts: Vec<usize> = cut_fracs.iter().map(|f| (f * events.len() as f64) as usize).collect();
        cuts.sort_unstable();
        cuts.dedup();
        if let Err(e) = run(&events, &cuts, workers) {
            prop_assert!(false, "{}", e);
        }
    }
}

fn purchase(day: i64, order_id: u64, customer_id: u64, product_id: u64, amount_cents: i64) -> ShopEvent {
    ShopEvent::Purchase { ts: ts(day, 1000), order_id, customer_id, product_id, quantity: 1, amount_cents }
}

fn refund(day: i64, order_id: u64, customer_id: u64, product_id: u64, amount_cents: i64) -> ShopEvent {
    ShopEvent::Refund { ts: ts(day, 2000), order_id, customer_id, product_id, amount_cents }
}

fn view(day: i64, customer_id: u64, product_id: u64) -> ShopEvent {
    ShopEvent::View { ts: ts(day, 3000), customer_id, product_id, session_id: 1 }
}

// The spec's named cases, with the cut placed between the two halves of each.
#[test]
fn named_cases_across_the_cut() {
    let before = [
        purchase(1, 1, 1, 5, 9_000),                                    // customer 1: bronze at the cut
        purchase(1, 2, 2, 6, 150_000),                                  // customer 2: gold at the cut
        view(1, 3, 5),                                                  // viewer 3 on day 1, before the cut
        ShopEvent::Inventory { ts: ts(1, 0), product_id: 9, delta: 5 }, // stock that will net to 0
        purchase(2, 3, 4, 7, 500),
    ];
    let after = [
        purchase(1, 4, 1, 5, 2_000),                                     // customer 1 crosses into silver after the cut
        refund(3, 2, 2, 6, 150_000),                                     // refund after the cut of its purchase: 2 goes to none
        view(1, 3, 6),                                                   // viewer 3 seen again on day 1: still one viewer
        view(1, 8, 6),                                                   // a new viewer on day 1
        ShopEvent::Inventory { ts: ts(1, 9), product_id: 9, delta: -5 }, // level 0 stays
        purchase(0, 5, 4, 7, 700),                                       // late event for an old day
        refund(2, 3, 4, 7, 500),                                         // refund cancelling customer 4's day-2 purchase
    ];
    let events: Vec<ShopEvent> = before.iter().chain(after.iter()).cloned().collect();
    for workers in [1, 2, 4] {
        run(&events, &[before.len()], workers).unwrap();
        // And with a second handover in the middle of the tail.
        run(&events, &[before.len(), before.len() + 3], workers).unwrap();
    }
    let report = check_exact(Shop, &events, &[before.len()], 2).unwrap();
    let segs = &report.final_views["customer_segments"];
    assert_eq!(segs["\"silver\""], serde_json::json!({ "customers": 1 }), "customer 1 moved to silver: {segs:?}");
    assert_eq!(segs["\"none\""], serde_json::json!({ "customers": 1 }), "customer 2 refunded to none: {segs:?}");
    assert_eq!(report.final_views["inventory_level"]["9"], serde_json::json!({ "level": 0 }));
    assert_eq!(report.final_views["daily_unique_viewers"]["\"2026-01-02\""], serde_json::json!({ "viewers": 2 }));
}

// A speed-layer chunk whose own sum leaves i64 while every true level fits (the second
// reviewer's case): inventory −1, then +i64::MAX and +1 in one later append. The merged
// level must be exactly i64::MAX, with and without a batch in between.
#[test]
fn partial_sums_beyond_i64_stay_exact() {
    use lambdaflow_engine::testing::{test_options, TempDir};
    use lambdaflow_engine::Lambda;
    use lambdaflow_operators::Selection;
    use std::time::Duration;
    for with_batch in [false, true] {
        let dir = TempDir::new("wrap");
        let lambda = Lambda::open(Shop, dir.path(), test_options(2)).unwrap();
        lambda.append(&[ShopEvent::Inventory { ts: ts(0, 1), product_id: 7, delta: -1 }]).unwrap();
        if with_batch {
            lambda.batch_and_handover(std::sync::Arc::default()).unwrap();
        }
        lambda
            .append(&[
                ShopEvent::Inventory { ts: ts(0, 2), product_id: 7, delta: i64::MAX },
                ShopEvent::Inventory { ts: ts(0, 3), product_id: 7, delta: 1 },
            ])
            .unwrap();
        lambda.sync(Duration::from_secs(20)).unwrap();
        let r = lambda.query("inventory_level", &Selection::Key("7".into())).unwrap();
        assert_eq!(r.answers[0].value, serde_json::json!({ "level": i64::MAX }), "with_batch={with_batch}");
    }
}

// Issue 15.1: sums of accepted amounts that leave i64 must be exact, not wrapped (two
// purchases of i64::MAX cents showed gross −2, segment "none", top-k −2), in batch views, in
// the speed layer and across the cut. 18446744073709551614 = 2 × i64::MAX; three of them
// (27670116110564327421) leave u64 too, and the JSON answer must still be the exact integer.
#[test]
fn sums_beyond_i64_are_exact_in_both_modes() {
    use lambdaflow_jobs::shop::event::MAX_TS_MS;
    use lambdaflow_operators::Event as _;
    use serde_json::json;
    let max = i64::MAX;
    let two: i128 = 2 * i128::from(max);
    let three: i128 = 3 * i128::from(max);
    let events = vec![
        purchase(1, 1, 1, 5, max),
        ShopEvent::Inventory { ts: ts(1, 0), product_id: 9, delta: max },
        purchase(1, 2, 1, 5, max),
        ShopEvent::Inventory { ts: ts(1, 1), product_id: 9, delta: max },
        purchase(2, 3, 2, 6, max),
        purchase(2, 4, 2, 6, max),
        purchase(2, 5, 2, 6, max),
        refund(3, 6, 3, 7, max),
        refund(3, 7, 3, 7, max),
        ShopEvent::Inventory { ts: ts(1, 2), product_id: 10, delta: i64::MIN },
        ShopEvent::Inventory { ts: ts(1, 3), product_id: 10, delta: i64::MIN },
        ShopEvent::Inventory { ts: ts(1, 4), product_id: 10, delta: i64::MIN },
    ];
    // No cut: all of it in the speed layer; a cut at the end: all of it in a batch view; cuts
    // in between: split across both. (`run` also checks every step against a from-scratch
    // batch run and the final views against the oracle.)
    for cuts in [vec![], vec![events.len()], vec![1, 3], vec![5]] {
        for workers in [1, 2] {
            run(&events, &cuts, workers).unwrap_or_else(|e| panic!("cuts {cuts:?}: {e}"));
        }
    }
    let report = check_exact(Shop, &events, &[3], 2).unwrap();
    let v = &report.final_views;
    let day1 = &v["revenue_by_day"]["\"2026-01-02\""];
    assert_eq!(day1["gross_cents"], json!(two), "{day1}");
    assert_eq!(
        day1.to_string(),
        r#"{"gross_cents":18446744073709551614,"net_cents":18446744073709551614,"orders":2,"refund_cents":0,"refunds":0}"#
    );
    assert_eq!(v["revenue_by_day"]["\"2026-01-03\""]["gross_cents"].to_string(), "27670116110564327421");
    assert_eq!(v["revenue_by_day"]["\"2026-01-04\""]["net_cents"], json!(-two));
    assert_eq!(v["customer_spend"]["1"], json!({ "net_cents": two }));
    assert_eq!(v["customer_spend"]["2"], json!({ "net_cents": three }));
    assert_eq!(v["customer_spend"]["3"], json!({ "net_cents": -two }));
    assert_eq!(v["customer_segments"]["\"gold\""], json!({ "customers": 2 }), "{:?}", v["customer_segments"]);
    assert_eq!(v["customer_segments"]["\"none\""], json!({ "customers": 1 }), "{:?}", v["customer_segments"]);
    assert_eq!(v["top_products_by_day"]["\"2026-01-02\""], json!([{ "net_cents": two, "product_id": 5 }]));
    assert_eq!(v["top_products_by_day"]["\"2026-01-03\""], json!([{ "net_cents": three, "product_id": 6 }]));
    assert_eq!(v["inventory_level"]["9"], json!({ "level": two }));
    assert_eq!(v["inventory_level"]["10"].to_string(), r#"{"level":-27670116110564327424}"#);

    // The other side of the bound: an amount beyond i64 is refused at parse time, naming the
    // field (the parser's bound is the type's, since no two fields are multiplied).
    let line = |amount: &str| {
        format!(
            r#"{{"type":"purchase","ts":{MAX_TS_MS},"order_id":1,"customer_id":1,"product_id":1,"quantity":1,"amount_cents":{amount}}}"#
        )
    };
    assert!(ShopEvent::parse_ndjson(&line("9223372036854775807")).is_ok());
    let e = ShopEvent::parse_ndjson(&line("9223372036854775808")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("amount_cents"), "{e}");
    assert!(e.message.contains("out of range"), "{e}");
}

// Issue 14: `top_products_by_day`'s seed is shared with the `product_revenue_by_day` view
// (one file, not two). The speed layer's top-k state comes from that seed alone, so a seed
// restored wrongly (empty, another view's rows, a part missing) makes the day's list after
// the cut differ from the from-scratch one: products outside the top 10 at the cut move
// into it, and the leader is refunded out of it, with the cut between.
#[test]
fn shared_top_k_seed_restores_exactly() {
    use lambdaflow_engine::testing::{test_options, TempDir};
    use lambdaflow_engine::{Lambda, ViewStore};
    let before: Vec<ShopEvent> =
        (1..=14u64).map(|p| purchase(1, p, p % 5 + 1, p, 1_000 * p as i64)).chain([purchase(2, 20, 1, 3, 70)]).collect();
    let after = [
        purchase(1, 30, 2, 2, 50_000), // product 2, 13th at the cut, becomes the leader
        refund(1, 14, 4, 14, 14_000),  // the leader at the cut falls out
        purchase(1, 31, 3, 1, 4_500),  // product 1 passes 3, 4 and 5
        purchase(2, 32, 3, 9, 10),     // day 2 gains a second product
    ];
    let events: Vec<ShopEvent> = before.iter().chain(after.iter()).cloned().collect();
    for workers in [1, 2, 4] {
        run(&events, &[before.len()], workers).unwrap();
        run(&events, &[before.len(), before.len() + 2], workers).unwrap();
    }
    // The version really shares the seed: META maps it to the view, there is no file of its
    // own, and its row count is the view's.
    let dir = TempDir::new("shared-seed");
    let lambda = Lambda::open(Shop, dir.path(), test_options(2)).unwrap();
    lambda.append(&before).unwrap();
    lambda.batch_and_handover(std::sync::Arc::default()).unwrap();
    let store = ViewStore::open(dir.path()).unwrap();
    let meta = store.current_meta().unwrap().expect("a published version");
    let shared = ("top_products_by_day.seed".to_string(), "product_revenue_by_day".to_string());
    assert!(meta.seed_views.contains(&shared), "{:?}", meta.seed_views);
    let version_dir = dir.path().join("views").join(format!("v{:06}", meta.version));
    assert!(!version_dir.join("seed.top_products_by_day.seed.bin").exists());
    let rows = |list: &[(String, usize)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, n)| *n);
    assert_eq!(rows(&meta.seeds, &shared.0), rows(&meta.views, &shared.1));
    assert_eq!(rows(&meta.views, &shared.1), Some(15));
    // The other seeds are in one shard per worker.
    assert_eq!(meta.seed_shards, 2);
    assert!(version_dir.join("seed.daily_unique_viewers.seed.p1.bin").exists());
}

// Review issue (restore with another worker count): a version written by 4 workers (4 seed
// shards, plus seeds shared with views) is reopened with 1 and with 3 workers; the merged
// views after more events must equal a from-scratch run. A restore that dropped or doubled
// rows when the worker count changes would differ here.
#[test]
fn seeds_restore_exactly_with_another_worker_count() {
    use lambdaflow_engine::testing::{all_views, batch_from_scratch, diff, test_options, TempDir};
    use lambdaflow_engine::Lambda;
    let before: Vec<ShopEvent> = (1..=14u64)
        .map(|p| purchase(1, p, p % 5 + 1, p, 1_000 * p as i64))
        .chain((1..=6u64).map(|c| view(1, c, c % 3 + 1)))
        .chain([purchase(2, 20, 1, 3, 70)])
        .collect();
    let after = [purchase(1, 30, 2, 2, 50_000), refund(1, 14, 4, 14, 14_000), view(1, 7, 1), view(1, 1, 2), purchase(2, 32, 3, 9, 10)];
    let events: Vec<ShopEvent> = before.iter().chain(after.iter()).cloned().collect();
    let expected = batch_from_scratch(Shop, &events, 1).unwrap();
    for reopen in [1, 3] {
        let dir = TempDir::new("reopen-workers");
        {
            let lambda = Lambda::open(Shop, dir.path(), test_options(4)).unwrap();
            lambda.append(&before).unwrap();
            lambda.batch_and_handover(std::sync::Arc::default()).unwrap();
        }
        let lambda = Lambda::open(Shop, dir.path(), test_options(reopen)).unwrap();
        lambda.append(&after).unwrap();
        lambda.sync(std::time::Duration::from_secs(60)).unwrap();
        let actual = all_views(&lambda).unwrap();
        if let Some(d) = diff(&expected, &actual) {
            panic!("batch with 4 workers, reopened with {reopen}: {d}");
        }
    }
}
