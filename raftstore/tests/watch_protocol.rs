//! Watch-protocol details `etcdctl` cannot show: periodic progress
//! notifications, client-chosen and duplicate watch IDs, empty ranges.

use std::time::Duration;

use keelson_proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tonic::Streaming;

mod support;
use support::Member;

struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(member: &Member) -> Stream {
        let (requests, outbound) = mpsc::channel(8);
        let responses = WatchClient::new(member.channel.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .expect("the watch stream opens")
            .into_inner();
        Stream {
            requests,
            responses,
        }
    }

    async fn create(&self, create: WatchCreateRequest) {
        let request = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        self.requests
            .send(request)
            .await
            .expect("the stream takes requests");
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within the deadline")
            .expect("no stream error")
            .expect("the stream is open")
    }
}

fn watch(key: &str, id: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        watch_id: id,
        ..Default::default()
    }
}

#[tokio::test]
async fn progress_notifications_report_the_revision_to_idle_watchers_only() {
    let member = Member::start(
        |c| c.progress_notify_interval = Duration::from_millis(200),
        None,
    )
    .await;
    let mut kv = KvClient::new(member.channel.clone());
    kv.put(PutRequest {
        key: b"other".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut stream = Stream::open(&member).await;
    stream
        .create(WatchCreateRequest {
            progress_notify: true,
            ..watch("k", 0)
        })
        .await;
    stream.create(watch("quiet", 0)).await;
    assert!(stream.next().await.created);
    assert!(stream.next().await.created);

    let progress = stream.next().await;
    assert_eq!(
        progress.watch_id, 0,
        "only the watcher that asked gets notified"
    );
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(progress.header.unwrap().revision, 2);
    member.stop().await;
}

#[tokio::test]
async fn watch_ids_chosen_by_the_client_are_kept_and_duplicates_refused() {
    let member = Member::start(|_| {}, None).await;
    let mut stream = Stream::open(&member).await;
    stream.create(watch("a", 7)).await;
    let created = stream.next().await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 7);

    stream.create(watch("b", 7)).await;
    let refused = stream.next().await;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert_eq!(refused.watch_id, -1, "etcd refuses with watch ID -1");
    assert_eq!(
        refused.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    stream
        .create(WatchCreateRequest {
            range_end: b"a".to_vec(),
            ..watch("b", 0)
        })
        .await;
    let empty = stream.next().await;
    assert!(empty.canceled, "{empty:?}");
    assert_eq!(empty.cancel_reason, "mvcc: watcher range is empty");

    // Watcher 7 still works.
    let mut kv = KvClient::new(member.channel.clone());
    kv.put(PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let event = stream.next().await;
    assert_eq!(event.watch_id, 7);
    assert_eq!(event.events.len(), 1);
    member.stop().await;
}
