//! The jetjobs gateway: the only service clients talk to.
//!
//! It accepts jobs over HTTP, publishes them to JetStream and answers `202 Accepted` at
//! once; it reads job status from KV `job_status`, which the status service keeps up to
//! date. It never calls another service: everything goes through NATS.

pub mod error;
mod extract;
mod health;
mod jobs;
mod kinds;
mod submit;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
}

impl Config {
    pub fn local(nats_url: &str) -> Self {
        Self {
            nats: NatsArgs::local(nats_url),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    client: async_nats::Client,
    js: jetstream::Context,
    status: kv::Store,
    claims: kv::Store,
    kinds: kinds::KindCache,
}

pub fn router(state: AppState, config: &Config) -> Router {
    Router::new()
        .route("/v1/jobs", post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get).put(jobs::put))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not support that method",
            )
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the API until `shutdown`, then finishes in-flight requests and returns.
/// With `listener` the gateway serves on it (tests bind port 0); otherwise it binds
/// `config.listen`.
pub async fn run(
    config: Config,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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
    let state = AppState {
        status: open(layout::STATUS_BUCKET).await?,
        claims: open(layout::IDEMPOTENCY_BUCKET).await?,
        kinds: kinds::KindCache::start(open(layout::KINDS_BUCKET).await?, shutdown.clone()),
        client: client.clone(),
        js,
    };
    let app = router(state, &config);
    let listener = match listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?,
    };
    tracing::info!(addr = %listener.local_addr()?, "Gateway listening.");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "Could not flush NATS on shutdown.");
    }
    tracing::info!("Gateway stopped.");
    Ok(())
}
