//! `jetjobs`, the command line of the jetjobs HTTP API: submit jobs, watch them live,
//! list, cancel and retry them, replay dead letters, watch the queues.
//!
//! It talks only to the gateway, over HTTP (`--url`, `JETJOBS_URL`). The modules:
//!
//! - [`cli`]: the commands and flags (clap);
//! - [`client`]: one method per route of the API, errors read from problem+json;
//! - [`error`]: the failures and the exit code of each;
//! - [`output`] and [`tables`]: human tables or JSON on stdout, colour only to a terminal;
//! - [`sse`]: the Server-Sent Events reader `watch` uses;
//! - the command groups: [`jobs`], [`watch`], [`dlq`], [`stats`], [`upload`].

pub mod cli;
pub mod client;
pub mod dlq;
pub mod error;
pub mod jobs;
pub mod output;
pub mod sse;
pub mod stats;
pub mod tables;
pub mod upload;
pub mod watch;

use std::time::Duration;

use clap::CommandFactory as _;

pub use cli::Cli;
pub use error::{Error, Result, exit};

use cli::{Command, DlqCommand, OutputArg};
use output::Output;

/// Runs one command line; its exit code (for `watch`, how the job ended).
///
/// # Errors
/// Whatever the command hit; [`Error::exit_code`] maps it to the exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let default_format = cli.output.unwrap_or_default();
    let out = |arg: OutputArg| Output::new(arg.output.unwrap_or(default_format));
    if let Command::Completions(args) = &cli.command {
        let mut command = Cli::command();
        let mut script = Vec::new();
        clap_complete::generate(args.shell, &mut command, "jetjobs", &mut script);
        output::write_stdout(&script)?;
        return Ok(exit::OK);
    }
    let client = client::Client::new(&cli.url, Duration::from_secs(cli.http_timeout_secs))?;
    match cli.command {
        Command::Submit(args) => {
            let out = out(args.out);
            jobs::submit(&client, &out, args).await
        }
        Command::Get(args) => jobs::get(&client, &out(args.out), &args.id).await,
        Command::Result(args) => jobs::result(&client, args).await,
        Command::History(args) => jobs::history(&client, &out(args.out), &args.id).await,
        Command::Watch(args) => watch::watch(&client, &out(args.out), &args.id).await,
        Command::Ls(args) => {
            let out = out(args.out);
            jobs::ls(&client, &out, args).await
        }
        Command::Cancel(args) => jobs::cancel(&client, &out(args.out), &args.id).await,
        Command::Retry(args) => jobs::retry(&client, &out(args.out), &args.id).await,
        Command::Dlq(DlqCommand::Ls(args)) => {
            let out = out(args.out);
            dlq::ls(&client, &out, args).await
        }
        Command::Dlq(DlqCommand::Replay(args)) => {
            let out = out(args.out);
            dlq::replay(&client, &out, args).await
        }
        Command::Stats(args) => {
            let out = out(args.out);
            stats::stats(&client, &out, args).await
        }
        Command::Upload(args) => {
            let out = out(args.out);
            upload::upload(&client, &out, args).await
        }
        Command::Completions(_) => Ok(exit::OK),
    }
}
