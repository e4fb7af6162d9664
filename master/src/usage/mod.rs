//! Task usage as the master keeps it: a bounded, downsampled history per task
//! ([`history`]) of compact points ([`point`]). The actor's use of it (ingest of
//! agents' reports, the views) is in `master/usage.rs`.

pub mod history;
pub mod packed;
pub mod point;

pub use history::{History, Tier, Tiers};
pub use point::Point;
