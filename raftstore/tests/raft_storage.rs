//! openraft's own storage conformance suite, run against Keelson's Raft log
//! and state machine on a real RocksDB.

use std::sync::{Arc, Mutex};

use keelson_raftstore::hub::WatchHub;
use keelson_raftstore::lessor::Lessor;
use keelson_raftstore::raft::{LogStore, StateMachine, StorageError, TypeConfig};
use keelson_raftstore::store::{MvccStore, StoreConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store =
            Arc::new(MvccStore::open(dir.path(), StoreConfig::default()).expect("the store opens"));
        let hub = Arc::new(WatchHub::new(store.revision(), 1024));
        let lessor = Arc::new(Mutex::new(Lessor::default()));
        let state_machine = StateMachine::new(store.clone(), hub, lessor);
        Ok((dir, LogStore::new(store), state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("every conformance test passes");
}
