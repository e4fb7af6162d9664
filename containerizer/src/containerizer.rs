//! The launcher side.
pub struct Containerizer;
pub struct ContainerizerConfig;
pub struct LaunchError;
pub struct Running;
pub struct Termination;
