//! `oxbus`: the command line. Thin on purpose: parse, then run the subcommand
//! (`oxbus_supervisor::cli`, one file per subcommand or group).

use clap::Parser;
use oxbus_supervisor::cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run(cli::args::Cli::parse().command)
}
