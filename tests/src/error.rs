//! The harness's error type.

use std::time::Duration;

/// Everything that can go wrong while setting up or driving a test fixture.
///
/// Messages never carry token values, secrets or response bodies that could hold them;
/// an HTTP failure reports the status and, for OAuth errors, only the `error` code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The machine lacks something the tests need (a package, `npm ci`, built binaries).
    #[error("test setup: {0}")]
    Setup(String),
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What the harness waited for.
        what: String,
        /// How long it waited.
        after: Duration,
    },
    /// A helper process exited when it should have kept running.
    #[error("{what} exited early ({status}); its output:\n{output}")]
    Exited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: String,
        /// Its stderr (or log), which never holds secrets for the fixtures of this crate.
        output: String,
    },
    /// An HTTP request could not be made or its response not read.
    #[error("HTTP {method} {url}: {message}")]
    Http {
        /// Request method.
        method: &'static str,
        /// Request URL (never carries secrets: they go in bodies and headers).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A response had an unexpected status or shape.
    #[error("unexpected response from {what}: {message}")]
    Protocol {
        /// Which request or page.
        what: String,
        /// What was wrong, without the body.
        message: String,
    },
    /// The simulated user was refused (wrong password, expired code…).
    #[error("login rejected: {0}")]
    LoginRejected(String),
}

/// Result type of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn protocol(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Protocol {
            what: what.into(),
            message: message.into(),
        }
    }
}
