//! q16: q15's statistics per channel and day, and the last minute with a bid.

use super::{rank_statistics, unpacked, value_lane, RankedBid};
use crate::{Bid, ChannelBids, ChannelDay};
use lambdaflow_operators::{Ctx, Inserts};

/// The minute of the UTC day of an event time (0 to 1439): q16's `HH:mm`.
pub fn minute_of_day(date_time: u64) -> u32 {
    ((date_time % 86_400_000) / 60_000) as u32
}

/// Builds q16's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q16: q15's statistics per channel and day, and the last minute of the day (UTC,
    // `HH:MM`) the channel had a bid in. The generator's channels have a `u32` code
    // (`Channel`): their keys are held packed in a `u64`, and their distinct counts run
    // over packed `(u64, u64)` pairs.
    let ranked = bids.map(|b| RankedBid::of(ChannelDay::of(&b), &b));
    let stats = rank_statistics::<ChannelDay, ChannelBids>(ctx, "q16", ranked.clone());
    // The last minute is a value (one per key, insert-only input: one seed row per key),
    // folded into the sums as `minute × difference`: a change retracts the old minute
    // and adds the new one, so the lane always holds the current value.
    let last_minute = ctx.max("q16_last_minute", ranked.map(|b| (b.key, minute_of_day(b.date_time))));
    let minute_lane = value_lane(last_minute, |minute, d| ChannelBids { minute: i128::from(minute) * d, ..ChannelBids::default() });
    ctx.sum_view("q16_channel_statistics", unpacked(stats.concat(minute_lane)), ChannelBids::present);
}
