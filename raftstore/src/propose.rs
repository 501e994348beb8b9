//! Proposals: client writes batched into Raft log entries.
//!
//! ```text
//!  propose(command) ─► queue ─► batch: every write waiting, up to a limit
//!                                 │
//!            this member leads? ──┼── yes ─► Raft::client_write(Proposal) ─► one log entry
//!                                 └── no ──► Forward(commands) to the leader ─► one entry there
//!                                 ▼
//!             each caller gets its own command's response and revision
//! ```
//!
//! openraft 0.9 appends each client write to the log, and waits for that
//! append to be durable, before it takes the next one: an entry costs the
//! leader one fsync and one replication step, whatever it carries. So the
//! writes that wait at once travel as one entry (and one forwarded message
//! from a follower). At most [`MAX_IN_FLIGHT`] batches are under way per
//! member; writes that arrive meanwhile queue for the next batch, which is
//! how batches grow with load. A write that arrives alone waits for nobody.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use keelson_proto::keelsonpb::{self as pb, Command, Proposal};
use openraft::Raft;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use prost::Message;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::raft::network::Peers;
use crate::raft::{MemberInfo, TypeConfig};
use crate::store::CommandResponse;

/// Batches under way at once, per member. One is fastest: measured at 100
/// writers, every further batch in flight cost throughput (each is one more
/// entry to append and replicate; docs/benchmarks.md).
pub const MAX_IN_FLIGHT: usize = 1;
/// Most commands in one batch.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// A batch stops growing once it holds this many bytes of commands (a
/// single command larger than this still goes, alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// A command's outcome: its response and the store revision after it.
pub type Outcome = Result<(CommandResponse, i64)>;

/// Commands waiting to be proposed, and how many batches are under way.
/// Pure bookkeeping: [`Proposer`] does the I/O.
#[derive(Debug)]
struct Queue<T> {
    waiting: VecDeque<(T, usize)>,
    running: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            running: 0,
        }
    }
}

impl<T> Queue<T> {
    /// Queues `item` of `size` bytes.
    fn push(&mut self, item: T, size: usize) {
        self.waiting.push_back((item, size));
    }

    /// The batch to start now, if writes wait and a slot is free.
    fn start(&mut self) -> Option<Vec<T>> {
        if self.running < MAX_IN_FLIGHT && !self.waiting.is_empty() {
            self.running += 1;
            Some(self.take())
        } else {
            None
        }
    }

    /// A batch finished; returns the next one to run in its slot, if any
    /// writes wait.
    fn finished(&mut self) -> Option<Vec<T>> {
        if self.waiting.is_empty() {
            self.running -= 1;
            None
        } else {
            Some(self.take())
        }
    }

    fn take(&mut self) -> Vec<T> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((_, size)) = self.waiting.front() {
            let full = batch.len() >= MAX_BATCH_COMMANDS || bytes + size > MAX_BATCH_BYTES;
            if full && !batch.is_empty() {
                break;
            }
            bytes += size;
            if let Some((item, _)) = self.waiting.pop_front() {
                batch.push(item);
            }
        }
        batch
    }
}

/// A write waiting for its batch.
#[derive(Debug)]
struct Waiting {
    command: Command,
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

/// Proposes this member's writes: to its own log while it leads, to the
/// leader's otherwise.
pub struct Proposer {
    raft: Raft<TypeConfig>,
    peers: Peers,
    queue: Mutex<Queue<Waiting>>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Proposer {
    pub fn new(raft: Raft<TypeConfig>, peers: Peers) -> Arc<Self> {
        Arc::new(Self {
            raft,
            peers,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Orders `command` after every earlier write and applies it; returns
    /// its response and the revision after it, once a quorum has it durably.
    /// Fails with [`Error::Timeout`] at `deadline` (the write may still be
    /// applied later: etcd's "request timed out" means the same).
    pub async fn propose(self: &Arc<Self>, command: Command, deadline: Instant) -> Outcome {
        let mut outcomes = self.enqueue(vec![command], deadline);
        match outcomes.pop() {
            Some(outcome) => Self::wait(outcome, deadline).await,
            None => Err(Error::Stopped),
        }
    }

    /// [`Self::propose`] for several independent writes (in no particular
    /// order between them): one outcome each, in the order given.
    pub async fn propose_all(
        self: &Arc<Self>,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Vec<Outcome> {
        let mut results = Vec::with_capacity(commands.len());
        for outcome in self.enqueue(commands, deadline) {
            results.push(Self::wait(outcome, deadline).await);
        }
        results
    }

    fn enqueue(
        self: &Arc<Self>,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Vec<oneshot::Receiver<Outcome>> {
        let mut outcomes = Vec::with_capacity(commands.len());
        let start = {
            let mut queue = self.lock();
            for command in commands {
                let size = command.encoded_len();
                let (reply, outcome) = oneshot::channel();
                outcomes.push(outcome);
                let waiting = Waiting {
                    command,
                    deadline,
                    reply,
                };
                queue.push(waiting, size);
            }
            queue.start()
        };
        if let Some(batch) = start {
            tokio::spawn(self.clone().run(batch));
        }
        outcomes
    }

    async fn wait(outcome: oneshot::Receiver<Outcome>, deadline: Instant) -> Outcome {
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<Waiting>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `batch`, then the batches queued behind it, in one slot.
    async fn run(self: Arc<Self>, mut batch: Vec<Waiting>) {
        loop {
            // Callers that gave up (timed out) are not proposed for.
            batch.retain(|w| !w.reply.is_closed());
            if let Some(deadline) = batch.iter().map(|w| w.deadline).max() {
                let commands: Vec<Command> = batch.iter().map(|w| w.command.clone()).collect();
                metrics::histogram!("keelson_raft_proposal_batch_commands")
                    .record(commands.len() as f64);
                match self.commit(commands, deadline).await {
                    Ok(outcomes) if outcomes.len() == batch.len() => {
                        for (waiting, outcome) in batch.drain(..).zip(outcomes) {
                            drop(waiting.reply.send(outcome));
                        }
                    }
                    Ok(outcomes) => {
                        let error = Error::ProposalMismatch {
                            sent: batch.len(),
                            answered: outcomes.len(),
                        };
                        tracing::error!(%error, "proposal answered wrongly");
                        fail(batch.drain(..), &error);
                    }
                    Err(error) => fail(batch.drain(..), &error),
                }
            }
            match self.lock().finished() {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// Commits `commands` as one entry before `deadline`: in this member's
    /// log if it leads, else through the leader, waiting out elections.
    async fn commit(&self, commands: Vec<Command>, deadline: Instant) -> Result<Vec<Outcome>> {
        tokio::time::timeout_at(deadline, async {
            loop {
                let proposal = Proposal {
                    commands: commands.clone(),
                };
                match self.write(proposal).await {
                    Err(Error::NotLeader {
                        leader: Some((id, member)),
                    }) => {
                        let forwarded = self.forward(id, &member, commands.clone());
                        // A leader cut off or stopped holds the forwarded
                        // batch (and every write queued behind it) until
                        // the deadline: once another member leads, give up
                        // on it, as etcd fails proposals in flight when the
                        // leader changes. Whether they were applied is not
                        // known, so they are not sent again.
                        let replaced = self.wait_for_leader_change(id, deadline);
                        tokio::select! {
                            outcome = forwarded => match outcome {
                                // The leader is gone: wait for the next one, as
                                // etcd's proposals wait, rather than fail at once.
                                Err(Error::LeaderUnreachable { leader }) => {
                                    self.wait_for_leader_change(leader, deadline).await?
                                }
                                outcome => return outcome,
                            },
                            Ok(()) = replaced => return Err(Error::LeaderChanged),
                        }
                    }
                    Err(Error::NotLeader { leader: None }) => {
                        self.wait_for_leader(deadline).await?
                    }
                    outcome => return outcome,
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }

    /// Appends `proposal` to this member's log, which must lead; one
    /// outcome per command, once applied here.
    async fn write(&self, proposal: Proposal) -> Result<Vec<Outcome>> {
        match self.raft.client_write(proposal).await {
            Ok(written) => Ok(written.data.0),
            Err(error) => Err(write_error(error)),
        }
    }

    async fn forward(
        &self,
        leader: u64,
        member: &MemberInfo,
        commands: Vec<Command>,
    ) -> Result<Vec<Outcome>> {
        let mut client = self
            .peers
            .client(leader, member)
            .map_err(|_| Error::LeaderUnreachable { leader })?;
        let response = client
            .forward(pb::ForwardRequest { commands })
            .await
            .map_err(|status| {
                // The leader's own refusals are etcd errors; anything else
                // failed on the way there. Only a write that never left may be
                // sent again: one cut off mid-way may have been applied.
                let ours = status.message().starts_with("etcdserver:");
                if !ours && status.message().contains("connect") {
                    Error::LeaderUnreachable { leader }
                } else if !ours {
                    Error::LeaderChanged
                } else {
                    Error::remote(status)
                }
            })?
            .into_inner();
        Ok(response.results.into_iter().map(forwarded).collect())
    }

    /// Waits until a leader other than `old` is known, or `deadline`.
    pub async fn wait_for_leader_change(&self, old: u64, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .metrics(
                |m| m.current_leader.is_some_and(|id| id != old),
                "a new leader",
            )
            .await
            .map(drop)
            .map_err(|_| Error::NoLeader)
    }

    /// Waits until a leader is known, or `deadline`.
    pub async fn wait_for_leader(&self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left.max(Duration::from_millis(1))))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map(drop)
            .map_err(|_| Error::NoLeader)
    }
}

/// Tells every write of a batch that it failed with `error`.
fn fail(batch: impl Iterator<Item = Waiting>, error: &Error) {
    for waiting in batch {
        drop(waiting.reply.send(Err(error.for_each_write())));
    }
}

pub(crate) fn write_error(error: RaftError<u64, ClientWriteError<u64, MemberInfo>>) -> Error {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => not_leader(to),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(source)) => Error::Membership {
            reason: source.to_string(),
        },
        RaftError::Fatal(source) => Error::RaftFatal {
            source: Box::new(source),
        },
    }
}

pub(crate) fn not_leader(to: ForwardToLeader<u64, MemberInfo>) -> Error {
    Error::NotLeader {
        leader: to.leader_id.zip(to.leader_node),
    }
}

/// A command's outcome as the leader reported it.
fn forwarded(result: pb::ForwardResult) -> Outcome {
    use pb::forward_result::Result as R;
    let revision = result.revision;
    let response = match result.result {
        Some(R::Put(r)) => CommandResponse::Put(r),
        Some(R::DeleteRange(r)) => CommandResponse::DeleteRange(r),
        Some(R::Txn(r)) => CommandResponse::Txn(r),
        Some(R::Compaction(r)) => CommandResponse::Compaction(r),
        Some(R::LeaseGrant(r)) => CommandResponse::LeaseGrant(r),
        Some(R::LeaseRevoke(r)) => CommandResponse::LeaseRevoke(r),
        Some(R::Error(e)) => {
            return Err(Error::Remote {
                code: e.code,
                message: e.message,
            });
        }
        None => {
            return Err(Error::Remote {
                code: tonic::Code::Internal as i32,
                message: "empty forward result".into(),
            });
        }
    };
    Ok((response, revision))
}

/// A command's outcome, for the follower that forwarded it.
pub fn forward_result(outcome: Outcome) -> pb::ForwardResult {
    use pb::forward_result::Result as R;
    match outcome {
        Ok((response, revision)) => pb::ForwardResult {
            revision,
            result: Some(match response {
                CommandResponse::Put(r) => R::Put(r),
                CommandResponse::DeleteRange(r) => R::DeleteRange(r),
                CommandResponse::Txn(r) => R::Txn(r),
                CommandResponse::Compaction(r) => R::Compaction(r),
                CommandResponse::LeaseGrant(r) => R::LeaseGrant(r),
                CommandResponse::LeaseRevoke(r) => R::LeaseRevoke(r),
            }),
        },
        Err(error) => {
            let status = error.to_status();
            pb::ForwardResult {
                revision: 0,
                result: Some(R::Error(pb::RemoteError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                })),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_write_starts_at_once() {
        let mut queue = Queue::default();
        assert_eq!(queue.start(), None);
        queue.push(1, 10);
        assert_eq!(queue.start(), Some(vec![1]));
        assert_eq!(queue.finished(), None);
        assert_eq!(queue.running, 0);
    }

    #[test]
    fn writes_queue_behind_full_slots_and_leave_together() {
        let mut queue = Queue::default();
        for i in 0..MAX_IN_FLIGHT {
            queue.push(i, 1);
            assert_eq!(queue.start(), Some(vec![i]));
        }
        for i in 10..15 {
            queue.push(i, 1);
            assert_eq!(queue.start(), None);
        }
        assert_eq!(queue.finished(), Some(vec![10, 11, 12, 13, 14]));
        assert_eq!(queue.running, MAX_IN_FLIGHT);
        for _ in 0..MAX_IN_FLIGHT {
            assert_eq!(queue.finished(), None);
        }
        assert_eq!(queue.running, 0);
    }

    #[test]
    fn batches_stop_at_the_command_and_byte_limits() {
        let mut queue = Queue::default();
        for i in 0..MAX_IN_FLIGHT {
            queue.push(i, 1);
            queue.start();
        }
        for i in 0..MAX_BATCH_COMMANDS + 3 {
            queue.push(i, 1);
        }
        assert_eq!(queue.finished().map(|b| b.len()), Some(MAX_BATCH_COMMANDS));
        assert_eq!(queue.finished().map(|b| b.len()), Some(3));

        // Bytes: a batch takes what fits, and an oversized command goes alone.
        let half = MAX_BATCH_BYTES / 2;
        for (item, size) in [
            (1, half),
            (2, half),
            (3, 1),
            (4, 2 * MAX_BATCH_BYTES),
            (5, 1),
        ] {
            queue.push(item, size);
        }
        assert_eq!(queue.finished(), Some(vec![1, 2]));
        assert_eq!(queue.finished(), Some(vec![3]));
        assert_eq!(queue.finished(), Some(vec![4]));
        assert_eq!(queue.finished(), Some(vec![5]));
        assert_eq!(queue.finished(), None);
    }
}
