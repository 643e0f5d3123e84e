//! q15: bidding statistics per day.

use super::{ms, price_rank};
use crate::{Bid, DayBids};
use lambdaflow_operators::differential_dataflow::AsCollection;
use lambdaflow_operators::timely::dataflow::operators::vec::Map as _;
use lambdaflow_operators::{Coll, Ctx, Day, Inserts, Sums};

/// Builds q15's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q15: bidding statistics per day: bids, and distinct bidders and auctions, in all
    // and per price rank (below $100, below $10 000, above).
    let day_bids = ctx.sum("q15_bids", bids.clone().into_coll(), |b: &Bid| {
        let mut s = DayBids { total_bids: 1, ..DayBids::record() };
        match price_rank(b.price) {
            1 => s.rank1_bids = 1,
            2 => s.rank2_bids = 1,
            _ => s.rank3_bids = 1,
        }
        Some((Day::of_ms(ms(b.date_time)), s))
    });
    let ranked = |b: Bid, item: u64| {
        let day = Day::of_ms(ms(b.date_time));
        [((day, 0u8), item), ((day, price_rank(b.price)), item)]
    };
    let bidders = ctx.distinct_count(
        "q15_bidders",
        bids.clone().into_coll().flat_map(move |b| {
            let who = b.bidder;
            ranked(b, who)
        }),
    );
    let auctions_per_day = ctx.distinct_count(
        "q15_auctions",
        bids.clone().into_coll().flat_map(move |b| {
            let what = b.auction;
            ranked(b, what)
        }),
    );
    let as_day_bids = |distinct: Coll<'s, (Day, u8), Sums<1>>, bidders: bool| {
        distinct
            .inner
            .map(move |((day, rank), t, n)| {
                let n = n.get(0);
                let mut s = DayBids::default();
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
                (day, t, s)
            })
            .as_collection()
    };
    let stats = day_bids.concat(as_day_bids(bidders, true)).concat(as_day_bids(auctions_per_day, false));
    ctx.sum_view("q15_bidding_statistics", stats, DayBids::to_json);
}
