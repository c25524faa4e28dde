//! End-to-end webhook scenarios against a real nats-server and real HTTP receivers.

mod crash;
mod delivery;
mod harness;
mod ssrf;
mod tls;
