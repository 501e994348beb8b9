//! The scheduler's decisions, as pure functions of a pod and its view of
//! the nodes: which nodes fit (filters), which fits best (scores), and the
//! message that says why none did.
//!
//! Filters run in Kubernetes' order, and a node is reported under the
//! first one it fails: unschedulable, node name, taints, node affinity,
//! host ports, resources.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

use crate::quantity;

/// What Kubernetes assumes a container without requests uses, for scoring.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;
/// Pods a node takes when it does not say.
const DEFAULT_MAX_PODS: i64 = 110;

/// CPU and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Amounts {
    fn add(&mut self, other: Self) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
    }

    fn sub(&mut self, other: Self) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
    }

    fn max(self, other: Self) -> Self {
        Self {
            milli_cpu: self.milli_cpu.max(other.milli_cpu),
            memory: self.memory.max(other.memory),
        }
    }
}

/// A host port a pod takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    fn conflicts(&self, other: &Self) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || wildcard(&self.ip) || wildcard(&other.ip))
    }
}

/// What the scheduler needs of a pod.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// What its containers request: the larger of the sum of its
    /// containers and its largest init container, plus overhead.
    pub requests: Amounts,
    /// The same with Kubernetes' defaults for containers that request nothing.
    pub nonzero: Amounts,
    pub host_ports: Vec<HostPort>,
    /// The uid of its controller, for spreading.
    pub owner: Option<String>,
}

fn requests_of(
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
    nonzero: bool,
) -> Amounts {
    let requests = resources.and_then(|r| r.requests.as_ref());
    let get = |name: &str, parse: fn(&str) -> Option<i64>| {
        requests.and_then(|r| r.get(name)).and_then(|q| parse(&q.0))
    };
    let cpu = get("cpu", quantity::milli);
    let memory = get("memory", quantity::value);
    Amounts {
        milli_cpu: cpu.unwrap_or(if nonzero { DEFAULT_MILLI_CPU } else { 0 }),
        memory: memory.unwrap_or(if nonzero { DEFAULT_MEMORY } else { 0 }),
    }
}

fn pod_requests(spec: &PodSpec, nonzero: bool) -> Amounts {
    let mut sum = Amounts::default();
    for container in &spec.containers {
        sum.add(requests_of(container.resources.as_ref(), nonzero));
    }
    let mut init = Amounts::default();
    for container in spec.init_containers.iter().flatten() {
        init = init.max(requests_of(container.resources.as_ref(), nonzero));
    }
    let mut total = sum.max(init);
    if let Some(overhead) = spec.overhead.as_ref() {
        total.add(Amounts {
            milli_cpu: overhead
                .get("cpu")
                .and_then(|q| quantity::milli(&q.0))
                .unwrap_or(0),
            memory: overhead
                .get("memory")
                .and_then(|q| quantity::value(&q.0))
                .unwrap_or(0),
        });
    }
    total
}

impl PodInfo {
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = pod.spec.as_ref() else {
            return Self::default();
        };
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                p.host_port.filter(|port| *port > 0).map(|port| HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ip: p.host_ip.clone().unwrap_or_default(),
                    port,
                })
            })
            .collect();
        Self {
            requests: pod_requests(spec, false),
            nonzero: pod_requests(spec, true),
            host_ports,
            owner: crate::runtime::controller_of(&pod.metadata).map(|r| r.uid.clone()),
        }
    }
}

/// A node, and what the pods on it (or assumed to be on it) take.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub allocatable: Amounts,
    pub max_pods: i64,
    pub requested: Amounts,
    pub nonzero_requested: Amounts,
    pub pods: i64,
    pub host_ports: Vec<HostPort>,
    /// Pods per controller uid.
    pub owners: HashMap<String, i64>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let get = |name: &str, parse: fn(&str) -> Option<i64>| {
            allocatable
                .and_then(|a| a.get(name))
                .and_then(|q| parse(&q.0))
        };
        Self {
            allocatable: Amounts {
                milli_cpu: get("cpu", quantity::milli).unwrap_or(0),
                memory: get("memory", quantity::value).unwrap_or(0),
            },
            max_pods: get("pods", quantity::value).unwrap_or(DEFAULT_MAX_PODS),
            node,
            requested: Amounts::default(),
            nonzero_requested: Amounts::default(),
            pods: 0,
            host_ports: Vec::new(),
            owners: HashMap::new(),
        }
    }

    /// The same pods on a changed node.
    pub fn renew(&self, node: Arc<Node>) -> Self {
        let fresh = Self::new(node);
        Self {
            node: fresh.node,
            allocatable: fresh.allocatable,
            max_pods: fresh.max_pods,
            ..self.clone()
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn add(&mut self, pod: &PodInfo) {
        self.requested.add(pod.requests);
        self.nonzero_requested.add(pod.nonzero);
        self.pods += 1;
        self.host_ports.extend(pod.host_ports.iter().cloned());
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
    }

    pub fn remove(&mut self, pod: &PodInfo) {
        self.requested.sub(pod.requests);
        self.nonzero_requested.sub(pod.nonzero);
        self.pods -= 1;
        for port in &pod.host_ports {
            if let Some(i) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(i);
            }
        }
        if let Some(owner) = &pod.owner
            && let Some(count) = self.owners.get_mut(owner)
        {
            *count -= 1;
            if *count <= 0 {
                self.owners.remove(owner);
            }
        }
    }
}

/// Why a node does not fit a pod, worded as Kubernetes words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfit {
    Unschedulable,
    NodeName,
    Taint { key: String, value: String },
    Affinity,
    Ports,
    Insufficient(&'static str),
    TooManyPods,
    VolumeNodeAffinity,
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unschedulable => f.write_str("node(s) were unschedulable"),
            Self::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Self::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Self::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Self::Ports => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Self::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Self::TooManyPods => f.write_str("Too many pods"),
            Self::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
        }
    }
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if key.is_empty() {
        return toleration.operator.as_deref() == Some("Exists");
    }
    if key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The node's taints, with the one a node that is not Ready has (or will
/// have, once the node controller gets to it).
pub fn taints_of(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let key = match ready {
        Some("True") => None,
        Some("Unknown") => Some("node.kubernetes.io/unreachable"),
        _ => Some("node.kubernetes.io/not-ready"),
    };
    if let Some(key) = key
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(Taint {
            key: key.to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        });
    }
    taints
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name")
                .then_some(node.metadata.name.as_deref())
                .flatten();
            requirement_matches(r, value)
        })
}

/// `nodeSelector` and required node affinity.
fn affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// Why `node` cannot take `pod`; empty when it can.
pub fn filter(pod: &Pod, info: &PodInfo, node: &NodeInfo) -> Vec<Unfit> {
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let n = &node.node;
    let tolerated = |taint: &Taint| tolerations.iter().any(|t| tolerates(t, taint));
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerated(&taint) {
            return vec![Unfit::Unschedulable];
        }
    }
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && name != node.name()
    {
        return vec![Unfit::NodeName];
    }
    if let Some(taint) = taints_of(n)
        .into_iter()
        .find(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(t))
    {
        return vec![Unfit::Taint {
            key: taint.key,
            value: taint.value.unwrap_or_default(),
        }];
    }
    if !affinity_matches(spec, n) {
        return vec![Unfit::Affinity];
    }
    if info
        .host_ports
        .iter()
        .any(|p| node.host_ports.iter().any(|q| p.conflicts(q)))
    {
        return vec![Unfit::Ports];
    }
    let mut unfit = Vec::new();
    if node.pods + 1 > node.max_pods {
        unfit.push(Unfit::TooManyPods);
    }
    if info.requests.milli_cpu > 0
        && node.requested.milli_cpu + info.requests.milli_cpu > node.allocatable.milli_cpu
    {
        unfit.push(Unfit::Insufficient("cpu"));
    }
    if info.requests.memory > 0
        && node.requested.memory + info.requests.memory > node.allocatable.memory
    {
        unfit.push(Unfit::Insufficient("memory"));
    }
    unfit
}

/// How well `node` suits the pod, 0–200: the share of CPU and memory left
/// free after placing it (least allocated), plus how few pods of the same
/// controller the node already has compared with the busiest node.
pub fn score(info: &PodInfo, node: &NodeInfo, most_of_owner: i64) -> i64 {
    let free = |requested: i64, allocatable: i64| {
        if allocatable <= 0 || requested > allocatable {
            0
        } else {
            (allocatable - requested) * 100 / allocatable
        }
    };
    let least_allocated = (free(
        node.nonzero_requested.milli_cpu + info.nonzero.milli_cpu,
        node.allocatable.milli_cpu,
    ) + free(
        node.nonzero_requested.memory + info.nonzero.memory,
        node.allocatable.memory,
    )) / 2;
    let spread = match (&info.owner, most_of_owner) {
        (Some(owner), most) if most > 0 => {
            let here = node.owners.get(owner).copied().unwrap_or(0);
            (most - here) * 100 / most
        }
        _ => 100,
    };
    least_allocated + spread
}

/// How many feasible nodes a search looks for before it scores them:
/// every node in a cluster of up to 100, then a share that shrinks with
/// the cluster's size (50% less one point per 125 nodes, at least 5%, at
/// least 100 nodes), Kubernetes' adaptive `percentageOfNodesToScore`.
pub fn nodes_to_find(all: usize) -> usize {
    const MIN: usize = 100;
    if all < MIN {
        return all;
    }
    let percentage = 50usize.saturating_sub(all / 125).max(5);
    (all * percentage / 100).max(MIN)
}

/// Kubernetes' message for a pod no node fits: `0/3 nodes are available:
/// 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.`
pub fn failure_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, NodeCondition, NodeSpec, NodeStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn node(name: &str, cpu: &str, memory: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo::new(Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [("cpu", cpu), ("memory", memory), ("pods", "3")]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
                        .collect(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }))
    }

    fn pod(cpu: &str, spec: serde_json::Value) -> Pod {
        let mut pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        spec.containers.push(Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some([("cpu".to_owned(), Quantity(cpu.into()))].into()),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        });
        pod
    }

    #[test]
    fn filters_say_why_a_node_does_not_fit() {
        let small = node("a", "500m", "1Gi", &[("disk", "hdd")]);
        let big = node("b", "4", "8Gi", &[("disk", "ssd")]);
        let p = pod(
            "1",
            json!({"containers": [], "nodeSelector": {"disk": "ssd"}}),
        );
        let info = PodInfo::of(&p);
        assert_eq!(filter(&p, &info, &big), vec![]);
        assert_eq!(filter(&p, &info, &small), vec![Unfit::Affinity]);
        let anywhere = pod("1", json!({"containers": []}));
        assert_eq!(
            filter(&anywhere, &PodInfo::of(&anywhere), &small),
            vec![Unfit::Insufficient("cpu")]
        );

        let mut tainted = big.clone();
        let mut n = (*tainted.node).clone();
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("db".into()),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        tainted = tainted.renew(Arc::new(n));
        assert_eq!(
            filter(&anywhere, &info, &tainted),
            vec![Unfit::Taint {
                key: "dedicated".into(),
                value: "db".into()
            }]
        );
        let tolerant = pod(
            "1",
            json!({"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert_eq!(filter(&tolerant, &PodInfo::of(&tolerant), &tainted), vec![]);
    }

    #[test]
    fn a_node_that_is_not_ready_is_tainted_for_scheduling() {
        let mut info = node("a", "4", "8Gi", &[]);
        let mut n = (*info.node).clone();
        if let Some(c) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].status = "Unknown".into();
        }
        info = info.renew(Arc::new(n));
        let p = pod("100m", json!({"containers": []}));
        assert_eq!(
            filter(&p, &PodInfo::of(&p), &info),
            vec![Unfit::Taint {
                key: "node.kubernetes.io/unreachable".into(),
                value: String::new()
            }]
        );
    }

    #[test]
    fn pods_count_and_host_ports_conflict() {
        let mut n = node("a", "4", "8Gi", &[]);
        let mut p = pod("100m", json!({"containers": []}));
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(8080),
            ..ContainerPort::default()
        }]);
        let info = PodInfo::of(&p);
        n.add(&info);
        assert_eq!(filter(&p, &info, &n), vec![Unfit::Ports]);
        n.remove(&info);
        let plain = pod("100m", json!({"containers": []}));
        let plain_info = PodInfo::of(&plain);
        for _ in 0..3 {
            n.add(&plain_info);
        }
        assert_eq!(filter(&plain, &plain_info, &n), vec![Unfit::TooManyPods]);
    }

    #[test]
    fn scores_prefer_free_nodes_and_spread_owners() {
        let mut busy = node("a", "4", "8Gi", &[]);
        let idle = node("b", "4", "8Gi", &[]);
        let mut p = pod("1", json!({"containers": []}));
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                uid: "rs".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        let info = PodInfo::of(&p);
        busy.add(&info);
        assert!(score(&info, &idle, 1) > score(&info, &busy, 1));
    }

    #[test]
    fn large_clusters_search_a_share_of_their_nodes() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(20_000), 1000);
    }

    #[test]
    fn the_failure_message_counts_reasons_in_order() {
        let reasons: BTreeMap<String, usize> = [
            (Unfit::Insufficient("cpu").to_string(), 1),
            (Unfit::Affinity.to_string(), 2),
        ]
        .into();
        assert_eq!(
            failure_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            failure_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
