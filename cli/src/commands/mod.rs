//! One module per subcommand.
pub mod audit;
pub mod auth;
pub mod certs;
pub mod dev;
pub mod exec;
mod exec_image;
mod exec_sandbox;
pub mod images;
pub mod logs;
mod rates;
pub mod run;
pub mod tasks;
pub mod top;
pub mod usage;
