//! Output key templates: `raw/dt={date}/{run_id}.json.gz`.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// Values a key template may use.
///
/// | placeholder | value |
/// |---|---|
/// | `{date}` | run date, `YYYY-MM-DD` (UTC) |
/// | `{yyyy}` `{mm}` `{dd}` `{hh}` | parts of the run time (UTC) |
/// | `{run_id}` | the invocation's request id (stable across Lambda's own retries) |
/// | `{scheduled_time}` | the schedule's time, `YYYY-MM-DDTHH:MM:SSZ` (only when the job has one) |
/// | others | whatever the caller adds with [`KeyVars::with`] (`{page}` in ingest, the source key's parts in transform) |
///
/// When the job carries a `scheduled_time`, the date placeholders use it instead of the clock,
/// so a late or retried run writes the same keys as an on-time one.
#[derive(Debug, Clone)]
pub struct KeyVars {
    /// When the run started, or the schedule's time.
    pub now: DateTime<Utc>,
    /// The run's id.
    pub run_id: String,
    /// The schedule's time, when the event carried one.
    pub scheduled_time: Option<DateTime<Utc>>,
    /// Placeholders a function adds for its own jobs, looked up after the built-in ones.
    pub extra: Vec<(&'static str, String)>,
}

impl KeyVars {
    /// Vars for a run started at `now` with id `run_id`, no schedule and no extra placeholders.
    pub fn new(now: DateTime<Utc>, run_id: impl Into<String>) -> Self {
        KeyVars {
            now,
            run_id: run_id.into(),
            scheduled_time: None,
            extra: Vec::new(),
        }
    }

    /// Adds (or replaces) the placeholder `{name}`.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.retain(|(n, _)| *n != name);
        self.extra.push((name, value.into()));
        self
    }

    /// Whether `template` uses the placeholder `{name}`.
    pub fn uses(template: &str, name: &str) -> bool {
        template.contains(&format!("{{{name}}}"))
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.extra.iter().find(|(n, _)| *n == name) {
            return Some(v.clone());
        }
        Some(match name {
            "date" => self.now.format("%Y-%m-%d").to_string(),
            "yyyy" => self.now.format("%Y").to_string(),
            "mm" => self.now.format("%m").to_string(),
            "dd" => self.now.format("%d").to_string(),
            "hh" => self.now.format("%H").to_string(),
            "run_id" => self.run_id.clone(),
            "scheduled_time" => self
                .scheduled_time?
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            _ => return None,
        })
    }
}

/// A piece of a key template: literal text, or a placeholder's name and its byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Text(&'a str),
    Placeholder(&'a str, usize),
}

/// Splits `template` into text and placeholders; an unbalanced brace is an error naming its
/// byte position (`what`, then the spec field `field` and the template, for messages).
pub(crate) fn tokens<'a>(field: &str, template: &'a str) -> Result<Vec<Token<'a>>> {
    let bad =
        |pos: usize, what: &str| Error::spec(format!("{field} {template:?}: {what} at byte {pos}"));
    let mut out = Vec::new();
    let mut pos = 0;
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if rest.as_bytes()[i] == b'}' {
            return Err(bad(pos + i, "unmatched '}'"));
        }
        out.push(Token::Text(&rest[..i]));
        let after = &rest[i + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| bad(pos + i, "unclosed '{'"))?;
        out.push(Token::Placeholder(&after[..close], pos + i));
        let consumed = i + 1 + close + 1;
        pos += consumed;
        rest = &rest[consumed..];
    }
    out.push(Token::Text(rest));
    Ok(out)
}

/// Checks a rendered key: 1 to 1024 bytes, not starting with `/`.
pub(crate) fn check_rendered(field: &str, template: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 1024 || key.starts_with('/') {
        return Err(Error::spec(format!(
            "{field} {template:?} renders to {key:?}: a key must be 1 to 1024 bytes and not start with '/'"
        )));
    }
    Ok(())
}

/// Renders `template`. Unknown placeholders, unbalanced braces and keys S3 would refuse are
/// errors naming the template and the byte position.
pub fn render(template: &str, vars: &KeyVars) -> Result<String> {
    const FIELD: &str = "destination.key";
    let mut out = String::with_capacity(template.len() + 32);
    for token in tokens(FIELD, template)? {
        match token {
            Token::Text(t) => out.push_str(t),
            Token::Placeholder(name, pos) => {
                let value = vars.lookup(name).ok_or_else(|| {
                    Error::spec(format!(
                        "{FIELD} {template:?}: unknown placeholder {{{name}}} (known: {{date}} {{yyyy}} {{mm}} {{dd}} {{hh}} {{run_id}}{}, and {{scheduled_time}} when the job has one) at byte {pos}",
                        vars.extra.iter().map(|(n, _)| format!(" {{{n}}}")).collect::<String>()
                    ))
                })?;
                out.push_str(&value);
            }
        }
    }
    check_rendered(FIELD, template, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn vars() -> KeyVars {
        KeyVars::new(Utc.with_ymd_and_hms(2026, 3, 7, 9, 5, 0).unwrap(), "r-1")
    }

    #[test]
    fn scheduled_time_placeholder() {
        let mut v = vars();
        assert!(render("x/{scheduled_time}", &v).is_err());
        v.scheduled_time = Some(v.now);
        assert_eq!(
            render("x/{scheduled_time}", &v).unwrap(),
            "x/2026-03-07T09:05:00Z"
        );
    }

    #[test]
    fn extra_placeholders() {
        let v = vars().with("page", "00003").with("page", "00004");
        assert_eq!(render("p/{page}.json", &v).unwrap(), "p/00004.json");
        assert!(KeyVars::uses("p/{page}.json", "page"));
        let e = render("p/{pages}", &v).unwrap_err().to_string();
        assert!(e.contains("{page}"), "{e}");
    }

    #[test]
    fn renders_placeholders() {
        assert_eq!(
            render("raw/dt={date}/{yyyy}{mm}{dd}{hh}/{run_id}.json.gz", &vars()).unwrap(),
            "raw/dt=2026-03-07/2026030709/r-1.json.gz"
        );
        assert_eq!(render("plain", &vars()).unwrap(), "plain");
    }

    #[test]
    fn errors_name_the_position() {
        let e = render("raw/{nope}/x", &vars()).unwrap_err().to_string();
        assert!(
            e.contains("unknown placeholder {nope}") && e.contains("byte 4"),
            "{e}"
        );
        let e = render("raw/{date", &vars()).unwrap_err().to_string();
        assert!(e.contains("unclosed '{' at byte 4"), "{e}");
        let e = render("raw}/", &vars()).unwrap_err().to_string();
        assert!(e.contains("unmatched '}' at byte 3"), "{e}");
        assert!(render("/abs", &vars()).is_err());
        assert!(render("", &vars()).is_err());
    }
}
