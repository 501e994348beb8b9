//! Crash durability: a server killed with SIGKILL in the middle of a write
//! load must come back, on the same data directory, with every write it
//! acknowledged.
//!
//! [`crash_under_load`] runs [`WRITERS`] concurrent `etcd-client` writers,
//! each putting its own keys `k/<writer>/<seq>` one after another and keeping
//! every put the server acknowledged, with its revision. Once
//! [`KILL_AFTER_ACKS`] puts are acknowledged (a counter, not a timer) the
//! server is killed, every writer fails on its put in flight, and the server
//! is restarted. A put in flight may or may not have been applied, so each
//! writer leaves at most one key that was written but never acknowledged;
//! anything else must be exactly what was acknowledged.
//!
//! Runs against Keelson, and against real etcd with
//! `KEELSON_TEST_AGAINST_ETCD=/usr/bin/etcd`.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::Server;
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::watch;
use tokio::task::{JoinHandle, block_in_place};

/// Concurrent writers, each with its own connection.
const WRITERS: usize = 8;
/// Acknowledged puts after which the server is killed.
const KILL_AFTER_ACKS: usize = 2_000;
/// Puts per writer at most, bounding the load should the kill never come.
const MAX_PUTS_PER_WRITER: usize = 100_000;
/// How long the writers may take to reach [`KILL_AFTER_ACKS`].
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
/// How long a writer may take to notice that the server is gone.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a watch may take to deliver its next response.
const WATCH_DEADLINE: Duration = Duration::from_secs(10);
/// The prefix of every key the writers put.
const PREFIX: &str = "k/";

/// A put that the server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
}

/// What one writer did until it stopped.
#[derive(Debug)]
struct Writer {
    id: usize,
    /// Its acknowledged puts, in the order it made them.
    acked: Vec<Ack>,
    /// Why it stopped, unless it ran out of puts.
    failure: Option<etcd_client::Error>,
}

impl Writer {
    /// The key of the put that failed, which may or may not have been applied.
    fn in_flight(&self) -> String {
        key(self.id, self.acked.len())
    }
}

fn key(writer: usize, seq: usize) -> String {
    format!("{PREFIX}{writer}/{seq}")
}

fn value(writer: usize, seq: usize) -> String {
    format!("value of {writer}/{seq}")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 key or value")
}

/// Puts `k/<id>/0`, `k/<id>/1`, … until a put fails, counting each
/// acknowledged one in `acks`.
async fn write_until_failure(mut client: Client, id: usize, acks: watch::Sender<usize>) -> Writer {
    let mut acked = Vec::new();
    for seq in 0..MAX_PUTS_PER_WRITER {
        let (key, value) = (key(id, seq), value(id, seq));
        match client.put(key.as_str(), value.as_str(), None).await {
            Ok(response) => {
                let revision = response.header().expect("response header").revision();
                acked.push(Ack {
                    key,
                    value,
                    revision,
                });
                acks.send_modify(|count| *count += 1);
            }
            Err(err) => {
                return Writer {
                    id,
                    acked,
                    failure: Some(err),
                };
            }
        }
    }
    Writer {
        id,
        acked,
        failure: None,
    }
}

/// Kills the server with SIGKILL while the writers are busy, once
/// [`KILL_AFTER_ACKS`] puts are acknowledged; waits for every writer to stop
/// and restarts the server on the same data directory and ports.
async fn crash_under_load(server: &mut Server) -> Vec<Writer> {
    let (acks, mut acked) = watch::channel(0);
    let mut handles: Vec<JoinHandle<Writer>> = Vec::with_capacity(WRITERS);
    for id in 0..WRITERS {
        let client = server.client().await;
        handles.push(tokio::spawn(write_until_failure(client, id, acks.clone())));
    }
    // Only the writers hold a sender now: should they all stop, waiting ends.
    drop(acks);
    tokio::time::timeout(LOAD_DEADLINE, acked.wait_for(|&n| n >= KILL_AFTER_ACKS))
        .await
        .unwrap_or_else(|_| panic!("fewer than {KILL_AFTER_ACKS} acks within {LOAD_DEADLINE:?}"))
        .map(|_| ())
        .unwrap_or_else(|_| panic!("the writers stopped before {KILL_AFTER_ACKS} acks"));
    block_in_place(|| server.kill());

    let mut writers = Vec::with_capacity(WRITERS);
    for handle in handles {
        let writer = tokio::time::timeout(STOP_DEADLINE, handle)
            .await
            .unwrap_or_else(|_| panic!("a writer still runs {STOP_DEADLINE:?} after the kill"))
            .expect("writer task");
        assert!(
            writer.failure.is_some(),
            "writer {} made all its puts before the kill",
            writer.id
        );
        writers.push(writer);
    }
    let total: usize = writers.iter().map(|writer| writer.acked.len()).sum();
    assert!(total >= KILL_AFTER_ACKS, "only {total} acks");

    block_in_place(|| server.restart());
    writers
}

/// Every acknowledged put by key, after checking that no two of them were
/// given the same revision.
fn acknowledged(writers: &[Writer]) -> BTreeMap<String, Ack> {
    let acks: Vec<&Ack> = writers.iter().flat_map(|writer| &writer.acked).collect();
    let revisions: BTreeSet<i64> = acks.iter().map(|ack| ack.revision).collect();
    assert_eq!(
        revisions.len(),
        acks.len(),
        "two acknowledged puts share a revision"
    );
    acks.into_iter()
        .map(|ack| (ack.key.clone(), ack.clone()))
        .collect()
}

/// Asserts that every key in `found` but not in `acked` is some writer's put
/// in flight at the kill.
fn assert_only_in_flight_extras<'a>(
    writers: &[Writer],
    acked: &BTreeMap<String, Ack>,
    found: impl IntoIterator<Item = &'a String>,
) {
    let in_flight: BTreeSet<String> = writers.iter().map(Writer::in_flight).collect();
    for key in found {
        assert!(
            acked.contains_key(key) || in_flight.contains(key),
            "{key} was never put, or was put after a failed put"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_sigkill() {
    let mut server = Server::start();
    let writers = crash_under_load(&mut server).await;
    let acked = acknowledged(&writers);

    let mut client = server.client().await;
    let response = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back after the restart");
    let current = response.header().expect("response header").revision();
    let highest = acked.values().map(|ack| ack.revision).max().unwrap_or(0);
    assert!(
        current >= highest,
        "revision {current} after the restart, but {highest} was acknowledged"
    );

    let stored: BTreeMap<String, &KeyValue> = response
        .kvs()
        .iter()
        .map(|kv| (text(kv.key()), kv))
        .collect();
    for ack in acked.values() {
        let kv = stored
            .get(&ack.key)
            .unwrap_or_else(|| panic!("acknowledged {ack:?} is lost"));
        assert_eq!(text(kv.value()), ack.value, "value of {}", ack.key);
        assert_eq!(
            (kv.create_revision(), kv.mod_revision(), kv.version()),
            (ack.revision, ack.revision, 1),
            "revisions of {}",
            ack.key
        );
    }
    assert_only_in_flight_extras(&writers, &acked, stored.keys());
    let revisions: BTreeSet<i64> = stored.values().map(|kv| kv.mod_revision()).collect();
    assert_eq!(revisions.len(), stored.len(), "two keys share a revision");

    let fresh = client
        .put("after-restart", "ok", None)
        .await
        .expect("put after the restart");
    let fresh_revision = fresh.header().expect("response header").revision();
    assert_eq!(fresh_revision, current + 1);
    let got = client.get("after-restart", None).await.expect("get");
    assert_eq!(
        got.kvs()
            .iter()
            .map(|kv| (text(kv.value()), kv.mod_revision()))
            .collect::<Vec<_>>(),
        [("ok".to_owned(), fresh_revision)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_after_restart_replays_acknowledged_puts_in_order() {
    let mut server = Server::start();
    let writers = crash_under_load(&mut server).await;
    let acked = acknowledged(&writers);

    let mut client = server.client().await;
    let count_only = GetOptions::new().with_prefix().with_count_only();
    let current = client
        .get(PREFIX, Some(count_only))
        .await
        .expect("read after the restart")
        .header()
        .expect("response header")
        .revision();

    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client.watch(PREFIX, Some(options)).await.expect("watch");
    let mut replayed: Vec<Ack> = Vec::new();
    while replayed.last().map_or(0, |ack| ack.revision) < current {
        let response = tokio::time::timeout(WATCH_DEADLINE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no watch response within {WATCH_DEADLINE:?}"))
            .expect("watch stream failed")
            .expect("watch stream ended");
        assert!(!response.canceled(), "watch canceled: {response:?}");
        for event in response.events() {
            let kv = event.kv().expect("event without a key-value pair");
            assert_eq!(event.event_type(), EventType::Put, "only puts were made");
            replayed.push(Ack {
                key: text(kv.key()),
                value: text(kv.value()),
                revision: kv.mod_revision(),
            });
        }
    }

    assert!(
        replayed
            .windows(2)
            .all(|pair| pair[0].revision < pair[1].revision),
        "events out of revision order"
    );
    assert_eq!(
        replayed.last().map(|ack| ack.revision),
        Some(current),
        "the replay ends at the current revision"
    );
    let by_key: BTreeMap<&String, &Ack> = replayed.iter().map(|ack| (&ack.key, ack)).collect();
    assert_eq!(by_key.len(), replayed.len(), "a key was put twice");
    for ack in acked.values() {
        assert_eq!(
            by_key.get(&ack.key).copied(),
            Some(ack),
            "replay of acknowledged {}",
            ack.key
        );
    }
    assert_only_in_flight_extras(&writers, &acked, by_key.keys().copied());
}
