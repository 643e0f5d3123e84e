//! q4: the average winning price per category (over q9's winners).

use crate::{AuctionRow, BidRow, Closing};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Coll, Ctx};

/// Builds q4's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, winners: Coll<'s, (u64, (AuctionRow, BidRow))>) {
    // q4: the average winning price per category.
    let closing = ctx.sum("q4_avg_price_by_category", winners, |(_, (a, b)): &(u64, (AuctionRow, BidRow))| {
        Some((a.category, Closing { price: i128::from(b.price), ..Closing::record() }))
    });
    ctx.sum_view(
        "q4_avg_price_by_category",
        closing,
        |c: &Closing| json!({ "auctions": c.records, "total_price": c.price, "avg_price": c.price.checked_div(c.records).unwrap_or(0) }),
    );
}
