//! While the gateway is not connected to NATS, every `/v1` request is answered `503` at
//! once, with `Retry-After`.
//!
//! Without this a request would wait for its publish or KV read to time out (seconds,
//! with the client's connection and a task held all along) only to fail the same way.
//! The client reconnects by itself; the first request after that goes through again.

use async_nats::connection::State as ConnectionState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::error::ApiError;

/// Seconds a client is told to wait: reconnecting takes about that long once NATS is back.
const RETRY_AFTER_SECS: u64 = 1;

/// Middleware for the routes that need NATS (`from_fn_with_state(client, require_nats)`).
pub async fn require_nats(
    State(client): State<async_nats::Client>,
    request: Request,
    next: Next,
) -> Response {
    match client.connection_state() {
        ConnectionState::Connected => next.run(request).await,
        state => {
            tracing::debug!(?state, "Refusing a request while NATS is unreachable.");
            ApiError::unavailable(
                "the gateway has lost its connection to NATS and is reconnecting; retry shortly",
                RETRY_AFTER_SECS,
            )
            .into_response()
        }
    }
}
