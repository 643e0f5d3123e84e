//! q6: per seller, the average winning price of their last 10 auctions (over q9's winners).

use crate::{AuctionRow, BidRow};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Coll, Ctx};

/// How many of a seller's last auctions q6 averages.
pub const Q6_LAST: usize = 10;

/// q6: the sum and number of the last [`Q6_LAST`] prices of `(expires, auction, price)`
/// rows in ascending order, each with its multiplicity.
pub fn last_prices(sold: impl DoubleEndedIterator<Item = ((u64, u64, u64), isize)>) -> (i128, u64) {
    let (mut total, mut n) = (0i128, 0u64);
    for ((_, _, price), count) in sold.rev() {
        for _ in 0..count.max(0) {
            if n as usize == Q6_LAST {
                return (total, n);
            }
            total += i128::from(price);
            n += 1;
        }
    }
    (total, n)
}

/// Builds q6's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, winners: Coll<'s, (u64, (AuctionRow, BidRow))>) {
    // q6: per seller, the average winning price of their last 10 auctions (by expiry)
    // that have a winning bid.
    let by_seller = winners.map(|(id, (a, b))| (a.seller, (a.expires, id, b.price)));
    let last = ctx.reduce("q6_avg_selling_price_by_seller", by_seller, |_seller, sold: &[(&(u64, u64, u64), isize)], out| {
        let (total, n) = last_prices(sold.iter().map(|(s, c)| (**s, *c)));
        if n > 0 {
            out.push(((total / i128::from(n), n), 1));
        }
    });
    ctx.value_view("q6_avg_selling_price_by_seller", last, |(avg, n): &(i128, u64)| json!({ "avg_price": avg, "auctions": n }));
}
