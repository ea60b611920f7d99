//! Pagination: which request comes after a page, and when to stop.
//!
//! `source.http.paginate` names one style, plus optional stop rules:
//!
//! | style | next request |
//! |---|---|
//! | `{"cursor": {"param": "cursor", "path": "$.next_cursor"}}` | the value at `path`, sent as query parameter `param` (or a JSON body field with `"in": "body"`) |
//! | `{"link_header": {}}` | the `rel="next"` target of the `Link` header (RFC 8288) |
//! | `{"next_url": {"path": "$.next"}}` | the URL at `path` (relative URLs resolve against the page's) |
//! | `{"page_number": {"param": "page", "start": 1}}` | `param` = 1, 2, 3, ... |
//! | `{"offset": {"param": "offset", "limit_param": "limit", "limit": 300}}` | `offset` = 0, 300, 600, ... with `limit` = 300 |
//!
//! Paging stops at the first of: no next cursor / link / URL; a page with no records; the value
//! at `has_more` being `false`; the records (or offset) reaching the value at `total`;
//! `max_pages` pages (default 10,000). A cursor or URL seen before is an error (the API is
//! looping), never an endless run.
//!
//! Loop detection keeps constant memory whatever `max_pages` is: a 64-bit keyed hash of each
//! cursor or URL, the last [`SEEN_WINDOW`] of them in a set (any loop of up to that many pages
//! is caught the first time a cursor comes back), plus Brent's cycle check on the same hashes
//! (a longer loop is caught within about twice its length). URLs named in errors are redacted
//! ([`redact_url`]).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::auth::{ResolvedAuth, redact_url};
use crate::codec::json_records::{Captures, JsonPath};
use crate::error::{Error, Result};

const DEFAULT_MAX_PAGES: u32 = 10_000;
/// Cursors or URLs remembered exactly, as 8-byte hashes (about 200 KiB with the set's overhead).
pub const SEEN_WINDOW: usize = 10_000;

/// The cursors or URLs of the pages fetched so far, in bounded memory (see the module docs).
#[derive(Debug)]
struct Seen {
    hasher: RandomState,
    recent: HashSet<u64>,
    order: VecDeque<u64>,
    /// Brent: the hash of a past page, the pages since it, and when to move it.
    checkpoint: Option<u64>,
    since: u64,
    power: u64,
}

impl Seen {
    fn new() -> Self {
        Seen {
            hasher: RandomState::new(),
            recent: HashSet::new(),
            order: VecDeque::new(),
            checkpoint: None,
            since: 0,
            power: 1,
        }
    }

    /// Records `key`; false when it was seen before (a loop).
    fn insert(&mut self, key: &str) -> bool {
        let h = self.hasher.hash_one(key);
        if self.checkpoint == Some(h) || !self.recent.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > SEEN_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.recent.remove(&old);
        }
        self.since += 1;
        if self.checkpoint.is_none() || self.since == self.power {
            self.checkpoint = Some(h);
            self.power = self.power.saturating_mul(2);
            self.since = 0;
        }
        true
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.recent.len() + self.order.len()
    }
}

/// `source.http.paginate`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaginateSpec {
    /// Cursor style.
    #[serde(default)]
    pub cursor: Option<CursorStyle>,
    /// `Link` header style; its value is `{}`.
    #[serde(default)]
    pub link_header: Option<LinkHeaderStyle>,
    /// Next URL in the body.
    #[serde(default)]
    pub next_url: Option<NextUrlStyle>,
    /// Page numbers.
    #[serde(default)]
    pub page_number: Option<PageNumberStyle>,
    /// Offset and limit.
    #[serde(default)]
    pub offset: Option<OffsetStyle>,
    /// Path of a boolean; `false` means this was the last page.
    #[serde(default)]
    pub has_more: Option<String>,
    /// Path of the total record count; paging stops once it is reached.
    #[serde(default)]
    pub total: Option<String>,
    /// Stop after this many pages. Default 10,000.
    #[serde(default)]
    pub max_pages: Option<u32>,
}

/// Where a cursor is sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamIn {
    /// As a query parameter (default).
    #[default]
    Query,
    /// As a field of the JSON request body.
    Body,
}

/// `{"cursor": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorStyle {
    /// Parameter (or body field) that carries the cursor.
    pub param: String,
    /// Path of the next cursor in each page.
    pub path: String,
    /// `query` (default) or `body`.
    #[serde(default, rename = "in")]
    pub location: ParamIn,
}

/// `{"link_header": {}}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkHeaderStyle {}

/// `{"next_url": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NextUrlStyle {
    /// Path of the next page's URL in each page.
    pub path: String,
}

/// `{"page_number": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageNumberStyle {
    /// Query parameter of the page number.
    pub param: String,
    /// First page number. Default 1.
    #[serde(default = "one")]
    pub start: u64,
}

fn one() -> u64 {
    1
}

/// `{"offset": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OffsetStyle {
    /// Query parameter of the offset.
    pub param: String,
    /// Query parameter of the page size, if the API takes one.
    #[serde(default)]
    pub limit_param: Option<String>,
    /// Page size.
    pub limit: u64,
}

/// The request for one page.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    /// 1-based page number within the run.
    pub page: u32,
    /// The URL to fetch.
    pub url: Url,
    /// A field to set in the JSON request body (cursor sent `in: body`).
    pub body_field: Option<(String, serde_json::Value)>,
}

/// Where paging goes on in another invocation ([`Paginator::resume_at`]): the next page's
/// request and what the paginator counted before it. Loop detection starts afresh in the
/// next invocation (`max_pages` still counts every page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageResume {
    /// The next page's URL, without the query parameter of `auth` (the request adds it).
    pub url: String,
    /// The next page's number within the job, from 1.
    pub page: u32,
    /// A field of the JSON request body (a cursor sent `in: body`).
    #[serde(default)]
    pub body_field: Option<(String, serde_json::Value)>,
    /// Records of the pages before (for `total`).
    pub records: u64,
    /// The last cursor sent (cursor style).
    #[serde(default)]
    pub last_cursor: Option<String>,
}

/// What one page said about the next.
#[derive(Debug)]
pub struct PageOutcome<'a> {
    /// Records the page held.
    pub records: u64,
    /// Scalars captured from the page, in the order of [`Paginator::capture_paths`].
    pub captures: &'a Captures,
    /// The `Link` header, if any.
    pub link: Option<&'a str>,
}

#[derive(Debug, Clone)]
enum Style {
    Single,
    Cursor(CursorStyle),
    Link,
    NextUrl,
    PageNumber(PageNumberStyle),
    Offset(OffsetStyle),
}

/// Walks the pages of one source.
#[derive(Debug)]
pub struct Paginator {
    style: Style,
    paths: Vec<JsonPath>,
    next_index: Option<usize>,
    has_more_index: Option<usize>,
    total_index: Option<usize>,
    max_pages: u32,
    current: Url,
    page: u32,
    records: u64,
    seen: Seen,
    last_cursor: Option<String>,
    truncated: bool,
    auth: Option<Arc<ResolvedAuth>>,
}

fn path(text: &str, field: &str) -> Result<JsonPath> {
    JsonPath::parse(text, false)
        .map_err(|e| Error::spec(format!("source.http.paginate.{field}: {e}")))
}

impl Paginator {
    /// A paginator starting at `url`; `spec` `None` means a single request.
    pub fn new(spec: Option<&PaginateSpec>, url: Url) -> Result<Self> {
        let mut paths = Vec::new();
        let mut next_index = None;
        let mut has_more_index = None;
        let mut total_index = None;
        let style = match spec {
            None => Style::Single,
            Some(s) => {
                let styles = [
                    s.cursor.is_some(),
                    s.link_header.is_some(),
                    s.next_url.is_some(),
                    s.page_number.is_some(),
                    s.offset.is_some(),
                ];
                if styles.iter().filter(|x| **x).count() != 1 {
                    return Err(Error::spec(
                        "source.http.paginate needs exactly one of cursor, link_header, next_url, page_number, offset",
                    ));
                }
                if let Some(c) = &s.cursor {
                    paths.push(path(&c.path, "cursor.path")?);
                    next_index = Some(paths.len() - 1);
                }
                if let Some(n) = &s.next_url {
                    paths.push(path(&n.path, "next_url.path")?);
                    next_index = Some(paths.len() - 1);
                }
                if let Some(h) = &s.has_more {
                    paths.push(path(h, "has_more")?);
                    has_more_index = Some(paths.len() - 1);
                }
                if let Some(t) = &s.total {
                    paths.push(path(t, "total")?);
                    total_index = Some(paths.len() - 1);
                }
                if let Some(o) = &s.offset
                    && o.limit == 0
                {
                    return Err(Error::spec(
                        "source.http.paginate.offset.limit must be at least 1",
                    ));
                }
                if let Some(c) = s.cursor.clone() {
                    Style::Cursor(c)
                } else if s.link_header.is_some() {
                    Style::Link
                } else if s.next_url.is_some() {
                    Style::NextUrl
                } else if let Some(p) = s.page_number.clone() {
                    Style::PageNumber(p)
                } else {
                    Style::Offset(s.offset.clone().expect("one style is set"))
                }
            }
        };
        Ok(Paginator {
            style,
            paths,
            next_index,
            has_more_index,
            total_index,
            max_pages: spec
                .and_then(|s| s.max_pages)
                .unwrap_or(DEFAULT_MAX_PAGES)
                .max(1),
            current: url,
            page: 0,
            records: 0,
            seen: Seen::new(),
            last_cursor: None,
            truncated: false,
            auth: None,
        })
    }

    /// Redacts URLs in errors with `auth` too (its API-key query parameter), besides the
    /// well-known credential parameters always redacted.
    pub fn with_auth(mut self, auth: Option<Arc<ResolvedAuth>>) -> Self {
        self.auth = auth;
        self
    }

    /// `url` as errors show it.
    fn shown(&self, url: &str) -> String {
        redact_url(url, self.auth.as_deref())
    }

    /// Scalar paths the records decoder must capture for this style.
    pub fn capture_paths(&self) -> Vec<JsonPath> {
        self.paths.clone()
    }

    /// The first request.
    pub fn first(&mut self) -> PageRequest {
        self.page = 1;
        let mut url = self.current.clone();
        match &self.style {
            Style::PageNumber(p) => set_param(&mut url, &p.param, &p.start.to_string()),
            Style::Offset(o) => {
                set_param(&mut url, &o.param, "0");
                if let Some(l) = &o.limit_param {
                    set_param(&mut url, l, &o.limit.to_string());
                }
            }
            _ => {}
        }
        self.seen.insert(url.as_str());
        self.current = url.clone();
        PageRequest {
            page: 1,
            url,
            body_field: None,
        }
    }

    /// Where paging goes on, with `next` the request that comes next: kept in a checkpoint
    /// and handed to [`resume`](Self::resume) in the next invocation.
    pub fn resume_at(&self, next: &PageRequest) -> PageResume {
        let mut url = next.url.clone();
        if let Some(param) = self.auth.as_deref().and_then(ResolvedAuth::query_param) {
            remove_param(&mut url, param);
        }
        PageResume {
            url: url.to_string(),
            page: next.page,
            body_field: next.body_field.clone(),
            records: self.records,
            last_cursor: self.last_cursor.clone(),
        }
    }

    /// Goes on from `at` ([`resume_at`](Self::resume_at) of an earlier invocation): the
    /// request to send next, in place of [`first`](Self::first).
    pub fn resume(&mut self, at: &PageResume) -> Result<PageRequest> {
        let url = Url::parse(&at.url).map_err(|e| Error::Pagination {
            url: self.shown(&at.url),
            message: format!("the checkpoint's next page is not a URL: {e}"),
        })?;
        self.page = at.page;
        self.records = at.records;
        self.last_cursor = at.last_cursor.clone();
        self.seen.insert(url.as_str());
        if let Some(cursor) = &at.last_cursor {
            self.seen.insert(&format!("cursor:{cursor}"));
        }
        self.current = url.clone();
        Ok(PageRequest {
            page: at.page,
            url,
            body_field: at.body_field.clone(),
        })
    }

    /// The request after a page, or `None` when paging is over.
    pub fn next(&mut self, outcome: &PageOutcome<'_>) -> Result<Option<PageRequest>> {
        self.records += outcome.records;
        let capture = |i: Option<usize>| i.and_then(|i| outcome.captures.get(i));
        if matches!(self.style, Style::Single) || outcome.records == 0 {
            return Ok(None);
        }
        if let Some(serde_json::Value::Bool(false)) = capture(self.has_more_index) {
            return Ok(None);
        }
        let total = capture(self.total_index).and_then(|v| v.as_u64());
        if let Some(total) = total
            && self.records >= total
        {
            return Ok(None);
        }
        if self.page >= self.max_pages {
            self.truncated = true;
            tracing::warn!(max_pages = self.max_pages, "stopping at max_pages");
            return Ok(None);
        }
        let mut url = self.current.clone();
        let mut body_field = None;
        match &self.style {
            Style::Single => return Ok(None),
            Style::Cursor(c) => {
                let Some(cursor) = capture(self.next_index).and_then(scalar_text) else {
                    return Ok(None);
                };
                if self.last_cursor.as_deref() == Some(cursor.as_str())
                    || !self.seen.insert(&format!("cursor:{cursor}"))
                {
                    return Err(self.looping(format!("cursor {cursor:?} came back")));
                }
                self.last_cursor = Some(cursor.clone());
                match c.location {
                    ParamIn::Query => set_param(&mut url, &c.param, &cursor),
                    ParamIn::Body => {
                        body_field = Some((c.param.clone(), serde_json::Value::String(cursor)))
                    }
                }
            }
            Style::NextUrl => {
                let Some(next) = capture(self.next_index).and_then(scalar_text) else {
                    return Ok(None);
                };
                url = self.current.join(&next).map_err(|e| Error::Pagination {
                    url: self.shown(self.current.as_str()),
                    message: format!("next URL {:?} is not a URL: {e}", self.shown(&next)),
                })?;
            }
            Style::Link => {
                let Some(next) = outcome.link.and_then(next_link) else {
                    return Ok(None);
                };
                url = self.current.join(&next).map_err(|e| Error::Pagination {
                    url: self.shown(self.current.as_str()),
                    message: format!(
                        "Link rel=\"next\" {:?} is not a URL: {e}",
                        self.shown(&next)
                    ),
                })?;
            }
            Style::PageNumber(p) => {
                let n = p.start.checked_add(u64::from(self.page));
                let n = n.ok_or_else(|| self.overflow("page number"))?;
                set_param(&mut url, &p.param, &n.to_string());
            }
            Style::Offset(o) => {
                let next = u64::from(self.page).checked_mul(o.limit);
                let next = next.ok_or_else(|| self.overflow("offset"))?;
                if total.is_some_and(|t| next >= t) {
                    return Ok(None);
                }
                set_param(&mut url, &o.param, &next.to_string());
            }
        }
        if matches!(self.style, Style::NextUrl | Style::Link) && !self.seen.insert(url.as_str()) {
            let shown = self.shown(url.as_str());
            return Err(self.looping(format!("next page {shown} was already fetched")));
        }
        self.page += 1;
        self.current = url.clone();
        Ok(Some(PageRequest {
            page: self.page,
            url,
            body_field,
        }))
    }

    fn looping(&self, what: String) -> Error {
        Error::Pagination {
            url: self.shown(self.current.as_str()),
            message: format!("pagination loop after page {}: {what}", self.page),
        }
    }

    /// A `start` or `limit` so large that the next page's number leaves `u64`.
    fn overflow(&self, what: &str) -> Error {
        Error::Pagination {
            url: self.shown(self.current.as_str()),
            message: format!("the {what} after page {} is past 2^64", self.page),
        }
    }

    /// Pages requested so far.
    pub fn pages(&self) -> u32 {
        self.page
    }

    /// The last cursor sent (cursor style).
    pub fn last_cursor(&self) -> Option<&str> {
        self.last_cursor.as_deref()
    }

    /// Whether paging stopped at `max_pages` rather than at the end of the data.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

fn scalar_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Sets query parameter `name` to `value`, replacing any earlier value.
pub(crate) fn set_param(url: &mut Url, name: &str, value: &str) {
    let kept = pairs_without(url, name);
    let mut q = url.query_pairs_mut();
    q.clear();
    q.extend_pairs(kept);
    q.append_pair(name, value);
}

/// Removes every query parameter `name` (a query left empty goes).
fn remove_param(url: &mut Url, name: &str) {
    if !url.query_pairs().any(|(k, _)| k == name) {
        return;
    }
    let kept = pairs_without(url, name);
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
}

/// The query's pairs but those named `name`.
fn pairs_without(url: &Url, name: &str) -> Vec<(String, String)> {
    url.query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The target of the first link with relation `next` in a `Link` header (RFC 8288).
pub fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // Parameters run to the next link (a comma outside quotes, before the next '<').
        let params_end = after.find('<').unwrap_or(after.len());
        let params = &after[..params_end];
        for param in params.split(';') {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("rel") {
                let value = value.trim().trim_end_matches(',').trim().trim_matches('"');
                if value
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
                {
                    return Some(target.to_owned());
                }
            }
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let h = r#"<https://a/x?page=1>; rel="first", <https://a/x?page=3>; rel="next", <https://a/x?page=9>; rel=last"#;
        assert_eq!(next_link(h).as_deref(), Some("https://a/x?page=3"));
        assert_eq!(
            next_link(r#"<https://a/2>; rel="prev next""#).as_deref(),
            Some("https://a/2")
        );
        assert_eq!(next_link(r#"<https://a/1>; rel="first""#), None);
        assert_eq!(next_link(""), None);
    }

    fn outcome_with(paths: usize, values: &[(usize, serde_json::Value)]) -> Captures {
        let c = Captures::default();
        let _ = paths;
        for (i, v) in values {
            c.set(*i, v.clone());
        }
        c
    }

    #[test]
    fn cursor_style_stops_and_guards_loops() {
        let spec: PaginateSpec = serde_json::from_value(serde_json::json!({
            "cursor": {"param": "cursor", "path": "$.next_cursor"}, "max_pages": 50
        }))
        .unwrap();
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/api?x=1").unwrap()).unwrap();
        assert_eq!(p.first().url.as_str(), "http://h/api?x=1");
        let c = outcome_with(1, &[(0, "c2".into())]);
        let next = p
            .next(&PageOutcome {
                records: 3,
                captures: &c,
                link: None,
            })
            .unwrap()
            .unwrap();
        assert_eq!(next.url.as_str(), "http://h/api?x=1&cursor=c2");
        let err = p
            .next(&PageOutcome {
                records: 3,
                captures: &c,
                link: None,
            })
            .unwrap_err();
        assert!(err.to_string().contains("pagination loop"), "{err}");
        let done = outcome_with(1, &[(0, serde_json::Value::Null)]);
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/api").unwrap()).unwrap();
        p.first();
        assert_eq!(
            p.next(&PageOutcome {
                records: 3,
                captures: &done,
                link: None
            })
            .unwrap(),
            None
        );
    }

    /// A paginator resumed from `resume_at` sends the same next request and counts on from
    /// the records before it; the query parameter of `auth` is not kept (the request adds it).
    #[tokio::test]
    async fn resume_at_then_resume_goes_on_with_the_same_request() {
        use crate::secret::{SecretRef, SecretResolver};
        let spec: PaginateSpec = serde_json::from_value(serde_json::json!({
            "cursor": {"param": "cursor", "path": "$.next_cursor"}, "total": "$.total"
        }))
        .unwrap();
        let key: SecretRef =
            serde_json::from_value(serde_json::json!({"ssm": {"name": "/k"}})).unwrap();
        let auth: super::super::auth::AuthSpec = serde_json::from_value(
            serde_json::json!({"api_key": {"query": "api_key", "value": {"ssm": {"name": "/k"}}}}),
        )
        .unwrap();
        let resolver = SecretResolver::unreachable_for_tests().with_cached(&key, "sekrit");
        let auth = Some(Arc::new(auth.resolve(&resolver).await.unwrap()));
        let url = Url::parse("http://h/api?x=1&api_key=sekrit").unwrap();
        let mut p = Paginator::new(Some(&spec), url.clone())
            .unwrap()
            .with_auth(auth.clone());
        p.first();
        let page = |cursor: &str| outcome_with(2, &[(0, cursor.into()), (1, 10.into())]);
        let c = page("c2");
        let outcome = PageOutcome {
            records: 4,
            captures: &c,
            link: None,
        };
        let next = p.next(&outcome).unwrap().unwrap();
        let at = p.resume_at(&next);
        assert!(!at.url.contains("sekrit"), "{at:?}");
        assert_eq!(at.page, 2);
        assert_eq!(at.records, 4);
        assert_eq!(at.last_cursor.as_deref(), Some("c2"));
        // Through JSON, as a checkpoint keeps it.
        let at: PageResume = serde_json::from_str(&serde_json::to_string(&at).unwrap()).unwrap();
        let mut q = Paginator::new(Some(&spec), url).unwrap().with_auth(auth);
        let resumed = q.resume(&at).unwrap();
        assert_eq!(resumed.page, 2);
        assert_eq!(resumed.url.as_str(), "http://h/api?x=1&cursor=c2");
        // The same cursor again is a loop; the total counts the records before the stop.
        assert!(q.next(&outcome).is_err());
        let mut q = Paginator::new(Some(&spec), Url::parse("http://h/").unwrap()).unwrap();
        q.resume(&at).unwrap();
        let c = page("c3");
        let more = PageOutcome {
            records: 6,
            captures: &c,
            link: None,
        };
        assert_eq!(
            q.next(&more).unwrap(),
            None,
            "4 + 6 records reach the total of 10"
        );
        assert_eq!(q.pages(), 2);
    }

    /// A page number or offset past `u64` wrapped around silently (and panicked in a debug
    /// build): it is a pagination error naming the page.
    #[test]
    fn page_numbers_and_offsets_past_u64_are_an_error_not_a_wrap() {
        let none = Captures::default();
        let page = PageOutcome {
            records: 1,
            captures: &none,
            link: None,
        };
        for style in [
            serde_json::json!({"page_number": {"param": "page", "start": u64::MAX}}),
            serde_json::json!({"offset": {"param": "offset", "limit": u64::MAX}}),
        ] {
            let spec: PaginateSpec = serde_json::from_value(style).unwrap();
            let mut p = Paginator::new(Some(&spec), Url::parse("http://h/p").unwrap()).unwrap();
            p.first();
            let mut last = Ok(None);
            for _ in 0..3 {
                last = p.next(&page);
                if last.is_err() {
                    break;
                }
            }
            let e = last.unwrap_err().to_string();
            assert!(e.contains("past 2^64"), "{e}");
        }
    }

    #[test]
    fn offset_and_page_number_and_stops() {
        let spec: PaginateSpec = serde_json::from_value(serde_json::json!({
            "offset": {"param": "offset", "limit_param": "limit", "limit": 300}, "total": "$.total"
        }))
        .unwrap();
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/o").unwrap()).unwrap();
        assert_eq!(p.first().url.as_str(), "http://h/o?offset=0&limit=300");
        let c = outcome_with(1, &[(0, 650.into())]);
        let r = p
            .next(&PageOutcome {
                records: 300,
                captures: &c,
                link: None,
            })
            .unwrap()
            .unwrap();
        assert_eq!(r.url.as_str(), "http://h/o?limit=300&offset=300");
        let r = p
            .next(&PageOutcome {
                records: 300,
                captures: &c,
                link: None,
            })
            .unwrap()
            .unwrap();
        assert!(r.url.as_str().ends_with("offset=600"));
        assert_eq!(
            p.next(&PageOutcome {
                records: 50,
                captures: &c,
                link: None
            })
            .unwrap(),
            None
        );

        let spec: PaginateSpec = serde_json::from_value(
            serde_json::json!({"page_number": {"param": "page"}, "max_pages": 2}),
        )
        .unwrap();
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/p").unwrap()).unwrap();
        assert_eq!(p.first().url.as_str(), "http://h/p?page=1");
        let none = Captures::default();
        assert!(
            p.next(&PageOutcome {
                records: 5,
                captures: &none,
                link: None
            })
            .unwrap()
            .unwrap()
            .url
            .as_str()
            .ends_with("page=2")
        );
        assert_eq!(
            p.next(&PageOutcome {
                records: 5,
                captures: &none,
                link: None
            })
            .unwrap(),
            None
        );
        assert!(p.truncated());
        // An empty page ends any style.
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/p").unwrap()).unwrap();
        p.first();
        assert_eq!(
            p.next(&PageOutcome {
                records: 0,
                captures: &none,
                link: None
            })
            .unwrap(),
            None
        );
    }

    #[test]
    fn pagination_errors_redact_tokens_in_urls() {
        let spec: PaginateSpec =
            serde_json::from_value(serde_json::json!({"link_header": {}})).unwrap();
        let start = "http://h/api?access_token=tok-SECRET-1&page=1";
        let mut p = Paginator::new(Some(&spec), Url::parse(start).unwrap()).unwrap();
        p.first();
        let none = Captures::default();
        let page = |link: &'static str| PageOutcome {
            records: 1,
            captures: &none,
            link: Some(link),
        };
        let looping = r#"<http://h/api?access_token=tok-SECRET-1&page=1>; rel="next""#;
        let err = p.next(&page(looping)).unwrap_err().to_string();
        assert!(err.contains("pagination loop"), "{err}");
        assert!(!err.contains("tok-SECRET-1"), "{err}");
        assert!(err.contains("access_token=[redacted]"), "{err}");
        let bad = r#"<http://[bad?sig=SIG-SECRET-2>; rel="next""#;
        let mut p = Paginator::new(Some(&spec), Url::parse(start).unwrap()).unwrap();
        p.first();
        let err = p.next(&page(bad)).unwrap_err().to_string();
        assert!(err.contains("is not a URL"), "{err}");
        assert!(
            !err.contains("SIG-SECRET-2") && !err.contains("tok-SECRET-1"),
            "{err}"
        );
    }

    #[test]
    fn loop_detection_memory_is_bounded_and_still_catches_long_loops() {
        let spec: PaginateSpec = serde_json::from_value(serde_json::json!({
            "cursor": {"param": "c", "path": "$.next"}, "max_pages": 4_000_000_000u32
        }))
        .unwrap();
        let outcome = |c: &Captures| {
            let c = c.clone();
            move |p: &mut Paginator| {
                p.next(&PageOutcome {
                    records: 1,
                    captures: &c,
                    link: None,
                })
            }
        };
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/a").unwrap()).unwrap();
        p.first();
        // 50,000 distinct pages: memory stays at the window.
        let c = Captures::default();
        let step = outcome(&c);
        for i in 0..50_000u64 {
            c.set(0, format!("c{i}").into());
            step(&mut p).unwrap().unwrap();
        }
        assert!(
            p.seen.remembered() <= 2 * SEEN_WINDOW,
            "{}",
            p.seen.remembered()
        );
        // A loop of 25,000 pages, longer than the window, is still caught.
        let mut p = Paginator::new(Some(&spec), Url::parse("http://h/a").unwrap()).unwrap();
        p.first();
        let period = 25_000u64;
        let caught = (0..10 * period).find_map(|i| {
            c.set(0, format!("c{}", i % period).into());
            step(&mut p).err().map(|e| (i, e))
        });
        let (at, err) = caught.expect("a long loop must be caught");
        assert!(err.to_string().contains("came back"), "{err}");
        assert!(at < 4 * period, "caught only after {at} pages");
    }

    #[test]
    fn one_style_exactly() {
        let spec: PaginateSpec = serde_json::from_value(serde_json::json!({
            "link_header": {}, "page_number": {"param": "p"}
        }))
        .unwrap();
        assert!(Paginator::new(Some(&spec), Url::parse("http://h/").unwrap()).is_err());
        assert!(
            serde_json::from_value::<PaginateSpec>(serde_json::json!({"cursors": {}})).is_err()
        );
    }
}
