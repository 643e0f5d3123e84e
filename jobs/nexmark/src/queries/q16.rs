//! q16: q15's statistics per channel and day, and the last minute with a bid.

use super::{price_rank, value_lane};
use crate::{Bid, ChannelBids, ChannelDay};
use lambdaflow_operators::differential_dataflow::AsCollection;
use lambdaflow_operators::timely::dataflow::operators::vec::Map as _;
use lambdaflow_operators::{Coll, Ctx, Inserts, Sums};

/// The minute of the UTC day of an event time (0 to 1439): q16's `HH:mm`.
pub fn minute_of_day(date_time: u64) -> u32 {
    ((date_time % 86_400_000) / 60_000) as u32
}

/// Builds q16's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q16: q15's statistics per channel and day, and the last minute of the day (UTC,
    // `HH:MM`) the channel had a bid in.
    let channel_bids = ctx.sum("q16_bids", bids.clone().into_coll(), |b: &Bid| {
        let mut s = ChannelBids { total_bids: 1, ..ChannelBids::record() };
        match price_rank(b.price) {
            1 => s.rank1_bids = 1,
            2 => s.rank2_bids = 1,
            _ => s.rank3_bids = 1,
        }
        Some((ChannelDay::of(b), s))
    });
    let channel_ranked = |b: Bid, item: u64| {
        let rank = price_rank(b.price);
        let key = ChannelDay::of(&b);
        [((key.clone(), 0u8), item), ((key, rank), item)]
    };
    let channel_bidders = ctx.distinct_count(
        "q16_bidders",
        bids.clone().into_coll().flat_map(move |b| {
            let who = b.bidder;
            channel_ranked(b, who)
        }),
    );
    let channel_auctions = ctx.distinct_count(
        "q16_auctions",
        bids.clone().into_coll().flat_map(move |b| {
            let what = b.auction;
            channel_ranked(b, what)
        }),
    );
    let as_channel_bids = |distinct: Coll<'s, (ChannelDay, u8), Sums<1>>, bidders: bool| {
        distinct
            .inner
            .map(move |((key, rank), t, n)| {
                let n = n.get(0);
                let mut s = ChannelBids::default();
                match (bidders, rank) {
                    (true, 0) => s.total_bidders = n,
                    (true, 1) => s.rank1_bidders = n,
                    (true, 2) => s.rank2_bidders = n,
                    (true, _) => s.rank3_bidders = n,
                    (false, 0) => s.total_auctions = n,
                    (false, 1) => s.rank1_auctions = n,
                    (false, 2) => s.rank2_auctions = n,
                    (false, _) => s.rank3_auctions = n,
                }
                (key, t, s)
            })
            .as_collection()
    };
    // The last minute is a value (one per key, insert-only input: one seed row per key),
    // folded into the sums as `minute × difference`: a change retracts the old minute
    // and adds the new one, so the lane always holds the current value.
    let last_minute = ctx.max("q16_last_minute", bids.map(|b| (ChannelDay::of(&b), minute_of_day(b.date_time))));
    let minute_lane = value_lane(last_minute, |minute, d| ChannelBids { minute: i128::from(minute) * d, ..ChannelBids::default() });
    let channel_stats =
        channel_bids.concat(as_channel_bids(channel_bidders, true)).concat(as_channel_bids(channel_auctions, false)).concat(minute_lane);
    ctx.sum_view("q16_channel_statistics", channel_stats, ChannelBids::present);
}
