//! The node lifecycle controller: notices nodes that stopped renewing their
//! Lease, taints them, evicts what does not tolerate that, and gives every
//! node a pod CIDR.
//!
//! ```text
//!  every monitor period, for each node:
//!    lease renewed within the grace period? ──no──► Ready/…Pressure = Unknown, pods NotReady
//!    Ready False/Unknown ─► node.kubernetes.io/not-ready | unreachable taints (NoSchedule, NoExecute)
//!    spec.unschedulable  ─► node.kubernetes.io/unschedulable:NoSchedule
//!    no podCIDR          ─► the first free block of the cluster CIDR
//!  for each pod on a node with NoExecute taints:
//!    not tolerated, or tolerated for fewer seconds than the taint is old ─► evicted (deleted)
//! ```
//!
//! Staleness is judged by this member's clock from when it last saw the
//! lease change, never by the times written in it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pods::node_of;
use crate::client::{Client, ClientError, DeleteOptions, Patch};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Informer, key_of, split_key};
use crate::scheduler::fit::tolerates;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The conditions a node agent reports, set to Unknown when it goes quiet.
const AGENT_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// An IPv4 block, `10.42.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Self> {
        let (ip, prefix) = text.split_once('/')?;
        let base: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        (u32::from(base) & !mask == 0).then_some(Self { base, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The first `/mask` block of `cluster` that none of `taken` overlaps.
pub fn next_pod_cidr(cluster: Cidr, mask: u8, taken: &[Cidr]) -> Option<Cidr> {
    if mask < cluster.prefix || mask > 30 {
        return None;
    }
    let size = 1u64 << (32 - mask);
    let count = 1u64 << (mask - cluster.prefix);
    let start = u64::from(u32::from(cluster.base));
    let overlaps = |a: u64, a_len: u64, b: &Cidr| {
        let b_start = u64::from(u32::from(b.base));
        let b_len = 1u64 << (32 - b.prefix);
        a < b_start + b_len && b_start < a + a_len
    };
    (0..count)
        .map(|i| start + i * size)
        .find(|block| !taken.iter().any(|t| overlaps(*block, size, t)))
        .map(|block| Cidr {
            base: Ipv4Addr::from(block as u32),
            prefix: mask,
        })
}

/// How the node lifecycle controller runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// How long a node may go without renewing its Lease before it is
    /// marked Unknown (Kubernetes' `--node-monitor-grace-period`, 40 s).
    pub grace_period: Duration,
    /// How often nodes are checked.
    pub monitor_period: Duration,
    /// Where pod CIDRs come from; `None` allocates none.
    pub cluster_cidr: Option<Cidr>,
    pub node_cidr_mask: u8,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(40),
            monitor_period: Duration::from_secs(1),
            cluster_cidr: Cidr::parse("10.42.0.0/16"),
            node_cidr_mask: 24,
        }
    }
}

/// Why a node could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{action} {name}")]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: ClientError,
    },
}

fn failed(action: &'static str, name: &str) -> impl FnOnce(ClientError) -> NodeError {
    let name = name.to_owned();
    move |source| NodeError::Api {
        action,
        name,
        source,
    }
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// The taints `node` should carry for its state, apart from the others it has.
pub fn desired_taints(node: &Node, now: DateTime<Utc>) -> Vec<Taint> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| ![NOT_READY, UNREACHABLE, UNSCHEDULABLE].contains(&t.key.as_str()))
        .cloned()
        .collect();
    let mut want = |key: &str, effect: &str| {
        // Keep the time a NoExecute taint was first added: evictions count from it.
        let existing = current.iter().find(|t| t.key == key && t.effect == effect);
        taints.push(existing.cloned().unwrap_or_else(|| Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            value: None,
            time_added: (effect == "NoExecute").then_some(Time(now)),
        }));
    };
    match ready_status(node) {
        Some("True") => {}
        Some("Unknown") => {
            want(UNREACHABLE, "NoSchedule");
            want(UNREACHABLE, "NoExecute");
        }
        _ => {
            want(NOT_READY, "NoSchedule");
            want(NOT_READY, "NoExecute");
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        want(UNSCHEDULABLE, "NoSchedule");
    }
    taints
}

/// When `pod` must leave a node with `taints` (`Some(now or earlier)` means
/// at once), or `None` if it tolerates them for ever.
pub fn eviction_time(pod: &Pod, taints: &[Taint], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut earliest: Option<DateTime<Utc>> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest of the matching tolerations; none bounded means for ever.
        let Some(seconds) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        let since = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = since + chrono::Duration::seconds(seconds.max(0));
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    earliest
}

/// The controller's state between ticks.
#[derive(Debug)]
pub struct NodeLifecycle {
    client: Client,
    config: NodeConfig,
    nodes: Informer<Node>,
    pods: Informer<Pod>,
    leases: Informer<Lease>,
    recorder: Recorder,
    /// Per node: the last lease renewal (or heartbeat) seen, and when.
    seen: HashMap<String, (Option<String>, Instant)>,
}

impl NodeLifecycle {
    pub fn new(
        client: Client,
        config: NodeConfig,
        nodes: &Informer<Node>,
        pods: &Informer<Pod>,
        leases: &Informer<Lease>,
        recorder: Recorder,
    ) -> Self {
        Self {
            client,
            config,
            nodes: nodes.clone(),
            pods: pods.clone(),
            leases: leases.clone(),
            recorder,
            seen: HashMap::new(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        for synced in [
            self.nodes.wait_synced(&shutdown).await,
            self.pods.wait_synced(&shutdown).await,
            self.leases.wait_synced(&shutdown).await,
        ] {
            if !synced {
                return;
            }
        }
        loop {
            if let Err(error) = self.tick().await {
                tracing::debug!(error = %crate::runtime::chain(&error), "node lifecycle");
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.monitor_period) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn tick(&mut self) -> Result<(), NodeError> {
        let now = Utc::now();
        let nodes = self.nodes.list();
        self.seen.retain(|name, _| {
            nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name))
        });
        let mut first_error = None;
        for node in &nodes {
            if let Err(error) = self.check(node, now).await {
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.evict(now).await {
            first_error.get_or_insert(error);
        }
        if let Some(cluster) = self.config.cluster_cidr
            && let Err(error) = self.allocate_cidrs(cluster, &nodes).await
        {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The node's last sign of life: its lease's renew time, or its Ready
    /// condition's heartbeat.
    fn heartbeat(&self, node: &Node) -> Option<String> {
        let name = node.metadata.name.as_deref()?;
        let lease = self
            .leases
            .get_in(Some("kube-node-lease"), name)
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_rfc3339())
            });
        lease.or_else(|| {
            node.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .last_heartbeat_time
                .as_ref()
                .map(|t| t.0.to_rfc3339())
        })
    }

    async fn check(&mut self, node: &Arc<Node>, now: DateTime<Utc>) -> Result<(), NodeError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let beat = self.heartbeat(node);
        let entry = self
            .seen
            .entry(name.clone())
            .or_insert_with(|| (beat.clone(), Instant::now()));
        if entry.0 != beat {
            *entry = (beat, Instant::now());
        }
        let stale = entry.1.elapsed() > self.config.grace_period;
        let mut node = (**node).clone();
        if stale && ready_status(&node) != Some("Unknown") {
            tracing::info!(node = %name, "node stopped renewing its lease; marking it Unknown");
            node = self.mark_unknown(node, now).await?;
            self.mark_pods_not_ready(&name).await;
            self.recorder.record(
                &node,
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        let taints = desired_taints(&node, now);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints != current {
            node.spec.get_or_insert_with(Default::default).taints =
                (!taints.is_empty()).then_some(taints);
            self.client
                .replace(&node)
                .await
                .map_err(failed("taint node", &name))?;
        }
        Ok(())
    }

    async fn mark_unknown(&self, mut node: Node, now: DateTime<Utc>) -> Result<Node, NodeError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let status = node.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        for kind in AGENT_CONDITIONS {
            match conditions.iter_mut().find(|c| c.type_ == *kind) {
                Some(c) => {
                    if c.status != "Unknown" {
                        c.last_transition_time = Some(Time(now));
                    }
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                }
                None => conditions.push(NodeCondition {
                    type_: (*kind).into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_transition_time: Some(Time(now)),
                    last_heartbeat_time: None,
                }),
            }
        }
        self.client
            .replace_status(&node)
            .await
            .map_err(failed("mark Unknown node", &name))
    }

    /// Pods on a node that went quiet are no longer Ready (so Services stop
    /// sending them traffic).
    async fn mark_pods_not_ready(&self, node: &str) {
        for pod in self.pods.list() {
            if node_of(&pod) != Some(node) || !super::pods::is_ready(&pod) {
                continue;
            }
            let key = key_of(&pod.metadata);
            let (namespace, name) = split_key(&key);
            let patch = json!({"status": {"conditions": [{
                "type": "Ready", "status": "False", "lastTransitionTime": crate::object::now(),
            }]}});
            if let Err(error) = self
                .client
                .patch::<Pod>(namespace, name, Some("status"), Patch::Strategic, &patch)
                .await
            {
                tracing::debug!(pod = %key, %error, "could not mark the pod NotReady");
            }
        }
    }

    /// Deletes the pods that NoExecute taints no longer let stay.
    async fn evict(&self, now: DateTime<Utc>) -> Result<(), NodeError> {
        let tainted: HashMap<String, Vec<Taint>> = self
            .nodes
            .list()
            .iter()
            .filter_map(|n| {
                let taints: Vec<Taint> = n
                    .spec
                    .as_ref()?
                    .taints
                    .as_ref()?
                    .iter()
                    .filter(|t| t.effect == "NoExecute")
                    .cloned()
                    .collect();
                (!taints.is_empty()).then(|| (n.metadata.name.clone().unwrap_or_default(), taints))
            })
            .collect();
        if tainted.is_empty() {
            return Ok(());
        }
        for pod in self.pods.list() {
            let Some(taints) = node_of(&pod).and_then(|n| tainted.get(n)) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if eviction_time(&pod, taints, now).is_none_or(|at| at > now) {
                continue;
            }
            let key = key_of(&pod.metadata);
            let (namespace, name) = split_key(&key);
            self.recorder.record(
                pod.as_ref(),
                EventType::Normal,
                "TaintManagerEviction",
                format!("Marking for deletion Pod {key}"),
            );
            let options = DeleteOptions {
                uid: pod.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            match self.client.delete::<Pod>(namespace, name, &options).await {
                Ok(()) => {}
                Err(error) if error.is_not_found() || error.is_conflict() => {}
                Err(error) => return Err(failed("evict pod", &key)(error)),
            }
        }
        Ok(())
    }

    async fn allocate_cidrs(&self, cluster: Cidr, nodes: &[Arc<Node>]) -> Result<(), NodeError> {
        let mut taken: Vec<Cidr> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_deref().and_then(Cidr::parse))
            .collect();
        let mut unallocated: Vec<&Arc<Node>> = nodes
            .iter()
            .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none())
            .collect();
        unallocated.sort_by_key(|n| n.metadata.name.clone());
        for node in unallocated {
            let name = node.metadata.name.clone().unwrap_or_default();
            let Some(cidr) = next_pod_cidr(cluster, self.config.node_cidr_mask, &taken) else {
                self.recorder.record(
                    node.as_ref(),
                    EventType::Warning,
                    "CIDRNotAvailable",
                    format!("Node {name} status is now: CIDRNotAvailable"),
                );
                continue;
            };
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
            });
            self.client
                .patch::<Node>(None, &name, None, Patch::Merge, &patch)
                .await
                .map_err(failed("allocate a pod CIDR for node", &name))?;
            self.recorder.record(
                node.as_ref(),
                EventType::Normal,
                "CIDRAssignmentSucceeded",
                format!("Node {name} has been assigned pod CIDR {cidr}"),
            );
            taken.push(cidr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, Toleration};

    fn node(ready: &str, taints: Vec<Taint>) -> Node {
        Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn taints_follow_readiness_and_keep_their_time() {
        let now = Utc::now();
        let earlier = now - chrono::Duration::seconds(30);
        let custom = Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        assert_eq!(
            desired_taints(&node("True", vec![custom.clone()]), now),
            vec![custom.clone()]
        );
        let unknown = desired_taints(&node("Unknown", vec![]), now);
        assert_eq!(
            unknown
                .iter()
                .map(|t| (t.key.as_str(), t.effect.as_str()))
                .collect::<Vec<_>>(),
            [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
        );
        let old = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(earlier)),
            value: None,
        };
        let kept = desired_taints(&node("Unknown", vec![old.clone()]), now);
        assert!(kept.contains(&old));
        assert!(
            desired_taints(&node("False", vec![old]), now)
                .iter()
                .all(|t| t.key != UNREACHABLE)
        );
    }

    #[test]
    fn pods_leave_when_their_toleration_runs_out() {
        let now = Utc::now();
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(now - chrono::Duration::seconds(10))),
            value: None,
        };
        let pod = |seconds: Option<i64>| Pod {
            spec: Some(PodSpec {
                tolerations: seconds.map(|s| {
                    vec![Toleration {
                        key: Some(UNREACHABLE.into()),
                        operator: Some("Exists".into()),
                        effect: Some("NoExecute".into()),
                        toleration_seconds: Some(s),
                        ..Toleration::default()
                    }]
                }),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(
            eviction_time(&pod(None), std::slice::from_ref(&taint), now),
            Some(now),
            "not tolerated: at once"
        );
        assert!(
            eviction_time(&pod(Some(5)), std::slice::from_ref(&taint), now)
                .is_some_and(|t| t <= now)
        );
        assert!(
            eviction_time(&pod(Some(300)), std::slice::from_ref(&taint), now)
                .is_some_and(|t| t > now)
        );
    }

    #[test]
    fn pod_cidrs_are_the_first_free_blocks() {
        let cluster = Cidr::parse("10.42.0.0/16").unwrap();
        let taken = [
            Cidr::parse("10.42.0.0/24").unwrap(),
            Cidr::parse("10.42.2.0/24").unwrap(),
        ];
        assert_eq!(
            next_pod_cidr(cluster, 24, &taken).unwrap().to_string(),
            "10.42.1.0/24"
        );
        assert_eq!(
            next_pod_cidr(cluster, 24, &[]).unwrap().to_string(),
            "10.42.0.0/24"
        );
        let tiny = Cidr::parse("10.42.0.0/24").unwrap();
        assert_eq!(next_pod_cidr(tiny, 24, &[tiny]), None);
        assert!(Cidr::parse("10.42.0.1/16").is_none(), "host bits set");
    }
}
