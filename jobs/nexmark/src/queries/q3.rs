//! q3: auctions of category 10 by sellers in Oregon, Idaho or California.

use crate::{Auction, Nexmark, Person};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Ctx, Inserts};

/// The category q3 looks at.
pub const Q3_CATEGORY: u64 = 10;
/// The states q3 looks at (the generator writes them in lower case; compared ignoring case).
pub const Q3_STATES: [&str; 3] = ["OR", "ID", "CA"];

/// Whether q3 counts a seller from `state`. Never inlined: the join's closure only calls it,
/// so an edit here (or to [`Q3_STATES`]) recompiles this module alone, not the operator code
/// the closure is compiled into (docs/build-times.md).
#[inline(never)]
pub fn is_local(state: &str) -> bool {
    Q3_STATES.iter().any(|s| s.eq_ignore_ascii_case(state))
}

/// Builds q3's view.
#[inline(never)]
pub(crate) fn build<'s>(job: &Nexmark, ctx: &mut Ctx<'s>, persons: Inserts<'s, Person>, auctions: Inserts<'s, Auction>) {
    // q3: auctions of category 10 by sellers in Oregon, Idaho or California. Persons are
    // the dimension (one per id); an auction waits only until its seller is known.
    let sellers = persons.map(|p| (p.id, (p.name, p.city, p.state)));
    let category = auctions.filter(|a| a.category == Q3_CATEGORY).map(|a| (a.seller, a.id));
    let local = job.join(ctx, "q3_sellers", sellers, category, |(_, _, state), _| is_local(state));
    let by_auction = local.map(|(seller, ((name, city, state), auction))| (auction, (seller, name, city, state)));
    ctx.value_view("q3_local_item_suggestion", by_auction.into_coll(), |(seller, name, city, state): &(u64, String, String, String)| {
    json!({ "seller": seller, "name": name, "city": city, "state": state })
});
}
