use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = jetjobs_status::Config::parse();
    let shutdown = jetjobs::shutdown::on_signal();
    if config.rebuild {
        // A rebuild replays history: nothing in it is worth a trace.
        jetjobs::telemetry::init_logs(jetjobs_status::NAME);
        let report = jetjobs_status::run_rebuild(config, shutdown).await?;
        println!("{report}");
        anyhow::ensure!(report.is_complete(), "the rebuild is incomplete");
        return Ok(());
    }
    let telemetry = jetjobs::telemetry::init(jetjobs_status::NAME)?;
    let result = jetjobs_status::run(config, shutdown).await;
    telemetry.shutdown().await;
    result
}
