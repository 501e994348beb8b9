//! Local Keelson clusters on one machine (`keelson up`): every member and
//! every node in a network namespace of its own; and `keelson chaos`, which
//! injects faults into such clusters while workloads run, then checks what
//! the workloads recorded against models of what must hold.

pub mod check;
pub mod fault;
pub mod local;
pub mod nodes;
pub mod rng;
pub mod scenario;
pub mod store;
