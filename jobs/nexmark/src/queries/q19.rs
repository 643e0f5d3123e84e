//! q19: the 10 highest bids of each auction.

use crate::Bid;
use lambdaflow_operators::serde_json::{json, Value};
use lambdaflow_operators::{Ctx, Inserts};

/// How many bids of each auction q19 lists.
pub const Q19_TOP: usize = 10;

/// Builds q19's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q19: the 10 highest bids of each auction (ties: the earlier, then the smaller
    // bidder). A top-k over `Inserts`: the seed and the speed state hold 10 bids per
    // auction, not every bid.
    let ranked_bids = bids.map(|b| (b.auction, (b.date_time, b.bidder, b.price)));
    let top = ctx.top_k_items("q19_top_bids", ranked_bids, Q19_TOP, |(_, _, price): &(u64, u64, u64)| *price);
    ctx.value_view("q19_top_bids", top, |list: &Vec<((u64, u64, u64), u64)>| {
        Value::Array(
            list.iter()
                .map(|((date_time, bidder, price), _)| json!({ "price": price, "date_time": date_time, "bidder": bidder }))
                .collect(),
        )
    });
}
