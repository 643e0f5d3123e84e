//! Nexmark events from the `nexmark` crate's generator (the model of the Nexmark suite:
//! persons, auctions and bids 1 : 3 : 46, auctions that expire, hot sellers, bidders and
//! auctions), converted to this job's event types.
//!
//! The stream is a fixed function of the event number: event `n` is the same whatever
//! else is generated. `gen nexmark --events N --seed S` writes events `(S-1)·N ..
//! S·N - 1` (seed 1, the default, is the start of the stream) at 10 000 events per second
//! of event time from 2026-03-01T00:00:00Z.

use crate::{Auction, Bid, NexmarkEvent, Person};
use lambdaflow_engine::cli::Generator;
use lambdaflow_operators::Format;
use nexmark::config::NexmarkConfig;
use nexmark::event::Event as Raw;
use nexmark::EventGenerator;
use std::io::Write;

/// Where `gen nexmark` starts: 2026-03-01T00:00:00Z.
pub const GEN_START_MS: u64 = 1_772_323_200_000;

/// Events per second of event time (the Nexmark default).
pub const EVENTS_PER_SECOND: u64 = 10_000;

fn config(base_time: u64, rate: u64) -> NexmarkConfig {
    let rate = rate.max(1) as usize;
    NexmarkConfig { base_time, first_rate: rate, next_rate: rate, ..NexmarkConfig::default() }
}

/// `count` events from event number `first`, with the stream starting at `base_time`.
pub fn events(first: u64, count: u64, base_time: u64) -> impl Iterator<Item = NexmarkEvent> {
    events_at(first, count, base_time, EVENTS_PER_SECOND)
}

/// [`events`] at `rate` events per second of event time (the auctions' lengths scale with
/// it: an auction stays open for about as many events at any rate).
pub fn events_at(first: u64, count: u64, base_time: u64, rate: u64) -> impl Iterator<Item = NexmarkEvent> {
    EventGenerator::new(config(base_time, rate)).with_offset(first).take(count as usize).map(convert)
}

/// The first `count` events of the stream from [`GEN_START_MS`].
pub fn stream(count: u64) -> Vec<NexmarkEvent> {
    events(0, count, GEN_START_MS).collect()
}

fn convert(e: Raw) -> NexmarkEvent {
    match e {
        Raw::Person(p) => NexmarkEvent::Person(Person {
            id: p.id as u64,
            name: p.name,
            email_address: p.email_address,
            credit_card: p.credit_card,
            city: p.city,
            state: p.state,
            date_time: p.date_time,
            extra: p.extra,
        }),
        Raw::Auction(a) => NexmarkEvent::Auction(Auction {
            id: a.id as u64,
            item_name: a.item_name,
            description: a.description,
            initial_bid: a.initial_bid as u64,
            reserve: a.reserve as u64,
            date_time: a.date_time,
            expires: a.expires,
            seller: a.seller as u64,
            category: a.category as u64,
            extra: a.extra,
        }),
        Raw::Bid(b) => NexmarkEvent::Bid(Bid {
            auction: b.auction as u64,
            bidder: b.bidder as u64,
            price: b.price as u64,
            channel: b.channel,
            url: b.url,
            date_time: b.date_time,
            extra: b.extra,
        }),
    }
}

/// The generator behind `gen nexmark` and `demo`.
pub struct NexmarkGenerator;

impl Generator<NexmarkEvent> for NexmarkGenerator {
    fn write(&self, count: u64, seed: u64, format: Format, out: &mut dyn Write) -> std::io::Result<u64> {
        if format == Format::Csv {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "Nexmark events have no CSV form: use --format ndjson (the default)",
            ));
        }
        let mut n = 0u64;
        for e in events(seed.saturating_sub(1).saturating_mul(count), count, GEN_START_MS) {
            writeln!(out, "{}", e.to_ndjson())?;
            n += 1;
        }
        Ok(n)
    }

    /// History ends now; live slices (seed ≥ 1000 in `demo`) continue the stream at the
    /// event number of the current time (the stream's rate from [`GEN_START_MS`]) plus the
    /// slices already posted, timed from now. Ids are a function of the event number, so a
    /// demo run again (or a slow `--rate`) must not post event numbers a history or an
    /// earlier run holds: the interval join needs one auction and one person per id. Slices
    /// stay apart at any rate within a run, and across runs up to the stream's own 10 000
    /// events/s.
    fn events(&self, seed: u64, count: u64, live: bool) -> Vec<NexmarkEvent> {
        let now = lambdaflow_engine::now_ms();
        let first = if live {
            let at_now = now.saturating_sub(GEN_START_MS).saturating_mul(EVENTS_PER_SECOND) / 1000;
            at_now.saturating_add(seed.saturating_sub(1000).saturating_mul(count))
        } else {
            0
        };
        let offset_ms = EventGenerator::new(config(0, EVENTS_PER_SECOND)).with_offset(first).timestamp();
        let span_ms = if live { 0 } else { count * 1000 / EVENTS_PER_SECOND };
        events(first, count, now.saturating_sub(offset_ms + span_ms)).collect()
    }

    fn to_ndjson(&self, events: &[NexmarkEvent], out: &mut Vec<u8>) {
        for e in events {
            out.extend_from_slice(e.to_ndjson().as_bytes());
            out.push(b'\n');
        }
    }
}
