//! W3C trace context in NATS headers, through the OpenTelemetry propagator API.
//!
//! The globally installed propagator decides the format; until telemetry installs one
//! it is a no-op, so these calls cost nothing when tracing is off.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the given OpenTelemetry context into `headers`.
pub fn inject(cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers));
    });
}

/// Reads a parent context from `headers` (an empty context when there is none).
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
        }
        None => opentelemetry::Context::new(),
    }
}

/// Writes the current context (the active span, once tracing exports) into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&opentelemetry::Context::current(), headers);
}
