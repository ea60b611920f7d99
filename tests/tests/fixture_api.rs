//! Smoke tests of the fixture JSON API (`/api/*`) the API-ingestion tests run against.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sluice_tests::FixtureServer;
use sluice_tests::fixture_api::{
    api_record, api_record_json, api_updated_at, big_doc_record_count, http_date,
};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get_json(url: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, headers, value)
}

fn ids(data: &Value) -> Vec<u64> {
    data.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(*r, api_record(r["id"].as_u64().unwrap()));
            r["id"].as_u64().unwrap()
        })
        .collect()
}

fn link_next(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().unwrap();
    link.split(", ").find_map(|part| {
        let (url, rel) = part.split_once("; ")?;
        (rel == r#"rel="next""#).then(|| url.trim_matches(['<', '>']).to_owned())
    })
}

#[test]
fn records_and_dates_are_what_the_docs_say() {
    assert_eq!(
        api_record_json(1),
        r#"{"id":1,"name":"item-1","updated_at":"2026-01-01T00:00:01Z","value":1.5}"#
    );
    assert_eq!(api_record(2)["value"], 3.0);
    for i in [0, 1, 2, 3, 59, 3_600, 86_400, 1_000_001, 99_999_999] {
        assert_eq!(api_record(i).to_string(), api_record_json(i), "record {i}");
        assert_eq!(api_record(i)["value"].as_f64().unwrap(), i as f64 * 1.5);
    }
    assert_eq!(api_updated_at(86_400 * 59 + 3_661), "2026-03-01T01:01:01Z");
    assert_eq!(api_updated_at(86_400 * 365), "2027-01-01T00:00:00Z");
    assert_eq!(sluice_tests::fixture_api::BASE_EPOCH_SECS, 1_767_225_600);
    let rfc_example = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(rfc_example), "Sun, 06 Nov 1994 08:49:37 GMT");
    let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800); // 2024-02-29
    assert_eq!(http_date(leap), "Thu, 29 Feb 2024 00:00:00 GMT");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cursor_chain_walks_every_record_once() {
    let fixture = FixtureServer::start().await;
    for cursor_first in [false, true] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut url = format!("/api/cursor?n=23&per=5&cursor_first={cursor_first}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let response = client().get(fixture.url(&url)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            let text = response.text().await.unwrap();
            let expected_start = if cursor_first {
                r#"{"next_cursor""#
            } else {
                r#"{"data""#
            };
            assert!(text.starts_with(expected_start), "{text}");
            let page: Value = serde_json::from_str(&text).unwrap();
            pages += 1;
            seen.extend(ids(&page["data"]));
            match &page["next_cursor"] {
                Value::Null => break,
                Value::String(c) => cursor = Some(c.clone()),
                other => panic!("next_cursor {other}"),
            }
        }
        assert_eq!(seen, (1..=23).collect::<Vec<_>>());
        assert_eq!(pages, 5);
    }
    assert_eq!(fixture.hits("/api/cursor"), 10);
    let (status, _, body) = get_json(&fixture.url("/api/cursor?n=5&cursor=bogus")).await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (400, &"bad_request".into())
    );
    let (status, _, _) = get_json(&fixture.url("/api/cursor?n=5&cursor=o6")).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_link_header_has_next_until_the_last_page() {
    let fixture = FixtureServer::start().await;
    let mut url = Some(fixture.url("/api/link?n=12&per=5"));
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(u) = url {
        let (status, headers, body) = get_json(&u).await;
        assert_eq!(status, 200);
        let link = headers["link"].to_str().unwrap();
        assert!(
            link.starts_with(&format!("<http://{}/api/link?", fixture.addr)),
            "{link}"
        );
        assert!(
            !link.split(", ").next().unwrap().contains(r#"rel="next""#),
            "{link}"
        );
        seen.extend(ids(&body["data"]));
        pages += 1;
        url = link_next(&headers);
        assert_eq!(url.is_some(), pages < 3, "{link}");
    }
    assert_eq!(seen, (1..=12).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_other_paginations_cover_every_record() {
    let fixture = FixtureServer::start().await;
    let all: Vec<u64> = (1..=17).collect();

    // has_more: the last page still has a `next`.
    let (mut seen, mut url) = (Vec::new(), fixture.url("/api/has_more?n=17&per=4"));
    loop {
        let (_, _, body) = get_json(&url).await;
        seen.extend(ids(&body["data"]));
        let next = body["meta"]["next"].as_str().expect("next is always there");
        url = fixture.url(&format!("/api/has_more?n=17&per=4&cursor={next}"));
        if body["meta"]["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen, all);
    let (_, _, body) = get_json(&url).await;
    assert_eq!(body["data"], Value::Array(vec![]));

    // next_url: an absolute URL before `data`.
    let (mut seen, mut url) = (Vec::new(), fixture.url("/api/next_url?n=17&per=4"));
    loop {
        let text = client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.starts_with(r#"{"next":"#), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        seen.extend(ids(&body["data"]));
        match body["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, all);

    // pages: until an empty page.
    let mut seen = Vec::new();
    for page in 1.. {
        let (_, _, body) =
            get_json(&fixture.url(&format!("/api/pages?n=17&per=4&page={page}"))).await;
        let got = ids(&body["data"]);
        if got.is_empty() {
            assert_eq!(page, 6);
            break;
        }
        seen.extend(got);
    }
    assert_eq!(seen, all);

    // offset/limit with `total` first.
    let text = client()
        .get(fixture.url("/api/offset?n=17&limit=10&offset=10"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.starts_with(r#"{"total":17,"data":["#), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ids(&body["data"]), (11..=17).collect::<Vec<_>>());
    let (_, _, body) = get_json(&fixture.url("/api/offset?n=17&limit=10&offset=20")).await;
    assert_eq!(body["data"], Value::Array(vec![]));

    // top-level array, NDJSON, pretty.
    let (_, _, body) = get_json(&fixture.url("/api/top?n=17")).await;
    assert_eq!(ids(&body), all);
    let response = client()
        .get(fixture.url("/api/ndjson?n=17"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let expected: String = (1..=17).map(|i| api_record_json(i) + "\n").collect();
    assert_eq!(text, expected);
    let text = client()
        .get(fixture.url("/api/pretty?n=3"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("{\n      \"id\": 1,\n"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ids(&body["data"]), vec![1, 2, 3]);

    // since: only newer records, cursor-paginated.
    let since = api_updated_at(5);
    let (mut seen, mut url) = (
        Vec::new(),
        fixture.url(&format!("/api/since?n=17&per=5&since={since}")),
    );
    loop {
        let (_, _, body) = get_json(&url).await;
        seen.extend(ids(&body["data"]));
        match body["next_cursor"].as_str() {
            Some(c) => {
                url = fixture.url(&format!("/api/since?n=17&per=5&since={since}&cursor={c}"))
            }
            None => break,
        }
    }
    assert_eq!(seen, (6..=17).collect::<Vec<_>>());
    let (_, _, body) = get_json(&fixture.url("/api/since?n=17&per=50")).await;
    assert_eq!(ids(&body["data"]), all);
    let (_, _, body) =
        get_json(&fixture.url(&format!("/api/since?n=17&since={}", api_updated_at(17)))).await;
    assert_eq!(
        (body["data"].as_array().unwrap().len(), &body["next_cursor"]),
        (0, &Value::Null)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_answers_429_then_the_page() {
    let fixture = FixtureServer::start().await;
    let url = fixture.url("/api/retry_after?mode=seconds&times=2&key=a&n=3");
    for _ in 0..2 {
        let (status, headers, body) = get_json(&url).await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    let (status, headers, body) = get_json(&url).await;
    assert_eq!(status, 200);
    assert!(headers.get("retry-after").is_none());
    assert_eq!(
        (ids(&body["data"]), &body["next_cursor"]),
        (vec![1, 2, 3], &Value::Null)
    );

    let url = fixture.url("/api/retry_after?mode=date&times=1&key=b");
    let before = SystemTime::now();
    let (status, headers, _) = get_json(&url).await;
    let after = SystemTime::now();
    assert_eq!(status, 429);
    let value = headers["retry-after"].to_str().unwrap();
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let candidates: Vec<String> = (secs(before)..=secs(after))
        .map(|s| http_date(UNIX_EPOCH + Duration::from_secs(s + 2)))
        .collect();
    assert!(
        candidates.iter().any(|c| c == value),
        "{value} not in {candidates:?}"
    );
    assert_eq!(get_json(&url).await.0, 200);

    let url = fixture.url("/api/storm?times=3&key=c&status=503");
    for _ in 0..3 {
        assert_eq!(get_json(&url).await.0, 503);
    }
    assert_eq!(get_json(&url).await.0, 200);
    assert_eq!(fixture.hits("/api/storm"), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_have_the_documented_bodies() {
    let fixture = FixtureServer::start().await;
    let get = |path: &str| {
        let url = fixture.url(path);
        async move {
            let response = client().get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            (status, headers, response.bytes().await.unwrap())
        }
    };

    // cut_record: a clean chunked end, only a JSON parser notices.
    let (status, headers, body) = get("/api/cut_record").await;
    assert_eq!(status, 200);
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(&body[..], br#"{"data":[{"id":1},{"id":"#);
    assert!(serde_json::from_slice::<Value>(&body).unwrap_err().is_eof());

    let (_, _, body) = get("/api/invalid").await;
    assert!(
        serde_json::from_slice::<Value>(&body)
            .unwrap_err()
            .is_syntax()
    );
    let (_, _, body) = get("/api/loop?cursor=same").await;
    assert_eq!(&body[..], br#"{"data":[{"id":1}],"next_cursor":"same"}"#);
    let (status, _, body) = get("/api/error200").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "rate_limited"
    );
    let (_, headers, body) = get("/api/html").await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.starts_with(b"<html>"));
    let (_, _, body) = get("/api/bad_utf8").await;
    assert_eq!(&body[29..31], b"\xff\xfe");
    assert!(std::str::from_utf8(&body).is_err());
    let (_, headers, body) = get("/api/big_line?size=300000").await;
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    assert_eq!(
        (lines[0], lines[1].len(), lines[2]),
        (&br#"{"id":1}"#[..], 300_000, &b""[..])
    );
    serde_json::from_slice::<Value>(lines[1]).unwrap();
    // stall_page: the page's first records, then nothing.
    let stalled = client()
        .get(fixture.url("/api/pages?n=30&per=10&stall_page=2&page=2"))
        .send()
        .await
        .unwrap();
    let mut stalled = stalled.bytes_stream();
    let first = futures::StreamExt::next(&mut stalled)
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with(br#"{"data":[{"id":11,"#), "{first:?}");
    let more = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut stalled),
    )
    .await;
    assert!(more.is_err(), "the stalled page went on");
    let (_, _, body) = get("/api/empty").await;
    assert_eq!(&body[..], br#"{"data":[]}"#);

    let (_, _, body) = get("/api/big_record?size=300000").await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["data"][1].to_string().len(), 300_000);
    assert_eq!(body.len(), 300_000 + r#"{"data":[{"id":1},]}"#.len());

    // A redirect to another route of the fixture (reqwest follows it).
    let target = fixture.url("/api/empty");
    let response = client()
        .get(fixture.url(&format!("/redirect?to={target}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.url().as_str(), target);
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_follow
        .get(fixture.url("/redirect?to=http://169.254.169.254/latest/meta-data/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "http://169.254.169.254/latest/meta-data/"
    );

    // big_doc: the /json document, records counted by regenerating it.
    let (_, _, body) = get("/api/big_doc?size=200000&seed=4").await;
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let count = tokio::task::spawn_blocking(|| big_doc_record_count(4, 200_000))
        .await
        .unwrap();
    assert_eq!(doc["data"].as_array().unwrap().len() as u64, count);
    assert!(count > 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_log_keeps_queries_and_headers() {
    let fixture = FixtureServer::start().await;
    let since = "2026-01-01T00:00:05Z";
    client()
        .get(fixture.url("/api/since?n=3&since=2026-01-01T00%3A00%3A05Z&tag=a%20b"))
        .header("X-Trace-Id", "abc")
        .header("Authorization", "Bearer t0k")
        .send()
        .await
        .unwrap();
    client()
        .get(fixture.url("/bytes?size=10"))
        .send()
        .await
        .unwrap();
    client()
        .get(fixture.url("/api/since?n=4"))
        .send()
        .await
        .unwrap();

    let log = fixture.requests("/api/since");
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0].query,
        vec![
            ("n".to_owned(), "3".to_owned()),
            ("since".to_owned(), since.to_owned()),
            ("tag".to_owned(), "a b".to_owned()),
        ]
    );
    assert_eq!(log[0].query_param("since"), Some(since));
    assert!(
        log[0]
            .headers
            .contains(&("x-trace-id".to_owned(), "abc".to_owned()))
    );
    assert_eq!(log[0].header("authorization"), Some("Bearer t0k"));
    assert_eq!(
        log[0].header("host"),
        Some(fixture.addr.to_string().as_str())
    );
    assert_eq!(log[1].query_param("n"), Some("4"));
    assert!(log[0].at <= log[1].at);
    let all = fixture.all_requests();
    let paths: Vec<_> = all.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/api/since", "/bytes", "/api/since"]);
    assert_eq!(fixture.hits("/api/since"), 2);
    assert_eq!(fixture.hits("/bytes"), 1);
}
