//! `processor-io`: the processor for I/O-bound kinds.
//!
//! - `sleep`: waits `ms` milliseconds without holding a thread (a stand-in for calling a
//!   slow API), stopping early when the job is cancelled;
//! - `noop`: does nothing, as cheaply as possible, so benchmarks measure the pipeline;
//! - `flaky`: fails as asked (retryable, permanent, panic, hang), to see retries,
//!   timeouts and dead letters at work.

pub mod kinds;

use clap::Parser;
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, ProcessorSpec};
use jetjobs::processor::{Processor, RuntimeConfig};
use tokio_util::sync::CancellationToken;

/// Service name: the NATS connection name and the durable consumer on `JOBS`.
pub const NAME: &str = layout::PROCESSOR_IO;

pub const DEFAULT_SLEEP_MAX_MS: u64 = 60_000;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "jetjobs-processor-io",
    version,
    about = "jetjobs processor for I/O-bound kinds: sleep, noop, flaky."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Longest `sleep` a job may ask for; a longer one fails at once, without retries.
    #[arg(long, env = "JETJOBS_SLEEP_MAX_MS", default_value_t = DEFAULT_SLEEP_MAX_MS)]
    pub sleep_max_ms: u64,
}

impl Config {
    /// The defaults, against a NATS server at `nats_url`, ignoring the environment
    /// (so a test is not changed by whatever `JETJOBS_*` the shell exports).
    pub fn local(nats_url: impl Into<String>) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            runtime: RuntimeConfig::default(),
            sleep_max_ms: DEFAULT_SLEEP_MAX_MS,
        }
    }
}

/// The processor with every kind this service serves.
pub fn processor(config: &Config) -> Processor {
    Processor::new(NAME)
        .handler(kinds::sleep::Sleep::new(config.sleep_max_ms))
        .handler(kinds::noop::Noop)
        .handler(kinds::flaky::Flaky)
}

/// The consumer name and kinds, as `jetjobs::layout` lists them for provisioning; the
/// handlers of [`processor`] serve exactly these kinds (tested below).
pub fn spec() -> ProcessorSpec {
    layout::processor_io()
}

/// Connects to NATS and runs jobs until `shutdown` is cancelled, then finishes or
/// releases the jobs in flight.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    processor(&config)
        .serve(&config.nats, config.runtime.clone(), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Provisioning gives the consumer the layout's kinds: with a handler for a kind the
    /// layout lacks, the runtime refuses to start (its consumer would never deliver that
    /// kind); a kind the layout has but no handler serves is never registered, so the
    /// gateway refuses it, and a stray job of it would be handed back again and again.
    #[test]
    fn the_handlers_serve_exactly_the_layouts_kinds() {
        let served = processor(&Config::local("nats://127.0.0.1:4222")).spec();
        assert_eq!(served, spec(), "handlers (left) vs jetjobs::layout (right)");
    }
}
