use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = jetjobs_gateway::Config::parse();
    jetjobs::telemetry::init(jetjobs_gateway::NAME);
    let shutdown = jetjobs::shutdown::on_signal();
    jetjobs_gateway::run(config, None, shutdown).await
}
