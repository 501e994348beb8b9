//! The store's errors, and their mapping to etcd's gRPC errors.
//!
//! Variants carry the ids involved; the etcd wording and gRPC code are chosen
//! only at the edge, in [`Error::to_status`], so that `etcdctl` and etcd client
//! libraries recognise them (they match on the message text).

use tonic::{Code, Status};

use crate::revision::Revision;

/// Everything that can go wrong serving a store request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found for ignore_value/ignore_lease put of {key:?}")]
    KeyNotFound { key: String },
    #[error("value is provided together with ignore_value")]
    ValueProvided,
    #[error("lease is provided together with ignore_lease")]
    LeaseProvided,
    #[error("txn has {ops} operations, more than the limit of {max}")]
    TooManyOps { ops: usize, max: usize },
    #[error("txn writes key {key:?} twice")]
    DuplicateKey { key: String },
    #[error("invalid sort order or target")]
    InvalidSortOption,
    #[error("revision {requested} has been compacted (compacted at {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("lease {id:x} not found")]
    LeaseNotFound { id: i64 },
    #[error("lease {id:x} already exists")]
    LeaseExists { id: i64 },
    #[error("lease TTL {ttl} is larger than the maximum {max}")]
    LeaseTtlTooLarge { ttl: i64, max: i64 },
    #[error("request of {size} bytes exceeds the limit of {max} bytes")]
    RequestTooLarge { size: usize, max: usize },
    #[error("command at log index {index} has no operation")]
    MalformedCommand { index: u64 },
    #[error("a proposal of {sent} commands was answered with {answered} results")]
    ProposalMismatch { sent: usize, answered: usize },
    #[error("member {id:x} not found")]
    MemberNotFound { id: u64 },
    #[error("leader transfer to {id:x} is not possible: it is not a voting member")]
    BadLeaderTransferee { id: u64 },
    #[error("no downgrade is possible to {target:?}")]
    InvalidDowngradeTarget { target: String },
    #[error("no downgrade is in progress")]
    NoInflightDowngrade,
    #[error("the store is shutting down")]
    Stopped,
    #[error("this member does not lead (leader: {:?})", leader.as_ref().map(|(id, _)| format!("{id:x}")))]
    NotLeader {
        leader: Option<(u64, crate::raft::MemberInfo)>,
    },
    #[error("no leader is known")]
    NoLeader,
    #[error("the leader {leader:x} cannot be reached")]
    LeaderUnreachable { leader: u64 },
    #[error("the leader went away while handling the request")]
    LeaderChanged,
    #[error("the request timed out waiting for the cluster")]
    Timeout,
    #[error("the leader answered {code}: {message}")]
    Remote { code: i32, message: String },
    #[error("membership change refused: {reason}")]
    Membership { reason: String },
    #[error("member {id:x} already exists")]
    MemberExists { id: u64 },
    #[error("member {id:x} is not a learner")]
    MemberNotLearner { id: u64 },
    #[error("learner {id:x} has not caught up with the leader")]
    LearnerNotReady { id: u64 },
    #[error("peer URL {url} is already a member's")]
    PeerUrlExists { url: String },
    #[error("cannot join the cluster: {reason}")]
    Join { reason: String },
    #[error("invalid Raft settings")]
    RaftConfig { source: Box<openraft::ConfigError> },
    #[error("raft stopped")]
    RaftFatal {
        source: Box<openraft::error::Fatal<u64>>,
    },
    #[error("storage error")]
    Storage(#[from] rocksdb::Error),
    #[error("corrupt record at revision {rev}: {reason}")]
    CorruptRecord { rev: Revision, reason: &'static str },
    #[error("corrupt snapshot: {reason}")]
    CorruptSnapshot { reason: &'static str },
    #[error("corrupt metadata {key:?}: {reason}")]
    CorruptMeta {
        key: &'static str,
        reason: &'static str,
    },
    #[error("data directory belongs to member {found:?}, not {expected:?}")]
    WrongMember { found: String, expected: String },
}

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A status another member answered with, to be passed on as it is.
    pub fn remote(status: Status) -> Self {
        Error::Remote {
            code: status.code() as i32,
            message: status.message().to_owned(),
        }
    }

    /// This error again, for each of the writes proposed together when it
    /// failed them all. What it says of the cluster (no leader, timeout, …)
    /// is kept; anything else is passed on as the status a client gets.
    pub fn for_each_write(&self) -> Self {
        match self {
            Error::Stopped => Error::Stopped,
            Error::NotLeader { leader } => Error::NotLeader {
                leader: leader.clone(),
            },
            Error::NoLeader => Error::NoLeader,
            Error::LeaderUnreachable { leader } => Error::LeaderUnreachable { leader: *leader },
            Error::LeaderChanged => Error::LeaderChanged,
            Error::Timeout => Error::Timeout,
            other => Error::remote(other.to_status()),
        }
    }

    /// The gRPC status etcd returns for this error, with etcd's exact message.
    pub fn to_status(&self) -> Status {
        let (code, message) = match self {
            Error::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            Error::KeyNotFound { .. } => (Code::InvalidArgument, "etcdserver: key not found"),
            Error::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            Error::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            Error::TooManyOps { .. } => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            Error::DuplicateKey { .. } => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            Error::InvalidSortOption => (Code::InvalidArgument, "etcdserver: invalid sort option"),
            Error::Compacted { .. } => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            Error::FutureRevision { .. } => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            Error::LeaseNotFound { .. } => {
                (Code::NotFound, "etcdserver: requested lease not found")
            }
            Error::LeaseExists { .. } => {
                (Code::FailedPrecondition, "etcdserver: lease already exists")
            }
            Error::LeaseTtlTooLarge { .. } => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            Error::RequestTooLarge { .. } => {
                (Code::InvalidArgument, "etcdserver: request is too large")
            }
            Error::MemberNotFound { .. } => (Code::NotFound, "etcdserver: member not found"),
            Error::BadLeaderTransferee { .. } => (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            Error::InvalidDowngradeTarget { .. } => (
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            Error::NoInflightDowngrade => (
                Code::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
            Error::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
            Error::NotLeader { .. } => (Code::FailedPrecondition, "etcdserver: not leader"),
            Error::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
            Error::LeaderUnreachable { .. } | Error::LeaderChanged => {
                (Code::Unavailable, "etcdserver: leader changed")
            }
            Error::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
            Error::Remote { code, message } => {
                return Status::new(Code::from_i32(*code), message.clone());
            }
            Error::Membership { reason } => {
                return Status::failed_precondition(format!("etcdserver: {reason}"));
            }
            Error::MemberExists { .. } => (
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            Error::MemberNotLearner { .. } => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            Error::LearnerNotReady { .. } => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            Error::PeerUrlExists { .. } => (
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            Error::Storage(_)
            | Error::CorruptRecord { .. }
            | Error::CorruptMeta { .. }
            | Error::CorruptSnapshot { .. }
            | Error::MalformedCommand { .. }
            | Error::ProposalMismatch { .. }
            | Error::RaftConfig { .. }
            | Error::RaftFatal { .. }
            | Error::Join { .. }
            | Error::WrongMember { .. } => {
                return Status::internal(format!("etcdserver: {}", error_chain(self)));
            }
        };
        Status::new(code, message)
    }
}

/// An error and its causes on one line, for logs and internal errors.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.to_status()
    }
}
