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

/// A bid's channel: a small value for the generator's channels, the name itself for any
/// other.
///
/// The generator's channels are `Apple`, `Baidu`, `Facebook`, `Google` and `channel-N`
/// (`N` from 0 to 9 999). Those names, and every `channel-N` with `N` below 10⁸ written
/// canonically (decimal digits, no sign, no leading zero), are held as a `u32` code: no
/// allocation, an integer compare and hash. Any other name (`channel-007`,
/// `channel-999999999`, `Google ` with a space, ...) is held as given. The code is a
/// function of the name alone (not of the order channels arrive in), so equal names are
/// equal channels in every run and process, and stored rows read back the same.
///
/// Channels order as their names do (byte-wise, as `str`): a range query over
/// [`ChannelDay`] keys lists them as it would with the names as strings. The codes are
/// chosen so that this is the codes' own order: two codes compare as integers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Channel(ChannelRepr);

/// One form per name: a name with a code is never held as [`ChannelRepr::Other`], so the
/// derived `Eq` and `Hash` agree with the names.
#[derive(Clone, PartialEq, Eq, Hash)]
enum ChannelRepr {
    /// `NAMED[c]` for `c` below 4; from 4, `channel-N` as [`numbered_code`] gives it.
    Code(u32),
    /// Any other name.
    Other(Box<str>),
}

/// The generator's named channels, in name order (so their codes order as their names).
const NAMED: [&str; 4] = ["Apple", "Baidu", "Facebook", "Google"];

/// The prefix of the generator's numbered channels.
const NUMBERED: &str = "channel-";

/// `channel-N` has a code for `N` of at most this many digits.
const NUMBERED_DIGITS: u32 = 8;

/// The longest name with a code: `channel-` and eight digits.
const CODED_NAME_MAX: usize = NUMBERED.len() + NUMBERED_DIGITS as usize;

/// The code of `channel-N` (`N` of `len` digits, at most eight): `4 + 8·P + (len - 1)`,
/// where `P` is `N`'s digits padded with zeros on the right to eight (`7` → 70000000). Names
/// compare as their digits do, and digit strings compare as `(P, len)` (a string that is
/// a prefix of another comes first), so the codes order as the names. Below 2³⁰.
fn numbered_code(n: u32, len: u32) -> u32 {
    NAMED.len() as u32 + n * 10u32.pow(NUMBERED_DIGITS - len) * 8 + (len - 1)
}

/// `N` of a code from 4, if it is one [`numbered_code`] gives.
fn numbered_of_code(code: u32) -> Option<u32> {
    let c = code.checked_sub(NAMED.len() as u32)?;
    let (padded, len) = (c / 8, c % 8 + 1);
    let scale = 10u32.pow(NUMBERED_DIGITS - len);
    let n = padded / scale;
    (padded < 10u32.pow(NUMBERED_DIGITS) && padded % scale == 0 && decimal_digits(n) == len).then_some(n)
}

impl Channel {
    /// The channel named `name`.
    pub fn new(name: &str) -> Channel {
        match Channel::code_of(name) {
            Some(code) => Channel(ChannelRepr::Code(code)),
            None => Channel(ChannelRepr::Other(name.into())),
        }
    }

    /// The code of `name`, if it has one.
    fn code_of(name: &str) -> Option<u32> {
        if let Some(i) = NAMED.iter().position(|n| *n == name) {
            return Some(i as u32);
        }
        let digits = name.strip_prefix(NUMBERED)?.as_bytes();
        let canonical = matches!(digits, [b'0'] | [b'1'..=b'9', ..])
            && digits.len() <= NUMBERED_DIGITS as usize
            && digits.iter().all(u8::is_ascii_digit);
        if !canonical {
            return None;
        }
        let n = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        Some(numbered_code(n, digits.len() as u32))
    }

    /// The channel's code (below 2³⁰), or `None` for a name without one.
    pub fn code(&self) -> Option<u32> {
        match self.0 {
            ChannelRepr::Code(c) => Some(c),
            ChannelRepr::Other(_) => None,
        }
    }

    /// The channel with code `code`, or `None` if no name has it.
    pub fn from_code(code: u32) -> Option<Channel> {
        let named = code < NAMED.len() as u32;
        (named || numbered_of_code(code).is_some()).then_some(Channel(ChannelRepr::Code(code)))
    }

    /// Calls `f` with the channel's name (built on the stack for a code).
    pub fn with_name<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        match &self.0 {
            ChannelRepr::Other(name) => f(name),
            ChannelRepr::Code(c) if (*c as usize) < NAMED.len() => f(NAMED[*c as usize]),
            ChannelRepr::Code(c) => {
                let mut buf = [0u8; CODED_NAME_MAX];
                buf[..NUMBERED.len()].copy_from_slice(NUMBERED.as_bytes());
                let n = numbered_of_code(*c).expect("a channel's code");
                let len = NUMBERED.len() + decimal_digits(n) as usize;
                let mut rest = n;
                for d in buf[NUMBERED.len()..len].iter_mut().rev() {
                    *d = b'0' + (rest % 10) as u8;
                    rest /= 10;
                }
                f(std::str::from_utf8(&buf[..len]).expect("ASCII"))
            }
        }
    }

    /// The channel's name.
    pub fn name(&self) -> String {
        self.with_name(str::to_string)
    }
}

/// The number of decimal digits of `n` (1 for 0).
fn decimal_digits(n: u32) -> u32 {
    n.checked_ilog10().map_or(1, |l| l + 1)
}

impl Ord for Channel {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (&self.0, &other.0) {
            // Codes order as their names (the named channels start with capitals, which
            // sort before `channel-`; see `numbered_code`).
            (ChannelRepr::Code(a), ChannelRepr::Code(b)) => a.cmp(b),
            _ => self.with_name(|a| other.with_name(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for Channel {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_name(|name| f.write_str(name))
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_name(|name| write!(f, "Channel({name:?})"))
    }
}

impl From<&str> for Channel {
    fn from(name: &str) -> Self {
        Channel::new(name)
    }
}

/// The binary form (seeds, view files): the code, or the name.
#[derive(Deserialize)]
enum ChannelWire {
    Code(u32),
    Other(String),
}

/// The name in human-readable formats (JSON); the code or the name in binary ones.
impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            _ if serializer.is_human_readable() => self.with_name(|name| serializer.serialize_str(name)),
            ChannelRepr::Code(c) => serializer.serialize_newtype_variant("ChannelWire", 0, "Code", c),
            ChannelRepr::Other(name) => serializer.serialize_newtype_variant("ChannelWire", 1, "Other", &**name),
        }
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return Ok(Channel::new(&String::deserialize(deserializer)?));
        }
        Channel::from_wire(ChannelWire::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl Channel {
    fn from_wire(wire: ChannelWire) -> Result<Channel, String> {
        match wire {
            ChannelWire::Code(c) => Channel::from_code(c).ok_or_else(|| format!("{c} is not a channel code")),
            // `new`, not `Other`: one form per name, whatever wrote it.
            ChannelWire::Other(name) => Ok(Channel::new(&name)),
        }
    }
}

/// q16's key: a bid's channel and UTC day.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChannelDay {
    /// The channel (`Google`, `channel-1234`, ...).
    pub channel: Channel,
    /// The day.
    pub day: Day,
}

impl ChannelDay {
    pub(crate) fn of(b: &Bid) -> Self {
        ChannelDay { channel: Channel::new(&b.channel), day: bid_day(b) }
    }
}

impl Example for ChannelDay {
    fn example() -> Self {
        ChannelDay { channel: Channel::new("Google"), day: Day(0) }
    }
}

impl ViewKey for ChannelDay {
    fn to_json(&self) -> Value {
        self.channel.with_name(|channel| json!({ "channel": channel, "day": self.day.to_string() }))
    }

    /// `CHANNEL/DAY` (e.g. `Google/2026-03-01`; the channel may hold `/`) or the JSON form.
    fn parse_key(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('{') {
            let v: Value = lambdaflow_operators::serde_json::from_str(s).map_err(|e| format!("\"{s}\" is not a channel/day key: {e}"))?;
            let channel = v.get("channel").and_then(Value::as_str).ok_or_else(|| format!("\"{s}\": field \"channel\" must be a string"))?;
            let day = v.get("day").and_then(Value::as_str).ok_or_else(|| format!("\"{s}\": field \"day\" must be a YYYY-MM-DD string"))?;
            return Ok(ChannelDay { channel: Channel::new(channel), day: Day::parse(day)? });
        }
        let (channel, day) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("\"{s}\" is not a channel/day key: write CHANNEL/YYYY-MM-DD, e.g. Google/2026-03-01"))?;
        Ok(ChannelDay { channel: Channel::new(channel), day: Day::parse(day)? })
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

#[cfg(test)]
mod tests {
    use super::*;
    use lambdaflow_operators::serde_json;
    use std::hash::{BuildHasher, RandomState};

    /// Names with a code, names that look like one but are not, and others.
    const NAMES: [&str; 30] = [
        "Apple",
        "Baidu",
        "Facebook",
        "Google",
        "channel-0",
        "channel-1",
        "channel-10",
        "channel-100",
        "channel-2",
        "channel-9",
        "channel-99",
        "channel-9999",
        "channel-99999999",
        "channel-999999999",
        "channel-99999999999",
        "channel-007",
        "channel-00",
        "channel-",
        "channel-+1",
        "channel--1",
        "channel-1 ",
        "channel-1a",
        "channel-\u{0661}",
        "Channel-1",
        "google",
        "Googl",
        "Google ",
        "",
        "channel/1",
        "\u{e7}anal",
    ];

    /// Whether `name` should have a code (written out again, not taken from `Channel`).
    fn coded(name: &str) -> bool {
        ["Apple", "Baidu", "Facebook", "Google"].contains(&name)
            || name.strip_prefix("channel-").is_some_and(|d| {
                !d.is_empty() && d.len() <= 8 && d.bytes().all(|b| b.is_ascii_digit()) && (d == "0" || !d.starts_with('0'))
            })
    }

    #[test]
    fn names_round_trip_and_only_canonical_ones_are_coded() {
        for name in NAMES {
            let c = Channel::new(name);
            assert_eq!(c.name(), name);
            assert_eq!(c.to_string(), name);
            assert_eq!(c.code().is_some(), coded(name), "{name:?}");
            if let Some(code) = c.code() {
                assert_eq!(Channel::from_code(code), Some(c.clone()), "{name:?}");
            }
            // The JSON form is the name; the key's forms give the same channel back.
            assert_eq!(serde_json::to_value(&c).unwrap(), Value::from(name));
            assert_eq!(serde_json::from_value::<Channel>(Value::from(name)).unwrap(), c);
            let key = ChannelDay { channel: c.clone(), day: Day::parse("2026-03-01").unwrap() };
            assert_eq!(key.to_json(), json!({ "channel": name, "day": "2026-03-01" }));
            assert_eq!(ChannelDay::parse_key(&key.to_json().to_string()), Ok(key.clone()), "{name:?}");
            if name.trim() == name && !name.is_empty() {
                assert_eq!(ChannelDay::parse_key(&format!("{name}/2026-03-01")), Ok(key.clone()), "{name:?}");
            }
            // The binary form: a name written as `Other` (by any writer) reads back as the
            // one form of that name.
            assert_eq!(Channel::from_wire(ChannelWire::Other(name.to_string())), Ok(c.clone()));
        }
        // Only the codes of names are codes.
        let codes: Vec<u32> = (0..40_000).chain((1 << 30) - 20..1 << 30).chain([u32::MAX]).collect();
        for code in codes {
            if let Some(c) = Channel::from_code(code) {
                assert_eq!(Channel::new(&c.name()).code(), Some(code), "{code} is {c:?}");
            }
        }
        assert!(Channel::new("channel-99999999").code().is_some_and(|c| c < 1 << 30));
        assert!(Channel::from_wire(ChannelWire::Code(u32::MAX)).unwrap_err().contains("not a channel code"));
        assert!(Channel::from_wire(ChannelWire::Code(5)).is_err(), "5 would be channel-0 of two digits");
        let one = Channel::new("channel-1").code().unwrap();
        assert_eq!(Channel::from_wire(ChannelWire::Code(one)), Ok(Channel::new("channel-1")));
    }

    #[test]
    fn channels_order_compare_and_hash_as_their_names() {
        let mut names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
        // Numbered channels of every length, and prefixes of one another.
        for n in [0u32, 1, 5, 9, 10, 11, 19, 20, 99, 100, 101, 109, 110, 999, 1000, 12_345, 9_999_999, 10_000_000, 99_999_999, 100_000_000]
        {
            names.push(format!("channel-{n}"));
        }
        let hasher = RandomState::new();
        for a in &names {
            for b in &names {
                let (ca, cb) = (Channel::new(a), Channel::new(b));
                assert_eq!(ca.cmp(&cb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ca == cb, a == b, "{a:?} vs {b:?}");
                if a == b {
                    assert_eq!(hasher.hash_one(&ca), hasher.hash_one(&cb));
                }
            }
        }
        // Keys order by channel, then day, as with the names as strings.
        let k = |c: &str, d: &str| ChannelDay { channel: Channel::new(c), day: Day::parse(d).unwrap() };
        assert!(k("channel-10", "2026-03-02") < k("channel-2", "2026-03-01"));
        assert!(k("channel-1", "2026-03-02") < k("channel-10", "2026-03-01"));
        assert!(k("Google", "2026-03-02") < k("channel-0", "2026-03-01"));
    }
}
