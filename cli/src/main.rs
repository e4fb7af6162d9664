//! `cella`: the Cella command-line tool.

mod commands;

use clap::{Parser, Subcommand};

/// Cella: run, isolate and measure tasks.
#[derive(Parser)]
#[command(name = "cella", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Exec(commands::exec::ExecArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Exec(args) => commands::exec::run(args),
    };
    std::process::exit(code);
}
