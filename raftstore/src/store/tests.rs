//! The state machine's semantics, applied command by command on a real
//! RocksDB in a temporary directory.

use keelson_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op, response_op,
};
use keelson_proto::keelsonpb::{Command, command::Op};
use keelson_proto::mvccpb::event::EventType;
use tempfile::TempDir;

use super::*;

struct Fixture {
    dir: TempDir,
    store: MvccStore,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(dir.path(), StoreConfig::default()).unwrap();
        Self {
            dir,
            store,
            index: 0,
        }
    }

    fn reopen(self) -> Self {
        let Fixture { dir, store, index } = self;
        drop(store);
        let store = MvccStore::open(dir.path(), StoreConfig::default()).unwrap();
        Self { dir, store, index }
    }

    fn apply_all(&mut self, ops: Vec<Op>) -> ApplyOutput {
        let commands: Vec<(u64, Command)> = ops
            .into_iter()
            .map(|op| {
                self.index += 1;
                (self.index, Command { op: Some(op) })
            })
            .collect();
        self.store.apply(&commands, &[]).unwrap()
    }

    fn apply(&mut self, op: Op) -> Result<CommandResponse> {
        self.apply_all(vec![op]).applied.remove(0).response
    }

    fn put(&mut self, key: &str, value: &str) {
        self.apply(put(key, value)).unwrap();
    }

    fn get(&self, key: &str, revision: i64) -> Result<Vec<KeyValue>> {
        let request = RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        Ok(self.store.range(&request)?.kvs)
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

fn delete(key: &str, end: &str) -> Op {
    Op::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        range_end: end.into(),
        prev_kv: true,
    })
}

fn values(kvs: &[KeyValue]) -> Vec<(String, String, i64, i64, i64)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

#[test]
fn revisions_versions_and_recreation() {
    let mut f = Fixture::new();
    assert_eq!(
        f.store.revision(),
        1,
        "a new store starts at revision 1, as etcd does"
    );
    f.put("a", "1");
    f.put("a", "2");
    let deleted = f.apply(delete("a", "")).unwrap();
    let CommandResponse::DeleteRange(deleted) = deleted else {
        panic!("{deleted:?}")
    };
    assert_eq!(deleted.deleted, 1);
    assert_eq!(
        values(&deleted.prev_kvs),
        [("a".into(), "2".into(), 2, 3, 2)]
    );
    f.put("a", "3");

    assert_eq!(f.store.revision(), 5);
    assert_eq!(
        values(&f.get("a", 0).unwrap()),
        [("a".into(), "3".into(), 5, 5, 1)]
    );
    assert_eq!(
        values(&f.get("a", 3).unwrap()),
        [("a".into(), "2".into(), 2, 3, 2)]
    );
    assert!(f.get("a", 4).unwrap().is_empty(), "deleted at 4");
    assert!(matches!(
        f.get("a", 6),
        Err(Error::FutureRevision {
            requested: 6,
            current: 5
        })
    ));
}

#[test]
fn a_txn_is_one_revision_and_sees_its_own_writes() {
    let mut f = Fixture::new();
    f.put("k", "old");
    let op = |request| RequestOp {
        request: Some(request),
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"k".to_vec(),
            target_union: Some(compare::TargetUnion::Value(b"old".to_vec())),
            range_end: vec![],
        }],
        success: vec![
            op(request_op::Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: b"new".to_vec(),
                ..Default::default()
            })),
            op(request_op::Request::RequestPut(PutRequest {
                key: b"j".to_vec(),
                value: b"x".to_vec(),
                ..Default::default()
            })),
            op(request_op::Request::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        ],
        failure: vec![],
    };
    let output = f.apply_all(vec![Op::Txn(txn)]);
    let applied = &output.applied[0];
    let Ok(CommandResponse::Txn(response)) = &applied.response else {
        panic!("{applied:?}")
    };
    assert!(response.succeeded);
    assert_eq!(applied.revision, 3);
    let Some(response_op::Response::ResponseRange(range)) = &response.responses[2].response else {
        panic!("{response:?}")
    };
    assert_eq!(values(&range.kvs), [("k".into(), "new".into(), 2, 3, 2)]);
    let revisions: Vec<_> = output
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revisions, [3, 3]);
}

#[test]
fn a_failed_command_changes_nothing_and_the_next_one_in_the_batch_still_applies() {
    let mut f = Fixture::new();
    let unknown_lease = Op::Put(PutRequest {
        key: b"a".to_vec(),
        lease: 42,
        ..Default::default()
    });
    let output = f.apply_all(vec![unknown_lease, put("b", "1")]);
    assert!(matches!(
        output.applied[0].response,
        Err(Error::LeaseNotFound { id: 42 })
    ));
    assert_eq!(output.applied[0].revision, 1);
    assert_eq!(output.applied[1].revision, 2);
    assert!(f.get("a", 0).unwrap().is_empty());
    let indexes: Vec<u64> = output.applied.iter().map(|a| a.index).collect();
    assert_eq!(
        indexes,
        [1, 2],
        "each command answers for its own log entry"
    );
}

#[test]
fn compaction_survives_a_restart() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("b", "1"); // 4
    f.apply(delete("b", "")).unwrap(); // 5
    f.apply(Op::Compaction(CompactionRequest {
        revision: 5,
        physical: true,
    }))
    .unwrap();
    assert!(matches!(
        f.apply(Op::Compaction(CompactionRequest {
            revision: 5,
            physical: true
        })),
        Err(Error::Compacted {
            requested: 5,
            compacted: 5
        })
    ));
    assert!(matches!(
        f.apply(Op::Compaction(CompactionRequest {
            revision: 9,
            physical: true
        })),
        Err(Error::FutureRevision { requested: 9, .. })
    ));

    let mut f = f.reopen();
    assert_eq!(
        f.store.revision(),
        5,
        "the revision survives even when its tombstone was compacted"
    );
    assert_eq!(f.store.compacted_revision(), 5);
    assert!(matches!(
        f.get("a", 4),
        Err(Error::Compacted {
            requested: 4,
            compacted: 5
        })
    ));
    assert_eq!(
        values(&f.get("a", 5).unwrap()),
        [("a".into(), "2".into(), 2, 3, 2)]
    );
    f.put("a", "3");
    assert_eq!(
        values(&f.get("a", 0).unwrap()),
        [("a".into(), "3".into(), 2, 6, 3)]
    );
    assert!(f.get("b", 0).unwrap().is_empty());
}

#[test]
fn revoking_a_lease_deletes_its_keys_before_and_after_a_restart() {
    let mut f = Fixture::new();
    let granted = f
        .apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 7 }))
        .unwrap();
    let CommandResponse::LeaseGrant(granted) = granted else {
        panic!("{granted:?}")
    };
    assert_eq!(granted.ttl, 2, "short TTLs are raised to the minimum");
    for key in ["x", "y"] {
        f.apply(Op::Put(PutRequest {
            key: key.into(),
            lease: 7,
            ..Default::default()
        }))
        .unwrap();
    }
    // Moving a key to no lease detaches it.
    f.apply(Op::Put(PutRequest {
        key: b"y".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    assert!(matches!(
        f.apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 7 })),
        Err(Error::LeaseExists { id: 7 })
    ));

    let mut f = f.reopen();
    assert_eq!(
        f.store
            .lease(7)
            .unwrap()
            .keys
            .into_iter()
            .collect::<Vec<_>>(),
        [b"x".to_vec()]
    );
    let output = f.apply_all(vec![Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })]);
    assert_eq!(output.lease_changes, [LeaseChange::Revoked { id: 7 }]);
    assert_eq!(output.events.len(), 1);
    assert_eq!(output.events[0].r#type, EventType::Delete as i32);
    assert!(f.get("x", 0).unwrap().is_empty());
    assert_eq!(f.get("y", 0).unwrap().len(), 1);
    assert!(f.store.lease(7).is_none());
    assert!(f.reopen().store.leases().is_empty());
}

#[test]
fn the_same_commands_give_the_same_store() {
    let ops = || {
        vec![
            put("a", "1"),
            Op::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 3 }),
            Op::Put(PutRequest {
                key: b"b".to_vec(),
                lease: 3,
                ..Default::default()
            }),
            delete("a", "\0"),
            put("c", "2"),
            Op::Compaction(CompactionRequest {
                revision: 3,
                physical: false,
            }),
        ]
    };
    let (mut one, mut two) = (Fixture::new(), Fixture::new());
    one.apply_all(ops());
    for op in ops() {
        two.apply(op).ok();
    }
    assert_eq!(one.store.hash(0).unwrap(), two.store.hash(0).unwrap());
    assert_eq!(one.store.revision(), two.store.revision());
}

#[test]
fn events_are_read_back_from_disk_in_revision_order() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("b", "1");
    f.apply(delete("a", "")).unwrap();
    let events = f.store.events(2, 4).unwrap();
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.r#type,
                e.kv.as_ref().unwrap().key.clone(),
                e.kv.as_ref().unwrap().mod_revision,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EventType::Put as i32, b"a".to_vec(), 2),
            (EventType::Put as i32, b"b".to_vec(), 3),
            (EventType::Delete as i32, b"a".to_vec(), 4),
        ]
    );
}

#[test]
fn snapshots_are_checksummed_and_aligned_like_etcds() {
    let mut f = Fixture::new();
    for i in 0..100 {
        f.put(&format!("key/{i}"), &"v".repeat(i));
    }
    let mut bytes = Vec::new();
    let mut last_remaining = u64::MAX;
    let total = f
        .store
        .snapshot(1000, &mut |chunk, remaining| {
            assert!(remaining < last_remaining);
            last_remaining = remaining;
            bytes.extend(chunk);
            Ok(())
        })
        .unwrap();
    assert_eq!(last_remaining, 0);
    assert_eq!(total, bytes.len() as u64);
    assert_eq!(bytes.len() % 512, 32, "etcdctl checks size % 512 == 32");
    assert!(crate::snapshot::verify(&bytes));
    bytes[20] ^= 1;
    assert!(!crate::snapshot::verify(&bytes));
}

#[test]
fn a_restored_snapshot_is_the_same_store() {
    let mut source = Fixture::new();
    source
        .apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 9 }))
        .unwrap();
    source
        .apply(Op::Put(PutRequest {
            key: b"leased".to_vec(),
            lease: 9,
            ..Default::default()
        }))
        .unwrap();
    for i in 0..50 {
        source.put(&format!("k{}", i % 7), &i.to_string());
    }
    source
        .apply(Op::Compaction(CompactionRequest {
            revision: 20,
            physical: true,
        }))
        .unwrap();
    let mut bytes = Vec::new();
    source
        .store
        .snapshot(4096, &mut |chunk, _| {
            bytes.extend(chunk);
            Ok(())
        })
        .unwrap();

    let mut target = Fixture::new();
    target.put("stale", "gone after the restore");
    assert_eq!(
        target.store.restore(&bytes).unwrap(),
        source.store.revision()
    );
    let same_as_source = |f: &Fixture| {
        assert_eq!(f.store.hash(0).unwrap(), source.store.hash(0).unwrap());
        assert_eq!(f.store.compacted_revision(), 20);
        assert!(f.get("stale", 0).unwrap().is_empty());
        assert_eq!(f.store.lease(9).unwrap().keys.len(), 1);
    };
    same_as_source(&target);
    let mut target = target.reopen();
    same_as_source(&target);
    target.put("after", "restore");
    assert_eq!(target.store.revision(), source.store.revision() + 1);

    let mut damaged = bytes.clone();
    damaged.truncate(bytes.len() - 1);
    assert!(matches!(
        target.store.restore(&damaged),
        Err(Error::CorruptSnapshot { .. })
    ));
}
