//! The command line: every command, flag and environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::EXIT_CODES_HELP;
use crate::output::Format;

/// `watch`'s own exit codes, in its `--help`.
const WATCH_EXIT_CODES: &str = "\
Exit codes:
  0  the job succeeded
  1  the job failed (or another error)
  2  bad usage
  3  the job was cancelled
  4  no such job (404)
  5  gateway unavailable (503, connection refused, timeout)";

#[derive(Parser, Debug)]
#[command(
    name = "jetjobs",
    version,
    about = "Submit, watch and manage jetjobs background jobs through the gateway's HTTP API.",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "JETJOBS_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Gateway"
    )]
    pub url: String,
    /// Seconds a request may take in all (not streams: watch, upload, result, submit --file).
    #[arg(
        long,
        env = "JETJOBS_HTTP_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        global = true,
        help_heading = "Gateway"
    )]
    pub http_timeout_secs: u64,
    /// Output format (also accepted after the command).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
    #[command(subcommand)]
    pub command: Command,
}

/// `-o table|json` on a command.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArg {
    /// Output format: tables for people, or JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit a job (POST /v1/jobs; PUT /v1/jobs/{id} with --id).
    #[command(after_help = "Examples:
  jetjobs submit sleep --payload '{\"ms\": 500}' --wait
  jetjobs submit hash --payload '{\"rounds\": 1}' --file big.csv
  jetjobs submit thumbnail --payload '{\"width\": 128, \"height\": 128}' --file photo.jpg
  jetjobs submit noop --id 6f1c1f0e-8a4b-4d7e-9d55-1d1f4b0f2a10 --idempotency-key invoice-4711")]
    Submit(SubmitArgs),
    /// Show a job's snapshot (GET /v1/jobs/{id}).
    Get(IdArgs),
    /// Write a succeeded job's result (GET /v1/jobs/{id}/result) to stdout or a file.
    Result(ResultArgs),
    /// A job's history, oldest first: every event and webhook delivery (GET /v1/jobs/{id}/history).
    History(IdArgs),
    /// Follow a job live until it ends: progress bar, state changes, the result.
    #[command(after_help = WATCH_EXIT_CODES)]
    Watch(IdArgs),
    /// List jobs, newest first (GET /v1/jobs).
    Ls(LsArgs),
    /// Cancel a job (DELETE /v1/jobs/{id}).
    Cancel(IdArgs),
    /// Queue a failed job again (POST /v1/jobs/{id}/retry).
    Retry(IdArgs),
    /// Dead letters: failed jobs kept for replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The queues: per kind, per consumer, per processor (GET /v1/stats).
    Stats(StatsArgs),
    /// Upload a file as a blob for jobs to read (POST /v1/blobs), streamed.
    Upload(UploadArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example: jetjobs completions bash > ~/.local/share/bash-completion/completions/jetjobs"
    )]
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job kind (noop, sleep, flaky, hash, thumbnail, or what your processors register).
    pub kind: String,
    /// The payload, as JSON.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload (JSON) from a file; `-` for stdin.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Upload this file with the job, in one multipart request, into the field the kind
    /// takes uploads in (hash: data_blob, thumbnail: image_blob).
    #[arg(long, value_name = "FILE", conflicts_with = "id")]
    pub file: Option<PathBuf>,
    /// The job's id (a UUID of your choosing): PUT /v1/jobs/{id}, safe to repeat.
    #[arg(long, value_name = "UUID")]
    pub id: Option<uuid::Uuid>,
    /// Idempotency-Key: every submit with this key and body gets the same job.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Attempts before the job fails (1-25; default per kind).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=25))]
    pub max_attempts: Option<u32>,
    /// Seconds each attempt may run (default per kind).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: Option<u64>,
    /// Where to POST the job's events as signed webhooks.
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// Wait up to SECS (default 20; the gateway caps it) for the job to end
    /// (Prefer: wait=SECS).
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "20"
    )]
    pub wait: Option<u64>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The job's id.
    pub id: String,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct ResultArgs {
    /// The job's id.
    pub id: String,
    /// Write the result to this file instead of stdout (streamed, with a progress bar).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only jobs of this kind.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only jobs in this state (or several, comma-separated: failed,cancelled).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Jobs per page (1-1000; the gateway's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Every matching job, page after page (with -o json: one job per line, NDJSON).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, newest first (GET /v1/dead-letters).
    Ls(DlqLsArgs),
    /// Queue dead jobs again (POST /v1/dead-letters/replay).
    Replay(DlqReplayArgs),
}

#[derive(Args, Debug)]
pub struct DlqLsArgs {
    /// Only dead letters of this kind.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Dead letters per page (1-1000; the gateway's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Every dead letter, page after page (with -o json: one per line, NDJSON).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct DlqReplayArgs {
    /// The dead jobs to replay.
    #[arg(
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub ids: Vec<uuid::Uuid>,
    /// Every dead job (of --kind), 1000 per request until none is left.
    #[arg(long)]
    pub all: bool,
    /// With --all: only dead jobs of this kind.
    #[arg(long, value_name = "KIND", requires = "all")]
    pub kind: Option<String>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Refresh every second until Ctrl-C (with -o json: one document per line).
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The file to upload.
    pub file: PathBuf,
    /// Its content type (default: guessed from the file name, else application/octet-stream).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_takes_an_optional_value() {
        let cli = Cli::try_parse_from(["jetjobs", "submit", "noop", "--wait"]).expect("parse");
        let Command::Submit(args) = cli.command else {
            panic!("not submit")
        };
        assert_eq!(args.wait, Some(20));
        let cli = Cli::try_parse_from(["jetjobs", "submit", "noop", "--wait=5"]).expect("parse");
        let Command::Submit(args) = cli.command else {
            panic!("not submit")
        };
        assert_eq!(args.wait, Some(5));
    }

    #[test]
    fn the_format_goes_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["jetjobs", "-o", "json", "ls"]).expect("parse");
        assert_eq!(cli.output, Some(Format::Json));
        let cli = Cli::try_parse_from(["jetjobs", "ls", "-o", "json"]).expect("parse");
        let Command::Ls(args) = cli.command else {
            panic!("not ls")
        };
        assert_eq!(args.out.output, Some(Format::Json));
    }
}
