//! `cella-agent`: the Cella node daemon.
//!
//! SIGTERM and SIGINT stop the agent WITHOUT killing its tasks: they keep running
//! under their shims, and the next agent on the same `--work-dir` re-attaches to them
//! (see the crate documentation). Use `--kill-tasks-on-exit` (development) to kill
//! them on the way out, or `--recover cleanup` to kill a previous run's tasks and exit.
//!
//! Exit status: 0 after a clean stop (or a finished `--recover cleanup`); 2 for a bad
//! configuration; 1 for anything else that stops the agent, e.g. its work directory
//! locked by another agent or a damaged checkpoint with `--strict`.

use clap::Parser;

/// The Cella node agent: offers this machine's resources to a Cella master and runs
/// its tasks in isolated containers.
#[derive(Debug, Parser)]
#[command(name = "cella-agent", version)]
struct Cli {
    #[command(flatten)]
    args: cella_agent::AgentArgs,
}

fn main() {
    let cli = Cli::parse();
    let config = match cli.args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cella-agent: {e}");
            std::process::exit(cella_agent::ConfigError::EXIT_CODE);
        }
    };
    // To the journal with structured fields (TASK_ID, FRAMEWORK_ID, AGENT_ID) under
    // systemd, to stderr otherwise.
    cella_proto::logging::init(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cella-agent")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cella-agent: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(cella_agent::run(config, async {
        let signal = cella_proto::signals::shutdown_signal().await;
        tracing::info!("{signal}: stopping (tasks keep running)");
    }));
    if let Err(e) = result {
        eprintln!("cella-agent: {e}");
        std::process::exit(e.exit_code());
    }
}
