//! `keelson bench cluster`: a whole cluster under load, in the manner of
//! Kubernetes' density and load tests run on kubemark's hollow nodes.
//!
//! ```text
//!  wait for N Ready hollow nodes ─► create Deployments at --qps ─► wait until every pod Running
//!        │                               │                                 │
//!        │        pods watch: first seen → bound → Running, per pod        │
//!        └─ members' /metrics (request latency histograms), CPU and memory ─┘
//!  then, optionally, constant churn (replace Deployments) while memory is sampled
//! ```
//!
//! API latency is the API servers' own (`apiserver_request_duration_seconds`,
//! the bucket counts accrued during the run, summed over the members, read
//! as Prometheus' `histogram_quantile` reads them); pod startup is from the
//! watch event that first shows a pod to the one that shows it Running, as
//! the bench observes both; scheduler throughput is bindings per second as
//! the watch sees them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{BenchError, each, failed};
use crate::client::{Client, ListParams, WatchEvent};

/// The namespace everything the benchmark makes lives in.
pub const NAMESPACE: &str = "bench-cluster";
/// Label on the Deployments and their pods.
const LABEL: &str = "bench.keelson.dev/cluster";
/// Hollow nodes carry it (see `keelson_nodeagent::hollow`).
const HOLLOW: &str = "node.keelson.dev/hollow";
/// How often memory is sampled during churn.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterBench {
    /// Hollow nodes to wait for (they are started apart).
    pub nodes: usize,
    pub pods: usize,
    /// Replicas of each Deployment (the density test's 30).
    pub pods_per_deployment: usize,
    /// Deployments created per second.
    pub qps: f64,
    /// How long to wait for the nodes, and then for every pod.
    pub timeout: Duration,
    /// After the pods run: this long of constant churn…
    pub churn: Duration,
    /// …replacing this many Deployments per second.
    pub churn_qps: f64,
}

/// A process's use of the machine, as sampled.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub name: String,
    /// CPU time used so far (user + system).
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// The peak resident size so far.
    pub peak_rss_bytes: u64,
}

/// Latency of one verb on one resource.
#[derive(Clone, Debug)]
pub struct ApiLatency {
    pub verb: String,
    pub resource: String,
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
}

impl ApiLatency {
    /// Kubernetes' SLO class: the calls that change objects.
    pub fn mutating(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "POST" | "PUT" | "PATCH" | "DELETE" | "DELETECOLLECTION"
        )
    }
}

/// A sorted sample's quantiles.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quantiles {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Quantiles {
    fn of(mut sample: Vec<Duration>) -> Self {
        if sample.is_empty() {
            return Self::default();
        }
        sample.sort_unstable();
        let at = |q: f64| sample[((sample.len() as f64 * q) as usize).min(sample.len() - 1)];
        Quantiles {
            count: sample.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: sample[sample.len() - 1],
        }
    }
}

/// Per member: CPU cores used on average during the load, and memory.
#[derive(Clone, Debug)]
pub struct MemberLoad {
    pub name: String,
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Memory of every sampled process at one moment of the churn.
#[derive(Clone, Debug)]
pub struct ChurnSample {
    pub at: Duration,
    pub rss_bytes: Vec<(String, u64)>,
    pub pods: usize,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct ClusterReport {
    pub nodes: usize,
    pub pods: usize,
    pub deployments: usize,
    pub running: usize,
    /// From the first Deployment created to the last pod Running.
    pub elapsed: Duration,
    /// First seen → Running.
    pub startup: Quantiles,
    /// First seen → bound.
    pub scheduling: Quantiles,
    /// Pods bound per second, first binding to last.
    pub scheduler_rate: f64,
    /// The most bindings in any 5 s, per second.
    pub scheduler_peak: f64,
    pub api: Vec<ApiLatency>,
    pub load: Vec<MemberLoad>,
    pub churn: Vec<ChurnSample>,
    /// Deployments replaced during the churn.
    pub churned: usize,
    /// The load's own calls made again after a transient failure.
    pub retries: usize,
}

impl ClusterReport {
    /// The slowest p99 among mutating calls (each verb and resource with
    /// at least 100 calls, as Kubernetes' SLO reads).
    pub fn mutating_p99(&self) -> Option<&ApiLatency> {
        self.api
            .iter()
            .filter(|l| l.mutating() && l.count >= 100)
            .max_by(|a, b| a.p99.total_cmp(&b.p99))
    }
}

/// The parts of a pod the benchmark follows.
#[derive(Deserialize)]
struct PodView {
    metadata: Meta,
    #[serde(default)]
    spec: Option<PodSpecView>,
    #[serde(default)]
    status: Option<PodStatusView>,
}

#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct PodSpecView {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

#[derive(Deserialize)]
struct PodStatusView {
    phase: Option<String>,
}

#[derive(Deserialize)]
struct NodeView {
    #[serde(default)]
    spec: Option<NodeSpecView>,
    #[serde(default)]
    status: Option<NodeStatusView>,
}

#[derive(Deserialize)]
struct NodeSpecView {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
}

#[derive(Deserialize)]
struct NodeStatusView {
    #[serde(default)]
    conditions: Vec<ConditionView>,
}

#[derive(Deserialize)]
struct ConditionView {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

#[derive(Default)]
struct PodTimes {
    seen: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
}

/// What the pods watch has seen.
#[derive(Default)]
struct Seen {
    pods: HashMap<String, PodTimes>,
    running: usize,
}

impl Seen {
    fn observe(&mut self, pod: &PodView, now: Instant) {
        let Some(name) = &pod.metadata.name else {
            return;
        };
        let times = self.pods.entry(name.clone()).or_default();
        times.seen.get_or_insert(now);
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some()
        {
            times.bound.get_or_insert(now);
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running && times.running.is_none() {
            times.running = Some(now);
            self.running += 1;
        }
    }

    fn forget(&mut self, pod: &PodView) {
        if let Some(name) = &pod.metadata.name
            && let Some(times) = self.pods.remove(name)
            && times.running.is_some()
        {
            self.running -= 1;
        }
    }
}

/// Follows the namespace's pods into `seen` until `stop`, resuming after
/// the server ends a watch, relisting after `410 Gone`.
async fn follow_pods(
    client: Client,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let mut version = "0".to_owned();
    loop {
        let watch = client
            .watch_at::<PodView>(&path, &ListParams::default(), &version, 3600)
            .await;
        let Ok(events) = watch else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                () = stop.cancelled() => return,
            }
        };
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = stop.cancelled() => return,
            };
            let now = Instant::now();
            let mut seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                None => break,
                Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => {
                    if let Some(rv) = &pod.metadata.resource_version {
                        version.clone_from(rv);
                    }
                    seen.observe(&pod, now);
                }
                Some(WatchEvent::Deleted(pod)) => {
                    if let Some(rv) = &pod.metadata.resource_version {
                        version.clone_from(rv);
                    }
                    seen.forget(&pod);
                }
                Some(WatchEvent::Bookmark(rv)) => version = rv,
                Some(WatchEvent::Error(error)) => {
                    if error.is_gone() {
                        // Start again with what exists now.
                        "0".clone_into(&mut version);
                    }
                    break;
                }
            }
        }
    }
}

fn deployment(index: usize, replicas: usize) -> serde_json::Value {
    let name = format!("load-{index:06}");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {LABEL: "true"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, LABEL: "true"}},
                "spec": {
                    "nodeSelector": {HOLLOW: "true"},
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "pause",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}},
                    }],
                },
            },
        },
    })
}

/// Cumulative bucket counts of `apiserver_request_duration_seconds` per
/// (verb, resource), from one member's `/metrics` text.
type Buckets = BTreeMap<(String, String), BTreeMap<u64, f64>>;

/// Reads `apiserver_request_duration_seconds_bucket` lines (le in µs as
/// the key, so the buckets sort).
fn parse_buckets(text: &str, into: &mut Buckets, sign: f64) {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let mut verb = String::new();
        let mut resource = String::new();
        let mut le = None;
        for pair in labels.split(',') {
            let Some((key, quoted)) = pair.split_once('=') else {
                continue;
            };
            let text = quoted.trim_matches('"');
            match key {
                "verb" => verb = text.to_owned(),
                "resource" => resource = text.to_owned(),
                "le" => {
                    le = if text == "+Inf" {
                        Some(u64::MAX)
                    } else {
                        text.parse::<f64>().ok().map(|s| (s * 1e6).round() as u64)
                    };
                }
                _ => {}
            }
        }
        if let Some(le) = le {
            *into
                .entry((verb, resource))
                .or_default()
                .entry(le)
                .or_default() += sign * value;
        }
    }
}

/// `histogram_quantile(q)` over cumulative buckets (le in µs → count), in
/// seconds; the largest finite bound when the rank falls in `+Inf`.
fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let total = buckets.get(&u64::MAX).copied().unwrap_or(0.0);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0u64, 0.0f64);
    for (&le, &count) in buckets {
        if count >= rank {
            if le == u64::MAX {
                return lower.0 as f64 / 1e6;
            }
            let width = (le - lower.0) as f64;
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return (lower.0 as f64 + width * within) / 1e6;
        }
        lower = (le, count);
    }
    lower.0 as f64 / 1e6
}

fn latencies(buckets: &Buckets) -> Vec<ApiLatency> {
    buckets
        .iter()
        .filter(|(_, b)| b.get(&u64::MAX).copied().unwrap_or(0.0) >= 1.0)
        .map(|((verb, resource), b)| ApiLatency {
            verb: verb.clone(),
            resource: resource.clone(),
            count: b.get(&u64::MAX).copied().unwrap_or(0.0) as u64,
            p50: quantile(b, 0.5),
            p99: quantile(b, 0.99),
        })
        .collect()
}

/// Every member's histograms, added up (`sign` -1 takes them away).
async fn scrape(members: &[Client], into: &mut Buckets, sign: f64) {
    for member in members {
        if let Ok(text) = member
            .request(hyper::Method::GET, "/metrics", "text/plain", Vec::new())
            .await
        {
            parse_buckets(&String::from_utf8_lossy(&text), into, sign);
        }
    }
}

impl ClusterBench {
    /// Runs the load through `client`, reading latencies from `members`
    /// (one client per API server) and CPU and memory from `usage`.
    pub async fn run(
        &self,
        client: &Client,
        members: &[Client],
        usage: &(dyn Fn() -> Vec<Usage> + Send + Sync),
    ) -> Result<ClusterReport, BenchError> {
        self.wait_for_nodes(client).await?;
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        match client
            .request(
                hyper::Method::POST,
                "/api/v1/namespaces",
                "application/json",
                namespace.to_string().into_bytes(),
            )
            .await
        {
            Ok(_) => {}
            Err(error) if error.is_already_exists() => {}
            Err(error) => return Err(failed("create the namespace")(error)),
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn(follow_pods(client.clone(), seen.clone(), stop.clone()));
        let outcome = self.load(client, members, usage, &seen).await;
        stop.cancel();
        drop(watcher.await);
        outcome
    }

    async fn wait_for_nodes(&self, client: &Client) -> Result<(), BenchError> {
        let deadline = Instant::now() + self.timeout;
        let params = ListParams {
            label_selector: Some(format!("{HOLLOW}=true")),
            ..ListParams::default()
        };
        loop {
            let nodes = client
                .list_at::<NodeView>("/api/v1/nodes", &params)
                .await
                .map_err(failed("list the hollow nodes"))?;
            let ready = nodes
                .items
                .iter()
                // Ready, with its pod CIDR (no sandbox starts without one).
                .filter(|n| n.spec.as_ref().is_some_and(|s| s.pod_cidr.is_some()))
                .filter(|n| {
                    n.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            if ready >= self.nodes {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Nodes {
                    ready,
                    nodes: self.nodes,
                    timeout: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn create(&self, client: &Client, index: usize) -> Result<(), BenchError> {
        let body = deployment(index, self.pods_per_deployment.max(1)).to_string();
        let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments");
        let call = || {
            client.request(
                hyper::Method::POST,
                &path,
                "application/json",
                body.clone().into_bytes(),
            )
        };
        match patiently(call).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_already_exists() => Ok(()),
            Err(error) => Err(failed(format!("create deployment {index}"))(error)),
        }
    }

    async fn delete(client: &Client, index: usize) -> Result<(), BenchError> {
        let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/load-{index:06}");
        let options = json!({"propagationPolicy": "Background"}).to_string();
        let call = || {
            client.request(
                hyper::Method::DELETE,
                &path,
                "application/json",
                options.clone().into_bytes(),
            )
        };
        match patiently(call).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(failed(format!("delete deployment {index}"))(error)),
        }
    }

    /// Creates `count` Deployments from `first` on, `qps` a second.
    async fn create_paced(
        &self,
        client: &Client,
        first: usize,
        count: usize,
        qps: f64,
    ) -> Result<(), BenchError> {
        let started = tokio::time::Instant::now();
        let period = Duration::from_secs_f64(1.0 / qps.max(0.001));
        each(count, 16, |i| {
            let client = client.clone();
            async move {
                tokio::time::sleep_until(started + period * i as u32).await;
                self.create(&client, first + i).await
            }
        })
        .await
    }

    async fn load(
        &self,
        client: &Client,
        members: &[Client],
        usage: &(dyn Fn() -> Vec<Usage> + Send + Sync),
        seen: &std::sync::Mutex<Seen>,
    ) -> Result<ClusterReport, BenchError> {
        let per = self.pods_per_deployment.max(1);
        let deployments = self.pods.div_ceil(per);
        let pods = deployments * per;
        let mut buckets = Buckets::new();
        scrape(members, &mut buckets, -1.0).await;
        let before = usage();
        let started = Instant::now();
        self.create_paced(client, 0, deployments, self.qps).await?;
        let deadline = started + self.timeout;
        let running = loop {
            let running = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .running;
            if running >= pods || Instant::now() > deadline {
                break running;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let elapsed = started.elapsed();
        let after = usage();
        scrape(members, &mut buckets, 1.0).await;
        let wall = elapsed.as_secs_f64().max(1e-9);
        let load = after
            .iter()
            .map(|a| {
                let b = before.iter().find(|b| b.name == a.name);
                MemberLoad {
                    name: a.name.clone(),
                    cpu_cores: (a.cpu_seconds - b.map_or(0.0, |b| b.cpu_seconds)) / wall,
                    rss_bytes: a.rss_bytes,
                    peak_rss_bytes: a.peak_rss_bytes,
                }
            })
            .collect();
        let (startup, scheduling, bindings) = {
            let seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut startup = Vec::new();
            let mut scheduling = Vec::new();
            let mut bindings = Vec::new();
            for times in seen.pods.values() {
                let Some(first) = times.seen else { continue };
                if let Some(running) = times.running {
                    startup.push(running.duration_since(first));
                }
                if let Some(bound) = times.bound {
                    scheduling.push(bound.duration_since(first));
                    bindings.push(bound);
                }
            }
            (startup, scheduling, bindings)
        };
        let (scheduler_rate, scheduler_peak) = rates(bindings);
        let mut report = ClusterReport {
            nodes: self.nodes,
            pods,
            deployments,
            running,
            elapsed,
            startup: Quantiles::of(startup),
            scheduling: Quantiles::of(scheduling),
            scheduler_rate,
            scheduler_peak,
            api: latencies(&buckets),
            load,
            churn: Vec::new(),
            churned: 0,
            retries: 0,
        };
        // Short of every pod: the report says how far it got; no churn.
        if !self.churn.is_zero() && running >= pods {
            self.churn(client, usage, seen, deployments, &mut report)
                .await?;
        }
        report.retries = RETRIES.load(std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Replaces the oldest Deployment with a new one, `churn_qps` a second,
    /// for the churn's duration, sampling memory every [`SAMPLE_EVERY`].
    async fn churn(
        &self,
        client: &Client,
        usage: &(dyn Fn() -> Vec<Usage> + Send + Sync),
        seen: &std::sync::Mutex<Seen>,
        deployments: usize,
        report: &mut ClusterReport,
    ) -> Result<(), BenchError> {
        let started = Instant::now();
        let period = Duration::from_secs_f64(1.0 / self.churn_qps.max(0.001));
        let mut next_sample = Duration::ZERO;
        let mut replaced = 0usize;
        while started.elapsed() < self.churn {
            if started.elapsed() >= next_sample {
                let pods = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pods
                    .len();
                report.churn.push(ChurnSample {
                    at: started.elapsed(),
                    rss_bytes: usage().into_iter().map(|u| (u.name, u.rss_bytes)).collect(),
                    pods,
                });
                next_sample += SAMPLE_EVERY;
            }
            let due = started + period * (replaced as u32 + 1);
            tokio::time::sleep_until(due.into()).await;
            Self::delete(client, replaced).await?;
            self.create(client, deployments + replaced).await?;
            replaced += 1;
        }
        report.churned = replaced;
        Ok(())
    }
}

/// Calls `call` again, with a growing pause, while it fails in a way a
/// client retries (no answer, 429, 500, 503, 504), up to ten times; as
/// client-go does, the load goes on through a slow moment. Each retry is
/// counted in `keelson_bench_retries_total`.
async fn patiently<T, F, Fut>(mut call: F) -> crate::client::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::client::Result<T>>,
{
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(error)
                if attempt < 10 && matches!(error.code(), None | Some(429 | 500 | 503 | 504)) =>
            {
                tracing::info!(%error, attempt, "retrying");
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Calls the load made again after a transient failure.
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bindings per second from the first to the last, and the most in any
/// 5 s window.
fn rates(mut bindings: Vec<Instant>) -> (f64, f64) {
    if bindings.len() < 2 {
        return (0.0, 0.0);
    }
    bindings.sort_unstable();
    let span = bindings[bindings.len() - 1]
        .duration_since(bindings[0])
        .as_secs_f64()
        .max(1e-3);
    let window = Duration::from_secs(5);
    let mut peak = 0usize;
    let mut start = 0usize;
    for end in 0..bindings.len() {
        while bindings[end].duration_since(bindings[start]) > window {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    (
        bindings.len() as f64 / span,
        peak as f64 / window.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets_as_prometheus_does() {
        let mut buckets = Buckets::new();
        let text = "\
apiserver_request_duration_seconds_bucket{verb=\"POST\",resource=\"pods\",le=\"0.01\"} 50\n\
apiserver_request_duration_seconds_bucket{verb=\"POST\",resource=\"pods\",le=\"0.1\"} 90\n\
apiserver_request_duration_seconds_bucket{verb=\"POST\",resource=\"pods\",le=\"1\"} 100\n\
apiserver_request_duration_seconds_bucket{verb=\"POST\",resource=\"pods\",le=\"+Inf\"} 100\n\
apiserver_request_duration_seconds_count{verb=\"POST\",resource=\"pods\"} 100\n";
        parse_buckets(text, &mut buckets, 1.0);
        let latency = &latencies(&buckets)[0];
        assert_eq!((latency.verb.as_str(), latency.count), ("POST", 100));
        assert!((latency.p50 - 0.01).abs() < 1e-9, "{}", latency.p50);
        // Rank 99 is 9/10 of the way through (0.1, 1].
        assert!((latency.p99 - 0.91).abs() < 1e-9, "{}", latency.p99);
        // Taking a scrape away leaves what happened in between.
        parse_buckets(text, &mut buckets, -1.0);
        assert!(latencies(&buckets).is_empty());
    }

    #[test]
    fn binding_rates_count_the_busiest_window() {
        let t0 = Instant::now();
        let mut bindings: Vec<Instant> = (0..100)
            .map(|i| t0 + Duration::from_millis(i * 10))
            .collect();
        bindings.push(t0 + Duration::from_secs(20));
        let (rate, peak) = rates(bindings);
        assert!((rate - 101.0 / 20.0).abs() < 1e-6);
        assert!((peak - 20.0).abs() < 1e-6, "100 in one 5 s window: {peak}");
    }

    #[test]
    fn the_pods_watch_counts_each_pod_running_once() {
        let mut seen = Seen::default();
        let pod = |phase: &str, node: Option<&str>| PodView {
            metadata: Meta {
                name: Some("p".into()),
                resource_version: None,
            },
            spec: Some(PodSpecView {
                node_name: node.map(str::to_owned),
            }),
            status: Some(PodStatusView {
                phase: Some(phase.into()),
            }),
        };
        let now = Instant::now();
        seen.observe(&pod("Pending", None), now);
        seen.observe(&pod("Pending", Some("n")), now);
        seen.observe(&pod("Running", Some("n")), now);
        seen.observe(&pod("Running", Some("n")), now);
        assert_eq!(seen.running, 1);
        seen.forget(&pod("Running", Some("n")));
        assert_eq!(seen.running, 0);
    }
}
