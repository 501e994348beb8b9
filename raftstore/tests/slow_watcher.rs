//! A watcher that stops reading must not hold up writers, and must still get
//! every event, in order, once it reads again — from memory or, once the
//! in-memory buffer has moved on, from the store's history.

use std::time::Duration;

use keelson_proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use tokio_stream::StreamExt;

mod support;
use support::Member;

const VALUE_BYTES: usize = 64 * 1024;
/// Enough data (64 MiB) to fill every buffer between the server and a client
/// that does not read: the stream's queue, HTTP/2 windows, socket buffers.
const PUTS: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_blocks_no_writer_and_catches_up_in_order() {
    // Far fewer buffered events than puts: the watcher must catch up from disk.
    let member = Member::start(|config| config.watch_buffer_events = 16, None).await;
    let channel = member.channel.clone();

    let (requests, outbound) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    };
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
    let mut events = WatchClient::new(channel.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    let created = events.next().await.unwrap().unwrap();
    assert!(created.created);

    // The watcher now reads nothing while the writer writes 64 MiB.
    let mut kv = KvClient::new(channel);
    let value = vec![b'v'; VALUE_BYTES];
    let writes = async {
        let mut last = 0;
        for i in 0..PUTS {
            let put = PutRequest {
                key: format!("k{i:05}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            };
            last = kv
                .put(put)
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
        }
        last
    };
    let last = tokio::time::timeout(Duration::from_secs(120), writes)
        .await
        .expect("writes finished although a watcher stalled");

    let mut expected = 2;
    while expected <= last {
        let response = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("watcher caught up")
            .unwrap()
            .unwrap();
        assert!(!response.canceled, "{response:?}");
        for event in response.events {
            let kv = event.kv.unwrap();
            assert_eq!(
                kv.mod_revision, expected,
                "events arrive once each, in order"
            );
            assert_eq!(kv.value.len(), VALUE_BYTES);
            expected += 1;
        }
    }

    drop(requests);
    member.stop().await;
}
