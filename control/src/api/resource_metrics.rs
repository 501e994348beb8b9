//! `metrics.k8s.io/v1beta1`, served by every member (no metrics-server to
//! install): NodeMetrics and PodMetrics from the agents' `/metrics/resource`.
//!
//! ```text
//!  every 15 s: each node with an agent endpoint ─► GET /metrics/resource (the kubelet's names)
//!      cumulative CPU seconds, working set, each stamped by the agent
//!      ─► rate over the last two scrapes (as metrics-server computes it) ─► cache
//!  GET /apis/metrics.k8s.io/v1beta1/nodes[/NAME]                 ─► NodeMetrics from the cache
//!  GET /apis/metrics.k8s.io/v1beta1/[namespaces/NS/]pods[/NAME]  ─► PodMetrics (pods listed through
//!                                                                    the API, so selectors work)
//! ```
//!
//! A pod or node appears once it has been scraped twice (a rate needs two
//! points); one that stops being reported disappears with the next scrape
//! of its node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use super::request::Query;
use super::{Api, Result, Target};
use crate::resources;
use crate::status::ApiError;

/// How often the agents are scraped (metrics-server's `--metric-resolution`).
pub(super) const RESOLUTION: Duration = Duration::from_secs(15);

/// One cumulative CPU reading.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    at_ms: i64,
}

/// Usage over a window: CPU in nanocores, memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) nanocores: u64,
    pub(super) memory: u64,
    pub(super) at_ms: i64,
    pub(super) window_ms: i64,
}

/// What one `/metrics/resource` text says.
#[derive(Clone, Debug, Default, PartialEq)]
struct Scrape {
    node: Option<(Reading, u64)>,
    /// By (namespace, pod, container).
    containers: HashMap<(String, String, String), (Reading, u64)>,
}

/// The labels of a sample line, `{a="x",b="y"}`.
fn labels(text: &str) -> HashMap<&str, String> {
    let mut found = HashMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let key = key.trim_start_matches([',', ' ', '{']);
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        found.insert(key, value);
        rest = &after[end..];
    }
    found
}

/// Reads the kubelet's resource metrics text.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let mut node_cpu = None;
    let mut node_memory = None;
    let mut cpu: HashMap<(String, String, String), Reading> = HashMap::new();
    let mut memory: HashMap<(String, String, String), u64> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = match line.find('{') {
            Some(open) => match line[open..].find('}') {
                Some(close) => (&line[..open + close + 1], &line[open + close + 1..]),
                None => continue,
            },
            None => match line.split_once(' ') {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        let mut fields = rest.split_whitespace();
        let (Some(value), Some(at_ms)) = (
            fields.next().and_then(|v| v.parse::<f64>().ok()),
            fields.next().and_then(|t| t.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let (name, label_text) = series.split_once('{').unwrap_or((series, ""));
        let key = || {
            let l = labels(label_text);
            (
                l.get("namespace").cloned().unwrap_or_default(),
                l.get("pod").cloned().unwrap_or_default(),
                l.get("container").cloned().unwrap_or_default(),
            )
        };
        let reading = Reading {
            cpu_seconds: value,
            at_ms,
        };
        match name {
            "node_cpu_usage_seconds_total" => node_cpu = Some(reading),
            "node_memory_working_set_bytes" => node_memory = Some(value as u64),
            "container_cpu_usage_seconds_total" => {
                cpu.insert(key(), reading);
            }
            "container_memory_working_set_bytes" => {
                memory.insert(key(), value as u64);
            }
            _ => {}
        }
    }
    if let (Some(cpu), Some(memory)) = (node_cpu, node_memory) {
        scrape.node = Some((cpu, memory));
    }
    for (key, reading) in cpu {
        let memory = memory.get(&key).copied().unwrap_or(0);
        scrape.containers.insert(key, (reading, memory));
    }
    scrape
}

/// The rate between two readings, or none when time did not move forward
/// or the counter went back (a restarted container).
fn rate(before: Reading, now: Reading, memory: u64) -> Option<Usage> {
    let window_ms = now.at_ms - before.at_ms;
    let used = now.cpu_seconds - before.cpu_seconds;
    if window_ms <= 0 || used < 0.0 {
        return None;
    }
    Some(Usage {
        nanocores: (used / (window_ms as f64 / 1000.0) * 1e9).round() as u64,
        memory,
        at_ms: now.at_ms,
        window_ms,
    })
}

/// What one node's last two scrapes give.
#[derive(Clone, Debug, Default)]
struct NodeSamples {
    last: Scrape,
    node: Option<Usage>,
    /// By (namespace, pod): each container's usage.
    pods: HashMap<(String, String), Vec<(String, Usage)>>,
}

/// The cache every member keeps.
#[derive(Debug, Default)]
pub(super) struct ResourceMetrics {
    nodes: Mutex<HashMap<String, NodeSamples>>,
}

impl ResourceMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeSamples>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a node's new scrape.
    fn record(&self, node: &str, text: &str) {
        let scrape = parse(text);
        let mut nodes = self.lock();
        let entry = nodes.entry(node.to_owned()).or_default();
        entry.node = match (entry.last.node, scrape.node) {
            (Some((before, _)), Some((now, memory))) => rate(before, now, memory).or(entry.node),
            _ => None,
        };
        let mut pods: HashMap<(String, String), Vec<(String, Usage)>> = HashMap::new();
        for (key, (now, memory)) in &scrape.containers {
            let usage = match entry.last.containers.get(key) {
                Some((before, _)) => rate(*before, *now, *memory),
                None => None,
            };
            if let Some(usage) = usage {
                let (namespace, pod, container) = key.clone();
                pods.entry((namespace, pod))
                    .or_default()
                    .push((container, usage));
            }
        }
        for containers in pods.values_mut() {
            containers.sort_by(|a, b| a.0.cmp(&b.0));
        }
        entry.pods = pods;
        entry.last = scrape;
    }

    /// Forgets nodes that are gone.
    fn retain(&self, nodes: &[String]) {
        self.lock().retain(|name, _| nodes.contains(name));
    }

    pub(super) fn node(&self, name: &str) -> Option<Usage> {
        self.lock().get(name).and_then(|n| n.node)
    }

    /// A pod's containers' usage.
    pub(super) fn pod(&self, namespace: &str, name: &str) -> Option<Vec<(String, Usage)>> {
        let key = (namespace.to_owned(), name.to_owned());
        self.lock().values().find_map(|n| n.pods.get(&key).cloned())
    }
}

fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn window(ms: i64) -> String {
    let seconds = ms as f64 / 1000.0;
    if seconds.fract() == 0.0 {
        format!("{seconds}s")
    } else {
        format!("{seconds:.3}s")
    }
}

fn usage(u: &Usage) -> Value {
    json!({"cpu": format!("{}n", u.nanocores), "memory": format!("{}Ki", u.memory / 1024)})
}

fn node_metrics(object: &Value, u: &Usage) -> Value {
    let meta = &object["metadata"];
    json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": meta["name"], "labels": meta["labels"],
                     "creationTimestamp": now()},
        "timestamp": time(u.at_ms),
        "window": window(u.window_ms),
        "usage": usage(u),
    })
}

fn pod_metrics(object: &Value, containers: &[(String, Usage)]) -> Value {
    let meta = &object["metadata"];
    let at = containers.iter().map(|(_, u)| u.at_ms).max().unwrap_or(0);
    let span = containers
        .iter()
        .map(|(_, u)| u.window_ms)
        .max()
        .unwrap_or(0);
    let list: Vec<Value> = containers
        .iter()
        .map(|(name, u)| json!({"name": name, "usage": usage(u)}))
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": meta["labels"], "creationTimestamp": now()},
        "timestamp": time(at),
        "window": window(span),
        "containers": list,
    })
}

fn now() -> String {
    let now: DateTime<Utc> = Utc::now();
    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": items,
    })
}

impl Api {
    /// Scrapes every node's agent every [`RESOLUTION`] until shutdown.
    pub async fn scrape_resource_metrics(self: Arc<Self>) {
        if self.nodes.is_none() {
            return;
        }
        let Some(nodes) = resources::find("", "v1", "nodes") else {
            return;
        };
        loop {
            let target = Target {
                resource: nodes,
                namespace: None,
                name: None,
                subresource: None,
            };
            if let Ok(listed) = self
                .list_from_store(&target, &Query::parse(None), false)
                .await
            {
                let nodes = listed["items"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let names: Vec<String> = nodes
                    .iter()
                    .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
                    .collect();
                // Only agents that serve an endpoint (hollow nodes do not).
                let scrapes = nodes.iter().filter_map(|node| {
                    let name = node["metadata"]["name"].as_str()?;
                    let endpoint = super::proxy::agent_endpoint(node).ok()?;
                    Some(self.scrape_node(name, endpoint))
                });
                futures::future::join_all(scrapes).await;
                self.resource_metrics.retain(&names);
            }
            tokio::select! {
                () = tokio::time::sleep(RESOLUTION) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn scrape_node(&self, name: &str, (host, port): (String, u16)) {
        let fetched = async {
            let response = self.agent_get(&host, port, "/metrics/resource").await?;
            if !response.status().is_success() {
                return Err(ApiError::internal(format!("{}", response.status())));
            }
            let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(10), fetched).await {
            Ok(Ok(text)) => self.resource_metrics.record(name, &text),
            Ok(Err(error)) => {
                tracing::debug!(node = name, error = %error.message, "resource metrics scrape failed");
            }
            Err(_) => tracing::debug!(node = name, "resource metrics scrape timed out"),
        }
    }

    /// `GET /apis/metrics.k8s.io/v1beta1/…`.
    pub(super) async fn metrics_api(&self, rest: &[&str], query: Option<&str>) -> Result<Value> {
        let query = Query::parse(query);
        match rest {
            ["nodes"] => {
                let nodes = self.listed("nodes", None, &query).await?;
                let items = nodes
                    .iter()
                    .filter_map(|n| {
                        let name = n["metadata"]["name"].as_str()?;
                        Some(node_metrics(n, &self.resource_metrics.node(name)?))
                    })
                    .collect();
                Ok(list("NodeMetricsList", items))
            }
            ["nodes", name] => {
                let node = self.named("nodes", None, name).await?;
                self.resource_metrics
                    .node(name)
                    .map(|u| node_metrics(&node, &u))
                    .ok_or_else(|| not_found("nodes", name))
            }
            ["pods"] => self.pods_metrics(None, &query).await,
            ["namespaces", namespace, "pods"] => self.pods_metrics(Some(namespace), &query).await,
            ["namespaces", namespace, "pods", name] => {
                let pod = self.named("pods", Some(namespace), name).await?;
                self.resource_metrics
                    .pod(namespace, name)
                    .map(|c| pod_metrics(&pod, &c))
                    .ok_or_else(|| not_found("pods", name))
            }
            _ => Err(ApiError::no_such_path()),
        }
    }

    async fn pods_metrics(&self, namespace: Option<&str>, query: &Query) -> Result<Value> {
        let pods = self.listed("pods", namespace, query).await?;
        let items = pods
            .iter()
            .filter_map(|p| {
                let namespace = p["metadata"]["namespace"].as_str()?;
                let name = p["metadata"]["name"].as_str()?;
                Some(pod_metrics(p, &self.resource_metrics.pod(namespace, name)?))
            })
            .collect();
        Ok(list("PodMetricsList", items))
    }

    async fn listed(
        &self,
        plural: &str,
        namespace: Option<&str>,
        query: &Query,
    ) -> Result<Vec<Value>> {
        let resource = resources::find("", "v1", plural).ok_or_else(ApiError::no_such_path)?;
        let target = Target {
            resource,
            namespace: namespace.map(str::to_owned),
            name: None,
            subresource: None,
        };
        let listed = self.list_from_store(&target, query, false).await?;
        Ok(listed["items"].as_array().cloned().unwrap_or_default())
    }

    async fn named(&self, plural: &str, namespace: Option<&str>, name: &str) -> Result<Value> {
        let resource = resources::find("", "v1", plural).ok_or_else(ApiError::no_such_path)?;
        self.get(&Target {
            resource,
            namespace: namespace.map(str::to_owned),
            name: Some(name.to_owned()),
            subresource: None,
        })
        .await
    }
}

/// metrics-server's NotFound: the object exists but has no metrics yet.
fn not_found(plural: &str, name: &str) -> ApiError {
    let kind = if plural == "nodes" {
        "nodemetrics"
    } else {
        "podmetrics"
    };
    ApiError::not_found_in("metrics.k8s.io", kind, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "# HELP container_cpu_usage_seconds_total x\n\
# TYPE container_cpu_usage_seconds_total counter\n\
container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1.5 1000\n\
container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 2097152 1000\n\
node_cpu_usage_seconds_total 100 1000\n\
node_memory_working_set_bytes 1073741824 1000\n";
    const SECOND: &str = "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 3 16000\n\
container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 4194304 16000\n\
node_cpu_usage_seconds_total 115 16000\n\
node_memory_working_set_bytes 1073741824 16000\n";

    #[test]
    fn rates_need_two_scrapes() {
        let cache = ResourceMetrics::default();
        cache.record("a", FIRST);
        assert_eq!(cache.node("a"), None);
        assert_eq!(cache.pod("default", "web"), None);
        cache.record("a", SECOND);
        // 15 CPU-seconds over 15 s: one core; 1.5 over 15 s: 100m.
        let node = cache.node("a").unwrap();
        assert_eq!(node.nanocores, 1_000_000_000);
        assert_eq!(node.window_ms, 15_000);
        let pod = cache.pod("default", "web").unwrap();
        assert_eq!(pod.len(), 1);
        assert_eq!(pod[0].0, "app");
        assert_eq!(pod[0].1.nanocores, 100_000_000);
        assert_eq!(pod[0].1.memory, 4_194_304);
        cache.retain(&[]);
        assert_eq!(cache.node("a"), None);
    }

    #[test]
    fn a_restarted_container_waits_for_a_new_rate() {
        let cache = ResourceMetrics::default();
        cache.record("a", SECOND);
        cache.record("a", FIRST.replace(" 1000\n", " 31000\n").as_str());
        assert_eq!(cache.pod("default", "web"), None, "the counter went back");
    }

    #[test]
    fn labels_are_unescaped() {
        let l = labels("{container=\"a\\\"b\",pod=\"p\"}");
        assert_eq!(l.get("container").map(String::as_str), Some("a\"b"));
        assert_eq!(l.get("pod").map(String::as_str), Some("p"));
    }

    #[test]
    fn objects_are_shaped_as_metrics_server_shapes_them() {
        let u = Usage {
            nanocores: 1_234_567,
            memory: 2048 * 1024,
            at_ms: 1_700_000_000_000,
            window_ms: 15_000,
        };
        let pod =
            json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}}});
        let m = pod_metrics(&pod, &[("app".into(), u)]);
        assert_eq!(m["containers"][0]["usage"]["cpu"], "1234567n");
        assert_eq!(m["containers"][0]["usage"]["memory"], "2048Ki");
        assert_eq!(m["window"], "15s");
        assert_eq!(m["metadata"]["labels"]["app"], "web");
    }
}
