//! The queries, one module each: `Nexmark::build` calls each query's `build`, a
//! non-generic function that is never inlined, so an edit to one query recompiles that
//! query's module (and the generic operator code it instantiates), not the others nor the
//! binary. What several queries share is here.

use crate::Nexmark;
use crate::{Bid, ChannelBids, ChannelDay, DayBids};
use lambdaflow_operators::differential_dataflow::difference::Multiply;
use lambdaflow_operators::differential_dataflow::AsCollection;
use lambdaflow_operators::timely::dataflow::operators::vec::Map as _;
use lambdaflow_operators::{Coll, Ctx, Data, Day, Inserts, Sums};
use serde::{Deserialize, Serialize};

pub(crate) mod q11;
pub(crate) mod q15;
pub(crate) mod q16;
pub(crate) mod q17;
pub(crate) mod q18;
pub(crate) mod q19;
pub(crate) mod q3;
pub(crate) mod q4;
pub(crate) mod q5;
pub(crate) mod q6;
pub(crate) mod q7;
pub(crate) mod q8;
pub(crate) mod q9;

/// An event time as the `i64` windows take (bounded by the parser).
pub(crate) fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// q15's price rank of a bid: 1 below 10 000 cents, 2 below 1 000 000, 3 from there.
pub fn price_rank(price: u64) -> u8 {
    match price {
        0..=9_999 => 1,
        10_000..=999_999 => 2,
        _ => 3,
    }
}

/// A key of q15's and q16's statistics that packs into 61 bits (most or all of its values),
/// so that their distinct counts run over `(u64, u64)` pairs: 16 bytes, no allocation, two
/// words to hash and compare, whatever the key holds.
pub(crate) trait RankKey: Data {
    /// Whether every key packs (then no operator for the others is built).
    const ALWAYS_PACKS: bool;
    /// The key in the low 61 bits, or `None` if it does not pack. A function of the key
    /// alone (never of what else was seen), so equal keys pack equally everywhere.
    fn pack(&self) -> Option<u64>;
    /// The key `pack` gave `bits` for.
    fn unpack(bits: u64) -> Self;
}

impl RankKey for Day {
    const ALWAYS_PACKS: bool = true;

    fn pack(&self) -> Option<u64> {
        Some(u64::from(self.0 as u32))
    }

    fn unpack(bits: u64) -> Self {
        Day(bits as u32 as i32)
    }
}

/// Days from 1970-01-01 below 2³¹ (every day of a bid: its time is unsigned).
const CHANNEL_DAY_BITS: u32 = 31;

impl RankKey for ChannelDay {
    const ALWAYS_PACKS: bool = false;

    /// The channel's code (below 2³⁰) above the day (from 0, 31 bits); `None` for a
    /// channel without a code or a day before 1970.
    fn pack(&self) -> Option<u64> {
        let code = self.channel.code()?;
        let day = u32::try_from(self.day.0).ok()?;
        debug_assert!(code < 1 << 30);
        Some(u64::from(code) << CHANNEL_DAY_BITS | u64::from(day))
    }

    fn unpack(bits: u64) -> Self {
        let code = u32::try_from(bits >> CHANNEL_DAY_BITS).expect("a packed code");
        let channel = crate::Channel::from_code(code).expect("a packed code");
        ChannelDay { channel, day: Day((bits & ((1 << CHANNEL_DAY_BITS) - 1)) as i32) }
    }
}

/// q15's numbers (bids, distinct bidders and distinct auctions, in all and per price rank)
/// as lanes of an aggregate: q15's [`DayBids`] and q16's [`ChannelBids`].
pub(crate) trait RankStats: lambdaflow_operators::Diff + Multiply<isize, Output = Self> {
    /// One bid of price rank `rank` (1 to 3).
    fn bid(rank: u8) -> Self;
    /// `n` distinct items in `lane`: [`BIDDERS`] or [`AUCTIONS`], plus the rank (0: all).
    fn distinct(lane: u8, n: i128) -> Self;
}

/// The distinct-count lane of bidders (plus the rank, 0 for all).
pub(crate) const BIDDERS: u8 = 0;
/// The distinct-count lane of auctions (plus the rank, 0 for all).
pub(crate) const AUCTIONS: u8 = 4;

macro_rules! rank_stats {
    ($t:ty) => {
        impl RankStats for $t {
            fn bid(rank: u8) -> Self {
                let mut s = <$t>::record();
                s.total_bids = 1;
                match rank {
                    1 => s.rank1_bids = 1,
                    2 => s.rank2_bids = 1,
                    _ => s.rank3_bids = 1,
                }
                s
            }

            fn distinct(lane: u8, n: i128) -> Self {
                let mut s = <$t>::default();
                match lane {
                    0 => s.total_bidders = n,
                    1 => s.rank1_bidders = n,
                    2 => s.rank2_bidders = n,
                    3 => s.rank3_bidders = n,
                    4 => s.total_auctions = n,
                    5 => s.rank1_auctions = n,
                    6 => s.rank2_auctions = n,
                    _ => s.rank3_auctions = n,
                }
                s
            }
        }
    };
}

rank_stats!(DayBids);
rank_stats!(ChannelBids);

/// A packed key or `(key, lane)` group: compares as its bits, and hashes them mixed. The
/// operators' hash (FxHash) multiplies, so keys that differ only in high bits (a channel's
/// code above the day) would share their low hash bits, which hash tables index by: every
/// channel of a day in one bucket chain. The murmur3 finalizer, a bijection, spreads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Bits(pub(crate) u64);

impl Bits {
    /// The bits mixed: the murmur3 finalizer.
    fn mixed(self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

impl std::hash::Hash for Bits {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.mixed());
    }
}

/// A key as the operators of q15 and q16 hold it: packed into a `u64` when it packs (an
/// integer to hash, compare and sort, no allocation), the key itself otherwise. A function
/// of the key alone, so a key is held the same way in every run, mode and process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Packed<K> {
    /// [`RankKey::pack`] of the key.
    Bits(Bits),
    /// A key that does not pack.
    Key(K),
}

impl<K: RankKey> Packed<K> {
    /// `key` as held.
    pub(crate) fn of(key: K) -> Self {
        match key.pack() {
            Some(bits) => Packed::Bits(Bits(bits)),
            None => Packed::Key(key),
        }
    }

    /// The key.
    pub(crate) fn key(self) -> K {
        match self {
            Packed::Bits(Bits(bits)) => K::unpack(bits),
            Packed::Key(key) => key,
        }
    }
}

/// What q15's statistics take of a bid: its key, price rank, bidder, auction and time (for
/// q16's minute). Taken once per bid, so the operators after it copy this, not the bid
/// and its strings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct RankedBid<K> {
    pub(crate) key: Packed<K>,
    pub(crate) rank: u8,
    pub(crate) bidder: u64,
    pub(crate) auction: u64,
    pub(crate) date_time: u64,
}

impl<K: RankKey> RankedBid<K> {
    pub(crate) fn of(key: K, b: &Bid) -> Self {
        RankedBid { key: Packed::of(key), rank: price_rank(b.price), bidder: b.bidder, auction: b.auction, date_time: b.date_time }
    }

    /// The bid's four distinct-count items: its bidder and its auction ([`BIDDERS`],
    /// [`AUCTIONS`]), each under rank 0 (all) and under its rank.
    fn lanes(&self) -> [(u8, u64); 4] {
        [(BIDDERS, self.bidder), (BIDDERS + self.rank, self.bidder), (AUCTIONS, self.auction), (AUCTIONS + self.rank, self.auction)]
    }
}

/// q15's statistics per key (q15: the day; q16: the channel and day), keyed as held
/// ([`Packed::key`] gives the key): a `sum` of the bids per rank (`{query}_bids`) and the
/// distinct bidders and auctions, in all and per rank. The eight distinct counts are one
/// `distinct_count` (`{query}_distinct`) over `(packed key, lane)` groups: four pairs a
/// bid, 16 bytes each. Bids whose key does not pack (a channel not of the generator's
/// forms) go through a second one (`{query}_distinct_other`) over the key itself; the two
/// never share a key, so concatenated they are exact.
#[inline]
pub(crate) fn rank_statistics<'s, K: RankKey, S: RankStats>(
    ctx: &mut Ctx<'s>,
    query: &str,
    bids: Inserts<'s, RankedBid<K>>,
) -> Coll<'s, Packed<K>, S> {
    let bid_sums = ctx.sum(&format!("{query}_bids"), bids.clone().into_coll(), |b: &RankedBid<K>| Some((b.key.clone(), S::bid(b.rank))));
    let packed = ctx.distinct_count(
        &format!("{query}_distinct"),
        bids.clone().into_coll().flat_map(|b| match b.key {
            Packed::Bits(Bits(k)) => Some(b.lanes().map(|(lane, item)| (Bits(k << 3 | u64::from(lane)), item))).into_iter().flatten(),
            Packed::Key(_) => None.into_iter().flatten(),
        }),
    );
    let mut stats = bid_sums.concat(distinct_lanes(packed, |Bits(group)| (Packed::Bits(Bits(group >> 3)), (group & 7) as u8)));
    if !K::ALWAYS_PACKS {
        let other = ctx.distinct_count(
            &format!("{query}_distinct_other"),
            bids.into_coll().flat_map(|b| {
                let lanes = b.lanes();
                match b.key {
                    Packed::Key(k) => Some(lanes.map(|(lane, item)| ((k.clone(), lane), item))).into_iter().flatten(),
                    Packed::Bits(_) => None.into_iter().flatten(),
                }
            }),
        );
        stats = stats.concat(distinct_lanes(other, |(key, lane)| (Packed::Key(key), lane)));
    }
    stats
}

/// `stats` keyed by the keys themselves (for the view): one map per aggregated record.
pub(crate) fn unpacked<'s, K: RankKey, S: lambdaflow_operators::Diff>(stats: Coll<'s, Packed<K>, S>) -> Coll<'s, K, S> {
    stats.inner.map(|(key, t, s)| (key.key(), t, s)).as_collection()
}

/// A distinct count per `(key, lane)` group as the lane of the statistics.
fn distinct_lanes<'s, G: Data, K: Data, S: RankStats>(
    distinct: Coll<'s, G, Sums<1>>,
    split: impl Fn(G) -> (K, u8) + 'static,
) -> Coll<'s, K, S> {
    distinct
        .inner
        .map(move |(group, t, n)| {
            let (key, lane) = split(group);
            (key, t, S::distinct(lane, n.get(0)))
        })
        .as_collection()
}

/// A value collection (one `(key, value)` per key) as a sum: `lane(value, difference)`
/// per update, so the key's sum holds the lane of its current value (q16's minute, q17's
/// min and max folded into one sum view with the counts).
#[inline]
pub(crate) fn value_lane<'s, K: Data, V: Data, A: lambdaflow_operators::Diff>(
    values: Coll<'s, (K, V)>,
    lane: impl Fn(V, i128) -> A + 'static,
) -> Coll<'s, K, A> {
    values.inner.map(move |((k, v), t, d)| (k, t, lane(v, d as i128))).as_collection()
}

/// The result of a join in either form: bounded (the interval join) or plain (join, then
/// filter), so the queries after it are written once.
pub(crate) enum Joined<'s, D: Data> {
    Bounded(Inserts<'s, D>),
    Plain(Coll<'s, D>),
}

impl<'s, D: Data> Joined<'s, D> {
    #[inline]
    pub(crate) fn map<D2: Data>(self, f: impl Fn(D) -> D2 + 'static) -> Joined<'s, D2> {
        match self {
            Joined::Bounded(i) => Joined::Bounded(i.map(f)),
            Joined::Plain(c) => Joined::Plain(c.map(f)),
        }
    }

    #[inline]
    pub(crate) fn into_coll(self) -> Coll<'s, D> {
        match self {
            Joined::Bounded(i) => i.into_coll(),
            Joined::Plain(c) => c,
        }
    }
}

impl Nexmark {
    /// Joins `facts` to `dims` in the form the job is set to: the interval join, or `ctx.join`
    /// and a filter.
    #[inline]
    pub(crate) fn join<'s, K, D, F>(
        &self,
        ctx: &mut Ctx<'s>,
        name: &str,
        dims: Inserts<'s, (K, D)>,
        facts: Inserts<'s, (K, F)>,
        band: impl Fn(&D, &F) -> bool + 'static,
    ) -> Joined<'s, (K, (D, F))>
    where
        K: Data,
        D: Data,
        F: Data,
    {
        if self.plain_join {
            Joined::Plain(ctx.join(name, dims.into_coll(), facts.into_coll()).filter(move |(_, (d, f))| band(d, f)))
        } else {
            Joined::Bounded(ctx.interval_join(name, dims, facts, band))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Channel;

    // A packed key unpacks to itself and leaves the lane's 3 bits free; a key that cannot
    // pack says so (it then takes the other operator), so no two keys share a group.
    #[test]
    fn keys_pack_and_unpack_exactly() {
        let channels = ["Apple", "Google", "channel-0", "channel-9999", "channel-99999999", "channel-007", "channel-999999999", ""];
        let mut groups = std::collections::BTreeMap::new();
        for name in channels {
            for day in [i32::MIN, -1, 0, 1, 20_513, i32::MAX] {
                let key = ChannelDay { channel: Channel::new(name), day: Day(day) };
                match key.pack() {
                    Some(bits) => {
                        assert!(bits < 1 << 61, "{key:?}: {bits:#x}");
                        assert_eq!(ChannelDay::unpack(bits), key);
                        assert_eq!(groups.insert(bits, key.clone()), None, "{key:?}");
                    }
                    None => assert!(key.channel.code().is_none() || day < 0, "{key:?} should pack"),
                }
                let day = Day(day);
                assert_eq!(Day::unpack(day.pack().unwrap()), day);
                assert!(day.pack().unwrap() < 1 << 61);
            }
        }
        assert_eq!(groups.len(), 5 * 4, "the coded channels on the days from 1970");
    }

    // The generator's channels on one day differ only in the high bits of their packed
    // key; what they hash is spread into the low bits, which hash tables index by (a
    // multiplying hash keeps equal low bits equal: every key in one bucket chain).
    #[test]
    fn packed_keys_hash_spread_in_the_low_bits() {
        let day = Day::parse("2026-03-01").unwrap();
        let keys: Vec<Bits> = ["Apple", "Baidu", "Facebook", "Google"]
            .into_iter()
            .map(str::to_string)
            .chain((0..10_000).map(|n| format!("channel-{n}")))
            .map(|name| Bits(ChannelDay { channel: Channel::new(&name), day }.pack().unwrap()))
            .collect();
        let low = |f: &dyn Fn(Bits) -> u64| keys.iter().map(|k| f(*k) & 0xffff).collect::<std::collections::BTreeSet<u64>>().len();
        assert!(low(&|k| k.0) < 100, "the packed bits alone share their low bits (what this guards against)");
        assert!(low(&|k| k.mixed()) > 8_500, "{} distinct low 16 bits of 10 004 keys", low(&|k| k.mixed()));
    }
}
