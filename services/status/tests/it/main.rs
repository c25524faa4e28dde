//! The status service against a real nats-server: graceful shutdown and `--rebuild`.
//! Each test starts its own server.

mod helpers;

mod metrics;
mod rebuild;
mod shutdown;
