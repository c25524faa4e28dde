use clap::Parser as _;
use jetjobs_processor_cpu::{Config, NAME, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    jetjobs::telemetry::init(NAME);
    let shutdown = jetjobs::shutdown::on_signal();
    run(config, shutdown).await
}
