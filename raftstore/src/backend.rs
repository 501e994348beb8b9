//! RocksDB, as the store uses it: three column families and synced batches.
//!
//! | column family | key                         | value                                  |
//! |---------------|-----------------------------|----------------------------------------|
//! | `kv`          | revision (16 bytes, BE)     | record: format byte, kind byte, `KeyValue` |
//! | `lease`       | lease id (8 bytes, BE)      | `LeaseRecord`                          |
//! | `meta`        | name (ASCII)                | per name (revision, last applied log ID, …) |
//! | `raft_log`    | log index (8 bytes, BE)     | format byte, `keelsonpb.Entry`         |
//! | `raft_meta`   | name (ASCII)                | vote, committed and last purged log IDs |
//!
//! Every write is one [`WriteBatch`]: the data, the store revision and the
//! last applied log ID change together. Raft log appends and votes are synced
//! to the WAL before they are acknowledged; applied batches are not (the log
//! replays them), see [`crate::store::MvccStore::apply`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};

pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_LEASE: &str = "lease";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// The families that hold the store's state; a snapshot copies exactly these.
pub(crate) const COLUMN_FAMILIES: [&str; 3] = [CF_KV, CF_LEASE, CF_META];
/// Every family, the Raft log's included (one database, one WAL).
const ALL_FAMILIES: [&str; 5] = [CF_KV, CF_LEASE, CF_META, CF_RAFT_LOG, CF_RAFT_META];

/// A key and its value, as RocksDB iterators return them.
pub(crate) type KeyValuePair = (Box<[u8]>, Box<[u8]>);

/// The RocksDB database behind one member's store.
pub(crate) struct Backend {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Opens (creating if needed) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let families = ALL_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        // The families are created at open; a missing one is a programming error.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    pub(crate) fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Writes `batch` atomically and syncs the WAL before returning.
    pub(crate) fn commit(&self, batch: WriteBatch) -> Result<()> {
        self.write(batch, true)
    }

    /// Writes `batch` atomically; with `sync`, the WAL is synced before
    /// returning, otherwise the write is durable at the next sync.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        let started = Instant::now();
        self.db.write_opt(batch, &options)?;
        metrics::histogram!("etcd_disk_backend_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes every earlier write durable (syncs the WAL).
    pub(crate) fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Visits the entries of `cf` from `from` on, in key order, until `visit` returns `false`.
    pub(crate) fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mode = IteratorMode::From(from, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf), mode) {
            let (key, value) = item?;
            if !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }

    /// A consistent point-in-time view of the database.
    pub(crate) fn snapshot(&self) -> rocksdb::Snapshot<'_> {
        self.db.snapshot()
    }

    /// Bytes the database occupies: SST files plus memtables, over every family.
    pub(crate) fn size(&self) -> u64 {
        self.sum_property("rocksdb.total-sst-files-size")
            + self.sum_property("rocksdb.cur-size-all-mem-tables")
    }

    /// Bytes of live data, RocksDB's estimate.
    pub(crate) fn size_in_use(&self) -> u64 {
        self.sum_property("rocksdb.estimate-live-data-size")
            + self.sum_property("rocksdb.cur-size-all-mem-tables")
    }

    fn sum_property(&self, name: &str) -> u64 {
        ALL_FAMILIES
            .iter()
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
            })
            .sum()
    }

    /// Compacts every family fully, reclaiming the space of deleted records.
    pub(crate) fn defragment(&self) {
        for cf in COLUMN_FAMILIES {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// The last entry of `cf` in key order.
    pub(crate) fn last(&self, cf: &'static str) -> Result<Option<KeyValuePair>> {
        Ok(self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::End)
            .next()
            .transpose()?)
    }

    /// Reads a big-endian `i64` meta value; `None` when absent.
    pub(crate) fn meta_i64(&self, key: &'static str) -> Result<Option<i64>> {
        self.get(CF_META, key.as_bytes())?
            .map(|raw| {
                raw.as_slice()
                    .try_into()
                    .map(i64::from_be_bytes)
                    .map_err(|_| Error::CorruptMeta {
                        key,
                        reason: "not 8 bytes",
                    })
            })
            .transpose()
    }
}
