//! The one error type of the library. Each variant says what the user can do about it;
//! `main.rs` and the HTTP layer turn it into an exit code or a status.

use crate::job::JobState;

/// Everything that can go wrong inside errand.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `field` names what to fix, `message` says how.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    /// The thing named does not exist (or the caller may not know that it does).
    #[error("{0} not found")]
    NotFound(String),

    /// The state machine forbids the action on the job's current state.
    #[error("job {id} is {state}: cannot {action} it")]
    Conflict {
        id: i64,
        state: JobState,
        action: String,
    },

    /// A state change raced with another writer: the job was no longer in the expected
    /// state (or no longer held by this lease). Never silently overwritten.
    #[error("job {id} changed under us (expected {expected})")]
    Expired { id: i64, expected: JobState },

    /// The configuration file or an environment override is invalid.
    #[error("config: {key}: {reason}")]
    Config { key: String, reason: String },

    /// The database file cannot be used (not a database, corrupt, newer schema).
    #[error("database {path}: {reason}")]
    Database { path: String, reason: String },

    /// errand is shutting down and takes no new work.
    #[error("errand is shutting down")]
    ShuttingDown,

    /// An SQLite error we did not expect.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The connection pool could not hand out a connection in time.
    #[error("database pool: {0}")]
    Pool(#[from] r2d2::Error),

    /// A file or socket operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Shorthand for an [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
