//! Prometheus metrics: the families every service shares, and the small admin server
//! that serves them on `/metrics` for services that have no HTTP port of their own.
//!
//! Each service builds its own [`Registry`] rather than using a process-wide one, so
//! several services started in one test process each report only their own work.
//! Names follow Prometheus conventions: `jetjobs_` prefix, base units (seconds), counters
//! end in `_total` (added by the encoder).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::job::Kind;

/// The encoder writes OpenMetrics text (`_total` counters, `# EOF`), which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

impl KindLabel {
    pub fn new(kind: &Kind) -> Self {
        Self {
            kind: kind.as_str().to_string(),
        }
    }
}

/// Seconds, from a millisecond to about 37 minutes: job run times and queue waits span
/// that range, from `noop` to a long CPU job behind a backlog.
fn seconds_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 22,
    ))
}

/// What a processor did with jobs, by kind.
#[derive(Clone, Debug)]
pub struct JobMetrics {
    pub started: Family<KindLabel, Counter>,
    pub succeeded: Family<KindLabel, Counter>,
    pub failed: Family<KindLabel, Counter>,
    pub retried: Family<KindLabel, Counter>,
    pub dead_lettered: Family<KindLabel, Counter>,
    pub run_seconds: Family<KindLabel, Histogram>,
    pub queue_wait_seconds: Family<KindLabel, Histogram>,
}

impl JobMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            run_seconds: Family::new_with_constructor(seconds_histogram),
            queue_wait_seconds: Family::new_with_constructor(seconds_histogram),
        };
        registry.register(
            "jetjobs_jobs_started",
            "Job runs started (one per attempt)",
            metrics.started.clone(),
        );
        registry.register(
            "jetjobs_jobs_succeeded",
            "Jobs whose run succeeded",
            metrics.succeeded.clone(),
        );
        registry.register(
            "jetjobs_jobs_failed",
            "Jobs that failed for good (last attempt, permanent error, or undecodable)",
            metrics.failed.clone(),
        );
        registry.register(
            "jetjobs_jobs_retried",
            "Failed attempts that will be retried",
            metrics.retried.clone(),
        );
        registry.register(
            "jetjobs_jobs_dead_lettered",
            "Jobs copied to the dead-letter stream JOBS_DEAD",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "jetjobs_job_run_seconds",
            "How long one run of a job took, from start to outcome",
            metrics.run_seconds.clone(),
        );
        registry.register(
            "jetjobs_job_queue_wait_seconds",
            "How long a job waited from submission until its first run started",
            metrics.queue_wait_seconds.clone(),
        );
        metrics
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub stream: String,
    pub consumer: String,
}

/// Pending work of durable consumers, read from JetStream consumer info at scrape time:
/// the numbers `nats consumer report` shows.
#[derive(Clone, Debug)]
pub struct ConsumerGauges {
    js: jetstream::Context,
    watched: Arc<Watched>,
    pending: Family<ConsumerLabel, Gauge>,
    ack_pending: Family<ConsumerLabel, Gauge>,
    redelivered: Family<ConsumerLabel, Gauge>,
    up: Family<ConsumerLabel, Gauge>,
}

#[derive(Debug)]
enum Watched {
    /// These `(stream, consumer)` pairs: a service's own consumer.
    Consumers(Vec<(String, String)>),
    /// Every consumer of these streams, whoever made it: the gateway's overview.
    Streams(Vec<String>),
}

/// A scrape must not hang on a slow server; stale gauges say so through `..._up`.
const CONSUMER_INFO_TIMEOUT: Duration = Duration::from_secs(2);

impl ConsumerGauges {
    /// Gauges for `consumers`, as `(stream, consumer)` pairs.
    pub fn register(
        registry: &mut Registry,
        js: jetstream::Context,
        consumers: Vec<(String, String)>,
    ) -> Self {
        Self::with(registry, js, Watched::Consumers(consumers))
    }

    /// Gauges for every consumer of `streams`, listed again at each scrape (processors
    /// come and go; a consumer that disappears is dropped from the output).
    pub fn register_streams(
        registry: &mut Registry,
        js: jetstream::Context,
        streams: Vec<String>,
    ) -> Self {
        Self::with(registry, js, Watched::Streams(streams))
    }

    fn with(registry: &mut Registry, js: jetstream::Context, watched: Watched) -> Self {
        let gauges = Self {
            js,
            watched: Arc::new(watched),
            pending: Family::default(),
            ack_pending: Family::default(),
            redelivered: Family::default(),
            up: Family::default(),
        };
        registry.register(
            "jetjobs_consumer_pending_messages",
            "Messages the consumer has not been delivered yet (its backlog)",
            gauges.pending.clone(),
        );
        registry.register(
            "jetjobs_consumer_ack_pending_messages",
            "Messages delivered and not yet acknowledged (in flight)",
            gauges.ack_pending.clone(),
        );
        registry.register(
            "jetjobs_consumer_redelivered_messages",
            "Messages delivered more than once and not yet acknowledged",
            gauges.redelivered.clone(),
        );
        registry.register(
            "jetjobs_consumer_info_up",
            "1 if the consumer's info (or, with consumer=\"\", the stream's consumer list) could be read at the last scrape, else 0",
            gauges.up.clone(),
        );
        gauges
    }

    /// Reads the consumers' info and updates the gauges.
    pub async fn refresh(&self) {
        match &*self.watched {
            Watched::Consumers(pairs) => {
                let reads = pairs.iter().map(|(stream, consumer)| async move {
                    let label = ConsumerLabel {
                        stream: stream.clone(),
                        consumer: consumer.clone(),
                    };
                    let info = tokio::time::timeout(CONSUMER_INFO_TIMEOUT, async {
                        let stream = self.js.get_stream(stream).await.ok()?;
                        let mut consumer: jetstream::consumer::PullConsumer =
                            stream.get_consumer(consumer).await.ok()?;
                        consumer.info().await.ok().cloned()
                    })
                    .await
                    .ok()
                    .flatten();
                    self.set(&label, info.as_ref());
                });
                futures::future::join_all(reads).await;
            }
            Watched::Streams(streams) => {
                for family in [&self.pending, &self.ack_pending, &self.redelivered] {
                    family.clear();
                }
                let reads = streams.iter().map(|name| async move {
                    let listed = tokio::time::timeout(CONSUMER_INFO_TIMEOUT, async {
                        let stream = self.js.get_stream(name).await.ok()?;
                        let infos: Vec<_> = stream.consumers().take(1_000).collect().await;
                        Some(infos)
                    })
                    .await
                    .ok()
                    .flatten();
                    let label = |consumer: &str| ConsumerLabel {
                        stream: name.clone(),
                        consumer: consumer.to_string(),
                    };
                    let Some(infos) = listed else {
                        self.up.get_or_create(&label("")).set(0);
                        return;
                    };
                    self.up.get_or_create(&label("")).set(1);
                    for info in infos.into_iter().flatten() {
                        // Only named (durable) consumers: ephemeral ones come and go with
                        // each `nats` CLI call and would only add noise.
                        if info.config.durable_name.is_some() {
                            self.set(&label(&info.name), Some(&info));
                        }
                    }
                });
                futures::future::join_all(reads).await;
            }
        }
    }

    fn set(&self, label: &ConsumerLabel, info: Option<&jetstream::consumer::Info>) {
        let Some(info) = info else {
            self.up.get_or_create(label).set(0);
            return;
        };
        let set = |family: &Family<ConsumerLabel, Gauge>, value: u64| {
            family
                .get_or_create(label)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.pending, info.num_pending);
        set(&self.ack_pending, info.num_ack_pending as u64);
        set(&self.redelivered, info.num_redelivered as u64);
        if matches!(&*self.watched, Watched::Consumers(_)) {
            self.up.get_or_create(label).set(1);
        }
    }
}

/// A service's metrics, ready to be rendered: its registry and what must be read just
/// before each scrape.
#[derive(Clone)]
pub struct Exposition {
    registry: Arc<Registry>,
    consumers: Option<ConsumerGauges>,
}

impl Exposition {
    pub fn new(registry: Registry, consumers: Option<ConsumerGauges>) -> Self {
        Self {
            registry: Arc::new(registry),
            consumers,
        }
    }

    /// The Prometheus text exposition of every metric, consumer gauges freshly read.
    pub async fn render(&self) -> String {
        if let Some(consumers) = &self.consumers {
            consumers.refresh().await;
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "Could not encode metrics.");
        }
        out
    }

    /// An axum response for `GET /metrics`.
    pub async fn response(&self) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            self.render().await,
        )
            .into_response()
    }
}

/// Where a service without an HTTP API serves `/metrics` (and `/healthz`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AdminArgs {
    /// Address of the admin HTTP server (`/metrics`, `/healthz`); none if unset.
    #[arg(long, env = "JETJOBS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    exposition: Exposition,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = move || -> BoxFuture<'static, Response> {
        let exposition = exposition.clone();
        Box::pin(async move { exposition.response().await })
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds the admin address, if one is configured, and serves it in the background.
/// A configured address that cannot be bound is an error: a service that was told to
/// expose metrics should not run blind.
pub async fn spawn_admin(
    args: &AdminArgs,
    exposition: Exposition,
    shutdown: CancellationToken,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(addr) = args.admin_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "Admin server (metrics) listening.");
    tokio::spawn(async move {
        if let Err(e) = serve_admin(listener, exposition, shutdown).await {
            tracing::warn!(error = %e, "The admin server stopped.");
        }
    });
    Ok(Some(local))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// The notifier's deliveries.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    deliveries: Family<OutcomeLabel, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            deliveries: Family::default(),
        };
        registry.register(
            "jetjobs_webhook_deliveries",
            "Webhook delivery attempts recorded, by outcome: delivered, retrying or failed",
            metrics.deliveries.clone(),
        );
        metrics
    }

    pub fn count(&self, outcome: &str) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub method: String,
    /// The route template (`/v1/jobs/{id}`), never the raw path: one series per route.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
}

/// The gateway's own metrics: what clients asked for and how it went.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    pub submitted: Family<KindLabel, Counter>,
    pub requests: Family<HttpLabel, Counter>,
    pub request_seconds: Family<RouteLabel, Histogram>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            submitted: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds_histogram),
        };
        registry.register(
            "jetjobs_jobs_submitted",
            "Jobs accepted (202) by the gateway; replays of an existing job are not counted",
            metrics.submitted.clone(),
        );
        registry.register(
            "jetjobs_http_requests",
            "HTTP requests answered, by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "jetjobs_http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head; streams not included)",
            metrics.request_seconds.clone(),
        );
        metrics
    }
}
