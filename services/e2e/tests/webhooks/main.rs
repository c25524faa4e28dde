//! End-to-end webhook scenarios against a real nats-server and real HTTP receivers.

mod crash;
mod delivery;
mod harness;
// The one in-process system builder, shared with the `it` and `tracing` suites.
#[path = "../it/helpers.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;
mod ssrf;
mod tls;
