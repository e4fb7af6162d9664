//! Task usage as the master keeps it: a bounded, downsampled history per task
//! ([`history`]) of fixed-size points ([`point`]), stored packed as differences
//! ([`packed`]). The actor's use of it (ingest of
//! agents' reports, the views) is in `master/usage.rs`.

pub mod history;
pub mod packed;
pub mod point;

pub use history::{History, Tier, Tiers};
pub use point::Point;
