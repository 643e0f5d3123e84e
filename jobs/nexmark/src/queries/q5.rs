//! q5: per sliding window (10 s, every 2 s), the auctions with the most bids.

use super::ms;
use crate::{Bid, SLIDE_MS, WINDOW_MS};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Ctx, Inserts, Sums, Window};

/// Builds q5's view.
#[inline(never)]
pub(crate) fn build<'s>(ctx: &mut Ctx<'s>, bids: Inserts<'s, Bid>) {
    // q5: per sliding window (10 s, every 2 s), the auctions with the most bids.
    let per_window = bids.flat_map(|b| {
        let auction = b.auction;
        Window::sliding(ms(b.date_time), WINDOW_MS, SLIDE_MS).map(move |w| (w, auction))
    });
    let counts = ctx.count("q5_bids_per_window", per_window.into_coll(), |wa: &(Window, u64)| Some(*wa));
    let hot = ctx.reduce("q5_hot_items", counts, |_w, auctions: &[(&u64, Sums<1>)], out| {
        if let Some(max) = auctions.iter().map(|(_, n)| n.get(0)).max() {
            let top: Vec<u64> = auctions.iter().filter(|(_, n)| n.get(0) == max).map(|(a, _)| **a).collect();
            out.push(((max, top), 1));
        }
    });
    ctx.value_view("q5_hot_items", hot, |(bids, auctions): &(i128, Vec<u64>)| json!({ "bids": bids, "auctions": auctions }));
}
