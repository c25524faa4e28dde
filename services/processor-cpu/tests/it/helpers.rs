use jetjobs::testing::ProcessorHarness;
use jetjobs_processor_cpu::{Config, run, spec};

/// The processor running in-process against its own nats-server.
pub struct Harness;

impl Harness {
    pub async fn start() -> ProcessorHarness {
        ProcessorHarness::start(spec(), |url, shutdown| {
            let mut config = Config::local(url);
            config.runtime.pull_expires_ms = 1_000;
            config.runtime.shutdown_grace_secs = 2;
            run(config, shutdown)
        })
        .await
    }
}
