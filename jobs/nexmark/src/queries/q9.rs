//! q9: each auction's winning bid; q4 and q6 start from its winners.

use super::Joined;
use crate::{Auction, AuctionRow, Bid, BidRow, Nexmark};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Coll, Ctx, Inserts};
use std::cmp::Reverse;

/// Whether `bid` counts for `auction` (q4, q6, q9): made while the auction was open, at or
/// above its reserve.
pub fn valid_bid(auction: &AuctionRow, bid: &BidRow) -> bool {
    auction.date_time <= bid.date_time && bid.date_time <= auction.expires && bid.price >= auction.reserve
}

/// The order of bids in q9: the highest price wins; among equal prices the earliest bid,
/// then (the DSL's tie-break) the smaller bid row, i.e. the smaller bidder.
pub fn bid_score(bid: &BidRow) -> (u64, Reverse<u64>) {
    (bid.price, Reverse(bid.date_time))
}

/// The winning bid of each auction, with the auction: q9's view and the input of q4 and q6.
#[inline(never)]
pub(crate) fn winners<'s>(
    job: &Nexmark,
    ctx: &mut Ctx<'s>,
    auctions: Inserts<'s, Auction>,
    bids: Inserts<'s, Bid>,
) -> Coll<'s, (u64, (AuctionRow, BidRow))> {
    // q9: each auction's winning bid: the highest valid bid (made while the auction was
    // open, at or above the reserve), the earliest among equal prices.
    let auction_rows = auctions.map(|a| {
        (a.id, AuctionRow { date_time: a.date_time, expires: a.expires, reserve: a.reserve, seller: a.seller, category: a.category })
    });
    let bid_rows = bids.map(|b| (b.auction, BidRow { price: b.price, date_time: b.date_time, bidder: b.bidder }));
    let valid = job.join(ctx, "q9_auction_bids", auction_rows, bid_rows, valid_bid);
    // `Input` is sealed (only the DSL decides what is insert-only): each form is passed
    // as what it is.
    let winning = |(_, bid): &(AuctionRow, BidRow)| bid_score(bid);
    match valid {
        Joined::Bounded(valid) => ctx.arg_max("q9_winning_bid", valid, winning),
        Joined::Plain(valid) => ctx.arg_max("q9_winning_bid", valid, winning),
    }
}

/// Builds q9's view over the winners.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, winners: Coll<'s, (u64, (AuctionRow, BidRow))>) {
    let shown = winners.map(|(id, (_, b))| (id, (b.bidder, b.price, b.date_time)));
    ctx.value_view(
        "q9_winning_bid",
        shown,
        |(bidder, price, date_time): &(u64, u64, u64)| json!({ "bidder": bidder, "price": price, "date_time": date_time }),
    );
}
