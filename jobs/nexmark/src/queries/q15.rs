//! q15: bidding statistics per day.

use super::{ms, rank_statistics, unpacked, RankedBid};
use crate::{Bid, DayBids};
use lambdaflow_operators::{Ctx, Day, Inserts};

/// Builds q15's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q15: bidding statistics per day: bids, and distinct bidders and auctions, in all
    // and per price rank (below $100, below $10 000, above).
    let ranked = bids.map(|b| RankedBid::of(Day::of_ms(ms(b.date_time)), &b));
    let stats = rank_statistics::<Day, DayBids>(ctx, "q15", ranked);
    ctx.sum_view("q15_bidding_statistics", unpacked(stats), DayBids::to_json);
}
