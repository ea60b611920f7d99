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

use std::collections::HashSet;

use reqwest::Url;
use serde::Deserialize;

use crate::codec::json_records::{Captures, JsonPath};
use crate::error::{Error, Result};

const DEFAULT_MAX_PAGES: u32 = 10_000;

/// `source.http.paginate`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParamIn {
    /// As a query parameter (default).
    #[default]
    Query,
    /// As a field of the JSON request body.
    Body,
}

/// `{"cursor": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkHeaderStyle {}

/// `{"next_url": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NextUrlStyle {
    /// Path of the next page's URL in each page.
    pub path: String,
}

/// `{"page_number": {...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
    seen: HashSet<String>,
    last_cursor: Option<String>,
    truncated: bool,
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
            seen: HashSet::new(),
            last_cursor: None,
            truncated: false,
        })
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
        self.seen.insert(url.to_string());
        self.current = url.clone();
        PageRequest {
            page: 1,
            url,
            body_field: None,
        }
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
                    || !self.seen.insert(format!("cursor:{cursor}"))
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
                    url: self.current.to_string(),
                    message: format!("next URL {next:?} is not a URL: {e}"),
                })?;
            }
            Style::Link => {
                let Some(next) = outcome.link.and_then(next_link) else {
                    return Ok(None);
                };
                url = self.current.join(&next).map_err(|e| Error::Pagination {
                    url: self.current.to_string(),
                    message: format!("Link rel=\"next\" {next:?} is not a URL: {e}"),
                })?;
            }
            Style::PageNumber(p) => {
                let n = p.start + u64::from(self.page);
                set_param(&mut url, &p.param, &n.to_string());
            }
            Style::Offset(o) => {
                let next = u64::from(self.page) * o.limit;
                if total.is_some_and(|t| next >= t) {
                    return Ok(None);
                }
                set_param(&mut url, &o.param, &next.to_string());
            }
        }
        if matches!(self.style, Style::NextUrl | Style::Link) && !self.seen.insert(url.to_string())
        {
            return Err(self.looping(format!("next page {url} was already fetched")));
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
            url: self.current.to_string(),
            message: format!("pagination loop after page {}: {what}", self.page),
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
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut q = url.query_pairs_mut();
    q.clear();
    for (k, v) in &kept {
        q.append_pair(k, v);
    }
    q.append_pair(name, value);
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
