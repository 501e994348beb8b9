//! End-to-end tests that drive a server through the `etcd-client` crate, the
//! way a Rust program would, and check every answer against what etcd 3.4
//! gives for the same requests.
//!
//! Every test starts its own fresh server, so revisions are deterministic: the
//! first write is revision 2. Nothing waits on a fixed sleep: watch responses
//! are awaited one by one with a deadline, and slow effects (lease expiry) are
//! observed through a watch or polled with a deadline.
//!
//! Run against real etcd with `KEELSON_TEST_AGAINST_ETCD=/usr/bin/etcd`.

#[allow(dead_code, reason = "uses part of the shared harness")]
#[path = "../common/mod.rs"]
mod common;

mod kv;
mod lease;
mod maintenance;
mod txn;
mod watch;

use std::fmt::{Debug, Write as _};
use std::future::Future;
use std::time::Duration;

use common::{Server, Target};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, Event, EventType, GetOptions, GetResponse,
    KeyValue, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, ResponseHeader, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

/// How long a watch may take to deliver its next response.
const WATCH_DEADLINE: Duration = Duration::from_secs(10);
/// How long an expired lease may take to disappear.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between two checks of a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const EMPTY_KEY: &str = "etcdserver: key is not provided";

/// The default `--max-request-bytes` of etcd and Keelson.
const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// A lease ID that no test grants.
const UNKNOWN_LEASE: i64 = 0x1234_abcd;

// ----- helpers -------------------------------------------------------------

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 key or value")
}

/// The revision in a response header, which every response must carry.
fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.expect("response header").revision()
}

fn keys(response: &GetResponse) -> Vec<&str> {
    response.kvs().iter().map(|kv| text(kv.key())).collect()
}

fn pairs(response: &GetResponse) -> Vec<(&str, &str)> {
    response
        .kvs()
        .iter()
        .map(|kv| (text(kv.key()), text(kv.value())))
        .collect()
}

/// `(create_revision, mod_revision, version, lease)` of a key-value pair.
fn meta(kv: &KeyValue) -> (i64, i64, i64, i64) {
    (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

/// Puts each pair in turn, one revision each.
async fn put_all(client: &mut Client, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        client
            .put(*key, *value, None)
            .await
            .unwrap_or_else(|err| panic!("put {key:?}: {err}"));
    }
}

async fn get(client: &mut Client, key: &str, options: GetOptions) -> GetResponse {
    client
        .get(key, Some(options))
        .await
        .unwrap_or_else(|err| panic!("get {key:?}: {err}"))
}

/// Asserts that `result` is a gRPC error with status `code` (as gRPC names
/// it, e.g. `OutOfRange`) and exactly `message`.
fn expect_rpc_error<T: Debug>(result: Result<T, Error>, code: &str, message: &str) {
    match result {
        Err(Error::GRpcStatus(status)) => assert_eq!(
            (format!("{:?}", status.code()), status.message()),
            (code.to_owned(), message),
            "gRPC status"
        ),
        other => panic!("expected gRPC status {code} {message:?}, got {other:?}"),
    }
}

/// Polls `condition` until it holds, panicking if `timeout` passes first.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polling = async {
        while !condition().await {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    };
    tokio::time::timeout(timeout, polling)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"));
}

/// An event as one line: `PUT key=value @mod_revision`, followed by
/// ` (was value@mod_revision)` when it carries the previous pair.
fn describe(event: &Event) -> String {
    let kv = event.kv().expect("event without a key-value pair");
    let kind = match event.event_type() {
        EventType::Put => "PUT",
        EventType::Delete => "DELETE",
    };
    let mut line = format!(
        "{kind} {}={} @{}",
        text(kv.key()),
        text(kv.value()),
        kv.mod_revision()
    );
    if let Some(prev) = event.prev_kv() {
        write!(
            line,
            " (was {}@{})",
            text(prev.value()),
            prev.mod_revision()
        )
        .expect("write");
    }
    line
}

/// The next response on a watch stream, within [`WATCH_DEADLINE`].
async fn next_response(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WATCH_DEADLINE, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no watch response within {WATCH_DEADLINE:?}"))
        .expect("watch stream failed")
        .expect("watch stream ended")
}

/// Awaits the response that confirms a new watch and returns its ID.
async fn expect_created(stream: &mut WatchStream) -> i64 {
    let response = next_response(stream).await;
    assert!(
        response.created() && !response.canceled() && response.events().is_empty(),
        "expected a watch-created response, got {response:?}"
    );
    response.watch_id()
}

/// Opens a watch stream with one watch on `key` and waits until it is created.
async fn watch(client: &mut Client, key: &str, options: WatchOptions) -> WatchStream {
    let mut stream = client.watch(key, Some(options)).await.expect("watch");
    expect_created(&mut stream).await;
    stream
}

/// Reads event responses until `count` events have arrived; returns them.
async fn next_events(stream: &mut WatchStream, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < count {
        let response = next_response(stream).await;
        assert!(
            !response.created() && !response.canceled() && !response.events().is_empty(),
            "expected events, got {response:?}"
        );
        events.extend_from_slice(response.events());
    }
    assert_eq!(events.len(), count, "more events than expected: {events:?}");
    events
}

/// Like [`next_events`], each event described by [`describe`].
async fn next_described(stream: &mut WatchStream, count: usize) -> Vec<String> {
    next_events(stream, count)
        .await
        .iter()
        .map(describe)
        .collect()
}
