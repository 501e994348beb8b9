//! Checkers: what a run's recorded histories must satisfy.

pub mod lease;
pub mod linearizability;
pub mod watch;
