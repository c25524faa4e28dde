//! One file per job kind: its payload, its result, and its [`jetjobs::processor::Handler`].

pub mod flaky;
pub mod noop;
pub mod sleep;
