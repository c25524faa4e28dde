use clap::Parser as _;
use jetjobs_processor_cpu::{Config, NAME, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = jetjobs::telemetry::init(NAME)?;
    let shutdown = jetjobs::shutdown::on_signal_within(std::time::Duration::from_secs(
        config.runtime.shutdown_grace_secs,
    ));
    let result = run(config, shutdown).await;
    telemetry.shutdown().await;
    result
}
