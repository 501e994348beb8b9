//! The MVCC key-value store: etcd's data model on RocksDB.
//!
//! ```text
//!   commands (in log order) ──► apply ──► WriteBatch ──► RocksDB (synced)
//!                                 │                         ▲
//!                                 ▼                         │ values by revision
//!                   KeyIndex (key → revisions) ◄── reads ───┘
//! ```
//!
//! Writes arrive as [`Command`](keelson_proto::keelsonpb::Command)s with their log index and are applied one
//! batch at a time by a single applier (the Raft state machine); the same
//! commands in the same order give the same store on every member. A batch's
//! records, revision and applied index go to RocksDB in one atomic write, and
//! only then does the store *publish* the new revision: readers never see a
//! half-applied batch. Commands reach the store only once they are durable
//! in the Raft log, so the store need not sync each batch; it syncs before a
//! snapshot lets the log be purged ([`MvccStore::sync`]).
//!
//! Reads ([`MvccStore::range`]) resolve revisions in the in-memory index under
//! a read lock, then fetch the values from RocksDB without holding it.

mod apply;
mod range;
mod record;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use keelson_proto::etcdserverpb::{RangeRequest, RangeResponse};
use keelson_proto::keelsonpb::LeaseRecord;
use keelson_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message;

pub use self::apply::{Applied, ApplyOutput, CommandResponse, LeaseChange};
pub(crate) use self::record::Record;
use crate::backend::{Backend, CF_KV, CF_LEASE, CF_META};
use crate::error::{Error, Result};
use crate::index::KeyIndex;
use crate::revision::Revision;

pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted_revision";
/// Marks data restored from a snapshot whose log does not yet start after it.
const RESTORED: &str = "restored";

/// Settings every member must share, because applying commands depends on them.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Leases granted with a shorter TTL get this one (etcd derives it from
    /// the election timeout).
    pub min_lease_ttl: i64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { min_lease_ttl: 2 }
    }
}

/// A lease as the state machine knows it: its TTL and the keys attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// What the applier mutates; readers take it shared.
#[derive(Debug)]
struct State {
    index: KeyIndex,
    /// The revision of the last applied write (may be ahead of the published one
    /// while a batch is being written).
    revision: i64,
    compacted: i64,
    leases: BTreeMap<i64, LeaseInfo>,
}

/// One member's MVCC store.
#[derive(Debug)]
pub struct MvccStore {
    backend: Backend,
    state: RwLock<State>,
    /// The newest fully applied revision; reads never go beyond it.
    published: AtomicI64,
    config: StoreConfig,
}

impl MvccStore {
    /// Opens the store in `dir`, rebuilding the key index and the lease table
    /// from what is on disk.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Self> {
        let backend = Backend::open(dir)?;
        let state = load(&backend)?;
        let revision = state.revision;
        Ok(Self {
            backend,
            state: RwLock::new(state),
            published: AtomicI64::new(revision),
            config,
        })
    }

    /// Replaces the whole store with the content of `snapshot` (as written
    /// by [`MvccStore::snapshot`]), durably, and returns its revision.
    /// Watchers must be told that history before that revision may be gone.
    pub fn restore(&self, snapshot: &[u8]) -> Result<i64> {
        let entries = crate::snapshot::parse(snapshot)?;
        let member = crate::node::META_MEMBER;
        // This member's identity is its own, not the snapshot's sender's.
        let identity = self.meta(member)?;
        let mut batch = rocksdb::WriteBatch::default();
        for name in crate::backend::COLUMN_FAMILIES {
            // Every key the store writes sorts below 32 bytes of 0xFF.
            batch.delete_range_cf(self.backend.cf(name), [].as_slice(), [0xFF; 32].as_slice());
        }
        for (family, key, value) in entries {
            if family == CF_META && key == member.as_bytes() {
                continue;
            }
            batch.put_cf(self.backend.cf(family), key, value);
        }
        if let Some(identity) = identity {
            batch.put_cf(self.backend.cf(CF_META), member, identity);
        }
        let mut state = self.write();
        self.backend.commit(batch)?;
        let loaded = load(&self.backend)?;
        *state = loaded;
        self.published.store(state.revision, Ordering::Release);
        Ok(state.revision)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads a member-level metadata value (not part of the replicated state).
    pub(crate) fn meta(&self, key: &'static str) -> Result<Option<Vec<u8>>> {
        self.backend.get(CF_META, key.as_bytes())
    }

    /// Durably stores a member-level metadata value.
    pub(crate) fn put_meta(&self, key: &'static str, value: &[u8]) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.backend.cf(CF_META), key, value);
        self.backend.commit(batch)
    }

    /// Drops what ties this data to the cluster it came from (the member's
    /// identity, the applied log position, the membership), keeping every
    /// key, lease and revision: a member started on it founds a new
    /// cluster of itself (a restore, or a reset after quorum loss).
    pub fn forget_cluster(&self) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for key in crate::raft::CLUSTER_META_KEYS {
            batch.delete_cf(self.backend.cf(CF_META), key);
        }
        // Kept with the Raft state, which no snapshot carries or replaces.
        batch.put_cf(
            self.backend.cf(crate::backend::CF_RAFT_META),
            RESTORED,
            [1u8],
        );
        self.backend.commit(batch)
    }

    /// Whether this data was restored (or reset) and the member has not
    /// yet made its log start after it (see [`crate::node::Node::start`]).
    pub(crate) fn is_restored(&self) -> Result<bool> {
        Ok(self
            .backend
            .get(crate::backend::CF_RAFT_META, RESTORED.as_bytes())?
            .is_some())
    }

    pub(crate) fn clear_restored(&self) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(self.backend.cf(crate::backend::CF_RAFT_META), RESTORED);
        self.backend.commit(batch)
    }

    /// The database, for the Raft log that shares it.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Makes every applied write durable.
    pub fn sync(&self) -> Result<()> {
        self.backend.sync()
    }

    /// The newest fully applied revision.
    pub fn revision(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// The revision of the last compaction (0: never compacted).
    pub fn compacted_revision(&self) -> i64 {
        self.read().compacted
    }

    /// Checks that `requested` (0: latest) can be read and returns the revision to read at.
    fn read_revision(&self, state: &State, requested: i64) -> Result<i64> {
        let current = self.revision();
        if requested <= 0 {
            return Ok(current);
        }
        if requested > current {
            return Err(Error::FutureRevision { requested, current });
        }
        if requested < state.compacted {
            return Err(Error::Compacted {
                requested,
                compacted: state.compacted,
            });
        }
        Ok(requested)
    }

    /// Serves a Range request (without its header).
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse> {
        let (plan, at) = {
            let state = self.read();
            let at = self.read_revision(&state, request.revision)?;
            (range::plan(&state.index, at, request)?, at)
        };
        range::finish(plan, request, |rev| self.fetch_visible(rev, at))
    }

    /// The value of `key` visible at revision `at`, if any.
    pub fn get(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>> {
        let entry = self.read().index.get(key, at);
        entry
            .map(|entry| self.fetch_visible(entry.modified, at))
            .transpose()
    }

    /// Reads the record of a revision the index resolved for a read at `at`.
    /// A compaction racing the read may have removed it: that read is then
    /// below the compacted revision, and fails as such.
    fn fetch_visible(&self, rev: Revision, at: i64) -> Result<KeyValue> {
        match self.backend.get(CF_KV, &rev.to_bytes())? {
            Some(raw) => Ok(Record::decode(rev, &raw)?.kv().clone()),
            None => Err(Error::Compacted {
                requested: at,
                compacted: self.compacted_revision(),
            }),
        }
    }

    /// Every event with a revision in `from..=to`, read from disk, in order.
    /// Fails with [`Error::Compacted`] if `from` is below the compacted revision.
    pub fn events(&self, from: i64, to: i64) -> Result<Vec<Event>> {
        let compacted = self.compacted_revision();
        if from < compacted {
            return Err(Error::Compacted {
                requested: from,
                compacted,
            });
        }
        let mut events = Vec::new();
        self.backend
            .scan(CF_KV, &Revision::new(from, 0).to_bytes(), |key, value| {
                let rev = Revision::from_bytes(key).ok_or(Error::CorruptRecord {
                    rev: Revision::default(),
                    reason: "bad revision key",
                })?;
                if rev.main > to {
                    return Ok(false);
                }
                events.push(match Record::decode(rev, value)? {
                    Record::Put(kv) => Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv),
                        prev_kv: None,
                    },
                    Record::Tombstone(kv) => Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(kv),
                        prev_kv: None,
                    },
                });
                Ok(true)
            })?;
        Ok(events)
    }

    /// The lease `id` and its attached keys.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.read().leases.get(&id).cloned()
    }

    /// Every lease with its TTL, by id.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.read()
            .leases
            .iter()
            .map(|(id, info)| (*id, info.ttl))
            .collect()
    }

    /// Number of keys with history in the index.
    pub fn key_count(&self) -> usize {
        self.read().index.len()
    }

    /// Bytes on disk, and bytes of live data.
    pub fn db_size(&self) -> (u64, u64) {
        (self.backend.size(), self.backend.size_in_use())
    }

    /// Compacts RocksDB fully; blocking, run it off the async executor.
    pub fn defragment(&self) {
        self.backend.defragment();
    }

    /// A CRC-32 over every revision record up to `at` (0: latest), with the
    /// revision it covers and the compacted revision; equal stores give equal hashes.
    pub fn hash(&self, at: i64) -> Result<(u32, i64, i64)> {
        let (at, compacted) = {
            let state = self.read();
            (self.read_revision(&state, at)?, state.compacted)
        };
        let mut hasher = crc32fast::Hasher::new();
        self.backend.scan(CF_KV, &[], |key, value| {
            if Revision::from_bytes(key).is_none_or(|rev| rev.main > at) {
                return Ok(false);
            }
            hasher.update(key);
            hasher.update(value);
            Ok(true)
        })?;
        Ok((hasher.finalize(), at, compacted))
    }

    /// Streams a consistent copy of the whole store (see [`crate::snapshot`]
    /// for the format) to `emit` in chunks of at most `chunk_size` bytes, each
    /// with the number of bytes still to come after it. Blocking: run it off
    /// the async executor. `emit` returning an error stops the stream.
    pub fn snapshot(
        &self,
        chunk_size: usize,
        emit: &mut dyn FnMut(Vec<u8>, u64) -> Result<()>,
    ) -> Result<u64> {
        Ok(crate::snapshot::stream(&self.backend, chunk_size, &[], emit)?.0)
    }

    /// [`MvccStore::snapshot`], also returning the `meta` values of
    /// `meta_keys` as of the snapshot (for a log: what it covers).
    pub fn snapshot_with_meta(
        &self,
        chunk_size: usize,
        meta_keys: &[&str],
        emit: &mut dyn FnMut(Vec<u8>, u64) -> Result<()>,
    ) -> Result<(u64, Vec<Option<Vec<u8>>>)> {
        crate::snapshot::stream(&self.backend, chunk_size, meta_keys, emit)
    }
}

/// Rebuilds the in-memory state (index, leases, revisions) from disk.
fn load(backend: &Backend) -> Result<State> {
    let revision = backend.meta_i64(META_REVISION)?.unwrap_or(1);
    let compacted = backend.meta_i64(META_COMPACTED)?.unwrap_or(0);

    let mut index = KeyIndex::default();
    backend.scan(CF_KV, &[], |key, value| {
        let rev = Revision::from_bytes(key).ok_or(Error::CorruptRecord {
            rev: Revision::default(),
            reason: "bad revision key",
        })?;
        match Record::decode(rev, value)? {
            Record::Put(kv) => {
                index.restore_put(&kv.key, rev, kv.create_revision, kv.version, kv.lease)
            }
            Record::Tombstone(kv) => {
                index.tombstone(&kv.key, rev);
            }
        }
        Ok(true)
    })?;

    let mut leases = BTreeMap::new();
    backend.scan(CF_LEASE, &[], |_, value| {
        let record = LeaseRecord::decode(value).map_err(|_| Error::CorruptMeta {
            key: "lease",
            reason: "undecodable LeaseRecord",
        })?;
        leases.insert(
            record.id,
            LeaseInfo {
                ttl: record.ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(true)
    })?;
    for (key, _) in index.live_keys(crate::index::KeyRange::new(b"", b"\0")) {
        if let Some(lease) = index.lease_of(&key).filter(|l| *l != 0)
            && let Some(info) = leases.get_mut(&lease)
        {
            info.keys.insert(key);
        }
    }

    tracing::info!(
        revision,
        compacted,
        keys = index.len(),
        leases = leases.len(),
        "store opened"
    );
    Ok(State {
        index,
        revision,
        compacted,
        leases,
    })
}
