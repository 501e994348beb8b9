//! Watches: live events, history replay, prev_kv, filters, several watchers per stream, cancel, compaction.

use super::*;

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
