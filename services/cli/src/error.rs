//! What can go wrong, and the exit code each failure maps to.

use reqwest::StatusCode;

/// Exit codes, as `--help` and the README list them.
pub mod exit {
    /// Done; for `watch`, the job succeeded.
    pub const OK: u8 = 0;
    /// Any other error; for `watch`, the job failed.
    pub const FAILURE: u8 = 1;
    /// Bad usage: unknown command or flag, malformed argument (clap's own code too).
    pub const USAGE: u8 = 2;
    /// `watch`: the job was cancelled.
    pub const CANCELLED: u8 = 3;
    /// The job (or blob, route) does not exist: a 404.
    pub const NOT_FOUND: u8 = 4;
    /// The gateway is unavailable: a 503, connection refused, a timeout.
    pub const UNAVAILABLE: u8 = 5;
}

/// The exit codes as `--help` shows them (the `after_help` of every command).
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (watch: the job succeeded)
  1  error (watch: the job failed)
  2  bad usage
  3  watch: the job was cancelled
  4  not found (404)
  5  gateway unavailable (503, connection refused, timeout)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway answered with an error; `detail` is its problem+json `detail`.
    #[error("{detail} ({status})", status = .status.as_u16())]
    Api {
        status: StatusCode,
        detail: String,
        /// For a `503` that names a job (`job_id`): it may have been queued.
        job_id: Option<String>,
    },
    /// The gateway could not be reached, or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure of the HTTP exchange (a broken connection mid-body, a redirect loop).
    #[error("{0}")]
    Http(String),
    /// The gateway answered something this client cannot read.
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
    /// An argument clap could not check (a payload that is not JSON, an unreadable file).
    #[error("{0}")]
    Usage(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing to stdout failed (other than the reader going away).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// Stdout's reader went away (`jetjobs ls --all | head`): not a failure, stop quietly.
    #[error("stdout was closed")]
    Closed,
}

impl Error {
    /// The exit code this failure ends the process with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api { status, .. } if *status == StatusCode::NOT_FOUND => exit::NOT_FOUND,
            Error::Api { status, .. }
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::GATEWAY_TIMEOUT
                    || *status == StatusCode::BAD_GATEWAY =>
            {
                exit::UNAVAILABLE
            }
            Error::Unavailable(_) => exit::UNAVAILABLE,
            Error::Usage(_) => exit::USAGE,
            Error::Closed => exit::OK,
            _ => exit::FAILURE,
        }
    }

    pub(crate) fn file(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::File {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's own message is "error sending request for url (…)"; the cause at the
        // bottom of the chain ("Connection refused (os error 111)") is what tells.
        let mut root = None;
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            root = Some(cause.to_string());
            source = cause.source();
        }
        let url = e
            .url()
            .map(|u| format!(" at {}", u.origin().ascii_serialization()))
            .unwrap_or_default();
        let cause = root.unwrap_or_else(|| e.to_string());
        if e.is_timeout() {
            Error::Unavailable(format!("the gateway{url} did not answer in time"))
        } else if e.is_connect() {
            Error::Unavailable(format!("cannot reach the gateway{url}: {cause}"))
        } else {
            Error::Http(format!(
                "the exchange with the gateway{url} failed: {cause}"
            ))
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
