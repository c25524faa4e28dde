//! The `jetjobs` binary, run as a user runs it, against a real system: a nats-server of
//! its own per test and every service in-process (`jetjobs_e2e::system`), talked to only
//! through the gateway's HTTP API. Each module is a group of scenarios.

mod helpers;

mod dead_letters;
mod errors;
mod files;
mod history;
mod jobs;
mod stats;
mod watch;
