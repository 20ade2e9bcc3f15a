//! The library's one error type.
//!
//! Every failure carries a [`ErrorKind`]; MySQL error codes and PostgreSQL
//! SQLSTATEs are mapped to kinds here, and [`ErrorKind::is_retryable`] is the
//! one retry decision. Messages say what failed and what to do next; the cause
//! is chained (`source()`), not pasted into the text.

use std::fmt;

/// What sort of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Configuration or environment is wrong; nothing was touched.
    Config,
    /// A server could not be reached or dropped the connection.
    Connection,
    /// A server refused the credentials or the privileges are missing.
    Access,
    /// A transient server condition (deadlock, lock wait timeout, shutdown).
    Transient,
    /// The tracking tables do not exist yet.
    NotInitialized,
    /// A table or column is missing, or its type cannot be carried.
    Schema,
    /// A value cannot be carried into its destination column.
    Value,
    /// A value outgrew its warehouse column in a way the column can be
    /// widened for without changing any value (a `time` past 24 hours into
    /// a `time` column, which becomes `interval`).
    Outgrown,
    /// Any other error the database reported.
    Database,
    /// The run was interrupted before it finished.
    Interrupted,
    /// The table was left alone, which is not a failure: another run
    /// holds it, or it is a view in the source.
    Skipped,
    /// A safety check stopped the table before it changed anything.
    Refused,
}

impl ErrorKind {
    /// Whether retrying the same work later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Transient)
    }
}

/// An error from this library: a kind, a message that names the thing, and
/// the underlying cause if there is one.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message and no underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, message)
    }

    /// A MySQL error, classified by its server error code.
    pub fn mysql(context: impl Into<String>, err: mysql_async::Error) -> Error {
        let kind = match &err {
            mysql_async::Error::Io(_) => ErrorKind::Connection,
            mysql_async::Error::Driver(_) => ErrorKind::Connection,
            mysql_async::Error::Server(server) => match server.code {
                // ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR
                1045 | 1044 | 1142 | 1143 => ErrorKind::Access,
                // ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_SERVER_SHUTDOWN, ER_CON_COUNT_ERROR
                1205 | 1213 | 1053 | 1040 => ErrorKind::Transient,
                // ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR, ER_BAD_DB_ERROR
                1146 | 1054 | 1049 => ErrorKind::Schema,
                _ => ErrorKind::Database,
            },
            _ => ErrorKind::Database,
        };
        Error {
            kind,
            message: context.into(),
            source: Some(Box::new(err)),
        }
    }

    /// A PostgreSQL error, classified by its SQLSTATE.
    pub fn postgres(context: impl Into<String>, err: tokio_postgres::Error) -> Error {
        let kind = match err.code().map(|c| c.code()) {
            None if err.is_closed() => ErrorKind::Connection,
            None => ErrorKind::Connection,
            Some(code) if code.starts_with("08") => ErrorKind::Connection,
            Some("28000" | "28P01" | "42501") => ErrorKind::Access,
            Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300") => {
                ErrorKind::Transient
            }
            Some("3D000" | "3F000" | "42P01" | "42703") => ErrorKind::Schema,
            Some(code) if code.starts_with("22") => ErrorKind::Value,
            Some(_) => ErrorKind::Database,
        };
        let mut message = context.into();
        if err.code().map(|c| c.code()) == Some("53100") {
            message.push_str(
                " (the warehouse's disk is full: free space on the PostgreSQL server, then run again; \
                 the batch in hand was rolled back)",
            );
        }
        Error {
            kind,
            message,
            source: Some(Box::new(err)),
        }
    }

    /// What sort of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without its causes.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The full message of an error and all its causes, `: `-separated.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_and_transient_failures_are_retried() {
        assert!(ErrorKind::Connection.is_retryable());
        assert!(ErrorKind::Transient.is_retryable());
        assert!(!ErrorKind::Access.is_retryable());
        assert!(!ErrorKind::Value.is_retryable());
        assert!(!ErrorKind::Schema.is_retryable());
    }

    #[test]
    fn chain_shows_every_cause_once() {
        let inner = std::io::Error::other("connection reset");
        let err = Error {
            kind: ErrorKind::Connection,
            message: "reading table `patient`".into(),
            source: Some(Box::new(inner)),
        };
        assert_eq!(chain(&err), "reading table `patient`: connection reset");
    }
}
