//! Every Nexmark view computed naively from scratch, in plain Rust: the tests compare the
//! engine's merged answers with these. Written straight from the queries' definitions
//! (docs/nexmark.md), with the queries' constants written out here again (q3's states, q6's
//! last 10, q11's 10 s gap, q15's to q17's price ranks, q16's minutes) rather than taken from the job, so a wrong
//! definition in the job cannot pass unseen. It shares only the event, row and key types
//! and their JSON forms.

use crate::{
    AuctionBids, AuctionDay, AuctionRow, BidRow, BidderAuction, BidderSession, Channel, ChannelBids, ChannelDay, DayBids, NexmarkEvent,
    Q3_CATEGORY, SLIDE_MS, WINDOW_MS,
};
use lambdaflow_operators::serde_json::{json, Value};
use lambdaflow_operators::{Day, ViewKey, Window};
use std::collections::{BTreeMap, BTreeSet};

/// View name → key (compact JSON text) → value, as `lambdaflow_engine::testing` reads views.
pub type Views = BTreeMap<String, BTreeMap<String, Value>>;

/// The view names.
pub const VIEW_NAMES: [&str; 13] = [
    "q3_local_item_suggestion",
    "q4_avg_price_by_category",
    "q5_hot_items",
    "q6_avg_selling_price_by_seller",
    "q7_highest_bid",
    "q8_new_sellers",
    "q9_winning_bid",
    "q11_user_sessions",
    "q15_bidding_statistics",
    "q16_channel_statistics",
    "q17_auction_statistics",
    "q18_last_bid",
    "q19_top_bids",
];

fn key(k: &impl ViewKey) -> String {
    k.to_json().to_string()
}

/// All views over `events`.
pub fn views(events: &[NexmarkEvent]) -> Views {
    let mut persons = BTreeMap::new();
    let mut auctions = BTreeMap::new();
    let mut bids = Vec::new();
    for e in events {
        match e {
            NexmarkEvent::Person(p) => {
                persons.insert(p.id, p.clone());
            }
            NexmarkEvent::Auction(a) => {
                auctions.insert(a.id, a.clone());
            }
            NexmarkEvent::Bid(b) => bids.push(b.clone()),
        }
    }
    let mut out: Views = VIEW_NAMES.iter().map(|v| (v.to_string(), BTreeMap::new())).collect();

    // q3
    for a in auctions.values().filter(|a| a.category == Q3_CATEGORY) {
        if let Some(p) = persons.get(&a.seller).filter(|p| ["OR", "ID", "CA"].iter().any(|s| s.eq_ignore_ascii_case(&p.state))) {
            out.get_mut("q3_local_item_suggestion")
                .unwrap()
                .insert(key(&a.id), json!({ "seller": p.id, "name": p.name, "city": p.city, "state": p.state }));
        }
    }

    // q9: the best valid bid per auction.
    let mut winners: BTreeMap<u64, (AuctionRow, BidRow)> = BTreeMap::new();
    for b in &bids {
        let Some(a) = auctions.get(&b.auction) else { continue };
        let row = AuctionRow { date_time: a.date_time, expires: a.expires, reserve: a.reserve, seller: a.seller, category: a.category };
        let bid = BidRow { price: b.price, date_time: b.date_time, bidder: b.bidder };
        // Within the auction's [start, expiry], at least its reserve.
        if !(a.date_time <= b.date_time && b.date_time <= a.expires && b.price >= a.reserve) {
            continue;
        }
        let better = match winners.get(&a.id) {
            None => true,
            Some((_, w)) => bid.price > w.price || (bid.price == w.price && (bid.date_time, bid.bidder) < (w.date_time, w.bidder)),
        };
        if better {
            winners.insert(a.id, (row, bid));
        }
    }
    for (id, (_, b)) in &winners {
        out.get_mut("q9_winning_bid").unwrap().insert(key(id), json!({ "bidder": b.bidder, "price": b.price, "date_time": b.date_time }));
    }

    // q4
    let mut by_category: BTreeMap<u64, (i128, i128)> = BTreeMap::new();
    for (a, b) in winners.values() {
        let e = by_category.entry(a.category).or_default();
        e.0 += i128::from(b.price);
        e.1 += 1;
    }
    for (c, (total, n)) in by_category {
        out.get_mut("q4_avg_price_by_category")
            .unwrap()
            .insert(key(&c), json!({ "auctions": n, "total_price": total, "avg_price": total / n }));
    }

    // q6
    let mut by_seller: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for (id, (a, b)) in &winners {
        by_seller.entry(a.seller).or_default().push((a.expires, *id, b.price));
    }
    for (seller, mut sold) in by_seller {
        sold.sort();
        // The last 10 closed (by expiry, then id).
        let last: Vec<u64> = sold.iter().rev().take(10).map(|s| s.2).collect();
        let (total, n) = (last.iter().map(|&p| i128::from(p)).sum::<i128>(), last.len() as u64);
        out.get_mut("q6_avg_selling_price_by_seller")
            .unwrap()
            .insert(key(&seller), json!({ "avg_price": total / i128::from(n), "auctions": n }));
    }

    // q5
    let mut per_window: BTreeMap<Window, BTreeMap<u64, i128>> = BTreeMap::new();
    for b in &bids {
        for w in Window::sliding(b.date_time as i64, WINDOW_MS, SLIDE_MS) {
            *per_window.entry(w).or_default().entry(b.auction).or_default() += 1;
        }
    }
    for (w, counts) in per_window {
        let max = *counts.values().max().unwrap();
        let top: Vec<u64> = counts.iter().filter(|(_, n)| **n == max).map(|(a, _)| *a).collect();
        out.get_mut("q5_hot_items").unwrap().insert(key(&w), json!({ "bids": max, "auctions": top }));
    }

    // q7
    let mut highest: BTreeMap<Window, (u64, u64, u64, u64)> = BTreeMap::new();
    for b in &bids {
        let item = (b.auction, b.bidder, b.price, b.date_time);
        let e = highest.entry(Window::tumbling(b.date_time as i64, WINDOW_MS)).or_insert(item);
        if item.2 > e.2 || (item.2 == e.2 && item < *e) {
            *e = item;
        }
    }
    for (w, (auction, bidder, price, date_time)) in highest {
        out.get_mut("q7_highest_bid")
            .unwrap()
            .insert(key(&w), json!({ "auction": auction, "bidder": bidder, "price": price, "date_time": date_time }));
    }

    // q8
    for p in persons.values() {
        let window = Window::tumbling(p.date_time as i64, WINDOW_MS);
        if auctions.values().any(|a| a.seller == p.id && Window::tumbling(a.date_time as i64, WINDOW_MS) == window) {
            out.get_mut("q8_new_sellers").unwrap().insert(key(&p.id), json!({ "name": p.name, "window": window.to_json() }));
        }
    }

    // q11
    let mut times: BTreeMap<u64, BTreeMap<u64, i128>> = BTreeMap::new();
    for b in &bids {
        *times.entry(b.bidder).or_default().entry(b.date_time).or_default() += 1;
    }
    for (bidder, ts) in times {
        // A session ends when the next bid is 10 s or more after the last one.
        let mut runs: Vec<(u64, u64, i128)> = Vec::new();
        for (t, n) in ts {
            match runs.last_mut() {
                Some(r) if t - r.1 < 10_000 => {
                    r.1 = t;
                    r.2 += n;
                }
                _ => runs.push((t, t, n)),
            }
        }
        for (start, end, n) in runs {
            out.get_mut("q11_user_sessions").unwrap().insert(key(&BidderSession { bidder, start }), json!({ "end": end, "bids": n }));
        }
    }

    // q15
    let mut days: BTreeMap<Day, (DayBids, [BTreeSet<u64>; 4], [BTreeSet<u64>; 4])> = BTreeMap::new();
    for b in &bids {
        let rank = if b.price < 10_000 {
            1
        } else if b.price < 1_000_000 {
            2
        } else {
            3
        };
        let (s, bidders, auctions) = days.entry(Day::of_ms(b.date_time as i64)).or_default();
        s.total_bids += 1;
        s.records += 1;
        match rank {
            1 => s.rank1_bids += 1,
            2 => s.rank2_bids += 1,
            _ => s.rank3_bids += 1,
        }
        for r in [0, rank] {
            bidders[r].insert(b.bidder);
            auctions[r].insert(b.auction);
        }
    }
    for (day, (mut s, bidders, auctions)) in days {
        let n = |set: &BTreeSet<u64>| set.len() as i128;
        (s.total_bidders, s.rank1_bidders, s.rank2_bidders, s.rank3_bidders) =
            (n(&bidders[0]), n(&bidders[1]), n(&bidders[2]), n(&bidders[3]));
        (s.total_auctions, s.rank1_auctions, s.rank2_auctions, s.rank3_auctions) =
            (n(&auctions[0]), n(&auctions[1]), n(&auctions[2]), n(&auctions[3]));
        out.get_mut("q15_bidding_statistics").unwrap().insert(key(&day), s.to_json());
    }

    // q16: per (channel, day) as q15 per day, plus the latest HH:MM of the day with a bid.
    let mut channels: BTreeMap<(String, Day), (ChannelBids, [BTreeSet<u64>; 4], [BTreeSet<u64>; 4])> = BTreeMap::new();
    for b in &bids {
        let rank = if b.price < 10_000 {
            1
        } else if b.price < 1_000_000 {
            2
        } else {
            3
        };
        let day = Day::of_ms(b.date_time as i64);
        let (s, bidders, auctions) = channels.entry((b.channel.clone(), day)).or_default();
        s.total_bids += 1;
        s.records += 1;
        match rank {
            1 => s.rank1_bids += 1,
            2 => s.rank2_bids += 1,
            _ => s.rank3_bids += 1,
        }
        let ms_of_day = b.date_time as i64 - i64::from(day.0) * 86_400_000;
        s.minute = s.minute.max(i128::from(ms_of_day / 60_000));
        for r in [0, rank] {
            bidders[r].insert(b.bidder);
            auctions[r].insert(b.auction);
        }
    }
    for ((channel, day), (mut s, bidders, auctions)) in channels {
        let n = |set: &BTreeSet<u64>| set.len() as i128;
        (s.total_bidders, s.rank1_bidders, s.rank2_bidders, s.rank3_bidders) =
            (n(&bidders[0]), n(&bidders[1]), n(&bidders[2]), n(&bidders[3]));
        (s.total_auctions, s.rank1_auctions, s.rank2_auctions, s.rank3_auctions) =
            (n(&auctions[0]), n(&auctions[1]), n(&auctions[2]), n(&auctions[3]));
        let mut shown = s.to_json();
        shown["minute"] = json!(format!("{:02}:{:02}", s.minute / 60, s.minute % 60));
        out.get_mut("q16_channel_statistics").unwrap().insert(key(&ChannelDay { channel: Channel::new(&channel), day }), shown);
    }

    // q17: per (auction, day): bids per rank, min, max, sum and average price.
    let mut per_auction_day: BTreeMap<(u64, Day), Vec<u64>> = BTreeMap::new();
    for b in &bids {
        per_auction_day.entry((b.auction, Day::of_ms(b.date_time as i64))).or_default().push(b.price);
    }
    for ((auction, day), prices) in per_auction_day {
        let s = AuctionBids {
            total_bids: prices.len() as i128,
            rank1_bids: prices.iter().filter(|p| **p < 10_000).count() as i128,
            rank2_bids: prices.iter().filter(|p| (10_000..1_000_000).contains(*p)).count() as i128,
            rank3_bids: prices.iter().filter(|p| **p >= 1_000_000).count() as i128,
            min_price: i128::from(*prices.iter().min().unwrap()),
            max_price: i128::from(*prices.iter().max().unwrap()),
            sum_price: prices.iter().map(|p| i128::from(*p)).sum(),
            records: prices.len() as i128,
        };
        let mut shown = s.to_json();
        shown["avg_price"] = json!((s.sum_price / s.total_bids) as u64);
        out.get_mut("q17_auction_statistics").unwrap().insert(key(&AuctionDay { auction, day }), shown);
    }

    // q18
    let mut last: BTreeMap<BidderAuction, (u64, u64, String)> = BTreeMap::new();
    for b in &bids {
        let item = (b.date_time, b.price, b.channel.clone());
        let e = last.entry(BidderAuction { bidder: b.bidder, auction: b.auction }).or_insert(item.clone());
        if item.0 > e.0 || (item.0 == e.0 && item < *e) {
            *e = item;
        }
    }
    for (k, (date_time, price, channel)) in last {
        out.get_mut("q18_last_bid").unwrap().insert(key(&k), json!({ "date_time": date_time, "price": price, "channel": channel }));
    }

    // q19
    let mut per_auction: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for b in &bids {
        per_auction.entry(b.auction).or_default().push((b.price, b.date_time, b.bidder));
    }
    for (auction, mut list) in per_auction {
        // Distinct bids (an identical bid twice is one), highest price first, then the
        // earliest, then the smaller bidder.
        list.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        list.dedup();
        list.truncate(10);
        let shown: Vec<Value> =
            list.iter().map(|(price, date_time, bidder)| json!({ "price": price, "date_time": date_time, "bidder": bidder })).collect();
        out.get_mut("q19_top_bids").unwrap().insert(key(&auction), Value::Array(shown));
    }
    out
}
