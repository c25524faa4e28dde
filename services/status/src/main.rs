use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = jetjobs_status::Config::parse();
    jetjobs::telemetry::init(jetjobs_status::NAME);
    let shutdown = jetjobs::shutdown::on_signal();
    if config.rebuild {
        let report = jetjobs_status::run_rebuild(config, shutdown).await?;
        println!("{report}");
        anyhow::ensure!(report.is_complete(), "the rebuild is incomplete");
        return Ok(());
    }
    jetjobs_status::run(config, shutdown).await
}
