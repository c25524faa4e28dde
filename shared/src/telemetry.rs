//! Logging and tracing setup, the same for every service.
//!
//! `RUST_LOG` sets the filter (default `info`); `JETJOBS_LOG_FORMAT=json` switches to
//! one JSON object per line. OpenTelemetry export is wired by a later step; trace context
//! already travels in NATS headers (see [`crate::trace_context`]).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Safe to call more than once (tests): later calls are no-ops.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("JETJOBS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry.with(fmt::layer().compact()).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "Telemetry initialised.");
    }
}
