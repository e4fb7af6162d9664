//! The Cella node agent.
//!
//! It detects what the machine can offer ([`resources`]), holds one mutual-TLS
//! stream to the master ([`connection`]), launches tasks through the containerizer
//! with one sandbox directory per task ([`tasks`]), sends their status updates
//! reliably (checkpointed in redb before they are sent, re-sent until acknowledged:
//! [`store`], [`updates`]) and serves its own HTTPS API ([`http`]).
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
//! Stopping without killing (`shutdown(false)`, the binary's SIGTERM) leaves the
//! tasks running under their shims; re-attaching to them after a restart is the
//! recovery issue's work — until then an agent that finds running tasks in its
//! checkpoint destroys them and reports them `LOST` (`AGENT_RESTARTED`).

pub mod agent;
pub mod config;
pub mod connection;
pub mod http;
pub mod metrics;
pub mod resources;
pub mod store;
pub mod tasks;
pub mod updates;

pub use agent::{Agent, AgentError, run};
pub use config::{AgentArgs, AgentConfig, ConfigError, ResourceSpec};
pub use resources::Totals;
