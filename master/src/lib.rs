//! The Cella master. The cluster work (issue 3) builds it: registry, DRF allocator, APIs.

pub mod allocator;
