//! The rows, keys and sums the queries declare and the oracle shares: their types and JSON
//! forms. No query logic: an edit to a query (`queries/`) leaves this module compiled.

use crate::queries::ms;
use crate::Bid;
use lambdaflow_operators::serde_json::{json, Value};
use lambdaflow_operators::{aggregate, Day, Example, ViewKey};
use serde::{Deserialize, Serialize};

/// What q4, q6 and q9 need of an auction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuctionRow {
    /// Opens.
    pub date_time: u64,
    /// Closes.
    pub expires: u64,
    /// The lowest winning price.
    pub reserve: u64,
    /// The seller.
    pub seller: u64,
    /// The category.
    pub category: u64,
}

/// What q4, q6 and q9 need of a bid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BidRow {
    /// The price.
    pub price: u64,
    /// When.
    pub date_time: u64,
    /// Who.
    pub bidder: u64,
}

aggregate! {
    /// q4's sums per category: the winning prices (and, as `records`, how many auctions).
    pub struct Closing {
        /// The sum of the winning prices, in cents.
        price
    }
}

/// q11's key: a bidder and the start of one of their sessions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BidderSession {
    /// The bidder.
    pub bidder: u64,
    /// The time of the session's first bid, ms since the Unix epoch.
    pub start: u64,
}

impl Example for BidderSession {
    fn example() -> Self {
        BidderSession { bidder: 1, start: 1 }
    }
}

impl ViewKey for BidderSession {
    fn to_json(&self) -> Value {
        json!({ "bidder": self.bidder, "start": self.start })
    }

    /// `BIDDER/START` (e.g. `1001/1772323200000`) or the JSON form.
    fn parse_key(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('{') {
            let v: Value = lambdaflow_operators::serde_json::from_str(s).map_err(|e| format!("\"{s}\" is not a bidder session: {e}"))?;
            let get =
                |f: &str| v.get(f).and_then(Value::as_u64).ok_or_else(|| format!("\"{s}\": field \"{f}\" must be an unsigned integer"));
            return Ok(BidderSession { bidder: get("bidder")?, start: get("start")? });
        }
        let (b, t) =
            s.split_once('/').ok_or_else(|| format!("\"{s}\" is not a bidder session: write BIDDER/START_MS, e.g. 1001/1772323200000"))?;
        let num = |x: &str, what: &str| x.trim().parse::<u64>().map_err(|_| format!("\"{s}\": {what} \"{x}\" is not an unsigned integer"));
        Ok(BidderSession { bidder: num(b, "bidder")?, start: num(t, "start")? })
    }
}

aggregate! {
    /// q15's numbers per day.
    pub struct DayBids {
        /// Bids.
        total_bids,
        /// Bids below 10 000 cents.
        rank1_bids,
        /// Bids from 10 000 to below 1 000 000 cents.
        rank2_bids,
        /// Bids from 1 000 000 cents.
        rank3_bids,
        /// Distinct bidders.
        total_bidders,
        /// Distinct bidders of rank-1 bids.
        rank1_bidders,
        /// Distinct bidders of rank-2 bids.
        rank2_bidders,
        /// Distinct bidders of rank-3 bids.
        rank3_bidders,
        /// Distinct auctions bid on.
        total_auctions,
        /// Distinct auctions with rank-1 bids.
        rank1_auctions,
        /// Distinct auctions with rank-2 bids.
        rank2_auctions,
        /// Distinct auctions with rank-3 bids.
        rank3_auctions,
    }
}

/// A minute of the day as `HH:MM`.
pub fn hh_mm(minute: i128) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// q16's and q17's key part: the UTC day of a bid.
fn bid_day(b: &Bid) -> Day {
    Day::of_ms(ms(b.date_time))
}

aggregate! {
    /// q16's numbers per channel and day: q15's, and the last minute with a bid.
    pub struct ChannelBids {
        /// The last minute of the day with a bid (0 to 1439; shown as `HH:MM`).
        minute,
        /// Bids.
        total_bids,
        /// Bids below 10 000 cents.
        rank1_bids,
        /// Bids from 10 000 to below 1 000 000 cents.
        rank2_bids,
        /// Bids from 1 000 000 cents.
        rank3_bids,
        /// Distinct bidders.
        total_bidders,
        /// Distinct bidders of rank-1 bids.
        rank1_bidders,
        /// Distinct bidders of rank-2 bids.
        rank2_bidders,
        /// Distinct bidders of rank-3 bids.
        rank3_bidders,
        /// Distinct auctions bid on.
        total_auctions,
        /// Distinct auctions with rank-1 bids.
        rank1_auctions,
        /// Distinct auctions with rank-2 bids.
        rank2_auctions,
        /// Distinct auctions with rank-3 bids.
        rank3_auctions,
    }
}

impl ChannelBids {
    /// The view's JSON: the sums, with `minute` as `HH:MM`.
    pub fn present(&self) -> Value {
        let mut v = self.to_json();
        v["minute"] = Value::from(hh_mm(self.minute));
        v
    }
}

aggregate! {
    /// q17's numbers per auction and day.
    pub struct AuctionBids {
        /// Bids.
        total_bids,
        /// Bids below 10 000 cents.
        rank1_bids,
        /// Bids from 10 000 to below 1 000 000 cents.
        rank2_bids,
        /// Bids from 1 000 000 cents.
        rank3_bids,
        /// The lowest price.
        min_price,
        /// The highest price.
        max_price,
        /// The sum of the prices.
        sum_price,
    }
}

impl AuctionBids {
    /// The view's JSON: the sums and `avg_price` (rounded down to whole cents).
    pub fn present(&self) -> Value {
        let mut v = self.to_json();
        v["avg_price"] = Value::from(self.sum_price.checked_div(self.total_bids).unwrap_or(0) as u64);
        v
    }
}

/// q16's key: a bid's channel and UTC day.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChannelDay {
    /// The channel (`Google`, `channel-1234`, ...).
    pub channel: String,
    /// The day.
    pub day: Day,
}

impl ChannelDay {
    pub(crate) fn of(b: &Bid) -> Self {
        ChannelDay { channel: b.channel.clone(), day: bid_day(b) }
    }
}

impl Example for ChannelDay {
    fn example() -> Self {
        ChannelDay { channel: "Google".into(), day: Day(0) }
    }
}

impl ViewKey for ChannelDay {
    fn to_json(&self) -> Value {
        json!({ "channel": self.channel, "day": self.day.to_string() })
    }

    /// `CHANNEL/DAY` (e.g. `Google/2026-03-01`; the channel may hold `/`) or the JSON form.
    fn parse_key(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('{') {
            let v: Value = lambdaflow_operators::serde_json::from_str(s).map_err(|e| format!("\"{s}\" is not a channel/day key: {e}"))?;
            let channel = v.get("channel").and_then(Value::as_str).ok_or_else(|| format!("\"{s}\": field \"channel\" must be a string"))?;
            let day = v.get("day").and_then(Value::as_str).ok_or_else(|| format!("\"{s}\": field \"day\" must be a YYYY-MM-DD string"))?;
            return Ok(ChannelDay { channel: channel.to_string(), day: Day::parse(day)? });
        }
        let (channel, day) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("\"{s}\" is not a channel/day key: write CHANNEL/YYYY-MM-DD, e.g. Google/2026-03-01"))?;
        Ok(ChannelDay { channel: channel.to_string(), day: Day::parse(day)? })
    }
}

/// q17's key: an auction and a UTC day it had bids on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuctionDay {
    /// The auction.
    pub auction: u64,
    /// The day.
    pub day: Day,
}

impl AuctionDay {
    pub(crate) fn of(b: &Bid) -> Self {
        AuctionDay { auction: b.auction, day: bid_day(b) }
    }
}

impl Example for AuctionDay {
    fn example() -> Self {
        AuctionDay { auction: 1, day: Day(0) }
    }
}

impl ViewKey for AuctionDay {
    fn to_json(&self) -> Value {
        json!({ "auction": self.auction, "day": self.day.to_string() })
    }

    /// `AUCTION/DAY` (e.g. `1000/2026-03-01`) or the JSON form.
    fn parse_key(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('{') {
            let v: Value = lambdaflow_operators::serde_json::from_str(s).map_err(|e| format!("\"{s}\" is not an auction/day key: {e}"))?;
            let auction = v
                .get("auction")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("\"{s}\": field \"auction\" must be an unsigned integer"))?;
            let day = v.get("day").and_then(Value::as_str).ok_or_else(|| format!("\"{s}\": field \"day\" must be a YYYY-MM-DD string"))?;
            return Ok(AuctionDay { auction, day: Day::parse(day)? });
        }
        let (auction, day) = s
            .split_once('/')
            .ok_or_else(|| format!("\"{s}\" is not an auction/day key: write AUCTION/YYYY-MM-DD, e.g. 1000/2026-03-01"))?;
        let auction = auction.trim().parse::<u64>().map_err(|_| format!("\"{s}\": auction \"{auction}\" is not an unsigned integer"))?;
        Ok(AuctionDay { auction, day: Day::parse(day.trim())? })
    }
}

/// q18's key: a bidder and an auction they bid on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BidderAuction {
    /// The bidder.
    pub bidder: u64,
    /// The auction.
    pub auction: u64,
}

impl Example for BidderAuction {
    fn example() -> Self {
        BidderAuction { bidder: 1, auction: 1 }
    }
}

impl ViewKey for BidderAuction {
    fn to_json(&self) -> Value {
        json!({ "bidder": self.bidder, "auction": self.auction })
    }

    /// `BIDDER/AUCTION` (e.g. `1001/1000`) or the JSON form.
    fn parse_key(s: &str) -> Result<Self, String> {
        let (bidder, auction) = parse_pair(s, "bidder", "auction")?;
        Ok(BidderAuction { bidder, auction })
    }
}

/// Parses `A/B` or `{"a": A, "b": B}` (two unsigned integers named `a` and `b`).
fn parse_pair(s: &str, a: &str, b: &str) -> Result<(u64, u64), String> {
    let s = s.trim();
    if s.starts_with('{') {
        let v: Value = lambdaflow_operators::serde_json::from_str(s).map_err(|e| format!("\"{s}\" is not a {a}/{b} key: {e}"))?;
        let get = |f: &str| v.get(f).and_then(Value::as_u64).ok_or_else(|| format!("\"{s}\": field \"{f}\" must be an unsigned integer"));
        return Ok((get(a)?, get(b)?));
    }
    let (x, y) = s
        .split_once('/')
        .ok_or_else(|| format!("\"{s}\" is not a {a}/{b} key: write {}/{}, e.g. 1001/1000", a.to_uppercase(), b.to_uppercase()))?;
    let num = |x: &str, what: &str| x.trim().parse::<u64>().map_err(|_| format!("\"{s}\": {what} \"{x}\" is not an unsigned integer"));
    Ok((num(x, a)?, num(y, b)?))
}
