//! The jetjobs contract and common machinery, shared by every service.
//!
//! - [`job`], [`state`]: what a job is, the events that change it, and the state machine.
//! - [`subjects`], [`layout`]: where things live on NATS, and provisioning.
//! - [`kinds`]: the registry of job kinds.
//! - [`webhook`]: callback events, the SSRF address policy, Standard Webhooks signatures.
//! - [`fence`], [`protocol`]: who records a job's next event, and how every writer
//!   publishes (one fenced-write protocol for processors and the gateway).
//! - [`batch`]: group commit — atomic batch publish (ADR-50) and a publisher that
//!   gathers concurrent writes into batches.
//! - [`blobs`]: uploads and large results in Object Store `job_blobs` (claim-check).
//! - [`direct`]: batched direct gets (runs of sequences, the last of many subjects).
//! - [`processor`]: the runtime every processor service is built on.
//! - [`metrics`]: Prometheus metrics and the admin server that serves them.
//! - [`config`], [`telemetry`], [`shutdown`], [`trace_context`]: service plumbing.
//! - `testing` (feature `testing`): a real nats-server for tests.

pub mod batch;
pub mod blobs;
pub mod config;
pub mod direct;
pub mod fence;
pub mod job;
pub mod kinds;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod processor;
pub mod protocol;
pub mod shutdown;
pub mod state;
pub mod subjects;
pub mod telemetry;
pub mod trace_context;
pub mod webhook;

#[cfg(feature = "testing")]
pub mod testing;

pub use job::{JobId, JobRequest, Kind, Progress};
pub use state::{Change, JobEvent, JobSnapshot, JobState, ResultRef};

/// Lower-case hex of `bytes` (digests in answers, fingerprints, keys).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
