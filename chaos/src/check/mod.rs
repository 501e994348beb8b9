//! Checkers: what a run's recorded histories must satisfy.

pub mod kv;
pub mod lease;
pub mod linearizability;
pub mod watch;
