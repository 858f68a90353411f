//! The `deltaspace` binary: parse arguments, set up logging, run the command, map errors to an
//! exit code with the whole cause chain.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = deltaspace::cli::Cli::parse();
    deltaspace::cli::init_logging(cli.verbose);
    match deltaspace::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
