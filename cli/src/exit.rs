//! How a run ends: the summary on stdout, or `<ErrorType>: <message>` on stderr, and the exit
//! code of each outcome.
//!
//! | code | outcome |
//! |---|---|
//! | 0 | done (the summary is on stdout) |
//! | 1 | a failure of a type this build does not know |
//! | 2 | bad command line (clap's usage error) |
//! | 3 | `InvalidInput`: the spec, pipeline, URL or data is wrong; the same input fails again |
//! | 4 | `Upstream`: the source answered, but not with what the job needs (4xx, corrupt data) |
//! | 5 | `Retryable`: a transient failure (network, 5xx, throttling); try again later |
//! | 6 | `Timeout`: a time limit of the job passed (a retry wait, `statement_timeout`) |
//! | 7 | `Internal`: a bug in sluice (a panic); nothing was written |
//! | 130 | interrupted by SIGINT (Ctrl-C): open uploads aborted, nothing completed |
//! | 143 | interrupted by SIGTERM: likewise |

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use serde_json::Value;
use sluice::ErrorKind;
use sluice::lambda::FunctionError;

/// Exit code of an InvalidInput failure (also `sluice validate` of an invalid file).
pub const INVALID_INPUT: u8 = 3;

/// The exit code of a failure of `kind`.
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput => INVALID_INPUT,
        ErrorKind::Upstream => 4,
        ErrorKind::Retryable => 5,
        ErrorKind::Timeout => 6,
        ErrorKind::Internal => 7,
        _ => 1,
    }
}

/// A signal that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`docker stop`, ECS stopping a task, AWS Batch terminating a job).
    Terminate,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as shells report a process a signal ended.
    pub fn code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The job's summary.
    Done(Value),
    /// The job failed (or panicked: an `Internal` failure); its uploads were aborted.
    Failed(FunctionError),
    /// A signal stopped the job; its uploads were aborted.
    Interrupted(Signal),
}

impl From<Result<Value, FunctionError>> for Outcome {
    fn from(result: Result<Value, FunctionError>) -> Self {
        match result {
            Ok(summary) => Outcome::Done(summary),
            Err(err) => Outcome::Failed(err),
        }
    }
}

impl Outcome {
    /// Prints the outcome (the summary on stdout, an error on stderr) and gives the exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Outcome::Done(summary) => {
                print_json(&summary);
                ExitCode::SUCCESS
            }
            Outcome::Failed(err) => {
                eprintln!("{}: {}", err.kind.as_str(), err.message);
                ExitCode::from(code(err.kind))
            }
            Outcome::Interrupted(signal) => {
                eprintln!(
                    "Interrupted: {}: the job was stopped; its uploads were aborted and no \
                     object was completed",
                    signal.name()
                );
                ExitCode::from(signal.code())
            }
        }
    }
}

/// `value` on stdout: indented on a terminal, one line otherwise (for `jq` and log shippers).
pub fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    let text = if out.is_terminal() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    // A closed stdout (`sluice ... | head -c0`) is not worth a panic.
    let _ = writeln!(out, "{}", text.unwrap_or_default());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        let kinds = [
            ErrorKind::InvalidInput,
            ErrorKind::Upstream,
            ErrorKind::Retryable,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| code(*k)).collect();
        codes.extend([Signal::Interrupt.code(), Signal::Terminate.code(), 0, 1, 2]);
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "codes are not distinct: {codes:?}");
    }
}
