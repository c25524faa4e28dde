//! `jetjobs`: see the library (`jetjobs_cli`) for the commands. This is the edge: parse the
//! command line (clap exits 2 on bad usage), run, print an error on one line, exit with
//! the code the outcome maps to.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use jetjobs_cli::{Cli, Error, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    jetjobs_cli::output::init_colours();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => match error.downcast_ref::<Error>() {
            Some(Error::Closed) => ExitCode::from(exit::OK),
            Some(known) => {
                eprintln!("error: {known}");
                ExitCode::from(known.exit_code())
            }
            None => {
                eprintln!("error: {error:#}");
                ExitCode::from(exit::FAILURE)
            }
        },
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(jetjobs_cli::run(cli))?)
}
