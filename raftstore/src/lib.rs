//! Keelson's store: an etcd-v3-compatible, multi-version key-value store on
//! RocksDB, served over gRPC.
//!
//! ```text
//!  etcd clients ──gRPC──► service::{kv, watch, lease, cluster, maintenance}
//!                              │ validate, propose        ▲ events
//!                              ▼                          │
//!                         node::Node ──apply──► store::MvccStore ──► RocksDB
//!                              │                          │
//!                              └──► lessor (deadlines)    └──► hub::WatchHub
//! ```
//!
//! - [`store`]: the MVCC state machine (revisions, index, leases, compaction).
//! - [`node`]: one member: identity, proposal ordering, lease expiry.
//! - [`propose`]: client writes batched into Raft entries.
//! - [`service`]: the etcd gRPC services on top of a node.
//! - [`server`]: configuration and `run`, which serves it all until shutdown.
//! - [`bench`](mod@bench): a load generator for any etcd-API endpoint.

pub mod admin;
mod backend;
pub mod bench;
pub mod error;
pub mod hub;
pub mod index;
pub mod lessor;
pub mod metrics;
pub mod node;
pub mod propose;
pub mod raft;
pub mod revision;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod validate;

pub use error::{Error, Result};
