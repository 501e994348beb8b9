//! The MVCC store as openraft's state machine.
//!
//! Committed entries are applied in one [`MvccStore::apply`] batch per
//! call, with the last applied log ID and the latest membership written in
//! the same synced RocksDB batch, so what the store holds and what openraft
//! believes was applied never disagree after a crash. Snapshots are the
//! store's own snapshot stream; installing one replaces the store.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use keelson_proto::keelsonpb as pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership,
};
use prost::Message;

use super::codec::{self, Entry};
use super::{MemberInfo, StorageError, TypeConfig, err};
use crate::hub::WatchHub;
use crate::lessor::Lessor;
use crate::store::{CommandResponse, LeaseChange, MvccStore};

pub(crate) const APPLIED: &str = "raft_applied";
pub(crate) const MEMBERSHIP: &str = "raft_membership";
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Applies of at most this many commands run on the calling task.
const INLINE_APPLY_COMMANDS: usize = 8;

/// A snapshot's description and its bytes.
type BuiltSnapshot = (SnapshotMeta<u64, MemberInfo>, Vec<u8>);
/// The last applied log ID and the membership in force.
type AppliedState = (Option<LogId<u64>>, StoredMembership<u64, MemberInfo>);

/// What applying one log entry produced: for each command of its proposal,
/// the command's response and the store revision after it (nothing for
/// entries that carry no proposal).
#[derive(Debug)]
pub struct ApplyResult(pub Vec<crate::Result<(CommandResponse, i64)>>);

/// The state machine of one member.
#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Arc<MvccStore>,
    hub: Arc<WatchHub>,
    lessor: Arc<Mutex<Lessor>>,
    current: Arc<Mutex<Option<BuiltSnapshot>>>,
}

impl StateMachine {
    pub fn new(store: Arc<MvccStore>, hub: Arc<WatchHub>, lessor: Arc<Mutex<Lessor>>) -> Self {
        Self {
            store,
            hub,
            lessor,
            current: Arc::new(Mutex::new(None)),
        }
    }

    fn read_state(store: &MvccStore) -> crate::Result<AppliedState> {
        let corrupt = |key| crate::Error::CorruptMeta {
            key,
            reason: "undecodable",
        };
        let applied = store
            .meta(APPLIED)?
            .map(|raw| pb::LogId::decode(raw.as_slice()).map_err(|_| corrupt(APPLIED)))
            .transpose()?
            .map(|id| codec::from_log_id(&id));
        let membership = store
            .meta(MEMBERSHIP)?
            .map(|raw| {
                let stored = pb::StoredMembership::decode(raw.as_slice())
                    .map_err(|_| corrupt(MEMBERSHIP))?;
                codec::from_stored_membership(&stored).map_err(|_| corrupt(MEMBERSHIP))
            })
            .transpose()?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    fn apply_blocking(&self, entries: Vec<Entry>) -> crate::Result<Vec<ApplyResult>> {
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let mut meta = vec![(APPLIED, codec::log_id(&last).encode_to_vec())];
        let mut commands = Vec::new();
        // How many commands each entry carries, to hand the results back.
        let mut counts = Vec::with_capacity(entries.len());
        let entry_count = entries.len() as u64;
        for entry in entries {
            let index = entry.log_id.index;
            counts.push(match &entry.payload {
                EntryPayload::Normal(proposal) => proposal.commands.len(),
                _ => 0,
            });
            match entry.payload {
                EntryPayload::Normal(proposal) => {
                    commands.extend(proposal.commands.into_iter().map(|c| (index, c)))
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership);
                    meta.retain(|(key, _)| *key != MEMBERSHIP);
                    meta.push((
                        MEMBERSHIP,
                        codec::stored_membership(&stored).encode_to_vec(),
                    ));
                }
                EntryPayload::Blank => {}
            }
        }
        let output = self.store.apply(&commands, &meta)?;
        metrics::counter!("etcd_server_proposals_committed_total").increment(entry_count);
        metrics::counter!("etcd_server_proposals_applied_total").increment(entry_count);
        let failed = output
            .applied
            .iter()
            .filter(|a| a.response.is_err())
            .count();
        metrics::counter!("etcd_server_proposals_failed_total").increment(failed as u64);
        {
            let now = tokio::time::Instant::now();
            let mut lessor = self.lessor.lock().unwrap_or_else(|p| p.into_inner());
            for change in &output.lease_changes {
                match *change {
                    LeaseChange::Granted { id, ttl } => lessor.granted(id, ttl, now),
                    LeaseChange::Revoked { id } => lessor.revoked(id),
                }
            }
        }
        self.hub.publish(output.events, self.store.revision());
        let mut applied = output
            .applied
            .into_iter()
            .map(|a| a.response.map(|r| (r, a.revision)));
        Ok(counts
            .into_iter()
            .map(|count| ApplyResult(applied.by_ref().take(count).collect()))
            .collect())
    }

    fn build_blocking(&self) -> crate::Result<BuiltSnapshot> {
        // The log will be purged behind this snapshot: what it covers must
        // be durable in the store first (applies are not synced one by one).
        self.store.sync()?;
        let mut data = Vec::new();
        let (_, meta) = self.store.snapshot_with_meta(
            SNAPSHOT_CHUNK_BYTES,
            &[APPLIED, MEMBERSHIP],
            &mut |chunk, _| {
                data.extend(chunk);
                Ok(())
            },
        )?;
        let corrupt = |key| crate::Error::CorruptMeta {
            key,
            reason: "undecodable",
        };
        let last_log_id = meta[0]
            .as_deref()
            .map(|raw| {
                pb::LogId::decode(raw)
                    .map(|id| codec::from_log_id(&id))
                    .map_err(|_| corrupt(APPLIED))
            })
            .transpose()?;
        let last_membership = meta[1]
            .as_deref()
            .map(|raw| {
                let stored = pb::StoredMembership::decode(raw).map_err(|_| corrupt(MEMBERSHIP))?;
                codec::from_stored_membership(&stored).map_err(|_| corrupt(MEMBERSHIP))
            })
            .transpose()?
            .unwrap_or_default();
        let snapshot_id = match last_log_id {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        Ok((
            SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            },
            data,
        ))
    }

    fn remember(&self, meta: SnapshotMeta<u64, MemberInfo>, data: Vec<u8>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta, data));
    }
}

/// Runs `work` on the blocking pool (it syncs to disk) and maps its error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
    error: impl FnOnce(AnyError) -> StorageError,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error(AnyError::new(&e))),
        Err(e) => Err(error(AnyError::error(format!(
            "state machine task failed: {e}"
        )))),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let (meta, data) = blocking(
            move || this.build_blocking(),
            |e| err::write_snapshot(None, e),
        )
        .await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        self.remember(meta.clone(), data.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError> {
        Self::read_state(&self.store).map_err(|e| err::read_state_machine(&e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Applying does not sync: a few commands take less time than a
        // hand-off to the blocking pool and back.
        let commands: usize = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(proposal) => proposal.commands.len(),
                _ => 0,
            })
            .sum();
        if commands <= INLINE_APPLY_COMMANDS {
            return self
                .apply_blocking(entries)
                .map_err(|e| err::write_state_machine(AnyError::new(&e)));
        }
        let this = self.clone();
        blocking(
            move || this.apply_blocking(entries),
            err::write_state_machine,
        )
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let this = self.clone();
        let bytes = data.clone();
        let signature = meta.signature();
        let revision = blocking(
            move || this.store.restore(&bytes),
            move |e| err::read_snapshot(Some(signature.clone()), e),
        )
        .await?;
        // Watchers resume from the restored history.
        self.hub.reset(revision);
        {
            let mut lessor = self.lessor.lock().unwrap_or_else(|p| p.into_inner());
            if lessor.is_primary() {
                lessor.promote(self.store.leases(), tokio::time::Instant::now());
            }
        }
        tracing::info!(snapshot = %meta.snapshot_id, revision, "snapshot installed");
        self.remember(meta.clone(), data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
