//! One file per job kind: its payload, its result, and its [`jetjobs::processor::Handler`].
//! Each keeps its work in plain functions (no `JobContext`), so unit tests call them directly.

pub mod hash;
pub mod thumbnail;

use jetjobs::processor::JobError;

/// What a blocking job returns when it noticed cancellation: another attempt may finish it.
pub(crate) fn cancelled() -> JobError {
    JobError::Retryable("cancelled".to_string())
}
