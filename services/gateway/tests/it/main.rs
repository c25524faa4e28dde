//! End-to-end scenarios: gateway, processors and status service against a real
//! nats-server, talked to over real HTTP. Each test starts its own server and system.

mod helpers;

mod backpressure;
mod crash;
mod errors;
mod idempotency;
mod jobs;
mod lifecycle;
mod metrics;
mod projection;
mod read_your_writes;
mod rebuild;
mod saturation;
