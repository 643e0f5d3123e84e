//! The events: persons, auctions and bids, as one NDJSON line each.

use lambdaflow_operators::{Event, FieldError, MAX_TS_MS};
use serde::{Deserialize, Serialize};

/// A person registering with the auction house.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Person {
    /// Unique person id.
    pub id: u64,
    /// Full name.
    pub name: String,
    /// Email address.
    pub email_address: String,
    /// Credit card number.
    pub credit_card: String,
    /// US city.
    pub city: String,
    /// US state (two letters).
    pub state: String,
    /// Event time, ms since the Unix epoch.
    pub date_time: u64,
    /// Padding to the Nexmark event size.
    pub extra: String,
}

/// An item put up for auction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Auction {
    /// Unique auction id.
    pub id: u64,
    /// The item's name.
    pub item_name: String,
    /// The item's description.
    pub description: String,
    /// The initial bid, in cents.
    pub initial_bid: u64,
    /// The lowest price that wins the auction, in cents.
    pub reserve: u64,
    /// Event time (the auction opens), ms since the Unix epoch.
    pub date_time: u64,
    /// When the auction closes, ms since the Unix epoch.
    pub expires: u64,
    /// The person selling.
    pub seller: u64,
    /// The item's category.
    pub category: u64,
    /// Padding to the Nexmark event size.
    pub extra: String,
}

/// A bid on an auction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bid {
    /// The auction bid on.
    pub auction: u64,
    /// The person bidding.
    pub bidder: u64,
    /// The price bid, in cents.
    pub price: u64,
    /// The channel the bid came through.
    pub channel: String,
    /// The page the bid came from.
    pub url: String,
    /// Event time, ms since the Unix epoch.
    pub date_time: u64,
    /// Padding to the Nexmark event size.
    pub extra: String,
}

/// One Nexmark event; one NDJSON line is `{"Person": {...}}`, `{"Auction": {...}}` or
/// `{"Bid": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NexmarkEvent {
    /// A new person.
    Person(Person),
    /// A new auction.
    Auction(Auction),
    /// A bid.
    Bid(Bid),
}

impl NexmarkEvent {
    /// The event's kind as an index: 0 a person, 1 an auction, 2 a bid.
    pub fn kind_index(&self) -> u64 {
        match self {
            NexmarkEvent::Person(_) => 0,
            NexmarkEvent::Auction(_) => 1,
            NexmarkEvent::Bid(_) => 2,
        }
    }

    /// The person, if this is one.
    pub fn into_person(self) -> Option<Person> {
        match self {
            NexmarkEvent::Person(p) => Some(p),
            _ => None,
        }
    }

    /// The auction, if this is one.
    pub fn into_auction(self) -> Option<Auction> {
        match self {
            NexmarkEvent::Auction(a) => Some(a),
            _ => None,
        }
    }

    /// The bid, if this is one.
    pub fn into_bid(self) -> Option<Bid> {
        match self {
            NexmarkEvent::Bid(b) => Some(b),
            _ => None,
        }
    }

    /// The event as one NDJSON line (no newline).
    pub fn to_ndjson(&self) -> String {
        lambdaflow_operators::serde_json::to_string(self).expect("a Nexmark event always serializes")
    }
}

/// Refuses an event time past 9999-12-31T23:59:59.999Z, which has no window to be in.
fn bounded(field: &str, ms: u64) -> Result<(), FieldError> {
    if ms > MAX_TS_MS as u64 {
        return Err(FieldError::field(
            field,
            ms.to_string(),
            format!("is out of range: after 9999-12-31T23:59:59.999Z ({MAX_TS_MS}), the last supported event time"),
        ));
    }
    Ok(())
}

impl Event for NexmarkEvent {
    /// The serde form (the DSL's `from_ndjson`), with event times bounded.
    fn parse_ndjson(line: &str) -> Result<Self, FieldError> {
        let event: NexmarkEvent = lambdaflow_operators::from_ndjson(line)?;
        match &event {
            NexmarkEvent::Person(p) => bounded("Person.date_time", p.date_time)?,
            NexmarkEvent::Auction(a) => {
                bounded("Auction.date_time", a.date_time)?;
                bounded("Auction.expires", a.expires)?;
            }
            NexmarkEvent::Bid(b) => bounded("Bid.date_time", b.date_time)?,
        }
        Ok(event)
    }

    /// Auctions and their bids share a partition (by auction id); persons by their id.
    fn partition_key(&self) -> u64 {
        match self {
            NexmarkEvent::Person(p) => p.id,
            NexmarkEvent::Auction(a) => a.id,
            NexmarkEvent::Bid(b) => b.auction,
        }
    }
}
