//! q18: each bidder's last bid on each auction.

use crate::{Bid, BidderAuction};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Ctx, Inserts};

/// Builds q18's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q18: each bidder's last bid on each auction (ties: the lower price, then channel).
    let latest = ctx.arg_max(
        "q18_last_bid",
        bids.map(|b| (BidderAuction { bidder: b.bidder, auction: b.auction }, (b.date_time, b.price, b.channel))),
        |(t, _, _): &(u64, u64, String)| *t,
    );
    ctx.value_view(
        "q18_last_bid",
        latest,
        |(date_time, price, channel): &(u64, u64, String)| json!({ "date_time": date_time, "price": price, "channel": channel }),
    );
}
