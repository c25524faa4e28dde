//! `jetjobs-loadgen`: submits many jobs through the gateway and reports throughput and
//! latency, from the submit request to the job's terminal state.
//!
//! - [`args`]: the command line;
//! - [`run`]: submits over HTTP while watching the `job_status` bucket for outcomes;
//! - [`tracker`]: per-job bookkeeping and the latency histograms;
//! - [`report`]: the [`Summary`], as a table or JSON;
//! - [`waiters`]: idle long-polling clients held open during a run (`--waiters`);
//! - [`floor`]: the raw JetStream pipeline and the `hash` bound (`jetjobs-floor`).

pub mod args;
pub mod floor;
pub mod report;
pub mod run;
pub mod tracker;
pub mod waiters;

pub use args::Args;
pub use report::{Percentiles, Summary};
pub use run::{run, run_until};

/// The NATS connection name (`nats server report connections`).
pub const NAME: &str = "loadgen";
