//! q8: persons who opened an auction in the 10-second window they registered in.

use super::{ms, Joined};
use crate::{Auction, Nexmark, Person, WINDOW_MS};
use lambdaflow_operators::serde_json::json;
use lambdaflow_operators::{Ctx, Inserts, ViewKey, Window};

/// Builds q8's view.
#[inline(never)]
pub(crate) fn build<'s>(job: &Nexmark, ctx: &mut Ctx<'s>, persons: Inserts<'s, Person>, auctions: Inserts<'s, Auction>) {
    // q8: persons who opened an auction in the 10-second window they registered in.
    let people = persons.map(|p| (p.id, (p.name, p.date_time)));
    let opened = auctions.map(|a| (a.seller, a.date_time));
    let same_window = |(_, registered): &(String, u64), opened: &u64| {
        Window::tumbling(ms(*registered), WINDOW_MS) == Window::tumbling(ms(*opened), WINDOW_MS)
    };
    let new_sellers = job.join(ctx, "q8_registrations", people, opened, same_window);
    let named = new_sellers.map(|(id, ((name, registered), _))| (id, (Window::tumbling(ms(registered), WINDOW_MS), name)));
    let once = match named {
        Joined::Bounded(named) => ctx.min("q8_new_sellers", named),
        Joined::Plain(named) => ctx.min("q8_new_sellers", named),
    };
    ctx.value_view("q8_new_sellers", once, |(window, name): &(Window, String)| json!({ "name": name, "window": window.to_json() }));
}
