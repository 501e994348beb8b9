//! The store workload: many concurrent etcd-API clients, each pinned to one
//! member, recording what they asked and what they were told.
//!
//! ```text
//!  client c ──gRPC──► member (c mod n)     reads, writes, compare-and-sets
//!                                          on /chaos/reg/G-K (keys rotate
//!                                          every few seconds: short histories)
//!  watcher w ──► member (w mod n)          /chaos/ from the first revision,
//!                                          with prev_kv; on any error resumes
//!                                          on the next member from last + 1
//!  leaser l ──► member (l mod n)           grant → put with the lease → keep
//!                                          alive a while → abandon → watch it go
//! ```
//!
//! Everything is timed on one monotonic clock ([`Clock`], nanoseconds since
//! the run began), which the fault schedule shares.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op,
    watch_client::WatchClient,
    watch_request::RequestUnion,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::check::kv::{KvInput, KvOutput};
use crate::check::linearizability::Operation;
use crate::rng::Rng;

/// Every key the workload writes is under this prefix.
pub const PREFIX: &str = "/chaos/";

/// Nanoseconds since the run began.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` after the start.
    pub fn at(&self, ns: u64) -> Instant {
        self.0 + Duration::from_nanos(ns)
    }
}

/// A member's client URL and name.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub url: String,
}

/// How hard the workload pushes.
#[derive(Clone, Debug)]
pub struct Config {
    pub clients: usize,
    /// Registers in use at any time.
    pub keys: u64,
    /// How long a set of registers is used before the next set.
    pub rotate: Duration,
    /// After this an operation's outcome is unknown.
    pub timeout: Duration,
    pub watchers: usize,
    pub leasers: usize,
    pub lease_ttl: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clients: 8,
            keys: 4,
            rotate: Duration::from_secs(4),
            timeout: Duration::from_secs(2),
            watchers: 3,
            leasers: 3,
            lease_ttl: 3,
        }
    }
}

/// A write the store acknowledged: it must be in the history at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub key: String,
    pub value: u64,
    pub revision: i64,
    /// When the write was sent.
    pub called: u64,
    /// When the acknowledgement arrived.
    pub at: u64,
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub put: bool,
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The previous value and its revision, when the server sent one.
    pub prev: Option<(Vec<u8>, i64)>,
}

/// What one watcher received, in order.
#[derive(Clone, Debug, Default)]
pub struct WatchRecord {
    pub watcher: usize,
    pub start_revision: i64,
    pub events: Vec<Seen>,
    /// How many times it had to resume on another stream.
    pub resumes: usize,
    /// Revisions the server said were compacted away (never expected here).
    pub compacted: Vec<i64>,
}

/// A lease the workload stopped keeping alive, and when its key went.
#[derive(Clone, Debug)]
pub struct Abandoned {
    pub key: String,
    pub ttl: i64,
    /// The last keep-alive acknowledgement (or the grant).
    pub last_ack: u64,
    /// When a linearizable read first found the key gone (None: never, within the wait).
    pub gone_at: Option<u64>,
}

/// Everything the workload recorded.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub start_revision: i64,
    pub ops: Vec<Operation<KvInput, KvOutput>>,
    pub acked: Vec<Acked>,
    pub watches: Vec<WatchRecord>,
    pub leases: Vec<Abandoned>,
    /// (sent, acknowledged) of the availability probe's writes.
    pub probes: Vec<(u64, u64)>,
}

impl Record {
    /// (sent, acknowledged) of every acknowledged write, the clients' and
    /// the probe's, by sending time (for write unavailability).
    pub fn ack_times(&self) -> Vec<(u64, u64)> {
        let mut times: Vec<(u64, u64)> = self.acked.iter().map(|a| (a.called, a.at)).collect();
        times.extend(&self.probes);
        times.sort_unstable();
        times
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("member URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no member answered {what} within {after:?}")]
    Unavailable { what: &'static str, after: Duration },
}

/// A lazily connected channel to `url` (it reconnects by itself).
pub fn channel(url: &str, timeout: Duration) -> Result<Channel, StoreError> {
    Endpoint::from_shared(url.to_owned())
        .map_err(|source| StoreError::Url {
            url: url.into(),
            source,
        })
        .map(|e| {
            e.connect_timeout(Duration::from_secs(1))
                .timeout(timeout)
                .tcp_nodelay(true)
                .connect_lazy()
        })
}

fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Runs the workload against `targets` until `stop`, then returns what it
/// recorded (the watchers and lease checks finish after the clients).
pub async fn run(
    targets: &[Target],
    config: &Config,
    seed: u64,
    clock: Clock,
    stop: CancellationToken,
) -> Result<Record, StoreError> {
    let channels: Vec<Channel> = targets
        .iter()
        .map(|t| channel(&t.url, config.timeout))
        .collect::<Result<_, _>>()?;
    let start_revision = first_revision(&channels, config.timeout).await?;
    let record = Arc::new(Mutex::new(Record {
        start_revision,
        ..Record::default()
    }));
    let rng = Rng::new(seed);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..config.clients {
        let channel = channels[c % channels.len()].clone();
        let (record, stop, config) = (record.clone(), stop.clone(), config.clone());
        let rng = rng.fork(c as u64);
        tasks.spawn(client(c, channel, rng, config, clock, record, stop));
    }
    let watch_stop = CancellationToken::new();
    let mut watchers = tokio::task::JoinSet::new();
    let cells: Vec<WatchCell> = (0..config.watchers)
        .map(|w| {
            Arc::new(Mutex::new(WatchRecord {
                watcher: w,
                start_revision: start_revision + 1,
                ..WatchRecord::default()
            }))
        })
        .collect();
    for (w, cell) in cells.iter().enumerate() {
        let channels = channels.clone();
        let stop = watch_stop.clone();
        watchers.spawn(watcher(w, cell.clone(), channels, stop));
    }
    tasks.spawn(probe(channels.clone(), clock, record.clone(), stop.clone()));
    for l in 0..config.leasers {
        let channels = channels.clone();
        let (record, stop, config) = (record.clone(), stop.clone(), config.clone());
        let rng = rng.fork(1000 + l as u64);
        tasks.spawn(leaser(l, channels, rng, config, clock, record, stop));
    }
    while tasks.join_next().await.is_some() {}
    // Let the watchers catch up with the last acknowledged write (the
    // store's own revision moves on with the API server's writes, which
    // are not under the prefix), then stop them.
    let last = lock(&record)
        .acked
        .iter()
        .map(|a| a.revision)
        .max()
        .unwrap_or(0);
    let caught_up = async {
        while !cells.iter().all(|cell| {
            lock(cell)
                .events
                .last()
                .is_some_and(|e| e.mod_revision >= last)
        }) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), caught_up).await;
    watch_stop.cancel();
    while watchers.join_next().await.is_some() {}
    let mut record = std::mem::take(&mut *lock(&record));
    record.watches = cells.iter().map(|cell| lock(cell).clone()).collect();
    Ok(record)
}

/// What a watcher has received so far.
type WatchCell = Arc<Mutex<WatchRecord>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The store's current revision, from a linearizable read of any member.
pub async fn first_revision(channels: &[Channel], within: Duration) -> Result<i64, StoreError> {
    let deadline = Instant::now() + within;
    loop {
        for channel in channels {
            let request = RangeRequest {
                key: b"/chaos/".to_vec(),
                limit: 1,
                count_only: true,
                ..RangeRequest::default()
            };
            if let Ok(response) = KvClient::new(channel.clone()).range(request).await
                && let Some(header) = response.into_inner().header
            {
                return Ok(header.revision);
            }
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Unavailable {
                what: "a read",
                after: within,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the availability probe sends a write, and how long each may take.
const PROBE_PERIOD: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends a write every [`PROBE_PERIOD`] to the members in turn, each on its
/// own (a write stuck behind a dead leader does not hold back the next), so
/// the first write acknowledged after a fault is known to within the period
/// rather than to within the clients' timeout.
async fn probe(
    channels: Vec<Channel>,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) {
    let mut sent = tokio::task::JoinSet::new();
    let mut n = 0usize;
    let mut interval = tokio::time::interval(PROBE_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.is_cancelled() {
        interval.tick().await;
        n += 1;
        let mut kv = KvClient::new(channels[n % channels.len()].clone());
        let record = record.clone();
        sent.spawn(async move {
            let call = clock.now();
            let put = kv.put(PutRequest {
                key: format!("{PREFIX}probe").into_bytes(),
                value: n.to_string().into_bytes(),
                ..PutRequest::default()
            });
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, put).await {
                lock(&record).probes.push((call, clock.now()));
            }
        });
        while sent.try_join_next().is_some() {}
    }
    while sent.join_next().await.is_some() {}
}

/// The register keys in use at time `now`.
fn register(config: &Config, now: u64, rng: &mut Rng) -> String {
    let generation = now / u64::try_from(config.rotate.as_nanos().max(1)).unwrap_or(u64::MAX);
    format!("{PREFIX}reg/{generation}-{}", rng.below(config.keys))
}

async fn client(
    c: usize,
    channel: Channel,
    mut rng: Rng,
    config: Config,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) {
    let mut kv = KvClient::new(channel);
    let mut seq: u64 = 0;
    // The last value this client read of each key: what its CAS expects.
    let mut last_read: std::collections::HashMap<String, Option<u64>> = Default::default();
    while !stop.is_cancelled() {
        let key = register(&config, clock.now(), &mut rng);
        let roll = rng.below(100);
        let input = if roll < 50 {
            KvInput::Read { key: key.clone() }
        } else {
            seq += 1;
            let value = ((c as u64 + 1) << 32) | seq;
            if roll < 80 {
                KvInput::Write {
                    key: key.clone(),
                    value,
                }
            } else {
                KvInput::Cas {
                    key: key.clone(),
                    expected: last_read.get(&key).copied().flatten(),
                    value,
                }
            }
        };
        let call = clock.now();
        let outcome = tokio::time::timeout(config.timeout, execute(&mut kv, &input)).await;
        let ret = clock.now();
        let (output, revision) = match outcome {
            Ok(Ok((output, revision))) => (Some(output), revision),
            _ => (None, None),
        };
        let failed = output.is_none();
        if let (KvInput::Read { key }, Some(KvOutput::Read(value))) = (&input, &output) {
            last_read.insert(key.clone(), *value);
        }
        {
            let mut record = lock(&record);
            if let Some(revision) = revision {
                let (key, value) = match &input {
                    KvInput::Write { key, value } | KvInput::Cas { key, value, .. } => {
                        (key.clone(), *value)
                    }
                    KvInput::Read { .. } => unreachable!("reads carry no revision"),
                };
                record.acked.push(Acked {
                    key,
                    value,
                    revision,
                    called: call,
                    at: ret,
                });
            }
            record.ops.push(Operation {
                client: c,
                input,
                call,
                output,
                ret,
            });
        }
        if failed {
            // Not a busy loop against a member that refuses everything.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One operation; the revision is that of an acknowledged write.
async fn execute(
    kv: &mut KvClient<Channel>,
    input: &KvInput,
) -> Result<(KvOutput, Option<i64>), tonic::Status> {
    match input {
        KvInput::Read { key } => {
            let response = kv
                .range(RangeRequest {
                    key: key.clone().into_bytes(),
                    ..RangeRequest::default()
                })
                .await?
                .into_inner();
            let value = response.kvs.first().and_then(|kv| parse_value(&kv.value));
            Ok((KvOutput::Read(value), None))
        }
        KvInput::Write { key, value } => {
            let response = kv
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.to_string().into_bytes(),
                    ..PutRequest::default()
                })
                .await?
                .into_inner();
            Ok((KvOutput::Write, response.header.map(|h| h.revision)))
        }
        KvInput::Cas {
            key,
            expected,
            value,
        } => {
            let compare = match expected {
                Some(expected) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: key.clone().into_bytes(),
                    target_union: Some(TargetUnion::Value(expected.to_string().into_bytes())),
                    ..Compare::default()
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: key.clone().into_bytes(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    ..Compare::default()
                },
            };
            let put = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.to_string().into_bytes(),
                    ..PutRequest::default()
                })),
            };
            let response = kv
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: Vec::new(),
                })
                .await?
                .into_inner();
            let revision = response
                .succeeded
                .then(|| response.header.map(|h| h.revision))
                .flatten();
            Ok((KvOutput::Cas(response.succeeded), revision))
        }
    }
}

async fn watcher(w: usize, cell: WatchCell, channels: Vec<Channel>, stop: CancellationToken) {
    let mut next = lock(&cell).start_revision;
    let mut member = w;
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            lock(&cell).resumes += 1;
        }
        first = false;
        let channel = channels[member % channels.len()].clone();
        member += 1;
        let (requests, stream) = tokio::sync::mpsc::channel(1);
        if requests.send(watch_prefix(next)).await.is_err() {
            continue;
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(stream);
        let mut client = WatchClient::new(channel);
        let responses = tokio::select! {
            () = stop.cancelled() => break,
            r = client.watch(stream) => r,
        };
        let Ok(responses) = responses else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut responses = responses.into_inner();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                m = responses.message() => m,
            };
            let Ok(Some(response)) = message else {
                break;
            };
            let mut record = lock(&cell);
            if response.compact_revision > 0 {
                record.compacted.push(response.compact_revision);
                next = response.compact_revision;
            }
            for event in response.events.into_iter().filter_map(seen) {
                next = next.max(event.mod_revision + 1);
                record.events.push(event);
            }
            if response.canceled {
                break;
            }
        }
        drop(requests);
    }
}

fn seen(event: keelson_proto::mvccpb::Event) -> Option<Seen> {
    let kv = event.kv?;
    Some(Seen {
        put: event.r#type == 0,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        mod_revision: kv.mod_revision,
        prev: event.prev_kv.map(|p| (p.value, p.mod_revision)),
    })
}

/// A watch of everything under the prefix from `revision`, with `prev_kv`.
fn watch_prefix(revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: keelson_control::storage::prefix_end(PREFIX.as_bytes()),
            start_revision: revision,
            prev_kv: true,
            ..WatchCreateRequest::default()
        })),
    }
}

async fn leaser(
    l: usize,
    channels: Vec<Channel>,
    mut rng: Rng,
    config: Config,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) {
    let mut n = 0u64;
    let mut checks = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        n += 1;
        let channel = channels[(l + n as usize) % channels.len()].clone();
        let key = format!("{PREFIX}lease/{l}-{n}");
        let Some((id, last_ack)) =
            granted_with_key(&channel, &key, config.lease_ttl, config.timeout, clock).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // Keep it alive for a while (one to three TTLs), then abandon it.
        let keep = Duration::from_millis(rng.between(1000, 3000 * config.lease_ttl as u64));
        let last_ack = keep_alive(&channel, id, keep, last_ack, clock, &stop).await;
        let abandoned = Abandoned {
            key,
            ttl: config.lease_ttl,
            last_ack,
            gone_at: None,
        };
        let (channels, record) = (channels.clone(), record.clone());
        let within = Duration::from_secs(60);
        checks.spawn(async move {
            let gone_at = watch_it_go(&channels, &abandoned.key, clock, within).await;
            lock(&record).leases.push(Abandoned {
                gone_at,
                ..abandoned
            });
        });
    }
    while checks.join_next().await.is_some() {}
}

/// Grants a lease and puts `key` with it; the grant's acknowledgement time.
async fn granted_with_key(
    channel: &Channel,
    key: &str,
    ttl: i64,
    timeout: Duration,
    clock: Clock,
) -> Option<(i64, u64)> {
    let attempt = async {
        let grant = LeaseClient::new(channel.clone())
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .ok()?
            .into_inner();
        let granted = clock.now();
        KvClient::new(channel.clone())
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"leased".to_vec(),
                lease: grant.id,
                ..PutRequest::default()
            })
            .await
            .ok()?;
        Some((grant.id, granted))
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// Sends keep-alives every TTL/3 for `keep`; the last acknowledged one's time.
async fn keep_alive(
    channel: &Channel,
    id: i64,
    keep: Duration,
    mut last_ack: u64,
    clock: Clock,
    stop: &CancellationToken,
) -> u64 {
    let until = Instant::now() + keep;
    let (requests, stream) = tokio::sync::mpsc::channel(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(stream);
    let Ok(Ok(responses)) = tokio::time::timeout(
        Duration::from_secs(1),
        LeaseClient::new(channel.clone()).lease_keep_alive(stream),
    )
    .await
    else {
        return last_ack;
    };
    let mut responses = responses.into_inner();
    while Instant::now() < until && !stop.is_cancelled() {
        if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), responses.message()).await {
            Ok(Ok(Some(response))) if response.ttl > 0 => last_ack = clock.now(),
            Ok(Ok(Some(_))) => break, // the lease is gone
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    last_ack
}

/// Polls `key` with linearizable reads until it is gone; when it was first seen gone.
async fn watch_it_go(
    channels: &[Channel],
    key: &str,
    clock: Clock,
    within: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + within;
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            count_only: true,
            ..RangeRequest::default()
        };
        let read = KvClient::new(channels[i % channels.len()].clone())
            .range(request)
            .await;
        if let Ok(response) = read
            && response.into_inner().count == 0
        {
            return Some(clock.now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The events under the prefix from `from`, read by one fresh watch on
/// `channel` until an event at or past `until` arrived or `max` events
/// did, or the stream stayed quiet for `quiet`.
pub async fn watch_from(
    channel: &Channel,
    from: i64,
    until: i64,
    max: usize,
    quiet: Duration,
) -> Result<Vec<Seen>, tonic::Status> {
    let (requests, stream) = tokio::sync::mpsc::channel(1);
    requests
        .send(watch_prefix(from))
        .await
        .map_err(|_| tonic::Status::cancelled("watch request channel closed"))?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(stream);
    let mut responses = WatchClient::new(channel.clone())
        .watch(stream)
        .await?
        .into_inner();
    let mut events = Vec::new();
    loop {
        let Ok(message) = tokio::time::timeout(quiet, responses.message()).await else {
            break;
        };
        let Some(response) = message? else { break };
        events.extend(response.events.into_iter().filter_map(seen));
        if response.canceled
            || events.len() >= max
            || events.last().is_some_and(|e| e.mod_revision >= until)
        {
            break;
        }
    }
    drop(requests);
    events.truncate(max);
    Ok(events)
}
