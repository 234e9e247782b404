//! `sendense-hub`: the binary's edge (CLI parsing, logging setup, exit codes).
#![forbid(unsafe_code)]
#![deny(clippy::too_many_lines)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.log_json);
    match cli::run(args.command) {
        Ok(code) => code,
        Err(err) => {
            // Once: both go to stderr.
            if args.log_json {
                tracing::error!("{err:#}");
            } else {
                eprintln!("sendense-hub: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
