//! q11: bids per bidder session (a session ends after 10 s without a bid).

use crate::{Bid, BidderSession};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Ctx, Inserts, Sums};

/// The gap that ends a bidder's session in q11: 10 s without a bid.
pub const SESSION_GAP_MS: u64 = 10_000;

/// q11: `(start, end, bids)` of each session in `times` (ascending bid times with their
/// numbers of bids): bids less than [`SESSION_GAP_MS`] apart share a session.
pub fn sessions(times: impl Iterator<Item = (u64, i128)>) -> Vec<(u64, u64, i128)> {
    let mut out: Vec<(u64, u64, i128)> = Vec::new();
    for (t, n) in times {
        if n <= 0 {
            continue;
        }
        match out.last_mut() {
            Some((_, end, bids)) if t - *end < SESSION_GAP_MS => {
                *end = t;
                *bids += n;
            }
            _ => out.push((t, t, n)),
        }
    }
    out
}

/// Builds q11's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q11: bids per bidder session (a session ends after 10 s without a bid).
    let times = ctx.count("q11_bids_by_bidder_time", bids.into_coll(), |b: &Bid| Some((b.bidder, b.date_time)));
    let sessions = ctx.reduce("q11_user_sessions", times, |_bidder, times: &[(&u64, Sums<1>)], out| {
        for s in sessions(times.iter().map(|(t, n)| (**t, n.get(0)))) {
            out.push((s, 1));
        }
    });
    let keyed = sessions.map(|(bidder, (start, end, n))| (BidderSession { bidder, start }, (end, n)));
    ctx.value_view("q11_user_sessions", keyed, |(end, n): &(u64, i128)| json!({ "end": end, "bids": n }));
}
