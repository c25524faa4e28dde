//! The status service: projects `JOB_EVENTS` into the KV bucket `job_status`.
//!
//! Every write is a compare-and-set on the key's revision, and every event goes through
//! [`jetjobs::state::apply`], so redelivered, duplicated or out-of-order events can never
//! move a job backwards, and the projection can run as several replicas at once.
//! [`rebuild`] replays the streams through the same code to recreate the bucket.

mod projector;
pub mod rebuild;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, Requirement};
use jetjobs::metrics::{self, ConsumerGauges, Exposition, Registry};
use tokio_util::sync::CancellationToken;

pub use projector::Projector;

pub const NAME: &str = "status";
/// The connection name of `--rebuild`, so `nats server report connections` tells it apart.
pub const REBUILD_NAME: &str = "status-rebuild";

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "jetjobs-status",
    version,
    about = "Projects job events into KV job_status (or, with --rebuild, recreates it from the streams)."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Recreate the projection from the streams, print a summary and exit, instead of
    /// running the service.
    ///
    /// For a job_status bucket that is lost or corrupted: delete it (`nats kv del
    /// job_status`), run `jetjobs-admin provision`, then `jetjobs-status --rebuild`.
    /// Every event in JOB_EVENTS is replayed through the same state machine and
    /// compare-and-set writes as the service uses, and each job still waiting in JOBS gets
    /// its `queued` snapshot; snapshots only ever move forward, so it is safe on an existing
    /// bucket and while the service runs. It stops once it has caught up with the streams
    /// as they were when it started, and exits non-zero if anything could not be written.
    ///
    /// Limit: events older than JOB_EVENTS' retention (JETJOBS_RETENTION_HOURS at
    /// provisioning, 7 days by default) are gone, so jobs that ended before then cannot be
    /// restored.
    #[arg(long)]
    pub rebuild: bool,
    /// With --rebuild: the bucket to write, created with job_status's configuration if it
    /// does not exist (rebuild into a new bucket to compare it with the live one).
    #[arg(long, value_name = "NAME", default_value = layout::STATUS_BUCKET, requires = "rebuild")]
    pub bucket: String,
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
    /// Group commit: snapshots the shards write together are stored as one atomic batch
    /// (one fsync for many with `sync_interval: always`).
    /// Off by default: on a local disk (fsync ~80 µs) it halved fsyncs per job but cost
    /// JetStream more CPU than it saved (docs/performance.md); turn it on where fsync is
    /// slow (network-attached disks) and the server runs `sync_interval: always`.
    #[arg(long, env = "JETJOBS_GROUP_COMMIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub group_commit: bool,
    /// Fewer waiting writes than this are published one by one.
    #[arg(long, env = "JETJOBS_GROUP_COMMIT_MIN", default_value_t = 5)]
    pub group_commit_min: usize,
    #[command(flatten)]
    pub admin: jetjobs::metrics::AdminArgs,
}

impl Config {
    pub fn local(nats_url: &str) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            rebuild: false,
            bucket: layout::STATUS_BUCKET.into(),
            shards: 64,
            shard_buffer: 256,
            batch: 512,
            cache_per_shard: 4_096,
            group_commit: false,
            group_commit_min: 5,
            admin: jetjobs::metrics::AdminArgs::default(),
        }
    }
}

/// Runs `--rebuild` as configured: connects, rebuilds `config.bucket`, and reports.
pub async fn run_rebuild(
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<rebuild::Report> {
    let client = config.nats.connect(REBUILD_NAME).await?;
    let js = jetstream::new(client.clone());
    let options = rebuild::Options {
        bucket: config.bucket,
        shards: config.shards,
        shard_buffer: config.shard_buffer,
        cache_per_shard: config.cache_per_shard,
    };
    let report = rebuild::rebuild(&js, &options, &shutdown).await?;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "Could not flush on exit.");
    }
    Ok(report)
}

/// Runs the projection until `shutdown`; then acks what it has written, hands back what
/// it will not project, and returns.
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
    let mut registry = Registry::default();
    let consumers = ConsumerGauges::register(
        &mut registry,
        js.clone(),
        vec![(
            layout::EVENTS_STREAM.to_string(),
            layout::STATUS_CONSUMER.to_string(),
        )],
    );
    let admin = CancellationToken::new();
    metrics::spawn_admin(
        &config.admin,
        Exposition::new(registry, Some(consumers)),
        admin.clone(),
    )
    .await
    .context("starting the admin server")?;
    let _admin = admin.drop_guard();
    tracing::info!(shards = config.shards, "Status service started.");
    // Outlives the pull loop: the shards finish their writes after it stops.
    let writing = CancellationToken::new();
    let writer = jetjobs::batch::GroupCommit::start(
        client.clone(),
        js.clone(),
        jetjobs::batch::GroupConfig {
            enabled: config.group_commit,
            min_batch: config.group_commit_min.clamp(2, jetjobs::batch::MAX_BATCH),
            // A failed write is retried by the shard (and then handed back).
            retries: jetjobs::protocol::Retries::REQUEST,
            ..Default::default()
        },
        writing.clone(),
    );
    Projector::new(
        bucket,
        config.shards,
        config.shard_buffer,
        config.cache_per_shard,
    )
    .with_group_commit(writer)
    .run(consumer, config.batch, shutdown)
    .await;
    writing.cancel();
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "Could not flush acks on shutdown.");
    }
    tracing::info!("Status service stopped.");
    Ok(())
}
