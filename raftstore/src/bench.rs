//! `keelson bench store`: load for any etcd v3 endpoint, Keelson's or etcd's.
//!
//! It speaks only the public etcd API, so the same command measures a Keelson
//! member and a real etcd side by side. Each workload runs `total` operations
//! from `clients` concurrent callers spread over `conns` gRPC connections and
//! reports throughput and latency percentiles.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keelson_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op,
    watch_client::WatchClient,
    watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// What the benchmark does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts over the key space.
    Put,
    /// Single-key ranges over a preloaded key space.
    Range,
    /// Txns of one compare and one put.
    Txn,
    /// Time from a put's start to its event at each of `watchers` watchers.
    WatchLatency,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::Txn => "txn",
            Workload::WatchLatency => "watch-latency",
        })
    }
}

/// A benchmark run's settings.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// `host:port` or `http://host:port` of each endpoint; connections are spread over them.
    pub endpoints: Vec<String>,
    pub workload: Workload,
    pub clients: usize,
    pub conns: usize,
    pub total: usize,
    pub key_size: usize,
    pub value_size: usize,
    /// Distinct keys written or read.
    pub key_space: usize,
    /// Serializable instead of linearizable ranges.
    pub serializable: bool,
    /// Watchers for [`Workload::WatchLatency`].
    pub watchers: usize,
    /// Run for this long instead of `total` operations (closed-loop workloads).
    pub duration: Option<Duration>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid endpoint {endpoint:?}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("preloading keys failed")]
    Preload(#[source] tonic::Status),
    #[error("watch setup failed")]
    Watch(#[source] tonic::Status),
    #[error("the benchmark needs at least one endpoint, client, connection and key")]
    Empty,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub workload: Workload,
    pub ops: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Sorted latencies of the successful operations.
    latencies: Vec<Duration>,
    /// The longest time without any operation completing (from the start,
    /// between completions, to the end): how long a failover left clients
    /// without service.
    pub max_gap: Duration,
}

impl Report {
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank =
            ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{:<14} ops {:>8}  errors {:>5}  {:>10.1} ops/s  p50 {:>8.3} ms  p99 {:>8.3} ms  p999 {:>8.3} ms  max gap {:>8.1} ms",
            self.workload,
            self.ops,
            self.errors,
            self.throughput(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
            ms(self.max_gap),
        )
    }
}

fn key(config: &BenchConfig, i: usize) -> Vec<u8> {
    let mut key = format!(
        "bench/{:0width$}",
        i % config.key_space,
        width = config.key_size.saturating_sub(6)
    );
    key.truncate(config.key_size.max(7));
    key.into_bytes()
}

async fn connect(config: &BenchConfig) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::with_capacity(config.conns);
    for i in 0..config.conns {
        let endpoint = &config.endpoints[i % config.endpoints.len()];
        let url = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|source| BenchError::Endpoint {
                endpoint: endpoint.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|source| BenchError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs one benchmark.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    if config.endpoints.is_empty()
        || config.clients == 0
        || config.conns == 0
        || config.key_space == 0
    {
        return Err(BenchError::Empty);
    }
    let channels = connect(&config).await?;
    match config.workload {
        Workload::WatchLatency => watch_latency(&config, &channels).await,
        workload => {
            if workload == Workload::Range {
                preload(&config, &channels[0]).await?;
            }
            Ok(closed_loop(&config, &channels).await)
        }
    }
}

async fn preload(config: &BenchConfig, channel: &Channel) -> Result<(), BenchError> {
    let mut kv = KvClient::new(channel.clone());
    let value = vec![b'v'; config.value_size];
    for i in 0..config.key_space {
        let put = PutRequest {
            key: key(config, i),
            value: value.clone(),
            ..Default::default()
        };
        kv.put(put).await.map_err(BenchError::Preload)?;
    }
    Ok(())
}

/// `clients` callers issuing operations back to back until `total` are done.
async fn closed_loop(config: &BenchConfig, channels: &[Channel]) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let value = vec![b'v'; config.value_size];
    let started = Instant::now();
    let mut callers = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let (config, next, value) = (config.clone(), next.clone(), value.clone());
        let mut kv = KvClient::new(channels[client % channels.len()].clone());
        callers.push(tokio::spawn(async move {
            let (mut latencies, mut completions, mut errors) = (Vec::new(), Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let done = match config.duration {
                    Some(duration) => started.elapsed() >= duration,
                    None => i >= config.total,
                };
                if done {
                    break;
                }
                let key = key(&config, i);
                let begun = Instant::now();
                let outcome = match config.workload {
                    Workload::Put => kv
                        .put(PutRequest {
                            key,
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Workload::Range => kv
                        .range(RangeRequest {
                            key,
                            serializable: config.serializable,
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    Workload::Txn | Workload::WatchLatency => {
                        kv.txn(put_txn(key, value.clone())).await.map(drop)
                    }
                };
                match outcome {
                    Ok(()) => {
                        latencies.push(begun.elapsed());
                        completions.push(started.elapsed());
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, completions, errors)
        }));
    }
    let (mut latencies, mut completions, mut errors) =
        (Vec::with_capacity(config.total), Vec::new(), 0);
    for caller in callers {
        match caller.await {
            Ok((mut l, mut c, e)) => {
                latencies.append(&mut l);
                completions.append(&mut c);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let ops = latencies.len() + errors;
    Report {
        workload: config.workload,
        ops,
        errors,
        elapsed,
        latencies,
        max_gap: max_gap(completions, elapsed),
    }
}

/// The longest stretch of `0..end` with no completion in it.
fn max_gap(mut completions: Vec<Duration>, end: Duration) -> Duration {
    completions.sort_unstable();
    completions.push(end);
    let mut previous = Duration::ZERO;
    completions
        .into_iter()
        .map(|at| {
            let gap = at.saturating_sub(previous);
            previous = at;
            gap
        })
        .max()
        .unwrap_or(end)
}

/// A txn that puts `key` if it exists or not (version >= 0 always holds).
fn put_txn(key: Vec<u8>, value: Vec<u8>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(-1)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value,
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Puts one key at a time and times its arrival at every watcher.
async fn watch_latency(config: &BenchConfig, channels: &[Channel]) -> Result<Report, BenchError> {
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(i64, Instant)>();
    let watchers = config.watchers.max(1);
    for w in 0..watchers {
        let mut client = WatchClient::new(channels[w % channels.len()].clone());
        let (requests, outbound) = mpsc::channel(1);
        let create = WatchCreateRequest {
            key: b"bench/".to_vec(),
            range_end: b"bench0".to_vec(),
            ..Default::default()
        };
        let _ = requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await;
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .map_err(BenchError::Watch)?
            .into_inner();
        // Wait for the created response so no event is missed.
        stream.next().await.transpose().map_err(BenchError::Watch)?;
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let _keep_open = requests;
            while let Some(Ok(response)) = stream.next().await {
                let now = Instant::now();
                for event in response.events {
                    let revision = event.kv.map_or(0, |kv| kv.mod_revision);
                    if arrivals.send((revision, now)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(arrivals);

    let mut kv = KvClient::new(channels[0].clone());
    let value = vec![b'v'; config.value_size];
    let (mut latencies, mut errors) = (Vec::with_capacity(config.total * watchers), 0);
    let started = Instant::now();
    for i in 0..config.total {
        let begun = Instant::now();
        let put = PutRequest {
            key: key(config, i),
            value: value.clone(),
            ..Default::default()
        };
        let revision = match kv.put(put).await {
            Ok(response) => response.into_inner().header.map_or(0, |h| h.revision),
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let mut seen = 0;
        while seen < watchers {
            match tokio::time::timeout(Duration::from_secs(10), arrived.recv()).await {
                Ok(Some((rev, at))) if rev == revision => {
                    latencies.push(at.duration_since(begun));
                    seen += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    errors += watchers - seen;
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Report {
        workload: Workload::WatchLatency,
        ops: config.total * watchers,
        errors,
        elapsed,
        latencies,
        // Puts go one at a time here: gaps would only restate latency.
        max_gap: Duration::ZERO,
    })
}
