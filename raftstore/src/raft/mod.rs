//! Replication: the store's commands ordered by openraft.
//!
//! ```text
//!  client write ─► leader: Raft::client_write ─► log (RocksDB, synced) ─► peers
//!                                                  │ committed
//!                                                  ▼
//!                       every member: StateMachine::apply ─► MvccStore::apply
//! ```
//!
//! - [`codec`]: openraft's types to and from the `keelsonpb` protobufs, for
//!   the log on disk and the peer wire alike.
//! - [`log_store`]: the Raft log and vote, in the member's RocksDB.
//! - [`state_machine`]: the MVCC store as openraft's state machine, with
//!   snapshots built from and installed into it.

// openraft's storage traits return its own (large) StorageError; the helpers
// that build one follow suit rather than box it at every call.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod log_store;
pub mod network;
pub mod read_index;
pub mod state_machine;

use std::fmt;

use keelson_proto::keelsonpb::Proposal;

pub use self::log_store::LogStore;
pub use self::state_machine::{ApplyResult, StateMachine};

/// The `meta` keys that tie a member's data to its cluster: its identity,
/// the log position applied, and the membership.
pub(crate) const CLUSTER_META_KEYS: [&str; 3] = [
    crate::node::META_MEMBER,
    state_machine::APPLIED,
    state_machine::MEMBERSHIP,
];

/// A member as Raft's membership records it: enough for peers to reach it
/// and for `member list` to describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// Keelson's Raft: member IDs are etcd-style `u64`s, log entries carry
    /// proposals (store commands batched), and snapshots are the store's
    /// snapshot format.
    pub TypeConfig:
        D = Proposal,
        R = ApplyResult,
        NodeId = u64,
        Node = MemberInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// openraft's storage error for this configuration.
pub type StorageError = openraft::StorageError<u64>;

/// Storage errors by what failed, as openraft classifies them.
pub(crate) mod err {
    use openraft::storage::SnapshotSignature;
    use openraft::{AnyError, StorageIOError};

    use super::StorageError;

    pub(crate) fn read_logs(e: impl Into<AnyError>) -> StorageError {
        StorageIOError::read_logs(e).into()
    }
    pub(crate) fn write_logs(e: impl Into<AnyError>) -> StorageError {
        StorageIOError::write_logs(e).into()
    }
    pub(crate) fn read_vote(e: impl Into<AnyError>) -> StorageError {
        StorageIOError::read_vote(e).into()
    }
    pub(crate) fn write_vote(e: impl Into<AnyError>) -> StorageError {
        StorageIOError::write_vote(e).into()
    }
    pub(crate) fn read_state_machine(e: impl Into<AnyError>) -> StorageError {
        StorageIOError::read_state_machine(e).into()
    }
    pub(crate) fn write_state_machine(e: impl Into<AnyError>) -> StorageError {
        StorageIOError::write_state_machine(e).into()
    }
    pub(crate) fn write_snapshot(
        signature: Option<SnapshotSignature<u64>>,
        e: impl Into<AnyError>,
    ) -> StorageError {
        StorageIOError::write_snapshot(signature, e).into()
    }
    pub(crate) fn read_snapshot(
        signature: Option<SnapshotSignature<u64>>,
        e: impl Into<AnyError>,
    ) -> StorageError {
        StorageIOError::read_snapshot(signature, e).into()
    }
}
