//! Postgres errors: the SQLSTATE, message, detail and hint in a sluice error, and what a
//! SQLSTATE means for a retry.

use crate::error::{Error, ErrorKind};
use crate::source::http::error_chain;

/// Builds the error for a failed Postgres call: the SQLSTATE and the server's message, detail
/// and hint, or the transport error with its causes. `offset` corrects a syntax error
/// position for the text sluice wrapped around the query.
pub(crate) fn pg_error(
    database: &str,
    stage: impl Into<String>,
    e: &tokio_postgres::Error,
    offset: Option<usize>,
) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code().to_owned();
            let mut message = format!("{}: {}", db.severity(), db.message());
            if let (Some(tokio_postgres::error::ErrorPosition::Original(pos)), Some(offset)) =
                (db.position(), offset)
                && (*pos as usize) > offset
            {
                message.push_str(&format!(
                    " (at character {} of the query)",
                    *pos as usize - offset
                ));
            }
            if let Some(detail) = db.detail() {
                message.push_str("; detail: ");
                message.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                message.push_str("; hint: ");
                message.push_str(hint);
            }
            let kind = sqlstate_kind(&code);
            Error::Postgres {
                database: database.to_owned(),
                stage: stage.into(),
                sqlstate: Some(code),
                message,
                kind,
            }
        }
        None => Error::Postgres {
            database: database.to_owned(),
            stage: stage.into(),
            sqlstate: None,
            message: error_chain(e),
            kind: ErrorKind::Retryable,
        },
    }
}

/// What a SQLSTATE means for a retry.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    let class = code.get(..2).unwrap_or("");
    match code {
        // statement_timeout (derived from the Lambda deadline) or a cancel.
        "57014" => ErrorKind::Timeout,
        // admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now, ...
        "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => ErrorKind::Retryable,
        "40001" | "40P01" | "55P03" => ErrorKind::Retryable,
        "42501" => ErrorKind::Upstream,
        _ => match class {
            // connection exception, insufficient resources, system error
            "08" | "53" | "58" => ErrorKind::Retryable,
            // invalid authorization (bad password), invalid grantor
            "28" | "0L" | "0P" => ErrorKind::Upstream,
            // syntax or access rule, data exception, feature not supported, invalid
            // transaction state (a write in the read-only transaction), no such database,
            // cardinality
            "42" | "22" | "0A" | "25" | "3D" | "3F" | "21" | "2F" | "39" | "38" | "P0" => {
                ErrorKind::InvalidInput
            }
            _ => ErrorKind::Upstream,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        assert_eq!(sqlstate_kind("57P01"), ErrorKind::Retryable);
        assert_eq!(sqlstate_kind("57014"), ErrorKind::Timeout);
        assert_eq!(sqlstate_kind("42601"), ErrorKind::InvalidInput);
        assert_eq!(sqlstate_kind("25006"), ErrorKind::InvalidInput);
        assert_eq!(sqlstate_kind("28P01"), ErrorKind::Upstream);
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Retryable);
        assert_eq!(sqlstate_kind("XX000"), ErrorKind::Upstream);
    }
}
