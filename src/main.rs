//! The `spate` binary: see `spate --help`.

use std::io::IsTerminal;

use clap::Parser;
use spate::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cli.log_level.as_deref().unwrap_or(default_level)))
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve(args) => args.run(),
        Command::Cluster { action } => action.run(),
        Command::Topic { action } => action.run(),
        Command::Group { action } => action.run(),
        Command::Produce(args) => args.run(),
        Command::Metrics(args) => args.run(),
        Command::Consume(args) => args.run(),
        Command::Tune { what } => what.run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
