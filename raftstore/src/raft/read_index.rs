//! Read indexes, confirmed in rounds shared by every read that waits.
//!
//! A linearizable read needs the leader to confirm, with a quorum, that it
//! still leads (openraft's `ensure_linearizable`). One confirmation serves
//! every read that arrived before it started, so reads are batched into
//! rounds, as etcd batches its read-index requests: a read joins the next
//! round to *start* (never one already under way, which could predate it),
//! and at most one round runs at a time.

use std::sync::{Arc, Mutex};

use openraft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::watch;

use super::{MemberInfo, TypeConfig};

/// Why a round could not confirm a read index.
#[derive(Clone, Debug)]
pub enum ReadIndexFailure {
    /// This member does not lead; the leader, if known.
    NotLeader(Option<(u64, MemberInfo)>),
    /// The leader could not reach a quorum.
    NoQuorum,
    /// Raft stopped.
    Stopped,
}

#[derive(Debug, Default)]
struct Rounds {
    /// The highest round a read waits for.
    requested: u64,
    /// The last round started.
    started: u64,
    running: bool,
}

type Outcome = Result<u64, ReadIndexFailure>;

/// Shares leadership confirmations between concurrent reads.
pub struct ReadIndexBatcher {
    raft: Raft<TypeConfig>,
    rounds: Mutex<Rounds>,
    /// The last finished round and its outcome.
    finished: watch::Sender<(u64, Outcome)>,
}

impl std::fmt::Debug for ReadIndexBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadIndexBatcher")
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

impl ReadIndexBatcher {
    pub fn new(raft: Raft<TypeConfig>) -> Arc<Self> {
        Arc::new(Self {
            raft,
            rounds: Mutex::new(Rounds::default()),
            finished: watch::Sender::new((0, Err(ReadIndexFailure::Stopped))),
        })
    }

    /// A log index such that a read served once it is applied is
    /// linearizable; this member's state machine has applied it already.
    pub async fn read_index(self: &Arc<Self>) -> Outcome {
        let mut finished = self.finished.subscribe();
        let round = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            let round = rounds.started + 1;
            rounds.requested = rounds.requested.max(round);
            if !rounds.running {
                rounds.running = true;
                tokio::spawn(self.clone().drive());
            }
            round
        };
        let done = finished
            .wait_for(|(last, _)| *last >= round)
            .await
            .map_err(|_| ReadIndexFailure::Stopped)?;
        done.1.clone()
    }

    async fn drive(self: Arc<Self>) {
        loop {
            let round = {
                let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
                if rounds.requested <= rounds.started {
                    rounds.running = false;
                    return;
                }
                rounds.started += 1;
                rounds.started
            };
            let outcome = match self.raft.ensure_linearizable().await {
                Ok(id) => Ok(id.map_or(0, |id| id.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => Err(
                    ReadIndexFailure::NotLeader(to.leader_id.zip(to.leader_node)),
                ),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    Err(ReadIndexFailure::NoQuorum)
                }
                Err(RaftError::Fatal(_)) => Err(ReadIndexFailure::Stopped),
            };
            // The previous round's outcome is of no further use.
            drop(self.finished.send_replace((round, outcome)));
        }
    }
}
