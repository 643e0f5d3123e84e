//! The `clicks` binary: the clicks job with every lambdaflow subcommand.
//!
//! ```text
//! clicks gen clicks --events 1000 | clicks --data /tmp/x ingest -
//! clicks --data /tmp/x batch
//! clicks --data /tmp/x query clicks_by_page
//! clicks --data /tmp/x demo --fresh --seconds 10
//! ```

use clicks::{synthetic, Click, Clicks};
use lambdaflow_engine::cli::{App, Generator};
use lambdaflow_engine::Lambda;
use lambdaflow_operators::serde_json::Value;
use lambdaflow_operators::{Day, Format, Selection, MS_PER_DAY};
use std::io::Write;
use std::process::ExitCode;

/// `gen clicks` writes a week from 2026-03-01 (UTC); `demo` uses days around today.
struct ClickGenerator;

const GEN_START_MS: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z

impl Generator<Click> for ClickGenerator {
    fn write(&self, events: u64, seed: u64, format: Format, out: &mut dyn Write) -> std::io::Result<u64> {
        if format == Format::Csv {
            writeln!(out, "{}", <Click as lambdaflow_operators::Event>::csv_header())?;
        }
        let clicks = synthetic(seed, events, GEN_START_MS, 7);
        for c in &clicks {
            let line = match format {
                Format::Ndjson => c.to_ndjson(),
                Format::Csv => c.to_csv(),
            };
            writeln!(out, "{line}")?;
        }
        Ok(clicks.len() as u64)
    }

    fn events(&self, seed: u64, count: u64, live: bool) -> Vec<Click> {
        let today = Day::of_ms(lambdaflow_engine::now_ms() as i64).0 as i64 * MS_PER_DAY;
        if live {
            synthetic(seed, count, today, 1)
        } else {
            synthetic(seed, count, today - 29 * MS_PER_DAY, 30)
        }
    }

    fn to_ndjson(&self, events: &[Click], out: &mut Vec<u8>) {
        for c in events {
            out.extend_from_slice(c.to_ndjson().as_bytes());
            out.push(b'\n');
        }
    }
}

/// What `demo` prints after each step.
fn demo_report(lambda: &Lambda<Clicks>) -> lambdaflow_engine::Result<Vec<String>> {
    let mut lines = Vec::new();
    if let Some(a) = lambda.query("clicks_by_page", &Selection::Key("1".into()))?.answers.first() {
        if let Some(e) = &a.error {
            lines.push(format!("page 1: error: {e}"));
        } else {
            lines.push(format!(
                "page 1: {} clicks (batch {} + speed {})",
                a.value["clicks"],
                a.batch.as_ref().map_or(Value::Null, |b| b["clicks"].clone()),
                a.speed.as_ref().map_or(Value::Null, |s| s["clicks"].clone())
            ));
        }
    }
    let today = Day::of_ms(lambdaflow_engine::now_ms() as i64).to_string();
    if let Some(a) = lambda.query("time_on_page_by_day", &Selection::Key(today))?.answers.first() {
        lines.push(format!("today {} clicks", a.value["clicks"]));
    }
    let all = Selection::Range { from: None, to: None, limit: 10 };
    let buckets = lambda.query("users_by_activity", &all)?;
    // A key in error has no value (null): say so instead of printing it as one.
    for a in buckets.answers.iter().filter(|a| a.error.is_some()) {
        lines.push(format!("users_by_activity {}: error: {}", a.key, a.error.as_deref().unwrap_or_default()));
    }
    lines.push(
        buckets.answers.iter().map(|a| format!("{}={}", a.key.as_str().unwrap_or("?"), a.value["users"])).collect::<Vec<_>>().join(" "),
    );
    Ok(lines)
}

fn main() -> ExitCode {
    lambdaflow_engine::cli::main(App::new(Clicks).generator(ClickGenerator).demo_report(demo_report))
}
