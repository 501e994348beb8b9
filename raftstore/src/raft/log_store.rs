//! The Raft log and vote, in the member's RocksDB.
//!
//! The log shares the store's database (and so its WAL): entries live in
//! `raft_log` under their big-endian index, as `[format byte][keelsonpb.Entry]`;
//! the vote, the committed log ID and the last purged log ID in `raft_meta`.
//! Appends and votes are synced before openraft is told they are durable.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use keelson_proto::keelsonpb as pb;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, Vote};
use prost::Message;
use rocksdb::WriteBatch;

use super::codec::{self, Entry};
use super::{StorageError, TypeConfig, err};
use crate::backend::{CF_RAFT_LOG, CF_RAFT_META};
use crate::store::MvccStore;

const FORMAT_V1: u8 = 1;
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log of one member. Cheap to clone: clones share the database
/// and the syncer.
#[derive(Clone, Debug)]
pub struct LogStore {
    store: Arc<MvccStore>,
    /// Appends waiting for the next sync.
    syncer: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// The log in `store`'s database, with its syncer thread (which ends
    /// when the last clone is dropped).
    pub fn new(store: Arc<MvccStore>) -> Self {
        let (syncer, pending) = std::sync::mpsc::channel();
        // Weak: the database closes when its owners let go of it, not
        // whenever this thread notices, which could be after the process
        // has begun to exit.
        let database = Arc::downgrade(&store);
        let spawned = std::thread::Builder::new()
            .name("keelson-log-sync".into())
            .spawn(move || sync_appends(&database, &pending));
        if let Err(error) = spawned {
            // Appends will report the failure through their callbacks.
            tracing::error!(%error, "cannot start the Raft log syncer");
        }
        Self { store, syncer }
    }

    fn encode_entry(entry: &Entry) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        codec::entry(entry)
            .encode(&mut out)
            .unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
        out
    }

    fn decode_entry(raw: &[u8]) -> Result<Entry, StorageError> {
        let malformed =
            |what: &str| err::read_logs(AnyError::error(format!("malformed log entry: {what}")));
        let [FORMAT_V1, body @ ..] = raw else {
            return Err(malformed("unknown format"));
        };
        let entry = pb::Entry::decode(body).map_err(|e| malformed(&e.to_string()))?;
        codec::from_entry(entry).map_err(|e| err::read_logs(AnyError::new(&e)))
    }

    fn read_log_id(&self, key: &'static str) -> Result<Option<LogId<u64>>, StorageError> {
        let raw = self
            .store
            .backend()
            .get(CF_RAFT_META, key.as_bytes())
            .map_err(|e| err::read_logs(&e))?;
        raw.map(|raw| {
            pb::LogId::decode(raw.as_slice())
                .map(|id| codec::from_log_id(&id))
                .map_err(|e| err::read_logs(AnyError::error(format!("malformed {key}: {e}"))))
        })
        .transpose()
    }

    /// Writes `batch` and syncs it, off the async executor.
    async fn commit(&self, batch: WriteBatch) -> Result<(), crate::Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.backend().commit(batch))
            .await
            .map_err(|_| crate::Error::Stopped)?
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        self.store
            .backend()
            .scan(CF_RAFT_LOG, &index_key(start), |key, value| {
                let index =
                    u64::from_be_bytes(key.try_into().map_err(|_| crate::Error::CorruptMeta {
                        key: "raft_log",
                        reason: "index key is not 8 bytes",
                    })?);
                if !range.contains(&index) {
                    return Ok(false);
                }
                entries.push(value.to_vec());
                Ok(true)
            })
            .map_err(|e| err::read_logs(&e))?;
        entries.iter().map(|raw| Self::decode_entry(raw)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last = self
            .store
            .backend()
            .last(CF_RAFT_LOG)
            .map_err(|e| err::read_logs(&e))?;
        let last_log_id = last
            .map(|(_, raw)| Self::decode_entry(&raw).map(|e| e.log_id))
            .transpose()?;
        let last_purged_log_id = self.read_log_id(LAST_PURGED)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.backend().cf(CF_RAFT_META),
            VOTE,
            codec::vote(vote).encode_to_vec(),
        );
        self.commit(batch).await.map_err(|e| err::write_vote(&e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        let raw = self
            .store
            .backend()
            .get(CF_RAFT_META, VOTE.as_bytes())
            .map_err(|e| err::read_vote(&e))?;
        raw.map(|raw| {
            pb::Vote::decode(raw.as_slice())
                .map(|v| codec::from_vote(&v))
                .map_err(|e| err::read_vote(AnyError::error(format!("malformed vote: {e}"))))
        })
        .transpose()
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let cf = self.store.backend().cf(CF_RAFT_META);
        match committed {
            Some(id) => batch.put_cf(cf, COMMITTED, codec::log_id(&id).encode_to_vec()),
            None => batch.delete_cf(cf, COMMITTED),
        }
        // Losing the committed index is safe (it is learned again from the
        // leader), so it is not synced: the next sync makes it durable.
        self.store
            .backend()
            .write(batch, false)
            .map_err(|e| err::write_logs(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError> {
        self.read_log_id(COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.store.backend().cf(CF_RAFT_LOG);
        for entry in entries {
            batch.put_cf(
                cf,
                index_key(entry.log_id.index),
                Self::encode_entry(&entry),
            );
        }
        // Written now (readable at once), durable at the syncer's next sync,
        // which then tells openraft: appends made meanwhile share one fsync.
        match self.store.backend().write(batch, false) {
            Ok(()) => {
                if let Err(unsent) = self.syncer.send(callback) {
                    let io = std::io::Error::other("the Raft log syncer stopped");
                    unsent.0.log_io_completed(Err(io));
                }
                Ok(())
            }
            Err(error) => {
                let io = std::io::Error::other(error.to_string());
                callback.log_io_completed(Err(io));
                Err(err::write_logs(&error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.store.backend().cf(CF_RAFT_LOG),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        // delete_range's end is exclusive: u64::MAX itself goes separately.
        batch.delete_cf(self.store.backend().cf(CF_RAFT_LOG), index_key(u64::MAX));
        self.commit(batch).await.map_err(|e| err::write_logs(&e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.backend().cf(CF_RAFT_META),
            LAST_PURGED,
            codec::log_id(&log_id).encode_to_vec(),
        );
        batch.delete_range_cf(
            self.store.backend().cf(CF_RAFT_LOG),
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.commit(batch).await.map_err(|e| err::write_logs(&e))
    }
}

/// Group commit for appends: each sync makes every append written before it
/// durable, then acknowledges them all.
fn sync_appends(
    store: &std::sync::Weak<MvccStore>,
    pending: &std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>,
) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        let started = std::time::Instant::now();
        let outcome = match store.upgrade() {
            Some(store) => store.sync(),
            None => Err(crate::Error::Stopped),
        };
        metrics::histogram!("etcd_disk_wal_fsync_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        for callback in waiting {
            let result = outcome
                .as_ref()
                .map(drop)
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(result);
        }
    }
}
