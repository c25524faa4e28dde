use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = jetjobs_gateway::Config::parse();
    let telemetry = jetjobs::telemetry::init(jetjobs_gateway::NAME)?;
    let shutdown = jetjobs::shutdown::on_signal_within(std::time::Duration::from_secs(
        config.shutdown_grace_secs,
    ));
    let result = jetjobs_gateway::run(config, None, shutdown).await;
    telemetry.shutdown().await;
    result
}
