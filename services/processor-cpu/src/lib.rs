//! `processor-cpu`: the processor for CPU-bound kinds.
//!
//! - `hash`: iterated SHA-256 over given bytes or a run of zeros;
//! - `thumbnail`: decodes a PNG or JPEG, shrinks it to fit a box, returns a PNG.
//!
//! Both run their work on the blocking thread pool (`JobContext::blocking`), so the async
//! runtime stays free for heartbeats, progress reports and other jobs.

pub mod kinds;

use clap::Parser;
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, ProcessorSpec};
use jetjobs::processor::{Processor, RuntimeConfig};
use tokio_util::sync::CancellationToken;

use kinds::hash::{Hash, HashLimits};
use kinds::thumbnail::{Thumbnail, ThumbnailLimits};

/// Service name: the NATS connection name and the durable consumer on `JOBS`.
pub const NAME: &str = layout::PROCESSOR_CPU;

const MIB: u64 = 1024 * 1024;
pub const DEFAULT_HASH_MAX_BYTES: u64 = 64 * MIB;
pub const DEFAULT_HASH_MAX_ROUNDS: u64 = 10_000_000;
pub const DEFAULT_THUMBNAIL_MAX_DIMENSION: u32 = 4096;
pub const DEFAULT_IMAGE_MAX_INPUT_DIMENSION: u32 = 16_384;
pub const DEFAULT_IMAGE_MAX_ALLOC_BYTES: u64 = 256 * MIB;
/// Below NATS's default 1 MiB `max_payload`, leaving room for the rest of the event.
pub const DEFAULT_THUMBNAIL_MAX_RESULT_BYTES: usize = 768 * 1024;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "jetjobs-processor-cpu",
    version,
    about = "jetjobs processor for CPU-bound kinds: hash, thumbnail."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    /// Largest input of a `hash` job, in bytes (decoded `data_b64`, or `size`).
    #[arg(long, env = "JETJOBS_HASH_MAX_BYTES", default_value_t = DEFAULT_HASH_MAX_BYTES)]
    pub hash_max_bytes: u64,
    /// Most rounds a `hash` job may ask for.
    #[arg(long, env = "JETJOBS_HASH_MAX_ROUNDS", default_value_t = DEFAULT_HASH_MAX_ROUNDS)]
    pub hash_max_rounds: u64,
    /// Largest `width` or `height` a `thumbnail` job may ask for.
    #[arg(long, env = "JETJOBS_THUMBNAIL_MAX_DIMENSION", default_value_t = DEFAULT_THUMBNAIL_MAX_DIMENSION)]
    pub thumbnail_max_dimension: u32,
    /// Widest or tallest image a `thumbnail` job may send; checked from the header,
    /// before any pixel is decoded.
    #[arg(long, env = "JETJOBS_IMAGE_MAX_INPUT_DIMENSION", default_value_t = DEFAULT_IMAGE_MAX_INPUT_DIMENSION)]
    pub image_max_input_dimension: u32,
    /// Most memory the decoder may allocate for one image (guards against decompression bombs).
    #[arg(long, env = "JETJOBS_IMAGE_MAX_ALLOC_BYTES", default_value_t = DEFAULT_IMAGE_MAX_ALLOC_BYTES)]
    pub image_max_alloc_bytes: u64,
    /// Longest `image_b64` in a `thumbnail` result; a bigger thumbnail fails the job
    /// rather than exceed the NATS message size when its result is published.
    #[arg(long, env = "JETJOBS_THUMBNAIL_MAX_RESULT_BYTES", default_value_t = DEFAULT_THUMBNAIL_MAX_RESULT_BYTES)]
    pub thumbnail_max_result_bytes: usize,
}

impl Config {
    /// The defaults, against a NATS server at `nats_url`, ignoring the environment
    /// (so a test is not changed by whatever `JETJOBS_*` the shell exports).
    pub fn local(nats_url: impl Into<String>) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            runtime: RuntimeConfig::default(),
            hash_max_bytes: DEFAULT_HASH_MAX_BYTES,
            hash_max_rounds: DEFAULT_HASH_MAX_ROUNDS,
            thumbnail_max_dimension: DEFAULT_THUMBNAIL_MAX_DIMENSION,
            image_max_input_dimension: DEFAULT_IMAGE_MAX_INPUT_DIMENSION,
            image_max_alloc_bytes: DEFAULT_IMAGE_MAX_ALLOC_BYTES,
            thumbnail_max_result_bytes: DEFAULT_THUMBNAIL_MAX_RESULT_BYTES,
        }
    }

    pub fn hash_limits(&self) -> HashLimits {
        HashLimits {
            max_bytes: self.hash_max_bytes,
            max_rounds: self.hash_max_rounds,
        }
    }

    pub fn thumbnail_limits(&self) -> ThumbnailLimits {
        ThumbnailLimits {
            max_dimension: self.thumbnail_max_dimension,
            max_input_dimension: self.image_max_input_dimension,
            max_alloc_bytes: self.image_max_alloc_bytes,
            max_result_bytes: self.thumbnail_max_result_bytes,
        }
    }
}

/// The processor with every kind this service serves.
pub fn processor(config: &Config) -> Processor {
    Processor::new(NAME)
        .default_concurrency(Processor::cpus())
        .handler(Hash::new(config.hash_limits()))
        .handler(Thumbnail::new(config.thumbnail_limits()))
}

/// The consumer name and kinds, as `jetjobs::layout` lists them for provisioning; the
/// handlers of [`processor`] serve exactly these kinds (tested below).
pub fn spec() -> ProcessorSpec {
    layout::processor_cpu()
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
