//! Provisioning against a real nats-server.

mod provision;
mod runtime;
