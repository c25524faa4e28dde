//! End-to-end scenarios: gateway, processors and status service against a real
//! nats-server, talked to over real HTTP. Each test starts its own server and system.

mod helpers;

mod backpressure;
mod blobs;
mod crash;
mod dead_letters;
mod errors;
mod group_commit;
mod history;
mod idempotency;
mod jobs;
mod lifecycle;
mod limits;
mod listing;
mod metrics;
mod openapi;
mod priorities;
mod projection;
mod push_limits;
mod read_your_writes;
mod rebuild;
mod results;
mod saturation;
mod scheduling;
mod sse;
mod sse_client;
mod stats;
mod ui;
mod uploads;
mod wait;
mod ws;
