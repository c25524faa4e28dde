//! Provisioning, group commit and the processor runtime against a real nats-server.

mod batch;
mod provision;
mod runtime;
