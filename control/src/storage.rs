//! Objects in the store, through the etcd v3 API.
//!
//! The API server keeps every object as one key (`/registry/<resource>/…`,
//! as Kubernetes does) and speaks to the store only through the etcd API,
//! so it runs the same against Keelson's Raft store and a real etcd. A key's
//! `mod_revision` is the object's `resourceVersion`; every write is a
//! transaction guarded on it (compare-and-set).

use keelson_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, Member, MemberAddRequest,
    MemberListRequest, MemberRemoveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    cluster_client::ClusterClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    request_op, response_op, watch_client::WatchClient, watch_request,
};
use keelson_proto::mvccpb::{Event, KeyValue, event::EventType};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// What went wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store endpoint {endpoint:?}")]
    BadEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the store refused or failed the request: {0}")]
    Request(#[from] tonic::Status),
    #[error("revision {requested} has been compacted")]
    Compacted { requested: i64 },
    #[error("the store closed the watch")]
    WatchClosed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An object as stored: its bytes and its revision.
#[derive(Clone, Debug)]
pub struct Stored {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl From<KeyValue> for Stored {
    fn from(kv: KeyValue) -> Self {
        Stored {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
        }
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Stored>,
    /// The store revision the page was read at.
    pub revision: i64,
    /// More keys follow the last item.
    pub more: bool,
}

/// How a guarded write went.
#[derive(Debug)]
pub enum Written {
    /// Done, at this revision.
    Ok(i64),
    /// The guard failed: the key's current state (`None`: it is absent).
    Conflict(Option<Stored>),
}

/// A change to one key.
#[derive(Debug)]
pub enum Change {
    Put {
        kv: Stored,
        created: bool,
        previous: Option<Stored>,
    },
    Deleted {
        key: Vec<u8>,
        previous: Option<Stored>,
        revision: i64,
    },
}

/// Records how long a store request took, as Kubernetes' API server
/// records it: `etcd_request_duration_seconds{operation, type}`, the type
/// being the resource's key prefix (`/registry/pods`).
struct Timer {
    operation: &'static str,
    kind: String,
    started: std::time::Instant,
}

impl Timer {
    fn start(operation: &'static str, key: &[u8]) -> Self {
        let key = String::from_utf8_lossy(key);
        let kind = key.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        Timer {
            operation,
            kind,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        metrics::histogram!("etcd_request_duration_seconds", "operation" => self.operation, "type" => std::mem::take(&mut self.kind))
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The guard of a write that expects `key` unchanged since `revision`.
fn modified_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

/// A client of the store.
#[derive(Clone, Debug)]
pub struct Store {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    lease: LeaseClient<Channel>,
    cluster: ClusterClient<Channel>,
}

/// The end of the key range that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store {
    /// Connects (lazily) to the given etcd endpoints (`http://host:port`,
    /// or `https://` with `tls`), spreading requests over them.
    pub fn connect(
        endpoints: &[String],
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self> {
        let mut list = Vec::new();
        for endpoint in endpoints {
            let bad = |source| StoreError::BadEndpoint {
                endpoint: endpoint.clone(),
                source,
            };
            let mut parsed = Endpoint::from_shared(endpoint.clone()).map_err(bad)?;
            if let Some(tls) = &tls
                && endpoint.starts_with("https://")
            {
                parsed = parsed.tls_config(tls.clone()).map_err(bad)?;
            }
            let parsed = parsed
                .tcp_nodelay(true)
                .connect_timeout(std::time::Duration::from_secs(2));
            list.push(parsed);
        }
        let channel = Channel::balance_list(list.into_iter());
        Ok(Self {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(256 * 1024 * 1024),
            watch: WatchClient::new(channel.clone()).max_decoding_message_size(256 * 1024 * 1024),
            lease: LeaseClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        })
    }

    /// Writes `key` unconditionally, attached to a new lease of `ttl`
    /// seconds: it goes away unless written again in time.
    pub async fn put_expiring(&self, key: &[u8], value: Vec<u8>, ttl: i64) -> Result<()> {
        let lease = self
            .lease
            .clone()
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        self.kv
            .clone()
            .put(PutRequest {
                key: key.to_vec(),
                value,
                lease: lease.id,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// The store's members (etcd's `member list`).
    pub async fn members(&self) -> Result<Vec<Member>> {
        Ok(self
            .cluster
            .clone()
            .member_list(MemberListRequest { linearizable: true })
            .await?
            .into_inner()
            .members)
    }

    /// Adds a member with `peer_urls` as a learner; the member as added.
    pub async fn add_learner(&self, peer_urls: Vec<String>) -> Result<Member> {
        let answer = self
            .cluster
            .clone()
            .member_add(MemberAddRequest {
                peer_ur_ls: peer_urls.clone(),
                is_learner: true,
            })
            .await?
            .into_inner();
        Ok(answer.member.unwrap_or(Member {
            peer_ur_ls: peer_urls,
            is_learner: true,
            ..Member::default()
        }))
    }

    /// Removes member `id` from the store's cluster.
    pub async fn remove_member(&self, id: u64) -> Result<()> {
        self.cluster
            .clone()
            .member_remove(MemberRemoveRequest { id })
            .await?;
        Ok(())
    }

    /// Drops the history before `revision` (etcd's Compact). A revision
    /// already compacted, by this member or another, is not an error.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        let request = CompactionRequest {
            revision,
            physical: false,
        };
        match self.kv.clone().compact(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.message().contains("compacted") => Ok(()),
            Err(status) => Err(StoreError::Request(status)),
        }
    }

    /// The store's current revision, read linearizably: every write
    /// acknowledged before the call is at or below it.
    pub async fn current_revision(&self) -> Result<i64> {
        let _timer = Timer::start("revision", b"");
        let response = self
            .kv
            .clone()
            .range(RangeRequest {
                // One key that is never written: the answer's header is the point.
                key: b"/registry".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(response.header.map_or(0, |h| h.revision))
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Stored>> {
        let _timer = Timer::start("get", key);
        let response = self
            .kv
            .clone()
            .range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(response.kvs.into_iter().next().map(Stored::from))
    }

    /// Up to `limit` keys (0: all) under `prefix`, from `start` (inclusive)
    /// if given, at `revision` (0: the latest).
    pub async fn list(
        &self,
        prefix: &[u8],
        start: Option<&[u8]>,
        limit: i64,
        revision: i64,
    ) -> Result<Page> {
        let _timer = Timer::start("list", prefix);
        let response = self
            .kv
            .clone()
            .range(RangeRequest {
                key: start.unwrap_or(prefix).to_vec(),
                range_end: prefix_end(prefix),
                limit,
                revision,
                ..Default::default()
            })
            .await
            .map_err(|status| compacted(status, revision))?
            .into_inner();
        Ok(Page {
            revision: response.header.map_or(0, |h| h.revision),
            more: response.more,
            items: response.kvs.into_iter().map(Stored::from).collect(),
        })
    }

    /// Creates `key` if it does not exist.
    pub async fn create(&self, key: &[u8], value: Vec<u8>) -> Result<Written> {
        let guard = Compare {
            key: key.to_vec(),
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        };
        self.guarded_put(key, value, guard).await
    }

    /// Replaces `key` if its revision is still `revision`.
    pub async fn update(&self, key: &[u8], value: Vec<u8>, revision: i64) -> Result<Written> {
        let guard = modified_at(key, revision);
        self.guarded_put(key, value, guard).await
    }

    /// Deletes `key` if its revision is still `revision`.
    pub async fn delete(&self, key: &[u8], revision: i64) -> Result<Written> {
        let guard = modified_at(key, revision);
        let delete = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            )),
        };
        self.txn(key, guard, delete).await
    }

    /// How many keys there are under `prefix`.
    pub async fn count(&self, prefix: &[u8]) -> Result<i64> {
        let _timer = Timer::start("count", prefix);
        let response = self
            .kv
            .clone()
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                count_only: true,
                serializable: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(response.count)
    }

    /// Deletes `key`, unconditionally.
    pub async fn remove(&self, key: &[u8]) -> Result<()> {
        self.kv
            .clone()
            .delete_range(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Deletes every key under `prefix`, unconditionally.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<()> {
        self.kv
            .clone()
            .delete_range(DeleteRangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "store_write", skip_all, fields(key = %String::from_utf8_lossy(key)))]
    async fn guarded_put(&self, key: &[u8], value: Vec<u8>, guard: Compare) -> Result<Written> {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value,
                ..Default::default()
            })),
        };
        self.txn(key, guard, put).await
    }

    /// `then` if `guard` holds, else reads `key` back for the caller.
    async fn txn(&self, key: &[u8], guard: Compare, then: RequestOp) -> Result<Written> {
        let _timer = Timer::start("txn", key);
        let get = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        };
        let response = self
            .kv
            .clone()
            .txn(TxnRequest {
                compare: vec![guard],
                success: vec![then],
                failure: vec![get],
            })
            .await?
            .into_inner();
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.succeeded {
            return Ok(Written::Ok(revision));
        }
        let current = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next().map(Stored::from)
                }
                _ => None,
            });
        Ok(Written::Conflict(current))
    }

    /// Watches every key under `prefix` from `revision` on (inclusive).
    pub async fn watch(&self, prefix: &[u8], revision: i64) -> Result<Watch> {
        let (requests, outbound) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: revision,
                    prev_kv: true,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        requests
            .send(create)
            .await
            .map_err(|_| StoreError::WatchClosed)?;
        let mut inbound = self
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        // The first response confirms the watch (or says it is too old).
        match inbound.message().await? {
            Some(first) if first.compact_revision > 0 => Err(StoreError::Compacted {
                requested: revision,
            }),
            Some(first) if first.canceled => Err(StoreError::WatchClosed),
            Some(_) => Ok(Watch { requests, inbound }),
            None => Err(StoreError::WatchClosed),
        }
    }
}

fn compacted(status: tonic::Status, revision: i64) -> StoreError {
    if status.message().contains("compacted") {
        StoreError::Compacted {
            requested: revision,
        }
    } else {
        StoreError::Request(status)
    }
}

/// Asks a running watch's store for a progress notification.
#[derive(Clone, Debug)]
pub struct ProgressRequests(mpsc::Sender<WatchRequest>);

impl ProgressRequests {
    /// Asks for one; a request already on its way stands for this one too.
    pub fn request(&self) {
        let progress = WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                WatchProgressRequest {},
            )),
        };
        drop(self.0.try_send(progress));
    }
}

/// A running watch.
#[derive(Debug)]
pub struct Watch {
    /// Held so the store keeps the watch open.
    requests: mpsc::Sender<WatchRequest>,
    inbound: tonic::Streaming<WatchResponse>,
}

/// What one message of a watch carried.
#[derive(Debug)]
pub enum WatchBatch {
    Changes(Vec<Change>),
    /// Nothing changed up to this revision.
    Progress(i64),
}

impl Watch {
    /// A handle that asks the store to report how far this watch has come
    /// (answered as [`WatchBatch::Progress`]: every change up to that
    /// revision has been delivered).
    pub fn progress_requests(&self) -> ProgressRequests {
        ProgressRequests(self.requests.clone())
    }

    /// The next changes; an error once the watch ends.
    pub async fn next(&mut self) -> Result<WatchBatch> {
        let response = self
            .inbound
            .message()
            .await?
            .ok_or(StoreError::WatchClosed)?;
        if response.compact_revision > 0 {
            return Err(StoreError::Compacted {
                requested: response.compact_revision,
            });
        }
        if response.canceled {
            return Err(StoreError::WatchClosed);
        }
        if response.events.is_empty() {
            return Ok(WatchBatch::Progress(
                response.header.map_or(0, |h| h.revision),
            ));
        }
        Ok(WatchBatch::Changes(
            response.events.into_iter().map(change).collect(),
        ))
    }
}

fn change(event: Event) -> Change {
    let kv = event.kv.unwrap_or_default();
    if event.r#type == EventType::Delete as i32 {
        Change::Deleted {
            key: kv.key,
            revision: kv.mod_revision,
            previous: event.prev_kv.map(Stored::from),
        }
    } else {
        Change::Put {
            created: kv.create_revision == kv.mod_revision,
            kv: kv.into(),
            previous: event.prev_kv.map(Stored::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends_past_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
