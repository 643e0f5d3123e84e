//! q17: per auction and day, bids per price rank and the lowest, highest, average and total price.

use super::{price_rank, value_lane};
use crate::{AuctionBids, AuctionDay, Bid};
use lambdaflow_operators::{Ctx, Inserts};

/// Builds q17's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q17: per auction and day, the bids per price rank and the lowest, highest, average
    // and total price.
    let auction_bids = ctx.sum("q17_bids", bids.clone().into_coll(), |b: &Bid| {
        let mut s = AuctionBids { total_bids: 1, sum_price: i128::from(b.price), ..AuctionBids::record() };
        match price_rank(b.price) {
            1 => s.rank1_bids = 1,
            2 => s.rank2_bids = 1,
            _ => s.rank3_bids = 1,
        }
        Some((AuctionDay::of(b), s))
    });
    let prices = bids.map(|b| (AuctionDay::of(&b), b.price));
    let lowest = ctx.min("q17_min_price", prices.clone());
    let highest_price = ctx.max("q17_max_price", prices);
    let auction_stats = auction_bids
        .concat(value_lane(lowest, |p, d| AuctionBids { min_price: i128::from(p) * d, ..AuctionBids::default() }))
        .concat(value_lane(highest_price, |p, d| AuctionBids { max_price: i128::from(p) * d, ..AuctionBids::default() }));
    ctx.sum_view("q17_auction_statistics", auction_stats, AuctionBids::present);
}
