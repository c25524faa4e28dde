use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = jetjobs_notifier::Config::parse();
    jetjobs::telemetry::init(jetjobs_notifier::NAME);
    let shutdown = jetjobs::shutdown::on_signal();
    jetjobs_notifier::run(config, shutdown).await
}
