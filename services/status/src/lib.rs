//! The status service: projects `JOB_EVENTS` into the KV bucket `job_status`.
//!
//! Every write is a compare-and-set on the key's revision, and every event goes through
//! [`jetjobs::state::apply`], so redelivered, duplicated or out-of-order events can never
//! move a job backwards, and the projection can run as several replicas at once.

mod projector;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, Requirement};
use tokio_util::sync::CancellationToken;

pub use projector::Projector;

pub const NAME: &str = "status";

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "jetjobs-status",
    version,
    about = "Projects job events into KV job_status."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Independent writers; events of one job always go to the same one, in order.
    #[arg(long, env = "JETJOBS_STATUS_SHARDS", default_value_t = 64)]
    pub shards: usize,
    /// Events buffered per shard; a full shard stops the pull (backpressure).
    #[arg(long, env = "JETJOBS_STATUS_SHARD_BUFFER", default_value_t = 256)]
    pub shard_buffer: usize,
    /// Events asked for per pull request.
    #[arg(long, env = "JETJOBS_STATUS_BATCH", default_value_t = 512)]
    pub batch: usize,
    /// Snapshots of live jobs remembered per shard, to save a KV read per event.
    #[arg(long, env = "JETJOBS_STATUS_CACHE", default_value_t = 4_096)]
    pub cache_per_shard: usize,
}

impl Config {
    pub fn local(nats_url: &str) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            shards: 64,
            shard_buffer: 256,
            batch: 512,
            cache_per_shard: 4_096,
        }
    }
}

/// Runs the projection until `shutdown`; then acks what it has written and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = config.nats.connect(NAME).await?;
    let js = jetstream::new(client.clone());
    layout::require(
        &js,
        &[
            Requirement::Stream(layout::EVENTS_STREAM),
            Requirement::Bucket(layout::STATUS_BUCKET),
            Requirement::Consumer {
                stream: layout::EVENTS_STREAM,
                name: layout::STATUS_CONSUMER.into(),
            },
        ],
    )
    .await?;
    let bucket = js
        .get_key_value(layout::STATUS_BUCKET)
        .await
        .context("opening KV job_status")?;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .context("opening stream JOB_EVENTS")?
        .get_consumer(layout::STATUS_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("opening consumer status-projector: {e}"))?;
    tracing::info!(shards = config.shards, "Status service started.");
    Projector::new(
        bucket,
        config.shards,
        config.shard_buffer,
        config.cache_per_shard,
    )
    .run(consumer, config.batch, shutdown)
    .await;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "Could not flush acks on shutdown.");
    }
    tracing::info!("Status service stopped.");
    Ok(())
}
