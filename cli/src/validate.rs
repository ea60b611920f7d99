//! `sluice validate`: a file checked with the parser of the function that reads it, so that it
//! fails with the function's own message (the error text a deployed function would answer with
//! for the same event or configuration).

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;
use sluice::Error;
use sluice::lambda::FunctionError;

use crate::exit;

/// The largest file read: 6 MiB, Lambda's largest synchronous event.
pub const MAX_FILE: u64 = 6 * 1024 * 1024;

/// What a file is, and so which parser reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// An ingest-http job spec, or a batch (`sources`).
    Ingest,
    /// An export-postgres spec.
    Export,
    /// A transform-s3 pipeline (its PIPELINE).
    Pipeline,
    /// A sweep-uploads configuration.
    Sweep,
    /// A transform-s3 event: an S3 notification, `{"bucket", "key"}` or a Distributed Map
    /// item.
    Event,
}

const ALL: [Kind; 5] = [
    Kind::Ingest,
    Kind::Export,
    Kind::Pipeline,
    Kind::Sweep,
    Kind::Event,
];

impl Kind {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ingest => "ingest",
            Kind::Export => "export",
            Kind::Pipeline => "pipeline",
            Kind::Sweep => "sweep",
            Kind::Event => "event",
        }
    }

    /// Parses `text` as this kind, as its function does.
    pub fn check(self, text: &str, origin: &str) -> Result<(), Error> {
        // transform-s3 parses PIPELINE from its text: syntax errors carry their position.
        let pipeline = || sluice::transform::Pipeline::from_json_str(text).map(drop);
        if self == Kind::Pipeline {
            return pipeline();
        }
        let value = parse_json(text, origin)?;
        match self {
            Kind::Ingest if sluice::ingest::batch::is_batch(&value) => {
                sluice::ingest::batch::expand(value).map(drop)
            }
            Kind::Ingest => sluice::JobSpec::from_json(value).map(drop),
            Kind::Export => sluice::export::ExportSpec::from_json(value).map(drop),
            Kind::Sweep => sluice::sweep::SweepConfig::from_event(value, None).map(drop),
            Kind::Event => sluice::transform::event::objects(value).map(drop),
            Kind::Pipeline => pipeline(),
        }
    }
}

/// The kinds a document may be, from its top-level keys, and the key that told: `None` when no
/// key tells (then every kind is tried).
fn guess(value: &Value) -> (Vec<Kind>, Option<&'static str>) {
    let Some(map) = value.as_object() else {
        return (ALL.to_vec(), None);
    };
    let has = |k: &str| map.contains_key(k);
    if has("targets") {
        return (vec![Kind::Sweep], Some("targets"));
    }
    if has("sources") {
        return (vec![Kind::Ingest], Some("sources"));
    }
    if let Some(source) = map.get("source") {
        if source.get("http").is_some() {
            return (vec![Kind::Ingest], Some("source.http"));
        }
        if source.get("postgres").is_some() {
            return (vec![Kind::Export], Some("source.postgres"));
        }
        return (vec![Kind::Ingest, Kind::Export], Some("source"));
    }
    for key in ["input", "steps", "output", "quarantine", "workers"] {
        if has(key) {
            return (vec![Kind::Pipeline], Some(key));
        }
    }
    for key in ["Records", "bucket", "Bucket", "key", "Key"] {
        if has(key) {
            return (vec![Kind::Event], Some(key));
        }
    }
    (ALL.to_vec(), None)
}

/// How messages name `path`: `stdin` for `-`.
pub fn origin(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    }
}

/// `text` as JSON; a syntax error names `origin` and the line and column.
pub fn parse_json(text: &str, origin: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::InvalidSpec {
        message: format!("{origin} is not JSON: {e}"),
    })
}

/// The text of `path` (`-`: stdin), at most [`MAX_FILE`] bytes.
pub fn read_text(path: &Path) -> Result<String, FunctionError> {
    let origin = origin(path);
    let cannot = |e: std::io::Error| {
        FunctionError::new(
            sluice::ErrorKind::InvalidInput,
            format!("{origin}: cannot read: {e}"),
        )
    };
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
            .map_err(cannot)?;
    }
    if bytes.len() as u64 > MAX_FILE {
        return Err(FunctionError::new(
            sluice::ErrorKind::InvalidInput,
            format!("{origin}: over {MAX_FILE} bytes, Lambda's largest event"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        FunctionError::new(
            sluice::ErrorKind::InvalidInput,
            format!(
                "{origin}: not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// What `validate` found: the kind that parsed, or the error and the kinds tried.
#[derive(Debug)]
pub enum Verdict {
    /// The file is a valid `Kind`.
    Valid(Kind),
    /// Not valid: a line saying as what it was read, then the error.
    Invalid {
        /// `FILE: invalid ingest (...)`.
        headline: String,
        /// The function's error.
        error: FunctionError,
    },
}

/// Checks `text` (from `origin`) as `kind`, or as the kinds its keys suggest.
pub fn verdict(text: &str, origin: &str, kind: Option<Kind>) -> Verdict {
    let invalid = |headline: String, error: Error| Verdict::Invalid {
        headline,
        error: FunctionError::from(error),
    };
    if let Some(kind) = kind {
        return match kind.check(text, origin) {
            Ok(()) => Verdict::Valid(kind),
            Err(e) => invalid(format!("{origin}: invalid {}", kind.name()), e),
        };
    }
    let value = match parse_json(text, origin) {
        Ok(v) => v,
        Err(e) => return invalid(format!("{origin}: invalid (not JSON, no kind tried)"), e),
    };
    let (kinds, told_by) = guess(&sluice::schema::without_schema_key(value));
    let mut errors = Vec::new();
    for kind in &kinds {
        match kind.check(text, origin) {
            Ok(()) => return Verdict::Valid(*kind),
            Err(e) => errors.push((*kind, e)),
        }
    }
    let tried: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let how = match told_by {
        Some(key) => format!("kind guessed from the key `{key}`"),
        None => "no key tells the kind".to_owned(),
    };
    if errors.len() == 1 {
        let (kind, e) = errors.remove(0);
        let headline = format!(
            "{origin}: invalid {} ({how}; tried {}; --kind to choose)",
            kind.name(),
            tried.join(", ")
        );
        return invalid(headline, e);
    }
    let detail: Vec<String> = errors
        .iter()
        .map(|(k, e)| format!("as {}: {e}", k.name()))
        .collect();
    let headline = format!(
        "{origin}: not a valid {} ({how}; --kind to choose)",
        tried.join(" or ")
    );
    let error = FunctionError::new(sluice::ErrorKind::InvalidInput, detail.join("; "));
    Verdict::Invalid { headline, error }
}

/// `sluice validate FILE [--kind K]`.
pub fn main(path: &Path, kind: Option<Kind>) -> ExitCode {
    let text = match read_text(path) {
        Ok(t) => t,
        Err(e) => return crate::exit::Outcome::Failed(e).report(),
    };
    let origin = origin(path);
    match verdict(&text, &origin, kind) {
        Verdict::Valid(kind) => {
            println!("{origin}: valid {}", kind.name());
            ExitCode::SUCCESS
        }
        Verdict::Invalid { headline, error } => {
            eprintln!("{headline}");
            eprintln!("{}: {}", error.kind.as_str(), error.message);
            ExitCode::from(exit::code(error.kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
    }

    /// Every sample is valid as the kind its name says, and the guess finds that kind.
    #[test]
    fn every_sample_is_valid_as_its_kind() {
        for entry in std::fs::read_dir(events()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let expected = match name.split('.').next().unwrap() {
                "ingest-http" => Kind::Ingest,
                "export-postgres" => Kind::Export,
                "sweep-uploads" => Kind::Sweep,
                "transform-s3" if name.contains(".pipeline") => Kind::Pipeline,
                "transform-s3" => Kind::Event,
                other => panic!("{name}: no kind for {other}"),
            };
            let text = std::fs::read_to_string(&path).unwrap();
            match verdict(&text, &name, None) {
                Verdict::Valid(kind) => assert_eq!(kind, expected, "{name}"),
                Verdict::Invalid { headline, error } => panic!("{headline}: {error}"),
            }
            assert!(matches!(
                verdict(&text, &name, Some(expected)),
                Verdict::Valid(_)
            ));
        }
    }

    #[test]
    fn errors_are_the_parsers_and_name_what_was_tried() {
        let Verdict::Invalid { headline, error } = verdict(
            r#"{"source": {"http": {"url": "https://a.example/x"}}}"#,
            "j.json",
            None,
        ) else {
            panic!("valid")
        };
        assert_eq!(
            error.message,
            sluice::JobSpec::from_json(
                serde_json::json!({"source": {"http": {"url": "https://a.example/x"}}})
            )
            .unwrap_err()
            .to_string()
        );
        assert!(headline.contains("invalid ingest"), "{headline}");
        assert!(headline.contains("`source.http`"), "{headline}");

        let Verdict::Invalid { headline, error } = verdict(r#"{"nothing": 1}"#, "n.json", None)
        else {
            panic!("valid")
        };
        for kind in ALL {
            assert!(headline.contains(kind.name()), "{headline}");
            assert!(
                error.message.contains(&format!("as {}:", kind.name())),
                "{}",
                error.message
            );
        }

        let Verdict::Invalid { error, .. } = verdict("{\n  \"targets\": [\n  }", "s.json", None)
        else {
            panic!("valid")
        };
        assert!(
            error.message.contains("s.json is not JSON")
                && error.message.contains("line 3 column 3"),
            "{}",
            error.message
        );
    }
}
