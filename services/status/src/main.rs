use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = jetjobs_status::Config::parse();
    jetjobs::telemetry::init(jetjobs_status::NAME);
    let shutdown = jetjobs::shutdown::on_signal();
    jetjobs_status::run(config, shutdown).await
}
