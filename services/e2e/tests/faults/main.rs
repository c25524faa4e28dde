//! The fault-injection suite: each scenario runs a real workload against a real
//! nats-server, breaks something on purpose, and checks that every job that got a 202
//! ended in a terminal state, ran to success at most once, and never moved backwards.
//!
//! Every scenario writes its row of the results table, and a run that asks for it
//! (`JETJOBS_RELIABILITY_REPORT`, see [`report`]) renders the table of
//! `docs/reliability.md` from them.

mod cluster;
mod cluster_scheduling;
mod disk_full;
mod hostile_http;
mod nats_loss;
mod report;

mod check;
mod deployment;
mod load;
mod procs;

mod crashes;
mod failures;
mod idempotency;
mod interrupt;
mod scheduled;
mod system;

/// Scenarios kill processes and load the machine on purpose; running two at once would
/// make each other's timings (ack_wait, failover) meaningless, so they take turns.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
