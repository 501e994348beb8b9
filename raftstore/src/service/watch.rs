//! The Watch service: many watchers on one bidirectional stream.
//!
//! Each stream is one task that owns its watchers. It wakes when the client
//! sends a request, when the hub publishes a revision, or when the progress
//! ticker fires, and pulls each watcher's missing events from the hub. Its
//! only backpressure is its own send queue: a slow client stalls its own
//! stream task and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use keelson_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion, watch_server::Watch,
};
use keelson_proto::mvccpb::{Event, event::EventType};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::index::KeyRange;
use crate::node::Node;

/// Responses queued per stream before the stream task waits for the client.
const SEND_QUEUE: usize = 64;
/// Revisions read from the hub in one go when a watcher catches up (etcd's
/// `watchBatchMaxRevs`).
const MAX_REVISIONS_PER_READ: i64 = 1000;
/// The watch ID etcd uses for responses that belong to no single watcher.
const NO_WATCH_ID: i64 = -1;

#[derive(Debug)]
pub(super) struct WatchService {
    node: Arc<Node>,
    shutdown: CancellationToken,
}

impl WatchService {
    pub(super) fn new(node: Arc<Node>, shutdown: CancellationToken) -> Self {
        Self { node, shutdown }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (out, responses) = mpsc::channel(SEND_QUEUE);
        let session = Session {
            node: self.node.clone(),
            out,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(request.into_inner(), self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}

#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    /// The first revision this watcher has not been sent yet.
    next: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events went out since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else { return false };
        let filtered = if event.r#type == EventType::Put as i32 {
            self.no_put
        } else {
            self.no_delete
        };
        !filtered && KeyRange::new(&self.key, &self.end).contains(&kv.key)
    }
}

/// The client went away; the stream ends.
struct Closed;

struct Session {
    node: Arc<Node>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<WatchRequest>, shutdown: CancellationToken) {
        let mut revisions = self.node.hub().subscribe();
        let interval = self.node.config().progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let step = tokio::select! {
                () = shutdown.cancelled() => Err(Closed),
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) | Err(_) => Err(Closed),
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => self.catch_up_all().await,
                    Err(_) => Err(Closed),
                },
                _ = ticker.tick() => self.progress_tick().await,
            };
            if step.is_err() {
                break;
            }
        }
        metrics::gauge!("etcd_debugging_mvcc_watcher_total").decrement(self.watchers.len() as f64);
    }

    fn response(&self, watch_id: i64) -> WatchResponse {
        self.response_at(watch_id, self.node.store().revision())
    }

    /// A response whose header says `revision`: for progress notifications,
    /// the revision every event before which has been sent, never a later
    /// one the watchers have not been caught up to.
    fn response_at(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.node.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(response)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    metrics::gauge!("etcd_debugging_mvcc_watcher_total").decrement(1.0);
                    let response = WatchResponse {
                        canceled: true,
                        ..self.response(cancel.watch_id)
                    };
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let caught_up = self.node.hub().revision();
                self.catch_up_all().await?;
                self.send(self.response_at(NO_WATCH_ID, caught_up)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Closed> {
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        // etcd answers a refused create with watch ID -1.
        let refuse = |reason: &str| WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: reason.into(),
            ..self.response(NO_WATCH_ID)
        };
        if self.watchers.contains_key(&id) {
            return self
                .send(refuse(
                    "mvcc: duplicate watch ID provided on the WatchStream",
                ))
                .await;
        }
        if KeyRange::new(&create.key, &create.range_end).is_empty() {
            return self.send(refuse("mvcc: watcher range is empty")).await;
        }
        let filters: Vec<_> = create
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        let current = self.node.store().revision();
        let watcher = Watcher {
            key: create.key,
            end: create.range_end,
            next: if create.start_revision > 0 {
                create.start_revision
            } else {
                current + 1
            },
            prev_kv: create.prev_kv,
            no_put: filters.contains(&FilterType::Noput),
            no_delete: filters.contains(&FilterType::Nodelete),
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            sent_since_tick: false,
        };
        self.watchers.insert(id, watcher);
        metrics::gauge!("etcd_debugging_mvcc_watcher_total").increment(1.0);
        self.send(WatchResponse {
            created: true,
            ..self.response(id)
        })
        .await?;
        self.catch_up(id).await
    }

    async fn catch_up_all(&mut self) -> Result<(), Closed> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Sends watcher `id` every event it has not seen, up to the published
    /// revision, at most [`MAX_REVISIONS_PER_READ`] revisions at a time and in
    /// responses of about `max_request_bytes` each (split between revisions,
    /// so clients with default message limits can read them).
    async fn catch_up(&mut self, id: i64) -> Result<(), Closed> {
        loop {
            let current = self.node.hub().revision();
            let Some(watcher) = self.watchers.get(&id) else {
                return Ok(());
            };
            if watcher.next > current {
                return Ok(());
            }
            let to = current.min(watcher.next.saturating_add(MAX_REVISIONS_PER_READ - 1));
            let events = match self.read_events(watcher, to) {
                Ok(events) => events,
                Err(error) => {
                    self.watchers.remove(&id);
                    metrics::gauge!("etcd_debugging_mvcc_watcher_total").decrement(1.0);
                    let response = match error {
                        Error::Compacted { compacted, .. } => WatchResponse {
                            // etcd's header on this response carries no revision.
                            header: Some(self.node.header(0)),
                            compact_revision: compacted,
                            canceled: true,
                            ..self.response(id)
                        },
                        error => {
                            let cancel_reason = error.to_status().message().to_owned();
                            WatchResponse {
                                canceled: true,
                                cancel_reason,
                                ..self.response(id)
                            }
                        }
                    };
                    return self.send(response).await;
                }
            };
            let fragment = watcher.fragment;
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.next = to + 1;
                watcher.sent_since_tick |= !events.is_empty();
            }
            let limit = self.node.config().max_request_bytes;
            for part in split_between_revisions(events, limit) {
                let response = WatchResponse {
                    events: part,
                    ..self.response(id)
                };
                if fragment && response.encoded_len() > limit {
                    for piece in fragments(response, limit) {
                        self.send(piece).await?;
                    }
                } else {
                    self.send(response).await?;
                }
            }
        }
    }

    /// The events of `watcher.next..=to` it wants, with their previous
    /// values if it asked for them.
    fn read_events(&self, watcher: &Watcher, to: i64) -> Result<Vec<Event>, Error> {
        let store = self.node.store();
        let events = self.node.hub().events(store, watcher.next, to)?;
        events
            .into_iter()
            .filter(|event| watcher.wants(event))
            .map(|mut event| {
                if watcher.prev_kv
                    && let Some(kv) = &event.kv
                {
                    event.prev_kv = store.get(&kv.key, kv.mod_revision - 1)?;
                }
                Ok(event)
            })
            .collect()
    }

    /// Tells every synced watcher that asked for it, and that got no events
    /// since the last tick, how far the store has come.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let current = self.node.hub().revision();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.sent_since_tick && w.next > current)
            .map(|(id, _)| *id)
            .collect();
        self.watchers
            .values_mut()
            .for_each(|w| w.sent_since_tick = false);
        for id in due {
            self.send(self.response_at(id, current)).await?;
        }
        Ok(())
    }
}

/// Groups events into responses of about `limit` bytes, never splitting the
/// events of one revision (a txn's changes arrive together).
fn split_between_revisions(events: Vec<Event>, limit: usize) -> Vec<Vec<Event>> {
    let revision = |event: &Event| event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut parts: Vec<Vec<Event>> = Vec::new();
    let mut size = 0;
    for event in events {
        let starts_revision = parts
            .last()
            .and_then(|p| p.last())
            .is_none_or(|last| revision(last) != revision(&event));
        if parts.is_empty() || (starts_revision && size >= limit) {
            parts.push(Vec::new());
            size = 0;
        }
        size += event.encoded_len();
        if let Some(part) = parts.last_mut() {
            part.push(event);
        }
    }
    parts
}

/// Splits a response whose events exceed `limit` bytes into several; every
/// part but the last is marked as a fragment.
fn fragments(response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let mut parts = Vec::new();
    let mut current = WatchResponse {
        events: Vec::new(),
        ..response.clone()
    };
    let mut size = 0;
    for event in response.events {
        let len = event.encoded_len();
        if size + len > limit && !current.events.is_empty() {
            let next = WatchResponse {
                events: Vec::new(),
                ..current.clone()
            };
            parts.push(WatchResponse {
                fragment: true,
                ..std::mem::replace(&mut current, next)
            });
            size = 0;
        }
        size += len;
        current.events.push(event);
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use keelson_proto::mvccpb::KeyValue;

    use super::*;

    fn event(revision: i64, bytes: usize) -> Event {
        let kv = KeyValue {
            mod_revision: revision,
            value: vec![0; bytes],
            ..Default::default()
        };
        Event {
            kv: Some(kv),
            ..Default::default()
        }
    }

    fn revisions(parts: &[Vec<Event>]) -> Vec<Vec<i64>> {
        parts
            .iter()
            .map(|p| {
                p.iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn responses_split_between_revisions_only() {
        let events = vec![
            event(2, 60),
            event(3, 60),
            event(3, 60),
            event(4, 10),
            event(5, 200),
        ];
        let parts = split_between_revisions(events, 100);
        assert_eq!(revisions(&parts), [vec![2, 3, 3], vec![4, 5]]);
        assert!(split_between_revisions(Vec::new(), 100).is_empty());
    }

    #[test]
    fn fragments_mark_all_but_the_last_part() {
        let response = WatchResponse {
            watch_id: 7,
            events: (2..6).map(|r| event(r, 50)).collect(),
            ..Default::default()
        };
        let parts = fragments(response, 120);
        assert_eq!(
            parts.iter().map(|p| p.fragment).collect::<Vec<_>>(),
            [true, false]
        );
        assert!(parts.iter().all(|p| p.watch_id == 7));
        assert_eq!(parts.iter().map(|p| p.events.len()).sum::<usize>(), 4);
    }
}
