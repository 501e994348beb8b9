//! The in-memory key index: for every key, the revisions at which it changed.
//!
//! Like etcd's `treeIndex`, the index maps each key to its *generations*: a
//! generation runs from the put that created the key to the delete that
//! removed it (its tombstone), and a key that is created again starts a new
//! generation. Values live in RocksDB under their revision; the index answers
//! "which revision of this key is visible at revision R" without touching disk.
//! It is rebuilt from the revision records when a member starts.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::revision::Revision;

/// One life of a key: from its creation to its tombstone (if any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Revision that created the key in this generation.
    created: Revision,
    /// Number of puts in this generation, including compacted ones.
    version: i64,
    /// Revisions still on disk, ascending; a closed generation ends with its tombstone.
    revs: Vec<Revision>,
}

/// What the index knows about one key at one revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The revision whose record holds the visible value.
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

/// The history of one key. The last generation is the open one; it is empty
/// while the key does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyHistory {
    generations: Vec<Generation>,
    /// Lease attached to the current value (0: none).
    lease: i64,
}

impl KeyHistory {
    fn new() -> Self {
        Self {
            generations: vec![Generation::default()],
            lease: 0,
        }
    }

    fn current(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    fn entry_at(&self, at: i64) -> Option<IndexEntry> {
        let open = self.generations.len().checked_sub(1)?;
        for (i, generation) in self.generations.iter().enumerate().rev() {
            let Some(first) = generation.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            let pos = generation.revs.partition_point(|r| r.main <= at) - 1;
            let closed = i != open;
            if closed && pos == generation.revs.len() - 1 {
                // The visible revision is this generation's tombstone.
                return None;
            }
            let newer_puts = (generation.revs.len() - 1 - pos) as i64 - i64::from(closed);
            return Some(IndexEntry {
                modified: generation.revs[pos],
                created: generation.created,
                version: generation.version - newer_puts,
            });
        }
        None
    }

    /// Drops what a compaction at `at` makes unreachable, pushing the
    /// revisions to delete from disk onto `removed`. Returns whether the key
    /// has no history left.
    fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) -> bool {
        let open = self.generations.len() - 1;
        let mut keep_from = 0;
        for (i, generation) in self.generations.iter_mut().enumerate() {
            let Some(last) = generation.revs.last() else {
                continue;
            };
            let closed = i != open;
            if closed && last.main <= at {
                // The whole generation, tombstone included, is history.
                removed.append(&mut generation.revs);
                keep_from = i + 1;
                continue;
            }
            let visible = generation.revs.partition_point(|r| r.main <= at);
            if visible > 1 {
                removed.extend(generation.revs.drain(..visible - 1));
            }
        }
        self.generations.drain(..keep_from);
        self.generations.iter().all(|g| g.revs.is_empty())
    }
}

/// The index of every key in the store.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

/// Which keys a request covers, in etcd's terms: `range_end` empty means the
/// single key, `"\0"` means every key from `key` on, anything else is the
/// half-open range `[key, range_end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

/// The bounds of a non-empty [`KeyRange`] in a `BTreeMap` of keys.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> Self {
        Self { key, end }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            [] => key == self.key,
            [0] => key >= self.key,
            end => key >= self.key && key < end,
        }
    }

    /// Whether the range selects no key at all (`range_end` at or before `key`).
    pub fn is_empty(&self) -> bool {
        !matches!(self.end, [] | [0]) && self.key >= self.end
    }

    /// BTreeMap bounds; `None` for an empty range, which a BTreeMap refuses.
    fn bounds(&self) -> Option<KeyBounds<'a>> {
        if self.is_empty() {
            return None;
        }
        Some(match self.end {
            [] => (Bound::Included(self.key), Bound::Included(self.key)),
            [0] => (Bound::Included(self.key), Bound::Unbounded),
            end => (Bound::Included(self.key), Bound::Excluded(end)),
        })
    }
}

impl KeyIndex {
    /// Records a put of `key` at `rev` with `lease` attached.
    pub fn put(&mut self, key: &[u8], rev: Revision, lease: i64) {
        self.push_put(key, rev, lease, None);
    }

    /// Rebuilds a key's history from a stored put record; unlike [`put`],
    /// it trusts the record's creation revision and version, because the
    /// records before it may have been compacted away.
    ///
    /// [`put`]: KeyIndex::put
    pub fn restore_put(
        &mut self,
        key: &[u8],
        rev: Revision,
        created: i64,
        version: i64,
        lease: i64,
    ) {
        self.push_put(key, rev, lease, Some((Revision::new(created, 0), version)));
    }

    /// Appends a put; `recorded` is the (creation, version) a stored record
    /// says it has, `None` to derive them from the history.
    fn push_put(
        &mut self,
        key: &[u8],
        rev: Revision,
        lease: i64,
        recorded: Option<(Revision, i64)>,
    ) {
        let history = self
            .keys
            .entry(key.to_vec())
            .or_insert_with(KeyHistory::new);
        let generation = history.current();
        if generation.revs.is_empty() {
            generation.created = recorded.map_or(rev, |(created, _)| created);
            generation.version = 0;
        }
        generation.revs.push(rev);
        generation.version = recorded.map_or(generation.version + 1, |(_, version)| version);
        history.lease = lease;
    }

    /// Records the deletion of a live `key` at `rev`, returning the lease
    /// its value had. Returns `None` (and records nothing) if the key is not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> Option<i64> {
        let history = self.keys.get_mut(key)?;
        if !history.is_live() {
            return None;
        }
        history.current().revs.push(rev);
        history.generations.push(Generation::default());
        Some(std::mem::take(&mut history.lease))
    }

    /// The visible revision of `key` at revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<IndexEntry> {
        self.keys.get(key)?.entry_at(at)
    }

    /// The lease attached to the current value of a live key.
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.keys.get(key).filter(|h| h.is_live()).map(|h| h.lease)
    }

    /// Visits every key in `range` visible at `at`, in key order, until
    /// `visit` returns `false`.
    pub fn visit(
        &self,
        range: KeyRange<'_>,
        at: i64,
        mut visit: impl FnMut(&[u8], IndexEntry) -> bool,
    ) {
        let Some(bounds) = range.bounds() else { return };
        for (key, history) in self.keys.range::<[u8], _>(bounds) {
            if let Some(entry) = history.entry_at(at)
                && !visit(key, entry)
            {
                break;
            }
        }
    }

    /// The live keys in `range` at the latest revision, with their current revision.
    pub fn live_keys(&self, range: KeyRange<'_>) -> Vec<(Vec<u8>, IndexEntry)> {
        let mut out = Vec::new();
        self.visit(range, i64::MAX, |key, entry| {
            out.push((key.to_vec(), entry));
            true
        });
        out
    }

    /// Compacts every key's history at revision `at` and returns the
    /// revisions whose records can be deleted from disk.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.keys
            .retain(|_, history| !history.compact(at, &mut removed));
        removed
    }

    /// Number of keys with any history left (live or deleted but not compacted).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn entry(modified: i64, created: i64, version: i64) -> Option<IndexEntry> {
        Some(IndexEntry {
            modified: rev(modified),
            created: rev(created),
            version,
        })
    }

    /// foo: put@2, put@3, delete@4, put@5 ; bar: put@6
    fn sample() -> KeyIndex {
        let mut index = KeyIndex::default();
        index.put(b"foo", rev(2), 0);
        index.put(b"foo", rev(3), 7);
        assert_eq!(index.tombstone(b"foo", rev(4)), Some(7));
        index.put(b"foo", rev(5), 0);
        index.put(b"bar", rev(6), 0);
        index
    }

    #[test]
    fn get_sees_the_revision_visible_at_each_point() {
        let index = sample();
        let cases = [
            (1, None),
            (2, entry(2, 2, 1)),
            (3, entry(3, 2, 2)),
            (4, None),
            (5, entry(5, 5, 1)),
            (100, entry(5, 5, 1)),
        ];
        for (at, want) in cases {
            assert_eq!(index.get(b"foo", at), want, "at {at}");
        }
        assert_eq!(index.get(b"bar", 5), None);
        assert_eq!(index.get(b"nope", 6), None);
    }

    #[test]
    fn tombstone_of_a_missing_or_deleted_key_is_refused() {
        let mut index = sample();
        assert_eq!(index.tombstone(b"nope", rev(7)), None);
        assert_eq!(index.tombstone(b"foo", rev(7)), Some(0));
        assert_eq!(index.tombstone(b"foo", rev(8)), None);
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut index = KeyIndex::default();
        for (i, key) in ["a", "b", "b1", "c"].iter().enumerate() {
            index.put(key.as_bytes(), rev(i as i64 + 2), 0);
        }
        let keys = |range: KeyRange<'_>| -> Vec<String> {
            let mut out = Vec::new();
            index.visit(range, 100, |k, _| {
                out.push(String::from_utf8(k.to_vec()).unwrap());
                true
            });
            out
        };
        assert_eq!(keys(KeyRange::new(b"b", b"")), ["b"]);
        assert_eq!(keys(KeyRange::new(b"b", b"c")), ["b", "b1"]);
        assert_eq!(keys(KeyRange::new(b"b", b"\0")), ["b", "b1", "c"]);
        assert_eq!(keys(KeyRange::new(b"\0", b"\0")), ["a", "b", "b1", "c"]);
        assert!(KeyRange::new(b"b", b"c").contains(b"b1"));
        assert!(!KeyRange::new(b"b", b"c").contains(b"c"));
        assert!(KeyRange::new(b"b", b"\0").contains(b"zz"));
        // A range ending at or before its start selects nothing (etcd answers it, empty).
        assert!(keys(KeyRange::new(b"b", b"a")).is_empty());
        assert!(keys(KeyRange::new(b"b", b"b")).is_empty());
        assert!(!KeyRange::new(b"b", b"a").contains(b"b"));
    }

    #[test]
    fn compaction_keeps_the_visible_revision_and_drops_dead_generations() {
        let mut index = sample();
        let mut removed = index.compact(3);
        removed.sort();
        assert_eq!(removed, [rev(2)]);
        assert_eq!(index.get(b"foo", 3), entry(3, 2, 2));

        let mut removed = index.compact(4);
        removed.sort();
        assert_eq!(removed, [rev(3), rev(4)]);
        assert_eq!(index.get(b"foo", 5), entry(5, 5, 1));

        index.tombstone(b"bar", rev(7));
        let removed = index.compact(7);
        assert_eq!(removed, [rev(6), rev(7)]);
        assert_eq!(index.len(), 1, "bar has no history left");
    }

    #[test]
    fn restore_trusts_the_record_after_compaction() {
        let mut index = KeyIndex::default();
        index.restore_put(b"k", rev(9), 4, 6, 0);
        index.restore_put(b"k", rev(10), 4, 7, 0);
        assert_eq!(index.get(b"k", 9), entry(9, 4, 6));
        assert_eq!(index.get(b"k", 10), entry(10, 4, 7));
    }
}
