//! The wire types of Keelson's store.
//!
//! - [`etcdserverpb`] and [`mvccpb`] are the etcd v3 API: same packages,
//!   services, messages and field numbers as etcd, so that `etcdctl` and any
//!   etcd client library talk to a Keelson member unchanged.
//! - [`keelsonpb`] holds Keelson's own messages: the commands the store applies
//!   in log order and the records it persists.
//!
//! The code is generated at build time by `protox` (pure Rust) and
//! `tonic-prost-build`; no system `protoc` is involved.

#![allow(missing_debug_implementations, unreachable_pub, clippy::all)]

pub mod mvccpb {
    //! etcd's multi-version KV types: `KeyValue` and watch `Event`s.
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    //! etcd's v3 RPC services (KV, Watch, Lease, Cluster, Maintenance) and their messages.
    tonic::include_proto!("etcdserverpb");
}

pub mod keelsonpb {
    //! Keelson's replicated commands and on-disk records.
    tonic::include_proto!("keelsonpb");
}
