use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use jetjobs_loadgen::{Args, run_until};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let stop = jetjobs::shutdown::on_signal();
    let json = args.json;
    let summary = match run_until(args, stop).await {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let text = if json {
        match serde_json::to_string(&summary) {
            Ok(line) => line + "\n",
            Err(e) => {
                eprintln!("error: cannot encode the summary: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        summary.to_string()
    };
    // `print!` would panic when the reader went away (`| head`); that is not an error.
    if let Err(e) = write_stdout(&text)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the summary: {e}");
        return ExitCode::from(2);
    }
    if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Logs go to stderr, warnings only unless `RUST_LOG` says otherwise: stdout carries the
/// report (`--json | jq` must work) and stderr the progress bar.
/// (`jetjobs::telemetry::init` writes to stdout, which is right for services only.)
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
