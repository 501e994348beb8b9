//! The scheduler: assigns each pending pod to a node.
//!
//! ```text
//!  pod informer ──(unbound, ours)──► queue ──► schedule_one: snapshot of nodes ─► filter ─► score ─► assume ─► bind (task)
//!  node informer ─┐                                        │ none fits
//!  pod deleted ───┴── move the unschedulable back ◄────────┴── PodScheduled=False + FailedScheduling event
//! ```
//!
//! The cache counts what each node's pods take, kept current by the pod
//! informer. A pod is *assumed* on its node from the moment it is chosen,
//! so the next decision sees it before the binding comes back through the
//! watch; a failed binding forgets it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Patch};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Action, Event, Informer, Queue, key_of, split_key};

pub mod fit;
pub mod volumes;

use fit::{NodeInfo, PodInfo};

/// The scheduler's name, as pods ask for it in `spec.schedulerName`.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const MAX_BINDING: usize = 64;

/// Why one scheduling attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cannot record that pod {pod} is unschedulable")]
    Status {
        pod: String,
        #[source]
        source: crate::client::ClientError,
    },
}

/// Where each pod is, and what each node carries.
#[derive(Debug, Default)]
struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// The names of the nodes that exist, in the order they came: where a
    /// search starts rotates through it.
    order: Vec<String>,
    /// Where the next search for feasible nodes starts in `order`.
    next_start: usize,
    /// Pod key → its node, what it takes, and whether only assumed.
    placed: HashMap<String, (String, PodInfo, bool)>,
}

impl Cache {
    fn node_entry(&mut self, name: &str) -> &mut NodeInfo {
        self.nodes
            .entry(name.to_owned())
            .or_insert_with(|| NodeInfo::new(Arc::new(Node::default())))
    }

    fn place(&mut self, key: String, node: &str, info: PodInfo, assumed: bool) {
        self.unplace(&key);
        self.node_entry(node).add(&info);
        self.placed.insert(key, (node.to_owned(), info, assumed));
    }

    /// Forgets a pod; whether it was placed.
    fn unplace(&mut self, key: &str) -> bool {
        let Some((node, info, _)) = self.placed.remove(key) else {
            return false;
        };
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.remove(&info);
            if entry.pods == 0 && entry.node.metadata.name.is_none() {
                self.nodes.remove(&node);
            }
        }
        true
    }

    fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let entry = self.node_entry(&name);
        let new = entry.node.metadata.name.is_none();
        *entry = entry.renew(node);
        if new {
            self.order.push(name);
        }
    }

    fn remove_node(&mut self, name: &str) {
        self.order.retain(|n| n != name);
        if let Some(entry) = self.nodes.get_mut(name) {
            if entry.pods == 0 {
                self.nodes.remove(name);
            } else {
                *entry = entry.renew(Arc::new(Node::default()));
            }
        }
    }
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
}

/// Waiting to be scheduled by this scheduler.
fn pending(pod: &Pod) -> bool {
    bound_node(pod).is_none()
        && ours(pod)
        && pod.metadata.deletion_timestamp.is_none()
        && !terminal(pod)
}

/// The scheduler, with its handlers on the shared informers.
#[derive(Clone, Debug)]
pub struct Scheduler {
    client: Client,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    cache: Arc<Mutex<Cache>>,
    queue: Queue<String>,
    /// Pods no node fitted, retried when the cluster changes.
    unschedulable: Arc<Mutex<HashSet<String>>>,
    recorder: Recorder,
    binding: Arc<Semaphore>,
    /// Rotates among equally good nodes.
    ties: Arc<AtomicUsize>,
    /// Claims, volumes and classes, for pods with PersistentVolumeClaims.
    storage: Option<volumes::Storage>,
}

impl Scheduler {
    pub fn new(
        client: Client,
        pods: &Informer<Pod>,
        nodes: &Informer<Node>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let scheduler = Self {
            client,
            pods: pods.clone(),
            nodes: nodes.clone(),
            cache: Arc::new(Mutex::new(Cache::default())),
            queue: Queue::new("scheduler", shutdown),
            unschedulable: Arc::new(Mutex::new(HashSet::new())),
            recorder,
            binding: Arc::new(Semaphore::new(MAX_BINDING)),
            ties: Arc::new(AtomicUsize::new(0)),
            storage: None,
        };
        let s = scheduler.clone();
        pods.on_event(move |event| s.pod_changed(event));
        let s = scheduler.clone();
        nodes.on_event(move |event| s.node_changed(event));
        scheduler
    }

    /// Reads pods' claims from these caches: a pod goes only where its
    /// bound volumes can be, and a claim waiting for its first consumer is
    /// given the chosen node.
    pub fn with_storage(
        mut self,
        claims: &Informer<PersistentVolumeClaim>,
        volumes: &Informer<PersistentVolume>,
        classes: &Informer<StorageClass>,
    ) -> Self {
        self.storage = Some(volumes::Storage {
            claims: claims.clone(),
            volumes: volumes.clone(),
            classes: classes.clone(),
        });
        // A claim made or bound may let a waiting pod in.
        let s = self.clone();
        claims.on_event(move |event| {
            if !matches!(event, Event::Deleted(_)) {
                s.retry_unschedulable();
            }
        });
        let s = self.clone();
        volumes.on_event(move |_| s.retry_unschedulable());
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unschedulable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster changed: pods no node fitted get another chance.
    fn retry_unschedulable(&self) {
        let keys: Vec<String> = self.waiting().drain().collect();
        for key in keys {
            self.queue.add(key);
        }
    }

    fn pod_changed(&self, event: &Event<'_, Pod>) {
        match event {
            Event::Added(pod) | Event::Updated { new: pod, .. } => {
                let key = key_of(&pod.metadata);
                if let Some(node) = bound_node(pod) {
                    if terminal(pod) {
                        if self.cache().unplace(&key) {
                            self.retry_unschedulable();
                        }
                    } else {
                        self.cache()
                            .place(key.clone(), node, PodInfo::of(pod), false);
                    }
                    self.waiting().remove(&key);
                } else if pending(pod) {
                    if !self.waiting().contains(&key) {
                        self.queue.add(key);
                    }
                } else {
                    self.waiting().remove(&key);
                }
            }
            Event::Deleted(pod) => {
                let key = key_of(&pod.metadata);
                self.waiting().remove(&key);
                if self.cache().unplace(&key) {
                    self.retry_unschedulable();
                }
            }
        }
    }

    fn node_changed(&self, event: &Event<'_, Node>) {
        match event {
            Event::Added(node) => self.cache().set_node((*node).clone()),
            Event::Updated { old, new } => {
                self.cache().set_node((*new).clone());
                // Heartbeats change nothing that matters to a pending pod.
                if old.spec == new.spec
                    && old.metadata.labels == new.metadata.labels
                    && old.status.as_ref().map(|s| (&s.allocatable, ready(s)))
                        == new.status.as_ref().map(|s| (&s.allocatable, ready(s)))
                {
                    return;
                }
            }
            Event::Deleted(node) => {
                self.cache()
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
                return;
            }
        }
        self.retry_unschedulable();
    }

    /// Schedules pods until `shutdown`; waits for the caches first.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.pods.wait_synced(&shutdown).await || !self.nodes.wait_synced(&shutdown).await {
            return;
        }
        if let Some(storage) = &self.storage
            && (!storage.claims.wait_synced(&shutdown).await
                || !storage.volumes.wait_synced(&shutdown).await
                || !storage.classes.wait_synced(&shutdown).await)
        {
            return;
        }
        // Pods no node fitted are looked at again now and then even if
        // nothing the scheduler watches changed.
        let flusher = {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(30)) => this.retry_unschedulable(),
                        () = shutdown.cancelled() => return,
                    }
                }
            })
        };
        let this = self.clone();
        crate::runtime::run_workers("scheduler", self.queue.clone(), 1, move |key| {
            let this = this.clone();
            async move { this.schedule_one(&key).await }
        })
        .await;
        drop(flusher.await);
    }

    async fn schedule_one(&self, key: &str) -> Result<Action, ScheduleError> {
        let Some(pod) = self.pods.get(key) else {
            return Ok(Action::Done);
        };
        if !pending(&pod) || self.cache().placed.contains_key(key) {
            return Ok(Action::Done);
        }
        let started = Instant::now();
        let info = PodInfo::of(&pod);
        let needs = match &self.storage {
            Some(storage) => storage.needs(&pod).map_err(|reason| {
                let nodes = self.cache().order.len();
                format!("0/{nodes} nodes are available: {reason}.")
            }),
            None => Ok(volumes::Needs::default()),
        };
        let decision = needs.and_then(|needs| self.decide(&pod, &info, &needs).map(|n| (n, needs)));
        let result = match decision {
            Ok((node, needs)) => {
                self.cache().place(key.to_owned(), &node, info, true);
                self.bind(pod, node, needs.to_select);
                "scheduled"
            }
            Err(message) => {
                self.waiting().insert(key.to_owned());
                self.report_unschedulable(&pod, &message).await?;
                "unschedulable"
            }
        };
        metrics::counter!("scheduler_schedule_attempts_total", "result" => result, "profile" => SCHEDULER_NAME)
            .increment(1);
        metrics::histogram!("scheduler_scheduling_attempt_duration_seconds", "result" => result, "profile" => SCHEDULER_NAME)
            .record(started.elapsed().as_secs_f64());
        Ok(Action::Done)
    }

    /// The best node for `pod`, or the message saying why none fits. In a
    /// large cluster the search stops once enough nodes fit
    /// ([`fit::nodes_to_find`]), starting where the last one stopped, as
    /// Kubernetes' scheduler does.
    fn decide(&self, pod: &Pod, info: &PodInfo, needs: &volumes::Needs) -> Result<String, String> {
        let mut guard = self.cache();
        let cache = &mut *guard;
        let total = cache.order.len();
        let most_of_owner = info.owner.as_ref().map_or(0, |owner| {
            cache
                .nodes
                .values()
                .filter_map(|n| n.owners.get(owner))
                .copied()
                .max()
                .unwrap_or(0)
        });
        let want = fit::nodes_to_find(total);
        let start = if total == 0 {
            0
        } else {
            cache.next_start % total
        };
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut searched = 0;
        for i in 0..total {
            let Some(node) = cache.nodes.get(&cache.order[(start + i) % total]) else {
                continue;
            };
            searched = i + 1;
            let mut unfit = fit::filter(pod, info, node);
            if unfit.is_empty() && !needs.admit(&node.node) {
                unfit.push(fit::Unfit::VolumeNodeAffinity);
            }
            if unfit.is_empty() {
                feasible.push(node);
                if feasible.len() >= want {
                    break;
                }
                continue;
            }
            for reason in unfit {
                *reasons.entry(reason.to_string()).or_default() += 1;
            }
        }
        let mut best: Vec<&NodeInfo> = Vec::new();
        let mut best_score = i64::MIN;
        for node in feasible {
            let score = fit::score(info, node, most_of_owner);
            if score > best_score {
                best_score = score;
                best.clear();
            }
            if score == best_score {
                best.push(node);
            }
        }
        if best.is_empty() {
            return Err(fit::failure_message(total, &reasons));
        }
        best.sort_by(|a, b| a.name().cmp(b.name()));
        let pick = self.ties.fetch_add(1, Ordering::Relaxed) % best.len();
        let chosen = best[pick].name().to_owned();
        cache.next_start = start + searched;
        Ok(chosen)
    }

    fn bind(&self, pod: Arc<Pod>, node: String, claims: Vec<String>) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.binding.clone().acquire_owned().await else {
                return;
            };
            let key = key_of(&pod.metadata);
            let (namespace, name) = split_key(&key);
            let namespace = namespace.unwrap_or("default");
            // Claims waiting for their first consumer learn the node first
            // (the binder provisions there); the pod's agent waits for them
            // to be bound before it starts the pod.
            let mut selected = Ok(());
            for claim in &claims {
                let patch = json!({"metadata": {"annotations": {volumes::SELECTED_NODE: node}}});
                if let Err(error) = this
                    .client
                    .patch::<PersistentVolumeClaim>(
                        Some(namespace),
                        claim,
                        None,
                        Patch::Merge,
                        &patch,
                    )
                    .await
                {
                    selected = Err(error);
                    break;
                }
            }
            let bound = match selected {
                Ok(()) => this.client.bind(namespace, name, &node).await,
                Err(error) => Err(error),
            };
            match bound {
                Ok(()) => {
                    this.recorder.record(
                        pod.as_ref(),
                        EventType::Normal,
                        "Scheduled",
                        format!("Successfully assigned {namespace}/{name} to {node}"),
                    );
                    this.queue.forget(&key);
                }
                Err(error) => {
                    tracing::debug!(pod = %key, %node, %error, "binding failed");
                    let mut cache = this.cache();
                    if cache
                        .placed
                        .get(&key)
                        .is_some_and(|(_, _, assumed)| *assumed)
                    {
                        cache.unplace(&key);
                    }
                    drop(cache);
                    if !error.is_not_found() {
                        this.queue.add_rate_limited(key);
                    }
                }
            }
        });
    }

    async fn report_unschedulable(&self, pod: &Pod, message: &str) -> Result<(), ScheduleError> {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        self.recorder
            .record(pod, EventType::Warning, "FailedScheduling", message);
        if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
            return Ok(());
        }
        let key = key_of(&pod.metadata);
        let (namespace, name) = split_key(&key);
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": crate::object::now(),
        }]}});
        match self
            .client
            .patch::<Pod>(namespace, name, Some("status"), Patch::Strategic, &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(source) => Err(ScheduleError::Status { pod: key, source }),
        }
    }
}

fn ready(status: &k8s_openapi::api::core::v1::NodeStatus) -> Option<String> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}
