//! Time-stamped NDJSON events for partitioned output: `GET /api/events`, served by the fixture
//! API, and the per-day counts a test compares the output with.
//!
//! | route | body |
//! |---|---|
//! | `GET /api/events?size=N&days=D&order=sorted\|interleaved[&seed=S][&cut_at=M]` | NDJSON events, at least N bytes; `sorted`: day by day, one event in twenty up to three days late; `interleaved`: every event on a random day of D; `cut_at`: the connection is reset after M bytes |
//!
//! Each event is `{"id":I,"created_at":"<RFC 3339>","kind":"…","value":F,"note":"…"}`, about
//! 190 bytes; days start at 2026-01-01.

use std::collections::BTreeMap;
use std::io;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;

/// About how many bytes an event takes (for the events-per-day of sorted order).
pub const EVENT_BYTES: u64 = 190;
const CHUNK: usize = 64 * 1024;

/// How events are ordered in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Day by day, with late events.
    Sorted,
    /// Every event on a random day.
    Interleaved,
}

/// The query of `/api/events`.
#[derive(Debug, Clone, Deserialize)]
pub struct EventsQuery {
    /// At least this many bytes.
    pub size: u64,
    /// Days the events spread over.
    pub days: u32,
    /// Sorted or interleaved.
    pub order: Order,
    /// Seed of the random choices.
    #[serde(default)]
    pub seed: u64,
    /// Reset the connection after this many bytes.
    pub cut_at: Option<u64>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The day (from 0) of event `i`.
pub fn event_day(q: &EventsQuery, i: u64) -> u32 {
    let h = mix(q.seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    match q.order {
        Order::Interleaved => (h % u64::from(q.days)) as u32,
        Order::Sorted => {
            let per_day = (q.size / EVENT_BYTES / u64::from(q.days)).max(1);
            let day = ((i / per_day) as u32).min(q.days - 1);
            if h % 20 == 0 {
                day.saturating_sub(1 + (h >> 8) as u32 % 3)
            } else {
                day
            }
        }
    }
}

/// The date of day `d`, `YYYY-MM-DD`.
pub fn date_of(d: u32) -> String {
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date");
    (start + chrono::Days::new(u64::from(d)))
        .format("%Y-%m-%d")
        .to_string()
}

/// Event `i` as its NDJSON line (with `\n`).
pub fn event_line(q: &EventsQuery, i: u64) -> String {
    let day = event_day(q, i);
    let h = mix(i ^ 0x5555);
    let secs = h % 86_400;
    let kinds = ["click", "view", "purchase", "refund", "signup"];
    format!(
        "{{\"id\":{i},\"created_at\":\"{}T{:02}:{:02}:{:02}Z\",\"kind\":\"{}\",\"value\":{}.{:02},\"note\":\"event {i:012} of the partitioned-output fixture, padded to a realistic width\"}}\n",
        date_of(day),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        kinds[(h >> 20) as usize % kinds.len()],
        (h >> 32) % 10_000,
        (h >> 48) % 100
    )
}

/// The events of `q`, in 64 KiB chunks, generated as they are sent.
pub fn events_stream(q: EventsQuery) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::unfold((0u64, 0u64, false), move |(mut i, mut sent, done)| {
        let q = q.clone();
        async move {
            if done || sent >= q.size {
                return None;
            }
            let mut chunk = String::with_capacity(CHUNK + 512);
            while chunk.len() < CHUNK && sent + (chunk.len() as u64) < q.size {
                chunk.push_str(&event_line(&q, i));
                i += 1;
            }
            if let Some(cut) = q.cut_at
                && sent + chunk.len() as u64 > cut
            {
                let keep = (cut - sent) as usize;
                chunk.truncate(keep);
                let bytes = Bytes::from(chunk.into_bytes());
                return Some((Ok(bytes), (i, cut, true)));
            }
            sent += chunk.len() as u64;
            Some((Ok(Bytes::from(chunk.into_bytes())), (i, sent, false)))
        }
    })
}

/// Events per date of `q` (no cut), by generating them again (blocking: `spawn_blocking`).
pub fn day_counts(q: &EventsQuery) -> BTreeMap<String, u64> {
    let mut counts = vec![0u64; q.days as usize];
    let (mut i, mut sent) = (0u64, 0u64);
    while sent < q.size {
        let mut chunk = 0u64;
        while chunk < CHUNK as u64 && sent + chunk < q.size {
            chunk += event_line(q, i).len() as u64;
            counts[event_day(q, i) as usize] += 1;
            i += 1;
        }
        sent += chunk;
    }
    counts
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| (date_of(d as u32), n))
        .collect()
}

/// `GET /api/events`.
pub async fn events_route(Query(q): Query<EventsQuery>) -> Response {
    if q.days == 0 {
        return (StatusCode::BAD_REQUEST, "days must be at least 1\n").into_response();
    }
    let cut = q.cut_at.is_some();
    let body =
        events_stream(q).chain(stream::iter(cut.then(|| {
            Err::<Bytes, _>(io::Error::other("fixture: connection cut on purpose"))
        })));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_lines_are_stable_and_sorted_order_has_late_events() {
        let q = EventsQuery {
            size: 10 << 20,
            days: 10,
            order: Order::Sorted,
            seed: 1,
            cut_at: None,
        };
        assert_eq!(event_line(&q, 5), event_line(&q, 5));
        let days: Vec<u32> = (0..50_000).map(|i| event_day(&q, i)).collect();
        let late = days.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(late > 1000, "{late}");
        let counts = day_counts(&q);
        assert_eq!(counts.len(), 10);
        let total: u64 = counts.values().sum();
        assert!(total > (10 << 20) / 200, "{total}");
    }
}
