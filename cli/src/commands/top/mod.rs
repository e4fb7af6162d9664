//! `cella top`: a live, sorted view of the cluster's running tasks, refreshed from
//! `GET /api/v1/tasks?state=RUNNING`. CPU and I/O rates come from each task's last
//! two samples seen; `--once` (or a standard output that is not a terminal) prints
//! one plain-text snapshot instead.

pub mod rows;
pub mod tui;

use std::io::IsTerminal;
use std::time::Duration;

use cella_proto::api;
use clap::Args;

use super::tasks::block_on;
use crate::profile::ClusterArgs;
use rows::{Samples, SortBy};

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print one snapshot as plain text and exit (the rates need two samples: it asks
    /// the master twice, --interval apart).
    #[arg(long)]
    once: bool,
    /// How often to refresh.
    #[arg(long, default_value = "2s", value_parser = cella_proto::time::parse_duration)]
    interval: Duration,
    /// The order of the rows (keys c, m, i, t, p, n, a in the live view).
    #[arg(long, value_enum, default_value = "cpu")]
    sort: SortBy,
    /// Only tasks whose id or agent contains this (key / in the live view).
    #[arg(long, default_value = "")]
    filter: String,
}

const PATH: &str = "/api/v1/tasks?state=RUNNING";

pub fn run(args: TopArgs) -> i32 {
    let cluster = match args.cluster.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cella: {e:#}");
            return 1;
        }
    };
    if args.once || !std::io::stdout().is_terminal() {
        return block_on(async move {
            let mut samples = Samples::default();
            let first: Vec<api::Task> = cluster.get(PATH).await?;
            samples.update(&first);
            tokio::time::sleep(args.interval).await;
            let tasks: Vec<api::Task> = cluster.get(PATH).await?;
            samples.update(&tasks);
            let mut rows: Vec<rows::Row> = samples
                .rows(&tasks)
                .into_iter()
                .filter(|r| rows::matches(r, &args.filter))
                .collect();
            rows::sort(&mut rows, args.sort);
            outln!("{}", rows::plain(&rows));
            Ok(0)
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cella: starting the runtime: {e}");
            return 1;
        }
    };
    let view = tui::View {
        sort: args.sort,
        filter: args.filter,
        editing: false,
        error: None,
        master: cluster.master.clone(),
    };
    let mut samples = Samples::default();
    let refresh = || {
        let tasks: Vec<api::Task> = runtime
            .block_on(cluster.get(PATH))
            .map_err(|e| format!("{e:#}"))?;
        samples.update(&tasks);
        Ok(samples.rows(&tasks))
    };
    match tui::run(view, args.interval, refresh) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cella: {e:#}");
            1
        }
    }
}
