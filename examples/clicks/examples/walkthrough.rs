//! A walk through the lambda architecture with the clicks job, as a library:
//!
//! 1. open a data directory (master dataset + batch views + speed layer),
//! 2. append history and run a batch (batch views at a cut, speed layer seeded from it),
//! 3. append more clicks, which only the speed layer sees,
//! 4. query merged answers: batch part + speed part, and how fresh they are.
//!
//! Run it with `cargo run -p clicks --example walkthrough`.

use clicks::{Click, Clicks};
use lambdaflow_engine::testing::TempDir;
use lambdaflow_engine::{Lambda, Options};
use lambdaflow_operators::{Selection, MS_PER_DAY};
use std::time::Duration;

const MAR_1: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z
const MAR_2: i64 = MAR_1 + MS_PER_DAY;

fn click(ts: i64, user: u64, page: u64, ms_on_page: u32) -> Click {
    Click { ts, user, page, ms_on_page }
}

/// Prints every key of `view`: the merged value, and for sum views its two parts.
fn show(lambda: &Lambda<Clicks>, view: &str) -> lambdaflow_engine::Result<()> {
    let result = lambda.query(view, &Selection::Range { from: None, to: None, limit: 100 })?;
    println!("  {view}:");
    for a in &result.answers {
        let part = |p: &Option<lambdaflow_operators::serde_json::Value>| p.as_ref().map_or("-".to_string(), |v| v.to_string());
        println!("    {:<14} = {:<36} batch {:<36} speed {}", a.key.to_string(), a.value.to_string(), part(&a.batch), part(&a.speed));
    }
    Ok(())
}

fn main() -> lambdaflow_engine::Result<()> {
    // 1. A fresh data directory, removed when `dir` is dropped. Two worker threads.
    let dir = TempDir::new("walkthrough");
    let lambda = Lambda::open(Clicks, dir.path(), Options { workers: 2, ..Options::default() })?;
    println!(
        "opened {} with views: {}",
        dir.path().display(),
        lambda.views().iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
    );

    // 2. History: user 1 reads pages 1 and 2 on March 1st (4 clicks: "casual"), user 2
    //    reads page 1 twice and bounces off page 3 (0 ms).
    let history = [
        click(MAR_1 + 1_000, 1, 1, 30_000),
        click(MAR_1 + 2_000, 1, 2, 12_000),
        click(MAR_1 + 3_000, 1, 1, 8_000),
        click(MAR_1 + 4_000, 1, 2, 5_000),
        click(MAR_1 + 5_000, 2, 1, 20_000),
        click(MAR_1 + 6_000, 2, 1, 10_000),
        click(MAR_1 + 7_000, 2, 3, 0),
    ];
    lambda.append(&history)?; // durable (fsync'd) when it returns
    let report = lambda.batch_and_handover(Default::default())?;
    println!(
        "\nbatch v{} over {} events at cut {:?}: batch views written, speed layer seeded from them",
        report.meta.version, report.meta.events, report.meta.cut
    );
    println!("  (each line: key = merged value, then its batch and speed parts; null: nothing there)");
    show(&lambda, "clicks_by_page")?;
    show(&lambda, "users_by_activity")?;

    // 3. New clicks after the cut: only the speed layer sees them.
    //    - user 1's 5th click moves them from "casual" to "regular" (page 1 again: not a
    //      new visitor of page 1);
    //    - user 2 visits page 2 for the first time: one more visitor there;
    //    - one click of user 1 from March 1st arrives late: its old day changes, which is
    //      correct (the cut is by arrival, not by event time).
    let live = [click(MAR_2 + 1_000, 1, 1, 7_000), click(MAR_2 + 2_000, 2, 2, 15_000), click(MAR_1 + 8_000, 1, 3, 9_000)];
    lambda.append(&live)?;
    lambda.sync(Duration::from_secs(10))?; // wait until the speed layer has them

    // 4. Merged answers. For sum views the value is batch part + speed part; a speed part
    //    may be negative: in users_by_activity, user 1 left "casual" for "regular".
    println!("\nafter {} more clicks (speed layer only):", live.len());
    for view in ["clicks_by_page", "visitors_by_page", "time_on_page_by_day", "users_by_activity"] {
        show(&lambda, view)?;
    }
    let f = lambda.query("clicks_by_page", &Selection::Key("1".into()))?.freshness;
    println!(
        "\nfreshness: batch v{} at cut {:?} ({} ms old) + speed frontier {:?} ({} events since the cut)",
        f.batch_version.unwrap_or(0),
        f.batch_cut,
        f.batch_age_ms.unwrap_or(0),
        f.speed_frontier,
        f.speed_events
    );

    // 5. The next batch run folds the speed layer's events into new batch views; the
    //    answers do not change, only where they come from.
    let report = lambda.batch_and_handover(Default::default())?;
    println!("\nbatch v{} over {} events: the speed layer restarted empty at the new cut", report.meta.version, report.meta.events);
    show(&lambda, "users_by_activity")?;
    Ok(())
}
