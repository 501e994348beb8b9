//! Put, get and delete: ranges, limits, sorting, filters, history, prev_kv, ignore_value/lease.

use super::*;

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
