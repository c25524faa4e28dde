//! The notifier: delivers a job's events to its `callback_url` as signed webhooks.
//!
//! It reads `JOB_EVENTS` through its own durable consumer (`notifier`, filtered to the
//! jobs' own subjects, so it never reads its own records), POSTs each event a callback
//! asked for, and records every attempt as a webhook record on
//! `jobs.events.<kind>.<id>.webhook`, which the status service projects into the job's
//! snapshot. An event is acked only once its outcome is recorded, so a notifier killed
//! at any moment loses no webhook: the event comes again (at least once, never lost).

mod client;
mod deliver;
mod retry;
mod worker;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, Requirement};
use jetjobs::metrics;
use jetjobs::webhook::{self, AddressPolicy};
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "notifier";

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "jetjobs-notifier",
    version,
    about = "Delivers signed webhooks (Standard Webhooks) for job events, with retries."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Signing secrets, `whsec_<base64>`, comma-separated. Every delivery carries one
    /// signature per secret, so a secret is rotated by adding the new one, moving
    /// receivers to it, then removing the old one.
    #[arg(long, env = "JETJOBS_WEBHOOK_SECRETS", hide_env_values = true)]
    pub secrets: String,
    /// Deliveries in flight at once.
    #[arg(long, env = "JETJOBS_CONCURRENCY", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub concurrency: usize,
    /// A delivery (connect, send, response head) must finish within this many seconds.
    #[arg(long, env = "JETJOBS_WEBHOOK_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_secs: u64,
    /// First retry delay; it doubles with each attempt (with jitter).
    #[arg(long, env = "JETJOBS_WEBHOOK_RETRY_BASE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_base_ms: u64,
    /// Longest backoff delay between two attempts.
    #[arg(long, env = "JETJOBS_WEBHOOK_RETRY_MAX_MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_ms: u64,
    /// Longest Retry-After (of a 429, 503, ...) honoured; longer ones are cut to it.
    #[arg(
        long,
        env = "JETJOBS_WEBHOOK_RETRY_AFTER_MAX_SECS",
        default_value_t = 3_600
    )]
    pub retry_after_max_secs: u64,
    /// How long after an event happened its delivery is still retried; then it is
    /// recorded as failed.
    #[arg(long, env = "JETJOBS_WEBHOOK_RETRY_FOR_SECS", default_value_t = 86_400)]
    pub retry_for_secs: u64,
    /// Address ranges (comma-separated CIDRs) webhooks may go to although they are
    /// private, loopback, link-local, ...; every public address is allowed.
    #[arg(long, env = "JETJOBS_WEBHOOK_ALLOW", default_value = "")]
    pub allow: AddressPolicy,
    /// A PEM file of CA certificates trusted for https callbacks besides the system's
    /// (receivers with certificates of a private CA).
    #[arg(long, env = "JETJOBS_WEBHOOK_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// On shutdown, how long in-flight deliveries may take to finish before they are
    /// handed back.
    #[arg(long, env = "JETJOBS_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub admin: jetjobs::metrics::AdminArgs,
}

impl Config {
    pub fn local(nats_url: &str, secrets: &str) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            secrets: secrets.into(),
            concurrency: 64,
            timeout_secs: 10,
            retry_base_ms: 1_000,
            retry_max_ms: 3_600_000,
            retry_after_max_secs: 3_600,
            retry_for_secs: 86_400,
            allow: AddressPolicy::default(),
            ca_file: None,
            shutdown_grace_secs: 2,
            admin: jetjobs::metrics::AdminArgs::default(),
        }
    }
}

/// Delivers webhooks until `shutdown`; then lets in-flight deliveries finish (within the
/// grace period), hands back the rest, and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let secrets = webhook::parse_secrets(&config.secrets).context("JETJOBS_WEBHOOK_SECRETS")?;
    anyhow::ensure!(
        !secrets.is_empty(),
        "JETJOBS_WEBHOOK_SECRETS names no secret; webhooks are always signed"
    );
    // Reading the system's CA certificates is file I/O: off the async runtime.
    let http = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || client::build(&config))
            .await
            .context("building the HTTP client")??
    };
    let client = config.nats.connect(NAME).await?;
    let js = jetstream::new(client.clone());
    layout::require(
        &js,
        &[
            Requirement::Stream(layout::EVENTS_STREAM),
            Requirement::Consumer {
                stream: layout::EVENTS_STREAM,
                name: layout::NOTIFIER_CONSUMER.into(),
            },
        ],
    )
    .await?;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(layout::EVENTS_STREAM)
        .await
        .context("opening stream JOB_EVENTS")?
        .get_consumer(layout::NOTIFIER_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("opening consumer notifier: {e}"))?;
    let mut registry = metrics::Registry::default();
    let deliveries = metrics::WebhookMetrics::register(&mut registry);
    let consumers = metrics::ConsumerGauges::register(
        &mut registry,
        js.clone(),
        vec![(
            layout::EVENTS_STREAM.to_string(),
            layout::NOTIFIER_CONSUMER.to_string(),
        )],
    );
    let admin = CancellationToken::new();
    metrics::spawn_admin(
        &config.admin,
        metrics::Exposition::new(registry, Some(consumers)),
        admin.clone(),
    )
    .await
    .context("starting the admin server")?;
    let _admin = admin.drop_guard();
    let deliverer = deliver::Deliverer {
        metrics: deliveries,
        js,
        http,
        secrets,
        policy: config.allow.clone(),
        timeout: Duration::from_secs(config.timeout_secs),
        retry: retry::Policy {
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
            retry_after_max: Duration::from_secs(config.retry_after_max_secs),
            period: Duration::from_secs(config.retry_for_secs),
        },
    };
    tracing::info!(concurrency = config.concurrency, "Notifier started.");
    worker::run(
        consumer,
        deliverer,
        config.concurrency,
        Duration::from_secs(config.shutdown_grace_secs),
        shutdown,
    )
    .await;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "Could not flush acks on shutdown.");
    }
    tracing::info!("Notifier stopped.");
    Ok(())
}
