//! The `lifeboat` command line: parses arguments, sets up logging, runs one subcommand, and
//! turns its outcome into an exit code (see `error::ExitClass` and README.md).

mod commands;

use clap::Parser;
use lifeboat::error::{ExitClass, class_of};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    commands::init_logging(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitClass::Failure.code();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            class_of(&err).code()
        }
    }
}
