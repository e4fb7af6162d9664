//! The Cella node agent.
//!
//! It detects what the machine can offer, holds one mutual-TLS stream to the master,
//! launches tasks through the containerizer with one sandbox directory per task,
//! sends their status updates reliably (checkpointed in redb before they are sent,
//! re-sent until acknowledged), recovers its tasks after a restart and serves its
//! own HTTPS API.
//!
//! # Where things happen
//!
//! | you look for | it is in |
//! |---|---|
//! | start, stop, `--recover cleanup`; how the parts are wired | [`agent`] ([`Agent::start`], [`Agent::shutdown`]) |
//! | a Launch / Kill / Acknowledge / Shutdown from the master, dispatched | [`agent`] (`dispatch`), fed by [`connection::MasterCommand`] |
//! | the stream to the master: register, reconnect, Ping, usage reports | [`connection`] |
//! | a task launched | [`tasks::launch`] |
//! | a task watched until it ends, its end reported | [`tasks::watch`] |
//! | a task killed (and the kill checkpointed first) | [`tasks::kill`] |
//! | a `TaskInfo` turned into the containerizer's config | [`tasks::spec`] |
//! | the wording of a terminal status; exit codes 125/126/127 → reasons | [`tasks::status`] |
//! | usage sampled; `Usage` → `TaskUsage` | [`tasks::usage`] |
//! | sandboxes garbage-collected | [`tasks::gc`] |
//! | a task's image pulled, leased, released; the image store's GC | [`images`] |
//! | a status update checkpointed, sent, **retried** (timer), acknowledged | [`status_updates`] (queue and backoff: [`status_updates::queue`]) |
//! | **recovery** from the checkpoint at start; reboot detection | [`recovery`] |
//! | the checks and openings before the start (task user, TLS, containerizer, checkpoint, lock); start errors | [`startup`] |
//! | the checkpoint database (redb, group commit) | [`store`] |
//! | every path under the work and runtime directories | [`paths`] |
//! | what every part reads: config, totals, tasks, agent id | [`state`] |
//! | the HTTPS API (`/health`, `/metrics`, containers, sandbox files) | [`http`] |
//! | flags and the TOML file | [`config`] |
//! | what tasks may be and use here; who may use the API | [`policy`] |
//! | CPUs, memory and disk the machine offers | [`resources`] |
//! | Prometheus metrics | [`metrics`], per task [`task_metrics`] |
//!
//! The modules import each other without a cycle (checked by
//! `tests/module_graph.rs`): [`agent`] knows every other module and nothing imports
//! it; [`recovery`] uses the task side; the task side ([`tasks`]) uses
//! [`status_updates`], which uses [`state`] and [`store`]; [`connection`] and
//! [`http`] use [`state`] and [`status_updates`] only — the connection hands the
//! master's commands over a channel instead of calling the task side.
//!
//! Use it in-process with [`run`] (until a shutdown future completes) or with
//! [`Agent::start`] and [`Agent::shutdown`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), cella_agent::AgentError> {
//! let config = cella_agent::AgentConfig {
//!     master: "https://127.0.0.1:5050".into(),
//!     ..Default::default()
//! };
//! let agent = cella_agent::Agent::start(config).await?;
//! println!("agent API on https://{}", agent.http_addr());
//! agent.shutdown(true).await?; // kill the tasks too (development)
//! # Ok(()) }
//! ```
//!
//! Stopping without killing (`shutdown(false)`, the binary's SIGTERM, or a crash)
//! leaves the tasks running under their shims. The next agent on the same work
//! directory recovers them from the checkpoint (`<work-dir>/meta/agent.redb`;
//! [`recovery::recover`]):
//!
//! - a task whose shim is alive (same pid **and** start time) is re-attached and
//!   watched again (usage, kill, end) — it stays RUNNING, nothing is started twice;
//! - a task that ended while the agent was away is reported with its real exit
//!   status (FINISHED/FAILED, exit code, limitation), through the reliable update
//!   path (checkpointed, re-sent until acknowledged);
//! - a task whose outcome cannot be known (no run directory, no exit status) is
//!   reported LOST with reason AGENT_RESTARTED and the cause; its leftovers are removed;
//! - after a reboot (the checkpoint's boot id differs from
//!   `/proc/sys/kernel/random/boot_id`) no old pid is trusted: every unfinished task is
//!   LOST (AGENT_RESTARTED, "the machine rebooted") and its leftovers are removed;
//! - cgroups and run directories that no checkpointed task owns are removed;
//! - then the agent re-registers under its id listing its tasks, and re-sends the
//!   unacknowledged updates in order.
//!
//! `--recover cleanup` (for incompatible upgrades) recovers, kills every task,
//! reports each KILLED with reason AGENT_RESTARTED (sent if the master is reachable
//! within ~5 s; otherwise kept in the checkpoint for the next agent) and exits 0.
//!
//! The work directory is locked (`flock` on `<work-dir>/meta/lock`, which holds the
//! owner's pid): a second agent on it exits with status 1 naming the directory and
//! the pid. A damaged checkpoint stops the agent (status 1) with a message naming the
//! file and what to do, unless `--strict=false`: then what can be read is recovered,
//! the rest is logged and counted in `cella_agent_recovery_errors_total` (an
//! unreadable database is moved aside as `agent.redb.damaged-<time>`).
//!
//! Sandboxes of ended tasks are removed `--gc-delay` (default 1h) after the task
//! ended, or earlier, oldest first, while the work directory's filesystem is more
//! than 90% full ([`tasks::gc::gc_sweep`]).

pub mod agent;
pub mod config;
pub mod connection;
pub mod http;
pub mod http_images;
pub mod http_state;
pub mod images;
pub mod metrics;
pub mod paths;
pub mod periodic;
pub mod policy;
pub mod recovery;
pub mod resources;
pub mod startup;
pub mod state;
pub mod status_updates;
pub mod store;
pub mod task_metrics;
pub mod tasks;

pub use agent::{Agent, AgentError, run};
pub use config::{AgentArgs, AgentConfig, ConfigError, ResourceSpec};
pub use resources::Totals;
