//! The jetjobs gateway: the only service clients talk to.
//!
//! It accepts jobs over HTTP, publishes them to JetStream and answers `202 Accepted` at
//! once; it reads job status from KV `job_status`, which the status service keeps up to
//! date. It never calls another service: everything goes through NATS.

mod blobs;
mod control;
mod dead_letters;
mod delay;
pub mod error;
mod extract;
mod health;
mod history;
mod jobs;
mod kind_limits;
mod kinds;
mod list;
mod metrics;
mod multipart;
mod nats_guard;
pub mod openapi;
mod paging;
mod scheduler;
mod schedules;
pub mod serve;
mod sse;
mod stats;
mod submit;
mod telemetry;
mod ui;
mod waiting;
mod watch;
mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use jetjobs::config::NatsArgs;
use jetjobs::layout;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

pub const NAME: &str = "gateway";

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "jetjobs-gateway", version, about = "The jetjobs HTTP API.")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Address to listen on.
    #[arg(long, env = "JETJOBS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest request body accepted (bytes).
    #[arg(long, env = "JETJOBS_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// A connection must send a complete request head within this many seconds (also
    /// how long an idle keep-alive connection stays open).
    #[arg(long, env = "JETJOBS_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// A request (body included) must be answered within this many seconds: `503`, or
    /// `408` if the body had not arrived. Streaming routes are exempt.
    #[arg(long, env = "JETJOBS_REQUEST_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Open connections at most; beyond it clients wait in the listen backlog.
    #[arg(long, env = "JETJOBS_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    #[arg(long, env = "JETJOBS_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Longest wait a client may ask for with `Prefer: wait=N` or `GET ...?wait=N`
    /// (seconds); clamped below the request timeout.
    #[arg(long, env = "JETJOBS_MAX_WAIT_SECS", default_value_t = 20)]
    pub max_wait_secs: u64,
    /// Seconds between keep-alive comments on an idle SSE stream.
    #[arg(long, env = "JETJOBS_SSE_KEEPALIVE_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sse_keepalive_secs: u64,
    /// `GET /v1/events` streams open at once at most (each holds a KV consumer); beyond
    /// it, `503`.
    #[arg(long, env = "JETJOBS_MAX_EVENT_STREAMS", default_value_t = 256)]
    pub max_event_streams: usize,
    /// Address ranges (comma-separated CIDRs) a callback_url with an IP-literal host may
    /// point to although they are private, loopback, link-local, ...; all public addresses
    /// are allowed. Host names are checked by the notifier when it resolves them.
    #[arg(long, env = "JETJOBS_WEBHOOK_ALLOW", default_value = "")]
    pub webhook_allow: jetjobs::webhook::AddressPolicy,
    /// Group commit: submissions that arrive together are stored as one atomic batch
    /// (one fsync for many jobs with `sync_interval: always`); a lone one goes out at once.
    /// Off by default: on a local disk (fsync ~80 µs) it halved fsyncs per job but cost
    /// JetStream more CPU than it saved (docs/performance.md); turn it on where fsync is
    /// slow (network-attached disks) and the server runs `sync_interval: always`.
    #[arg(long, env = "JETJOBS_GROUP_COMMIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub group_commit: bool,
    /// Fewer waiting writes than this are published one by one (a batch costs about
    /// four fsyncs whatever its size).
    #[arg(long, env = "JETJOBS_GROUP_COMMIT_MIN", default_value_t = 5,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=1000))]
    pub group_commit_min: usize,
    /// Largest blob accepted (`POST /v1/blobs`, a multipart submit's file), decoded size.
    #[arg(long, env = "JETJOBS_MAX_BLOB_BYTES", default_value_t = 1 << 30)]
    pub max_blob_bytes: u64,
    /// An upload no job references is deleted after this many seconds.
    #[arg(long, env = "JETJOBS_BLOB_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_ttl_secs: u64,
    /// Furthest ahead a job may be delayed (`run_at`, `delay_secs`), in seconds.
    #[arg(long, env = "JETJOBS_MAX_DELAY_SECS", default_value_t = 365 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_delay_secs: u64,
    /// The web dashboard at `/ui`; `off` removes its routes.
    #[arg(long, env = "JETJOBS_UI", default_value = "on", value_parser = parse_switch)]
    pub ui: bool,
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
fn parse_switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

impl Config {
    pub fn local(nats_url: &str) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: 1 << 20,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 1024,
            shutdown_grace_secs: 2,
            max_wait_secs: 20,
            sse_keepalive_secs: 15,
            max_event_streams: 256,
            webhook_allow: jetjobs::webhook::AddressPolicy::default(),
            group_commit: false,
            group_commit_min: 5,
            max_blob_bytes: 1 << 30,
            blob_ttl_secs: 86_400,
            max_delay_secs: 365 * 24 * 3600,
            ui: true,
        }
    }

    fn group_commit(&self) -> jetjobs::batch::GroupConfig {
        jetjobs::batch::GroupConfig {
            enabled: self.group_commit,
            min_batch: self.group_commit_min,
            retries: jetjobs::protocol::Retries::REQUEST,
            ..Default::default()
        }
    }

    fn limits(&self) -> serve::Limits {
        serve::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

/// What every handler shares. Behind one `Arc`: axum clones the state for every
/// extractor and middleware of every request, and the fields (NATS clients, KV stores
/// holding whole stream configurations) made that clone a profile's top entry — malloc,
/// free and `async_nats::Client` clone/drop, about a quarter of the gateway's CPU.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    status: kv::Store,
    claims: kv::Store,
    kinds: kinds::KindCache,
    /// `JOB_EVENTS`, read (direct get) to see a job's last event.
    events: jetstream::stream::Stream,
    /// `JOBS_INDEX`: its info gives the first listing page its start.
    index: jetstream::stream::Stream,
    /// `JOBS_DEAD`, read to retry a failed job.
    dead: jetstream::stream::Stream,
    /// Waiting and streaming: the `job_status` watch hub and its limits.
    push: waiting::Push,
    metrics: jetjobs::metrics::ApiMetrics,
    exposition: jetjobs::metrics::Exposition,
    /// Which callback addresses jobs may name.
    webhook_allow: jetjobs::webhook::AddressPolicy,
    /// Group commit of job messages (`JOBS`) and first snapshots (`job_status`).
    writers: std::sync::Arc<Writers>,
    /// Object Store `job_blobs`: uploads, and results stored by reference.
    blobs: jetjobs::blobs::Blobs,
    blob_limits: blobs::BlobLimits,
    /// Largest JSON body (also a multipart submit's `job` part).
    max_body_bytes: usize,
    /// `JOBS_SCHEDULES`: delayed jobs, expiries, recurring schedules.
    schedules: jetstream::stream::Stream,
    /// KV `job_schedules`: recurring schedules' definitions.
    schedule_defs: kv::Store,
    schedule_room: delay::ScheduleRoom,
    max_delay: Duration,
    /// KV `job_limits`: the limits per kind.
    limits: kv::Store,
    /// What `GET /v1/stats` keeps between requests.
    stats: std::sync::Arc<stats::Tracker>,
}

struct Writers {
    jobs: jetjobs::batch::GroupCommit,
    snapshots: jetjobs::batch::GroupCommit,
}

/// Every route of the gateway, each in the OpenAPI document or named as undocumented
/// ([`openapi::Routes`]). A new route is an annotated handler (`#[utoipa::path(...)]`)
/// registered here with `.routes(routes!(module::handler))`; handlers of one path go in
/// one `routes!`.
pub fn routes(config: &Config, nats: async_nats::Client) -> openapi::Routes {
    use openapi::Routes;
    use utoipa_axum::routes;
    // Request/response routes: each request must be answered within the request timeout.
    let timed = Routes::new()
        .routes(routes!(jobs::create, list::list))
        .routes(routes!(jobs::get, jobs::put, control::cancel))
        .routes(routes!(control::retry))
        .routes(routes!(jobs::result))
        .routes(routes!(history::history))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::replay))
        .routes(routes!(stats::stats))
        .routes(routes!(stats::history))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(
            schedules::get,
            schedules::replace,
            schedules::delete
        ))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(kind_limits::list))
        .routes(routes!(kind_limits::get))
        .routes(routes!(kind_limits::put_limits))
        .with(|r| {
            r.route_layer(middleware::from_fn_with_state(
                Duration::from_secs(config.request_timeout_secs),
                serve::request_timeout,
            ))
        });
    // Long-lived routes (long-poll, SSE, WebSocket) go here, outside the request timeout;
    // they should end by themselves on shutdown (the grace period cuts them otherwise).
    let streaming = Routes::new()
        .routes(routes!(sse::job_events))
        .routes(routes!(sse::all_events))
        .routes(routes!(stats::stream))
        .routes(routes!(ws::upgrade));
    // Uploads and downloads take as long as their bytes do: outside the request timeout,
    // and never compressed here (a blob is whatever its uploader sent; ranges are of its
    // bytes as stored).
    let blobs = Routes::new()
        .routes(routes!(blobs::upload))
        .routes(routes!(blobs::download));
    // `route_layer`: an unknown /v1 path is still a 404, whatever the connection.
    let v1 = timed
        .merge(streaming)
        .with(|r| r.layer(compression()))
        .merge(blobs)
        .with(|r| {
            r.route_layer(middleware::from_fn_with_state(
                nats,
                nats_guard::require_nats,
            ))
        });
    let app = if config.ui {
        v1.undocumented(
            "/ui",
            "the web dashboard: an HTML page and its assets, a client of the API",
            ui::router(),
        )
    } else {
        v1
    };
    app.routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::document))
        .undocumented(
            "/docs",
            "Swagger UI: the HTML page and assets that show /openapi.json",
            openapi::docs(),
        )
}

pub fn router(state: AppState, config: &Config) -> Router {
    let (app, api, _) = routes(config, state.client.clone()).split();
    // One `Router::layer` of one stack, not one call per layer: axum boxes every route
    // again for each call, and a request clones its route through every box (an
    // allocation each; they were ~10 % of the gateway's CPU per job at c=64).
    // Outermost first.
    let layers = tower::ServiceBuilder::new()
        // The span is named for the matched route: a `Router::layer` runs after routing.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(telemetry::request_span)
                .on_response(telemetry::on_response),
        )
        // Cross-site requests from browsers cannot change anything (the dashboard's
        // buttons use the same API as everyone else).
        .layer(middleware::from_fn(ui::same_origin))
        // Runs for every route and sees its matched template.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        // The decompression layer's refusal of another encoding is a bare 415: made
        // problem+json like the rest.
        .layer(middleware::map_response(unsupported_encoding))
        // The layers above take axum's own response type; the decompression layer's
        // has a body type of its own.
        .map_response(axum::response::IntoResponse::into_response)
        // `Content-Encoding: gzip | zstd` request bodies, decoded as they are read: the
        // size limits count decoded bytes, so a compression bomb is a 413.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::Extension(openapi::Document::new(api)));
    app.fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not support that method",
            )
        })
        .layer(layers)
        .with_state(state)
}

async fn unsupported_encoding(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let bare = response.status() == axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE
        && response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none();
    if !bare {
        return response;
    }
    let mut problem = ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-content-encoding",
        "this Content-Encoding is not accepted: send the body as is, or gzip or zstd",
    )
    .into_response();
    if let Some(accepted) = response.headers().get(axum::http::header::ACCEPT_ENCODING) {
        problem
            .headers_mut()
            .insert(axum::http::header::ACCEPT_ENCODING, accepted.clone());
    }
    problem
}

/// Responses of the JSON endpoints, compressed when the client asks (`Accept-Encoding`:
/// gzip, br, zstd). SSE, WebSocket and blob bodies are left alone.
fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{Predicate as _, SizeAbove};
    let json = |_: axum::http::StatusCode,
                _: axum::http::Version,
                headers: &axum::http::HeaderMap,
                _: &axum::http::Extensions| {
        headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim())
            .is_some_and(|essence| {
                matches!(
                    essence,
                    "application/json" | "application/problem+json" | "application/x-ndjson"
                )
            })
    };
    tower_http::compression::CompressionLayer::new().compress_when(SizeAbove::new(32).and(json))
}

/// Serves the API until `shutdown`, then finishes in-flight requests and returns.
/// With `listener` the gateway serves on it (tests bind port 0); otherwise it binds
/// `config.listen`.
pub async fn run(
    config: Config,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A wait must end before the request timeout would cut it off with a 503: clamped
    // (not refused), so lowering the request timeout alone never stops a gateway starting.
    let max_wait_secs = config
        .max_wait_secs
        .min(config.request_timeout_secs.saturating_sub(1));
    if max_wait_secs < config.max_wait_secs {
        tracing::warn!(
            configured = config.max_wait_secs,
            applied = max_wait_secs,
            request_timeout = config.request_timeout_secs,
            "JETJOBS_MAX_WAIT_SECS must be below JETJOBS_REQUEST_TIMEOUT_SECS; clamped."
        );
    }
    let client = config.nats.connect(NAME).await?;
    let js = jetstream::new(client.clone());
    layout::require(&js, &health::requirements()).await?;
    let open = |bucket: &'static str| {
        let js = js.clone();
        async move {
            js.get_key_value(bucket)
                .await
                .with_context(|| format!("opening KV {bucket}"))
        }
    };
    let status = open(layout::STATUS_BUCKET).await?;
    let workers = open(layout::WORKERS_BUCKET).await?;
    let push = waiting::Push {
        hub: watch::Hub::new(status.clone(), shutdown.clone()),
        shutdown: shutdown.clone(),
        max_wait: Duration::from_secs(max_wait_secs),
        sse_keepalive: Duration::from_secs(config.sse_keepalive_secs),
        event_streams: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_event_streams)),
    };
    let mut registry = jetjobs::metrics::Registry::default();
    let api_metrics = jetjobs::metrics::ApiMetrics::register(&mut registry);
    // The gateway shows every queue, so one scrape of it answers "how deep is each queue".
    let consumers = jetjobs::metrics::ConsumerGauges::register_streams(
        &mut registry,
        js.clone(),
        vec![
            layout::JOBS_STREAM.to_string(),
            layout::EVENTS_STREAM.to_string(),
        ],
    );
    let state = AppState(std::sync::Arc::new(Shared {
        metrics: api_metrics,
        exposition: jetjobs::metrics::Exposition::new(registry, Some(consumers)),
        status,
        claims: open(layout::IDEMPOTENCY_BUCKET).await?,
        kinds: kinds::KindCache::start(open(layout::KINDS_BUCKET).await?, shutdown.clone()),
        events: js
            .get_stream(layout::EVENTS_STREAM)
            .await
            .context("opening stream JOB_EVENTS")?,
        index: js
            .get_stream(layout::INDEX_STREAM)
            .await
            .context("opening stream JOBS_INDEX")?,
        dead: js
            .get_stream(layout::DEAD_STREAM)
            .await
            .context("opening stream JOBS_DEAD")?,
        writers: std::sync::Arc::new(Writers {
            jobs: jetjobs::batch::GroupCommit::start(
                client.clone(),
                js.clone(),
                config.group_commit(),
                shutdown.clone(),
            ),
            snapshots: jetjobs::batch::GroupCommit::start(
                client.clone(),
                js.clone(),
                config.group_commit(),
                shutdown.clone(),
            ),
        }),
        blobs: jetjobs::blobs::Blobs::open(&js)
            .await
            .context("opening Object Store job_blobs")?,
        max_body_bytes: config.max_body_bytes,
        schedules: js
            .get_stream(layout::SCHEDULES_STREAM)
            .await
            .context("opening stream JOBS_SCHEDULES")?,
        schedule_defs: open(layout::SCHEDULES_BUCKET).await?,
        schedule_room: delay::ScheduleRoom::default(),
        max_delay: Duration::from_secs(config.max_delay_secs),
        limits: open(layout::LIMITS_BUCKET).await?,
        stats: std::sync::Arc::default(),
        blob_limits: blobs::BlobLimits {
            max_bytes: config.max_blob_bytes,
            ttl: Duration::from_secs(config.blob_ttl_secs),
        },
        client: client.clone(),
        js,
        push,
        webhook_allow: config.webhook_allow.clone(),
    }));
    tokio::spawn(blobs::sweep_forever(state.clone(), shutdown.clone()));
    tokio::spawn(scheduler::run(state.clone(), shutdown.clone()));
    tokio::spawn(stats::run(state.clone(), workers, shutdown.clone()));
    let app = router(state, &config);
    let listener = match listener {
        Some(listener) => listener,
        None => serve::bind(config.listen).with_context(|| format!("binding {}", config.listen))?,
    };
    tracing::info!(addr = %listener.local_addr()?, "Gateway listening.");
    serve::serve(listener, app, config.limits(), shutdown).await;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "Could not flush NATS on shutdown.");
    }
    tracing::info!("Gateway stopped.");
    Ok(())
}
