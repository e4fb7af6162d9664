//! `cella`: the Cella command-line tool.

#[macro_use]
mod output;
mod commands;
mod image_store;
mod profile;

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
    /// Run one command isolated, limited and measured, right here.
    Exec(commands::exec::ExecArgs),
    /// Start a master and an agent on this machine, for trying Cella.
    Dev(commands::dev::DevArgs),
    /// Run a command as a task on the cluster and follow it.
    Run(commands::run::RunArgs),
    /// List tasks.
    Tasks(commands::tasks::TasksArgs),
    /// List agents with their resources.
    Agents(commands::tasks::AgentsArgs),
    /// Kill a task.
    Kill(commands::tasks::KillArgs),
    /// A task's usage: latest figures, rates, history and summary.
    Usage(commands::usage::UsageArgs),
    /// A live view of the running tasks' usage, sorted (q quits).
    Top(commands::top::TopArgs),
    /// Show a task's output.
    Logs(commands::logs::LogsArgs),
    /// The cluster's certificates: create the CA, issue per node and user, list, revoke.
    Certs(commands::certs::CertsArgs),
    /// Tokens and passwords for the HTTP APIs.
    Auth(commands::auth::AuthArgs),
    /// Container images in this node's store: list, pull, rm, gc.
    Images(commands::images::ImagesArgs),
    /// The master's audit log: verify, export, summary (on the master's node).
    Audit(commands::audit::AuditArgs),
}

// `cella exec` alone, parsed without building the other subcommands: `exec` is on
// the launch path, where every fraction of a millisecond counts. (A plain comment:
// clap would show a doc comment to users as the help's first line.)
#[derive(Parser)]
#[command(
    name = "cella exec",
    version,
    about = "Run a command isolated, limited and measured, like a Cella task."
)]
struct ExecOnly {
    #[command(flatten)]
    args: commands::exec::ExecArgs,
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "exec") {
        // Logging stays off unless asked for: setting it up costs time on every launch.
        if std::env::var_os("CELLA_LOG").is_some() {
            init_logging();
        }
        let args = ExecOnly::parse_from(
            std::iter::once(std::ffi::OsString::from("cella exec"))
                .chain(std::env::args_os().skip(2)),
        );
        std::process::exit(commands::exec::run(args.args));
    }
    init_logging();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Exec(args) => commands::exec::run(args),
        Command::Dev(args) => commands::dev::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Tasks(args) => commands::tasks::tasks(args),
        Command::Agents(args) => commands::tasks::agents(args),
        Command::Kill(args) => commands::tasks::kill(args),
        Command::Usage(args) => commands::usage::run(args),
        Command::Top(args) => commands::top::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Certs(args) => commands::certs::run(args),
        Command::Auth(args) => commands::auth::run(args),
        Command::Images(args) => commands::images::run(args),
        Command::Audit(args) => commands::audit::run(args),
    };
    std::process::exit(code);
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
