//! `jetjobs-floor`: what the broker alone can do in the shape of a jetjobs job, and what
//! the cores alone can do for the `hash` kind — the two bounds `deploy/local/bench.py`
//! divides jetjobs' numbers by.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use jetjobs::config::NatsArgs;

#[derive(clap::Parser, Debug)]
#[command(name = "jetjobs-floor", version, about)]
enum Command {
    /// The raw JetStream pipeline (publish → work queue → processor → event → KV put),
    /// on the server at NATS_URL, with streams of its own that it deletes afterwards.
    Pipeline {
        #[arg(short = 'n', long = "jobs", default_value_t = 20_000)]
        jobs: u64,
        #[arg(short = 'c', long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// A trivial gateway: `POST /v1/jobs` answers 202 with a job already succeeded, so
    /// `jetjobs-loadgen` pointed at it measures its own ceiling. Prints the address.
    TrivialGateway {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// The `hash` kernel on every core at once, nothing else running: jobs per second.
    HashBound {
        #[arg(long, default_value_t = 1 << 20)]
        size: u64,
        #[arg(long, default_value_t = 20)]
        rounds: u64,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match Command::parse() {
        Command::Pipeline {
            jobs,
            concurrency,
            timeout_secs,
            json,
            nats,
        } => {
            let client = match nats.connect("floor").await {
                Ok(client) => client,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let timeout = Duration::from_secs(timeout_secs);
            match jetjobs_loadgen::floor::run(client, jobs, concurrency, timeout).await {
                Ok(summary) if json => match serde_json::to_string(&summary) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                Ok(summary) => print!("{summary}"),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::TrivialGateway { listen } => {
            if let Err(e) = trivial_gateway(listen).await {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
        Command::HashBound {
            size,
            rounds,
            secs,
            json,
        } => {
            let per_sec = tokio::task::spawn_blocking(move || {
                jetjobs_loadgen::floor::hash_bound(size, rounds, Duration::from_secs(secs))
            })
            .await
            .unwrap_or(0.0);
            if json {
                println!(r#"{{"size":{size},"rounds":{rounds},"jobs_per_sec":{per_sec:.2}}}"#);
            } else {
                println!("hash {size} B x {rounds} rounds on every core: {per_sec:.1} jobs/s");
            }
        }
    }
    ExitCode::SUCCESS
}

async fn trivial_gateway(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let app = axum::Router::new().route(
        "/v1/jobs",
        axum::routing::post(|| async {
            let id = uuid::Uuid::now_v7();
            (
                axum::http::StatusCode::ACCEPTED,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"id":"{id}","kind":"noop","state":"succeeded"}}"#),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("{}", listener.local_addr()?);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}
