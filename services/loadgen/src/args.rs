use clap::builder::RangedU64ValueParser;
use jetjobs::config::NatsArgs;
use reqwest::Url;

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "jetjobs-loadgen",
    version,
    about = "Submits jobs through the jetjobs gateway and reports throughput and latency.",
    long_about = "Submits jobs through the jetjobs gateway and reports throughput and latency.\n\n\
        Completion is observed by watching the job_status KV bucket, so the numbers include \
        the whole pipeline: gateway, JetStream, processor, status projection.\n\n\
        Exit status: 0 when every job reached a terminal state (succeeded, failed or \
        cancelled), 1 when some did not in time or could not be submitted, 2 on a setup error."
)]
pub struct Args {
    /// Gateway base URL.
    #[arg(long, env = "JETJOBS_GATEWAY_URL", default_value = "http://127.0.0.1:8080", value_parser = parse_base_url)]
    pub url: Url,
    /// Job kind to submit.
    #[arg(long, default_value = "noop")]
    pub kind: String,
    /// Job payload, as JSON (for sleep: '{"ms":50}').
    #[arg(long, default_value = "{}", value_parser = parse_json)]
    pub payload: serde_json::Value,
    /// Number of jobs to submit.
    #[arg(short = 'n', long = "jobs", default_value_t = 10_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub jobs: u64,
    /// Submit requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// How long to wait, from the first submit, for every job to finish.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Clients held open during the run, each long-polling a finished job of its own
    /// (what a thousand waiting browsers or SSE clients cost the gateway).
    #[arg(long, default_value_t = 0)]
    pub waiters: usize,
    /// Submit, and stop once every request is answered: no waiting for the jobs to
    /// finish (to fill a queue whose processors are stopped). Complete when every job was
    /// accepted.
    #[arg(long)]
    pub submit_only: bool,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub nats: NatsArgs,
}

impl Args {
    /// `POST` target for new jobs: `/v1/jobs` under the base URL, keeping any base path.
    pub fn submit_url(&self) -> Url {
        let mut url = self.url.clone();
        // Always Ok: `parse_base_url` admits only http URLs, which can be a base.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["v1", "jobs"]);
        }
        url
    }

    pub fn show_progress(&self) -> bool {
        !self.no_progress && !self.json
    }
}

fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
    // The workspace builds reqwest without TLS: an https URL would fail on every request.
    if url.scheme() != "http" {
        return Err(format!("expected an http:// URL, got {}://", url.scheme()));
    }
    Ok(url)
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("jetjobs-loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn flags_are_read() {
        let args = parse(&[
            "--url",
            "http://gateway:9000/",
            "--kind",
            "sleep",
            "--payload",
            r#"{"ms":50}"#,
            "-n",
            "100",
            "-c",
            "8",
            "--timeout-secs",
            "5",
            "--json",
            "--nats-url",
            "nats://nats:4222",
        ])
        .expect("valid arguments");
        assert_eq!(args.kind, "sleep");
        assert_eq!(args.payload, json!({"ms": 50}));
        assert_eq!(
            (args.jobs, args.concurrency, args.timeout_secs),
            (100, 8, 5)
        );
        assert!(args.json && !args.show_progress());
        assert_eq!(args.nats.nats_url, "nats://nats:4222");
        assert_eq!(args.submit_url().as_str(), "http://gateway:9000/v1/jobs");
    }

    #[test]
    fn a_base_path_is_kept() {
        let args = parse(&["--url", "http://host/api"]).expect("valid arguments");
        assert_eq!(args.submit_url().as_str(), "http://host/api/v1/jobs");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--payload", "{ms: 1}"]).is_err());
        assert!(parse(&["-c", "0"]).is_err());
        assert!(parse(&["-n", "0"]).is_err());
        assert!(parse(&["--url", "not a url"]).is_err());
        assert!(parse(&["--url", "mailto:someone@example.com"]).is_err());
    }
}
