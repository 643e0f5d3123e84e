//! q7: the highest bid of each 10-second window.

use super::ms;
use crate::{Bid, WINDOW_MS};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Ctx, Inserts, Window};

/// Builds q7's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q7: the highest bid of each 10-second window (ties: the smaller auction, bidder).
    let windowed = bids.map(|b| (Window::tumbling(ms(b.date_time), WINDOW_MS), (b.auction, b.bidder, b.price, b.date_time)));
    let highest = ctx.arg_max("q7_highest_bid", windowed, |(_, _, price, _): &(u64, u64, u64, u64)| *price);
    ctx.value_view("q7_highest_bid", highest, |(auction, bidder, price, date_time): &(u64, u64, u64, u64)| {
    json!({ "auction": auction, "bidder": bidder, "price": price, "date_time": date_time })
});
}
