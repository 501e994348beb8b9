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
mod common;

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

// ----- put / get -----------------------------------------------------------

#[tokio::test]
async fn put_then_get_returns_value_and_revisions() {
    let server = Server::start();
    let mut client = server.client().await;

    let put = client.put("foo", "bar", None).await.expect("put");
    assert_eq!(revision(put.header()), 2, "the first write is revision 2");
    assert!(put.prev_key().is_none(), "no prev_kv unless asked for");

    let got = get(&mut client, "foo", GetOptions::new()).await;
    assert_eq!(pairs(&got), [("foo", "bar")]);
    assert_eq!(meta(&got.kvs()[0]), (2, 2, 1, 0));
    assert_eq!(
        (got.count(), got.more(), revision(got.header())),
        (1, false, 2)
    );

    client.put("foo", "baz", None).await.expect("put");
    let got = get(&mut client, "foo", GetOptions::new()).await;
    assert_eq!(pairs(&got), [("foo", "baz")]);
    assert_eq!(meta(&got.kvs()[0]), (2, 3, 2, 0));

    let missing = get(&mut client, "missing", GetOptions::new()).await;
    assert!(missing.kvs().is_empty());
    assert_eq!((missing.count(), revision(missing.header())), (0, 3));
}

#[tokio::test]
async fn get_prefix_range_limit_more_and_count() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(
        &mut client,
        &[
            ("foo", "1"),
            ("foo1", "2"),
            ("foo2", "3"),
            ("fo", "4"),
            ("zoo", "5"),
        ],
    )
    .await;

    let prefix = get(&mut client, "foo", GetOptions::new().with_prefix()).await;
    assert_eq!(pairs(&prefix), [("foo", "1"), ("foo1", "2"), ("foo2", "3")]);
    assert_eq!((prefix.count(), prefix.more()), (3, false));

    let limited = get(
        &mut client,
        "foo",
        GetOptions::new().with_prefix().with_limit(2),
    )
    .await;
    assert_eq!(keys(&limited), ["foo", "foo1"]);
    assert_eq!(
        (limited.count(), limited.more()),
        (3, true),
        "count is the total despite the limit"
    );
    let exact = get(
        &mut client,
        "foo",
        GetOptions::new().with_prefix().with_limit(3),
    )
    .await;
    assert_eq!((exact.kvs().len(), exact.more()), (3, false));

    let range = get(&mut client, "foo", GetOptions::new().with_range("foo2")).await;
    assert_eq!(keys(&range), ["foo", "foo1"], "the range end is exclusive");
    assert_eq!(range.count(), 2);

    let from = get(&mut client, "foo1", GetOptions::new().with_from_key()).await;
    assert_eq!(keys(&from), ["foo1", "foo2", "zoo"]);

    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&all), ["fo", "foo", "foo1", "foo2", "zoo"]);
    assert_eq!((all.count(), revision(all.header())), (5, 6));
}

#[tokio::test]
async fn get_keys_only_and_count_only() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(
        &mut client,
        &[("foo", "1"), ("foo1", "2"), ("foo2", "3"), ("bar", "4")],
    )
    .await;

    let keys_only = get(
        &mut client,
        "foo",
        GetOptions::new().with_prefix().with_keys_only(),
    )
    .await;
    assert_eq!(pairs(&keys_only), [("foo", ""), ("foo1", ""), ("foo2", "")]);
    let mods: Vec<i64> = keys_only.kvs().iter().map(KeyValue::mod_revision).collect();
    assert_eq!(mods, [2, 3, 4], "keys-only keeps the revisions");

    let count_only = get(
        &mut client,
        "foo",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert!(count_only.kvs().is_empty());
    assert_eq!((count_only.count(), count_only.more()), (3, false));

    let limited = get(
        &mut client,
        "foo",
        GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_limit(1),
    )
    .await;
    assert!(limited.kvs().is_empty());
    assert_eq!(
        (limited.count(), limited.more()),
        (3, false),
        "count-only ignores the limit"
    );
}

#[tokio::test]
async fn get_at_historical_revision() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(
        &mut client,
        &[("foo", "bar"), ("foo", "baz"), ("other", "x")],
    )
    .await; // 2..=4

    let at2 = get(&mut client, "foo", GetOptions::new().with_revision(2)).await;
    assert_eq!(pairs(&at2), [("foo", "bar")]);
    assert_eq!(meta(&at2.kvs()[0]), (2, 2, 1, 0));
    assert_eq!(
        revision(at2.header()),
        4,
        "the header carries the current revision, not the requested one"
    );

    let at3 = get(&mut client, "foo", GetOptions::new().with_revision(3)).await;
    assert_eq!(pairs(&at3), [("foo", "baz")]);
    assert_eq!(meta(&at3.kvs()[0]), (2, 3, 2, 0));

    let all_at3 = get(
        &mut client,
        "",
        GetOptions::new().with_all_keys().with_revision(3),
    )
    .await;
    assert_eq!(keys(&all_at3), ["foo"], "other did not exist yet");

    let at1 = get(&mut client, "foo", GetOptions::new().with_revision(1)).await;
    assert!(at1.kvs().is_empty());
    assert_eq!(at1.count(), 0);

    expect_rpc_error(
        client
            .get("foo", Some(GetOptions::new().with_revision(5)))
            .await,
        "OutOfRange",
        FUTURE_REVISION,
    );
}

#[tokio::test]
async fn get_sorted_by_each_target() {
    let server = Server::start();
    let mut client = server.client().await;
    // Final state: foo=baz (create 2, mod 3, version 2), foo1=nnn (create 4,
    // mod 7, version 3), foo2=aaa (create 5, mod 5, version 1).
    put_all(
        &mut client,
        &[
            ("foo", "bar"),
            ("foo", "baz"),
            ("foo1", "zzz"),
            ("foo2", "aaa"),
            ("foo1", "mmm"),
            ("foo1", "nnn"),
        ],
    )
    .await;

    let cases = [
        (SortTarget::Key, SortOrder::Ascend, ["foo", "foo1", "foo2"]),
        (SortTarget::Key, SortOrder::Descend, ["foo2", "foo1", "foo"]),
        (
            SortTarget::Value,
            SortOrder::Ascend,
            ["foo2", "foo", "foo1"],
        ),
        (
            SortTarget::Value,
            SortOrder::Descend,
            ["foo1", "foo", "foo2"],
        ),
        (
            SortTarget::Version,
            SortOrder::Ascend,
            ["foo2", "foo", "foo1"],
        ),
        // No order on a target other than the key means ascending.
        (
            SortTarget::Version,
            SortOrder::None,
            ["foo2", "foo", "foo1"],
        ),
        (
            SortTarget::Create,
            SortOrder::Descend,
            ["foo2", "foo1", "foo"],
        ),
        (SortTarget::Mod, SortOrder::Ascend, ["foo", "foo2", "foo1"]),
        (SortTarget::Mod, SortOrder::Descend, ["foo1", "foo2", "foo"]),
    ];
    for (target, order, expected) in cases {
        let sorted = get(
            &mut client,
            "foo",
            GetOptions::new().with_prefix().with_sort(target, order),
        )
        .await;
        assert_eq!(keys(&sorted), expected, "sorted by {target:?} {order:?}");
    }

    let first = get(
        &mut client,
        "foo",
        GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Value, SortOrder::Descend)
            .with_limit(1),
    )
    .await;
    assert_eq!(
        pairs(&first),
        [("foo1", "nnn")],
        "the limit applies after sorting"
    );
    assert_eq!((first.count(), first.more()), (3, true));
}

#[tokio::test]
async fn get_filters_by_mod_and_create_revision() {
    let server = Server::start();
    let mut client = server.client().await;
    // Final state: a (create 2, mod 2), b (create 3, mod 5), c (create 4,
    // mod 4), d (create 6, mod 6).
    put_all(
        &mut client,
        &[("a", "1"), ("b", "1"), ("c", "1"), ("b", "2"), ("d", "1")],
    )
    .await;

    let all = || GetOptions::new().with_all_keys();
    let cases = [
        (all().with_min_mod_revision(4), vec!["b", "c", "d"]),
        (all().with_max_mod_revision(4), vec!["a", "c"]),
        (
            all().with_min_mod_revision(3).with_max_mod_revision(5),
            vec!["b", "c"],
        ),
        (all().with_min_create_revision(3), vec!["b", "c", "d"]),
        (all().with_max_create_revision(3), vec!["a", "b"]),
    ];
    for (options, expected) in cases {
        let description = format!("{options:?}");
        let filtered = get(&mut client, "", options).await;
        assert_eq!(keys(&filtered), expected, "{description}");
        assert_eq!(
            (filtered.count(), filtered.more()),
            (4, false),
            "count ignores the filters: {description}"
        );
    }

    let limited = get(
        &mut client,
        "",
        all().with_min_mod_revision(4).with_limit(1),
    )
    .await;
    assert_eq!(keys(&limited), ["b"]);
    assert_eq!((limited.count(), limited.more()), (4, true));
}

#[tokio::test]
async fn put_prev_kv_returns_previous_pair() {
    let server = Server::start();
    let mut client = server.client().await;
    let with_prev = || Some(PutOptions::new().with_prev_key());

    let first = client.put("foo", "bar", with_prev()).await.expect("put");
    assert!(first.prev_key().is_none(), "no previous pair");

    let second = client.put("foo", "baz", with_prev()).await.expect("put");
    let prev = second.prev_key().expect("previous pair");
    assert_eq!((text(prev.key()), text(prev.value())), ("foo", "bar"));
    assert_eq!(meta(prev), (2, 2, 1, 0));
    assert_eq!(revision(second.header()), 3);
}

#[tokio::test]
async fn put_ignore_value_keeps_the_value() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("foo", "bar", None).await.expect("put");

    let ignore_value = || Some(PutOptions::new().with_ignore_value());
    let put = client.put("foo", "", ignore_value()).await.expect("put");
    assert_eq!(revision(put.header()), 3);
    let got = get(&mut client, "foo", GetOptions::new()).await;
    assert_eq!(pairs(&got), [("foo", "bar")]);
    assert_eq!(meta(&got.kvs()[0]), (2, 3, 2, 0));

    expect_rpc_error(
        client.put("missing", "", ignore_value()).await,
        "InvalidArgument",
        KEY_NOT_FOUND,
    );
    expect_rpc_error(
        client.put("foo", "new", ignore_value()).await,
        "InvalidArgument",
        "etcdserver: value is provided",
    );
}

#[tokio::test]
async fn put_ignore_lease_keeps_the_lease() {
    let server = Server::start();
    let mut client = server.client().await;
    let lease = client.lease_grant(100, None).await.expect("grant").id();
    let with_lease = Some(PutOptions::new().with_lease(lease));
    client.put("k", "v1", with_lease).await.expect("put");

    let ignore_lease = || Some(PutOptions::new().with_ignore_lease());
    client.put("k", "v2", ignore_lease()).await.expect("put");
    let got = get(&mut client, "k", GetOptions::new()).await;
    assert_eq!(pairs(&got), [("k", "v2")]);
    assert_eq!(meta(&got.kvs()[0]), (2, 3, 2, lease));

    client.put("k", "v3", None).await.expect("put");
    let got = get(&mut client, "k", GetOptions::new()).await;
    assert_eq!(
        got.kvs()[0].lease(),
        0,
        "a plain put detaches the key from its lease"
    );

    expect_rpc_error(
        client.put("missing", "v", ignore_lease()).await,
        "InvalidArgument",
        KEY_NOT_FOUND,
    );
    expect_rpc_error(
        client
            .put(
                "k",
                "v",
                Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
            )
            .await,
        "InvalidArgument",
        "etcdserver: lease is provided",
    );
}

// ----- delete --------------------------------------------------------------

#[tokio::test]
async fn delete_single_prefix_range_and_prev_kv() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(
        &mut client,
        &[
            ("a", "1"),
            ("ab", "2"),
            ("abc", "3"),
            ("b", "4"),
            ("c", "5"),
            ("d", "6"),
        ],
    )
    .await; // 2..=7

    let single = client.delete("a", None).await.expect("delete");
    assert_eq!((single.deleted(), revision(single.header())), (1, 8));
    assert!(single.prev_kvs().is_empty(), "no prev_kv unless asked for");

    let missing = client.delete("a", None).await.expect("delete");
    assert_eq!(
        (missing.deleted(), revision(missing.header())),
        (0, 8),
        "deleting nothing does not create a revision"
    );

    let prefix = client
        .delete(
            "ab",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!((prefix.deleted(), revision(prefix.header())), (2, 9));
    let prev: Vec<_> = prefix
        .prev_kvs()
        .iter()
        .map(|kv| (text(kv.key()), text(kv.value()), kv.mod_revision()))
        .collect();
    assert_eq!(prev, [("ab", "2", 3), ("abc", "3", 4)]);

    let range = client
        .delete("b", Some(DeleteOptions::new().with_range("d")))
        .await
        .expect("delete");
    assert_eq!(
        (range.deleted(), revision(range.header())),
        (2, 10),
        "the range end is exclusive"
    );

    let rest = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(pairs(&rest), [("d", "6")]);
}

// ----- txn -----------------------------------------------------------------

/// Sets up k1 (create 2, mod 2, version 1), k2 (create 3, mod 4, version 2)
/// and k3 (create 5, attached to the returned lease).
async fn txn_fixture(client: &mut Client) -> i64 {
    put_all(client, &[("k1", "v1"), ("k2", "v2"), ("k2", "v2b")]).await;
    let lease = client.lease_grant(100, None).await.expect("grant").id();
    client
        .put("k3", "v3", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    lease
}

#[tokio::test]
async fn txn_success_branch_compares_every_target() {
    let server = Server::start();
    let mut client = server.client().await;
    let lease = txn_fixture(&mut client).await;

    let txn = Txn::new()
        .when([
            Compare::value("k1", CompareOp::Equal, "v1"),
            Compare::value("k1", CompareOp::NotEqual, "other"),
            Compare::version("k2", CompareOp::Equal, 2),
            Compare::version("k2", CompareOp::Less, 3),
            Compare::create_revision("k2", CompareOp::Equal, 3),
            Compare::mod_revision("k2", CompareOp::Greater, 3),
            Compare::lease("k3", CompareOp::Equal, lease),
        ])
        .and_then([
            TxnOp::put("k4", "v4", None),
            TxnOp::get("k1", None),
            TxnOp::delete("k2", Some(DeleteOptions::new().with_prev_key())),
        ])
        .or_else([TxnOp::put("never", "x", None)]);
    let response = client.txn(txn).await.expect("txn");
    assert!(response.succeeded());
    assert_eq!(
        revision(response.header()),
        6,
        "the whole txn is one revision"
    );

    let ops = response.op_responses();
    assert_eq!(ops.len(), 3);
    assert!(matches!(&ops[0], TxnOpResponse::Put(put) if put.prev_key().is_none()));
    let TxnOpResponse::Get(got) = &ops[1] else {
        panic!("expected a range response, got {:?}", ops[1]);
    };
    assert_eq!(pairs(got), [("k1", "v1")]);
    let TxnOpResponse::Delete(deleted) = &ops[2] else {
        panic!("expected a delete response, got {:?}", ops[2]);
    };
    assert_eq!(deleted.deleted(), 1);
    assert_eq!(text(deleted.prev_kvs()[0].value()), "v2b");

    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(pairs(&all), [("k1", "v1"), ("k3", "v3"), ("k4", "v4")]);
    assert_eq!(meta(&all.kvs()[2]), (6, 6, 1, 0));
}

#[tokio::test]
async fn txn_failure_branch() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let txn = Txn::new()
        .when([
            Compare::value("k1", CompareOp::Equal, "v1"),
            Compare::mod_revision("k1", CompareOp::Less, 2),
        ])
        .and_then([TxnOp::put("k1", "changed", None)])
        .or_else([TxnOp::put("k4", "v4", None), TxnOp::get("k1", None)]);
    let response = client.txn(txn).await.expect("txn");
    assert!(!response.succeeded());
    assert_eq!(revision(response.header()), 6);
    let ops = response.op_responses();
    assert_eq!(ops.len(), 2);
    let TxnOpResponse::Get(got) = &ops[1] else {
        panic!("expected a range response, got {:?}", ops[1]);
    };
    assert_eq!(
        pairs(got),
        [("k1", "v1")],
        "the success ops were not applied"
    );
    let k4 = get(&mut client, "k4", GetOptions::new()).await;
    assert_eq!(meta(&k4.kvs()[0]), (6, 6, 1, 0));

    let read_only = Txn::new().when([Compare::value("k1", CompareOp::Equal, "nope")]);
    let response = client.txn(read_only).await.expect("txn");
    assert!(!response.succeeded());
    assert!(response.op_responses().is_empty());
    assert_eq!(
        revision(response.header()),
        6,
        "a txn that writes nothing does not create a revision"
    );
}

#[tokio::test]
async fn txn_compares_on_missing_keys_and_ranges() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let cases = [
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (Compare::mod_revision("missing", CompareOp::Less, 1), true),
        (Compare::lease("missing", CompareOp::Equal, 0), true),
        // A value compare against a missing key fails, even with `!=`.
        (Compare::value("missing", CompareOp::NotEqual, "x"), false),
        // A compare over a range holds only if it holds for every key in it.
        (
            Compare::version("k", CompareOp::Greater, 0).with_prefix(),
            true,
        ),
        (
            Compare::version("k", CompareOp::Greater, 1).with_prefix(),
            false,
        ),
        (
            Compare::mod_revision("k1", CompareOp::Less, 5).with_range("k3"),
            true,
        ),
    ];
    for (compare, expected) in cases {
        let description = format!("{compare:?}");
        let response = client.txn(Txn::new().when([compare])).await.expect("txn");
        assert_eq!(response.succeeded(), expected, "{description}");
    }
}

#[tokio::test]
async fn nested_txn_runs_the_branch_its_compares_pick() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let inner = |version| {
        Txn::new()
            .when([Compare::version("k2", CompareOp::Equal, version)])
            .and_then([TxnOp::put("nested", "inner-success", None)])
            .or_else([
                TxnOp::put("nested", "inner-failure", None),
                TxnOp::get("k2", None),
            ])
    };
    for (version, expected) in [(2, "inner-success"), (1, "inner-failure")] {
        let outer = Txn::new()
            .when([Compare::value("k1", CompareOp::Equal, "v1")])
            .and_then([TxnOp::txn(inner(version)), TxnOp::get("k1", None)]);
        let response = client.txn(outer).await.expect("txn");
        assert!(response.succeeded());
        let ops = response.op_responses();
        assert_eq!(ops.len(), 2);
        let TxnOpResponse::Txn(nested) = &ops[0] else {
            panic!("expected a txn response, got {:?}", ops[0]);
        };
        assert_eq!(nested.succeeded(), version == 2);
        assert_eq!(
            nested.op_responses().len(),
            if version == 2 { 1 } else { 2 }
        );

        let got = get(&mut client, "nested", GetOptions::new()).await;
        assert_eq!(pairs(&got), [("nested", expected)]);
        assert_eq!(got.kvs()[0].mod_revision(), revision(response.header()));
    }
}

#[tokio::test]
async fn txn_range_sees_the_txn_own_earlier_writes() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let txn = Txn::new().and_then([
        TxnOp::get("k4", None),
        TxnOp::put("k4", "v4", None),
        TxnOp::get("k4", None),
        TxnOp::delete("k1", None),
        TxnOp::get("k", Some(GetOptions::new().with_prefix())),
    ]);
    let response = client.txn(txn).await.expect("txn");
    assert!(response.succeeded(), "a txn without compares succeeds");
    assert_eq!(revision(response.header()), 6);

    let ranges: Vec<GetResponse> = response
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(got) => Some(got),
            _ => None,
        })
        .collect();
    assert_eq!(ranges.len(), 3);
    assert!(ranges[0].kvs().is_empty(), "k4 before the put");
    assert_eq!(pairs(&ranges[1]), [("k4", "v4")]);
    assert_eq!(meta(&ranges[1].kvs()[0]), (6, 6, 1, 0));
    assert_eq!(
        keys(&ranges[2]),
        ["k2", "k3", "k4"],
        "the range sees the put and the delete"
    );
}

/// Every response inside a txn carries a header with the txn's revision.
#[tokio::test]
async fn txn_op_responses_carry_the_txn_revision() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let write = Txn::new().and_then([
        TxnOp::put("k4", "v4", None),
        TxnOp::get("k1", None),
        TxnOp::delete("k2", None),
    ]);
    let read = Txn::new().and_then([TxnOp::get("k1", None)]);
    for (txn, expected) in [(write, 6), (read, 6)] {
        let response = client.txn(txn).await.expect("txn");
        assert_eq!(revision(response.header()), expected);
        for op in response.op_responses() {
            let header = match &op {
                TxnOpResponse::Put(put) => put.header(),
                TxnOpResponse::Get(got) => got.header(),
                TxnOpResponse::Delete(deleted) => deleted.header(),
                TxnOpResponse::Txn(_) => panic!("no nested txn was sent"),
            };
            assert_eq!(
                header.map(ResponseHeader::revision),
                Some(expected),
                "header of {op:?}"
            );
        }
    }
}

/// A range whose end sorts before its key selects nothing: reads find
/// nothing, deletes delete nothing, and compares over it see a missing key.
#[tokio::test]
async fn range_end_before_key_selects_nothing() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(&mut client, &[("a", "1"), ("b", "1")]).await; // 2, 3

    let reversed = || GetOptions::new().with_range("a");
    let got = get(&mut client, "b", reversed()).await;
    assert!(got.kvs().is_empty());
    assert_eq!((got.count(), revision(got.header())), (0, 3));
    let counted = get(&mut client, "b", reversed().with_count_only()).await;
    assert_eq!(counted.count(), 0);

    let deleted = client
        .delete("b", Some(DeleteOptions::new().with_range("a")))
        .await
        .expect("delete");
    assert_eq!((deleted.deleted(), revision(deleted.header())), (0, 3));

    let txn = Txn::new()
        .when([Compare::version("b", CompareOp::Equal, 0).with_range("a")])
        .and_then([TxnOp::get("b", Some(reversed()))]);
    let response = client.txn(txn).await.expect("txn");
    assert!(
        response.succeeded(),
        "a compare over no key is made against a missing key"
    );
    let TxnOpResponse::Get(got) = &response.op_responses()[0] else {
        panic!("expected a range response");
    };
    assert!(got.kvs().is_empty());

    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&all), ["a", "b"], "nothing was deleted");
    let put = client.put("c", "1", None).await.expect("put afterwards");
    assert_eq!(revision(put.header()), 4);
}

// ----- watch ---------------------------------------------------------------

#[tokio::test]
async fn watch_prefix_receives_live_events() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("foo", "1", None).await.expect("put"); // 2
    let mut stream = watch(&mut client, "foo", WatchOptions::new().with_prefix()).await;

    put_all(
        &mut client,
        &[
            ("fo", "no"),
            ("bar", "no"),
            ("foo/a", "2"),
            ("foo/b", "3"),
            ("foo", "4"),
        ],
    )
    .await; // 3..=7
    client.delete("foo", None).await.expect("delete"); // 8
    let prefix = Some(DeleteOptions::new().with_prefix());
    client.delete("foo", prefix).await.expect("delete"); // 9

    let events = next_events(&mut stream, 6).await;
    let described: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        described,
        [
            "PUT foo/a=2 @5",
            "PUT foo/b=3 @6",
            "PUT foo=4 @7",
            "DELETE foo= @8",
            "DELETE foo/a= @9",
            "DELETE foo/b= @9",
        ]
    );
    assert_eq!(
        meta(events[2].kv().expect("kv")),
        (2, 7, 2, 0),
        "a put event carries the whole new pair"
    );
    assert_eq!(
        meta(events[3].kv().expect("kv")),
        (0, 8, 0, 0),
        "a delete event carries only the key and the deletion revision"
    );
    assert!(events.iter().all(|event| event.prev_kv().is_none()));
}

#[tokio::test]
async fn watch_from_past_revision_replays_history() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(&mut client, &[("foo", "a"), ("foo", "b"), ("bar", "x")]).await; // 2..=4
    client.delete("foo", None).await.expect("delete"); // 5
    client.put("foo", "c", None).await.expect("put"); // 6

    let options = WatchOptions::new().with_start_revision(3);
    let mut stream = watch(&mut client, "foo", options).await;
    assert_eq!(
        next_described(&mut stream, 3).await,
        ["PUT foo=b @3", "DELETE foo= @5", "PUT foo=c @6"]
    );
    client.put("foo", "d", None).await.expect("put");
    assert_eq!(next_described(&mut stream, 1).await, ["PUT foo=d @7"]);
}

#[tokio::test]
async fn watch_prev_kv_carries_the_previous_pair() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("foo", "a", None).await.expect("put"); // 2
    let options = WatchOptions::new().with_prev_key().with_start_revision(3);
    let mut stream = watch(&mut client, "foo", options).await;

    client.put("foo", "b", None).await.expect("put"); // 3
    client.delete("foo", None).await.expect("delete"); // 4
    client.put("foo", "c", None).await.expect("put"); // 5
    assert_eq!(
        next_described(&mut stream, 3).await,
        [
            "PUT foo=b @3 (was a@2)",
            "DELETE foo= @4 (was b@3)",
            "PUT foo=c @5",
        ]
    );
}

#[tokio::test]
async fn watch_filters_drop_puts_or_deletes() {
    let server = Server::start();
    let mut client = server.client().await;
    let filtered = |filter| WatchOptions::new().with_prefix().with_filters([filter]);
    let mut no_put = watch(&mut client, "f", filtered(WatchFilterType::NoPut)).await;
    let mut no_delete = watch(&mut client, "f", filtered(WatchFilterType::NoDelete)).await;

    put_all(&mut client, &[("f1", "a"), ("f2", "b")]).await; // 2, 3
    client.delete("f1", None).await.expect("delete"); // 4
    client.put("f1", "c", None).await.expect("put"); // 5
    client.delete("f2", None).await.expect("delete"); // 6

    assert_eq!(
        next_described(&mut no_put, 2).await,
        ["DELETE f1= @4", "DELETE f2= @6"]
    );
    assert_eq!(
        next_described(&mut no_delete, 3).await,
        ["PUT f1=a @2", "PUT f2=b @3", "PUT f1=c @5"]
    );
}

#[tokio::test]
async fn several_watches_share_one_stream_and_progress_is_reported() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut stream = client.watch("a", None).await.expect("watch");
    let watch_a = expect_created(&mut stream).await;
    stream.watch("b", None).await.expect("second watch");
    let watch_b = expect_created(&mut stream).await;
    assert_ne!(watch_a, watch_b, "each watch gets its own ID");

    put_all(
        &mut client,
        &[("a", "1"), ("b", "1"), ("c", "1"), ("a", "2")],
    )
    .await; // 2..=5
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = next_response(&mut stream).await;
        let id = response.watch_id();
        seen.extend(response.events().iter().map(|event| (id, describe(event))));
    }
    assert_eq!(
        seen,
        [
            (watch_a, "PUT a=1 @2".to_owned()),
            (watch_b, "PUT b=1 @3".to_owned()),
            (watch_a, "PUT a=2 @5".to_owned()),
        ]
    );

    stream.request_progress().await.expect("request progress");
    let progress = next_response(&mut stream).await;
    assert!(
        progress.events().is_empty() && !progress.created() && !progress.canceled(),
        "expected a progress notification, got {progress:?}"
    );
    assert_eq!(revision(progress.header()), 5);
    assert_eq!(
        progress.watch_id(),
        -1,
        "a requested progress notification belongs to no single watch"
    );
}

#[tokio::test]
async fn canceled_watch_receives_no_more_events() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut stream = client.watch("x", None).await.expect("watch");
    let watch_x = expect_created(&mut stream).await;
    stream.watch("y", None).await.expect("second watch");
    let watch_y = expect_created(&mut stream).await;

    stream.cancel(watch_x).await.expect("cancel");
    let canceled = next_response(&mut stream).await;
    assert!(
        canceled.canceled() && canceled.events().is_empty(),
        "expected a cancellation, got {canceled:?}"
    );
    assert_eq!(canceled.watch_id(), watch_x);

    // The event for y shows that the one for x, written first, never comes.
    put_all(&mut client, &[("x", "1"), ("y", "1")]).await; // 2, 3
    let next = next_response(&mut stream).await;
    assert_eq!(next.watch_id(), watch_y);
    let events: Vec<String> = next.events().iter().map(describe).collect();
    assert_eq!(events, ["PUT y=1 @3"]);
}

#[tokio::test]
async fn watch_from_compacted_revision_is_canceled() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(&mut client, &[("foo", "1"), ("foo", "2"), ("foo", "3")]).await; // 2..=4
    client.compact(3, None).await.expect("compact");

    let options = WatchOptions::new().with_start_revision(2);
    let mut stream = client.watch("foo", Some(options)).await.expect("watch");
    let id = expect_created(&mut stream).await;
    let canceled = next_response(&mut stream).await;
    assert!(
        canceled.canceled() && canceled.events().is_empty(),
        "expected a cancellation, got {canceled:?}"
    );
    assert_eq!(
        (canceled.watch_id(), canceled.compact_revision()),
        (id, 3),
        "the cancellation names the compacted revision"
    );
}

/// A watch that cannot be created is answered with a response that is both
/// created and canceled, for watch ID -1, with the reason.
#[tokio::test]
async fn refused_watch_is_reported_for_watch_id_minus_one() {
    let server = Server::start();
    let mut client = server.client().await;

    let empty_range = WatchOptions::new().with_range("a");
    let mut stream = client.watch("b", Some(empty_range)).await.expect("watch");
    let refused = next_response(&mut stream).await;
    assert!(refused.created() && refused.canceled(), "{refused:?}");
    assert_eq!(
        (refused.watch_id(), refused.cancel_reason()),
        (-1, "mvcc: watcher range is empty")
    );

    let with_id = || Some(WatchOptions::new().with_watch_id(7));
    stream.watch("x", with_id()).await.expect("watch");
    assert_eq!(expect_created(&mut stream).await, 7, "the requested ID");
    stream.watch("y", with_id()).await.expect("watch");
    let refused = next_response(&mut stream).await;
    assert!(refused.created() && refused.canceled(), "{refused:?}");
    assert_eq!(
        (refused.watch_id(), refused.cancel_reason()),
        (-1, "mvcc: duplicate watch ID provided on the WatchStream")
    );

    client.put("x", "1", None).await.expect("put");
    let next = next_response(&mut stream).await;
    assert_eq!(next.watch_id(), 7, "the first watch with ID 7 still works");
    let events: Vec<String> = next.events().iter().map(describe).collect();
    assert_eq!(events, ["PUT x=1 @2"]);
}

// ----- lease ---------------------------------------------------------------

#[tokio::test]
async fn lease_grant_keep_alive_and_time_to_live() {
    let server = Server::start();
    let mut client = server.client().await;
    let granted = client.lease_grant(60, None).await.expect("grant");
    let id = granted.id();
    assert!(id > 0, "lease ID {id}");
    assert_eq!((granted.ttl(), granted.error()), (60, ""));

    let chosen = LeaseGrantOptions::new().with_id(0x1234);
    let granted = client.lease_grant(60, Some(chosen)).await.expect("grant");
    assert_eq!(granted.id(), 0x1234, "the requested ID is used");

    for key in ["k2", "k1"] {
        let with_lease = Some(PutOptions::new().with_lease(id));
        client.put(key, "v", with_lease).await.expect("put");
    }
    let with_keys = Some(LeaseTimeToLiveOptions::new().with_keys());
    let ttl = client.lease_time_to_live(id, with_keys).await.expect("ttl");
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!(
        (50..=60).contains(&ttl.ttl()),
        "remaining TTL {}",
        ttl.ttl()
    );
    let mut attached: Vec<&str> = ttl.keys().iter().map(|key| text(key)).collect();
    attached.sort_unstable();
    assert_eq!(attached, ["k1", "k2"]);

    let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
    assert!(ttl.keys().is_empty(), "keys only when asked for");

    let (mut keeper, mut renewals) = client.lease_keep_alive(id).await.expect("keep alive");
    assert_eq!(keeper.id(), id);
    keeper.keep_alive().await.expect("send keep-alive");
    let renewed = tokio::time::timeout(WATCH_DEADLINE, renewals.message())
        .await
        .expect("keep-alive response within the deadline")
        .expect("keep-alive stream failed")
        .expect("keep-alive stream ended");
    assert_eq!((renewed.id(), renewed.ttl()), (id, 60));
}

#[tokio::test]
async fn leases_lists_every_lease() {
    let server = Server::start();
    let mut client = server.client().await;
    assert!(client.leases().await.expect("leases").leases().is_empty());

    let mut granted = Vec::new();
    for ttl in [100, 200] {
        granted.push(client.lease_grant(ttl, None).await.expect("grant").id());
    }
    let listed = client.leases().await.expect("leases");
    let mut ids: Vec<i64> = listed.leases().iter().map(|lease| lease.id()).collect();
    ids.sort_unstable();
    granted.sort_unstable();
    assert_eq!(ids, granted);
}

#[tokio::test]
async fn lease_revoke_deletes_attached_keys() {
    let server = Server::start();
    let mut client = server.client().await;
    let id = client.lease_grant(100, None).await.expect("grant").id();
    for key in ["k1", "k2"] {
        let with_lease = Some(PutOptions::new().with_lease(id));
        client.put(key, "v", with_lease).await.expect("put"); // 2, 3
    }
    client.put("k3", "unleased", None).await.expect("put"); // 4

    let revoked = client.lease_revoke(id).await.expect("revoke");
    assert_eq!(
        revision(revoked.header()),
        5,
        "deleting the attached keys is one revision"
    );
    let left = get(&mut client, "k", GetOptions::new().with_prefix()).await;
    assert_eq!(pairs(&left), [("k3", "unleased")]);

    let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
    assert_eq!(
        (ttl.id(), ttl.ttl(), ttl.granted_ttl()),
        (id, -1, 0),
        "a revoked lease reports TTL -1"
    );
    assert!(client.leases().await.expect("leases").leases().is_empty());
}

#[tokio::test]
async fn lease_expiry_deletes_attached_keys() {
    let server = Server::start();
    let mut client = server.client().await;
    let granted = client.lease_grant(2, None).await.expect("grant");
    let id = granted.id();
    assert_eq!(granted.ttl(), 2);
    let with_lease = Some(PutOptions::new().with_lease(id));
    client.put("ephemeral", "v", with_lease).await.expect("put"); // 2

    let options = WatchOptions::new().with_start_revision(3);
    let mut stream = watch(&mut client, "ephemeral", options).await;
    // The deletion comes within the watch deadline, well past the TTL.
    assert_eq!(
        next_described(&mut stream, 1).await,
        ["DELETE ephemeral= @3"]
    );

    let got = get(&mut client, "ephemeral", GetOptions::new()).await;
    assert!(got.kvs().is_empty());
    eventually(EXPIRY_DEADLINE, "the expired lease to be gone", || {
        let mut client = client.clone();
        async move {
            let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
            let leases = client.leases().await.expect("leases");
            ttl.ttl() == -1 && leases.leases().is_empty()
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_lease_is_not_found() {
    let server = Server::start();
    let mut client = server.client().await;
    let with_lease = Some(PutOptions::new().with_lease(UNKNOWN_LEASE));
    expect_rpc_error(
        client.put("k", "v", with_lease).await,
        "NotFound",
        LEASE_NOT_FOUND,
    );
    expect_rpc_error(
        client.lease_revoke(UNKNOWN_LEASE).await,
        "NotFound",
        LEASE_NOT_FOUND,
    );

    let ttl = client
        .lease_time_to_live(UNKNOWN_LEASE, None)
        .await
        .expect("time-to-live of an unknown lease is no error");
    assert_eq!(
        (ttl.id(), ttl.ttl(), ttl.granted_ttl()),
        (UNKNOWN_LEASE, -1, 0)
    );

    // The server answers a keep-alive of an unknown lease with TTL 0, which
    // the client turns into an error.
    match client.lease_keep_alive(UNKNOWN_LEASE).await {
        Err(Error::LeaseKeepAliveError(message)) => assert_eq!(message, "lease not found"),
        other => panic!("expected a keep-alive error, got {other:?}"),
    }
}

// ----- compaction ----------------------------------------------------------

#[tokio::test]
async fn compaction_makes_older_revisions_unreadable() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(
        &mut client,
        &[("foo", "v1"), ("foo", "v2"), ("foo", "v3"), ("foo", "v4")],
    )
    .await; // 2..=5

    let compacted = client.compact(4, None).await.expect("compact");
    assert_eq!(revision(compacted.header()), 5);
    expect_rpc_error(
        client
            .get("foo", Some(GetOptions::new().with_revision(3)))
            .await,
        "OutOfRange",
        COMPACTED,
    );
    let at4 = get(&mut client, "foo", GetOptions::new().with_revision(4)).await;
    assert_eq!(pairs(&at4), [("foo", "v3")]);
    let current = get(&mut client, "foo", GetOptions::new()).await;
    assert_eq!(pairs(&current), [("foo", "v4")]);

    for again in [3, 4] {
        expect_rpc_error(client.compact(again, None).await, "OutOfRange", COMPACTED);
    }
    expect_rpc_error(client.compact(6, None).await, "OutOfRange", FUTURE_REVISION);

    let physical = Some(etcd_client::CompactionOptions::new().with_physical());
    client.compact(5, physical).await.expect("physical compact");
    expect_rpc_error(
        client
            .get("foo", Some(GetOptions::new().with_revision(4)))
            .await,
        "OutOfRange",
        COMPACTED,
    );
}

// ----- cluster and maintenance ---------------------------------------------

#[tokio::test]
async fn status_reports_version_leader_and_raft_progress() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("foo", "bar", None).await.expect("put");

    let status = client.status().await.expect("status");
    let header = status.header().expect("header");
    assert_eq!(header.revision(), 2);
    assert_ne!(header.cluster_id(), 0);
    assert_ne!(header.member_id(), 0);
    assert_eq!(status.leader(), header.member_id(), "the only member leads");
    assert!(status.db_size() > 0);
    assert!(status.raft_index() > 0);
    assert!(status.raft_applied_index() > 0);
    assert!(status.raft_term() > 0);
    assert_eq!(header.raft_term(), status.raft_term());
    assert!(status.errors().is_empty(), "errors: {:?}", status.errors());
    let version = status.version();
    match server.target() {
        Target::Keelson => assert!(version.starts_with("3.5."), "version {version}"),
        Target::Etcd => assert!(version.starts_with("3.4."), "version {version}"),
    }
}

#[tokio::test]
async fn member_list_has_the_single_member() {
    let server = Server::start();
    let mut client = server.client().await;
    let list = client.member_list().await.expect("member list");
    let [member] = list.members() else {
        panic!("expected one member, got {:?}", list.members());
    };
    assert_eq!(member.name(), "default");
    assert_eq!(member.id(), list.header().expect("header").member_id());
    assert_eq!(
        member.client_urls(),
        [format!("http://{}", server.endpoint())]
    );
    assert!(
        !member.peer_urls().is_empty()
            && member
                .peer_urls()
                .iter()
                .all(|url| url.starts_with("http://")),
        "peer URLs {:?}",
        member.peer_urls()
    );
    assert!(!member.is_learner());
}

// ----- errors --------------------------------------------------------------

#[tokio::test]
async fn empty_key_is_rejected() {
    let server = Server::start();
    let mut client = server.client().await;
    expect_rpc_error(
        client.put("", "v", None).await,
        "InvalidArgument",
        EMPTY_KEY,
    );
    expect_rpc_error(client.get("", None).await, "InvalidArgument", EMPTY_KEY);
    expect_rpc_error(client.delete("", None).await, "InvalidArgument", EMPTY_KEY);
    let txn = Txn::new().and_then([TxnOp::put("", "v", None)]);
    expect_rpc_error(client.txn(txn).await, "InvalidArgument", EMPTY_KEY);
}

/// A request whose proposal would exceed `--max-request-bytes` is refused by
/// the server itself; one just below the limit is accepted.
#[tokio::test]
async fn request_over_max_request_bytes_is_too_large() {
    let server = Server::start();
    let mut client = server.client().await;
    let below = vec![b'x'; MAX_REQUEST_BYTES - 1024];
    client
        .put("fits", below, None)
        .await
        .expect("put below the limit");
    let value = vec![b'x'; MAX_REQUEST_BYTES + 1];
    expect_rpc_error(
        client.put("big", value, None).await,
        "InvalidArgument",
        "etcdserver: request is too large",
    );
    let got = get(&mut client, "big", GetOptions::new()).await;
    assert!(got.kvs().is_empty(), "nothing was written");
}

/// A message larger than the gRPC limit (`--max-request-bytes` plus 512 KiB
/// of allowance: 2 MiB by default) is refused by gRPC before the server sees it.
#[tokio::test]
async fn message_over_grpc_limit_is_resource_exhausted() {
    let server = Server::start();
    let mut client = server.client().await;
    let value = vec![b'x'; 2 * 1024 * 1024];
    expect_rpc_error(
        client.put("big", value, None).await,
        "ResourceExhausted",
        "grpc: received message larger than max (2097162 vs. 2097152)",
    );
    let got = get(&mut client, "big", GetOptions::new()).await;
    assert!(got.kvs().is_empty(), "nothing was written");
}

#[tokio::test]
async fn invalid_txns_are_rejected() {
    let server = Server::start();
    let mut client = server.client().await;
    let too_many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    expect_rpc_error(
        client.txn(Txn::new().and_then(too_many)).await,
        "InvalidArgument",
        "etcdserver: too many operations in txn request",
    );
    let duplicate = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
    expect_rpc_error(
        client.txn(duplicate).await,
        "InvalidArgument",
        "etcdserver: duplicate key given in txn request",
    );
    let got = get(&mut client, "k", GetOptions::new().with_prefix()).await;
    assert!(got.kvs().is_empty(), "nothing was written");
}

#[tokio::test]
async fn invalid_lease_grants_are_rejected() {
    let server = Server::start();
    let mut client = server.client().await;
    expect_rpc_error(
        client.lease_grant(9_000_000_001, None).await,
        "OutOfRange",
        "etcdserver: too large lease TTL",
    );
    let chosen = || Some(LeaseGrantOptions::new().with_id(0x1234));
    client.lease_grant(60, chosen()).await.expect("grant");
    expect_rpc_error(
        client.lease_grant(60, chosen()).await,
        "FailedPrecondition",
        "etcdserver: lease already exists",
    );
}
