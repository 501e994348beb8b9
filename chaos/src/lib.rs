//! Local Keelson clusters on one machine (`keelson up`): every member and
//! every node in a network namespace of its own. Fault-injection scenarios
//! run against the same machinery.

pub mod local;
