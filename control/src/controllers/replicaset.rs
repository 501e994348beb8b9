//! The ReplicaSet controller: keeps `spec.replicas` pods of a ReplicaSet's
//! template alive.
//!
//! ```text
//!  pod/rs events ─► queue(rs key) ─► reconcile: claim pods (adopt orphans, release strays)
//!                                       ├─ expectations met? ─► create or delete the difference
//!                                       └─ status (replicas, ready, available, observedGeneration)
//! ```
//!
//! Creations go in slow-start batches (1, 2, 4, …) so a template that
//! cannot be created fails once, not five hundred times; deletions take
//! the least useful pods first ([`super::pods::deletion_order`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::expectations::Expectations;
use super::pods::{self, deletion_order, from_template, is_active};
use crate::client::{Client, ClientError, DeleteOptions};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{
    Action, Event, Informer, Queue, controller_of, controller_reference, key_of, selects, split_key,
};

/// At most this many pods are created or deleted per reconcile.
const BURST: usize = 500;

/// Why a ReplicaSet could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    #[error("ReplicaSet {rs}: {action}")]
    Api {
        rs: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

/// The controller and its handlers.
#[derive(Clone, Debug)]
pub struct ReplicaSetController {
    client: Client,
    sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    queue: Queue<String>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

impl ReplicaSetController {
    pub fn new(
        client: Client,
        sets: &Informer<ReplicaSet>,
        pods: &Informer<Pod>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            sets: sets.clone(),
            pods: pods.clone(),
            queue: Queue::new("replicaset", shutdown),
            expectations: Arc::default(),
            recorder,
        };
        let c = controller.clone();
        sets.on_event(move |event| {
            let set = match event {
                Event::Added(set) | Event::Updated { new: set, .. } => set,
                Event::Deleted(set) => {
                    c.expectations.forget(&key_of(&set.metadata));
                    set
                }
            };
            c.queue.add(key_of(&set.metadata));
        });
        let c = controller.clone();
        pods.on_event(move |event| c.pod_changed(event));
        controller
    }

    /// The ReplicaSet that controls `pod`, if it is in the cache.
    fn owner_of(&self, pod: &Pod) -> Option<Arc<ReplicaSet>> {
        self.sets.controller_of(&pod.metadata)
    }

    /// Every ReplicaSet whose selector matches an orphan pod: one may adopt it.
    fn enqueue_matching(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        for set in self.sets.list_in(namespace) {
            if let Some(spec) = set.spec.as_ref()
                && selects(&spec.selector, pod.metadata.labels.as_ref())
            {
                self.queue.add(key_of(&set.metadata));
            }
        }
    }

    fn pod_changed(&self, event: &Event<'_, Pod>) {
        match event {
            Event::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    return self.pod_deleted(pod);
                }
                match self.owner_of(pod) {
                    Some(set) => {
                        let key = key_of(&set.metadata);
                        self.expectations.creation_observed(&key);
                        self.queue.add(key);
                    }
                    None if controller_of(&pod.metadata).is_none() => self.enqueue_matching(pod),
                    None => {}
                }
            }
            Event::Updated { old, new } => {
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    return self.pod_deleted(new);
                }
                let old_owner = self.owner_of(old);
                let new_owner = self.owner_of(new);
                if let Some(set) = &old_owner
                    && new_owner.as_ref().map(|s| &s.metadata.uid) != Some(&set.metadata.uid)
                {
                    self.queue.add(key_of(&set.metadata));
                }
                match new_owner {
                    Some(set) => {
                        let key = key_of(&set.metadata);
                        // A pod that just became ready becomes available
                        // minReadySeconds later: look again then.
                        let min_ready = set
                            .spec
                            .as_ref()
                            .and_then(|s| s.min_ready_seconds)
                            .unwrap_or(0);
                        if min_ready > 0 && !pods::is_ready(old) && pods::is_ready(new) {
                            self.queue.add_after(
                                key.clone(),
                                Duration::from_secs(min_ready as u64) + Duration::from_millis(100),
                            );
                        }
                        self.queue.add(key);
                    }
                    None if controller_of(&new.metadata).is_none()
                        && (old.metadata.labels != new.metadata.labels
                            || controller_of(&old.metadata).is_some()) =>
                    {
                        self.enqueue_matching(new);
                    }
                    None => {}
                }
            }
            Event::Deleted(pod) => self.pod_deleted(pod),
        }
    }

    fn pod_deleted(&self, pod: &Pod) {
        if let Some(set) = self.owner_of(pod) {
            let key = key_of(&set.metadata);
            self.expectations
                .deletion_observed(&key, &key_of(&pod.metadata));
            self.queue.add(key);
        }
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        if !self.sets.wait_synced(&shutdown).await || !self.pods.wait_synced(&shutdown).await {
            return;
        }
        let this = self.clone();
        crate::runtime::run_workers("replicaset", self.queue.clone(), workers, move |key| {
            let this = this.clone();
            async move { this.reconcile(&key).await }
        })
        .await;
    }

    fn failed(rs: &str, action: &'static str) -> impl FnOnce(ClientError) -> ReplicaSetError {
        let rs = rs.to_owned();
        move |source| ReplicaSetError::Api { rs, action, source }
    }

    async fn reconcile(&self, key: &str) -> Result<Action, ReplicaSetError> {
        let Some(set) = self.sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let (namespace, _) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let needs_sync = self.expectations.satisfied(key);
        // Its own pods and the orphans it may adopt, from the informer's
        // indexes: not every pod of the namespace.
        let uid = set.metadata.uid.as_deref().unwrap_or_default();
        let candidates: Vec<Arc<Pod>> = self
            .pods
            .controlled_by(uid)
            .into_iter()
            .chain(self.pods.orphans_in(namespace))
            .filter(|p| is_active(p))
            .collect();
        let owned = self.claim(&set, candidates).await?;
        let mut failure = None;
        if needs_sync && set.metadata.deletion_timestamp.is_none() {
            failure = self.manage(key, &set, owned.clone()).await.err();
        }
        let status = status_of(&set, &owned, failure.as_ref().map(|f| f.1.as_str()));
        if set.status.as_ref() != Some(&status) {
            let mut updated = (*set).clone();
            updated.status = Some(status.clone());
            match self.client.replace_status(&updated).await {
                Ok(_) => {}
                Err(error) if error.is_not_found() => return Ok(Action::Done),
                Err(error) => return Err(Self::failed(key, "status")(error)),
            }
        }
        if let Some((error, _)) = failure {
            return Err(error);
        }
        let spec = set.spec.as_ref();
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
        let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
        if min_ready > 0
            && status.ready_replicas.unwrap_or(0) == replicas
            && status.available_replicas.unwrap_or(0) != replicas
        {
            return Ok(Action::RequeueAfter(Duration::from_secs(min_ready as u64)));
        }
        Ok(Action::Done)
    }

    /// The active pods `set` controls: those it already owns and its
    /// selector still matches, and orphans it adopts. Owned pods its
    /// selector no longer matches are released.
    async fn claim(
        &self,
        set: &Arc<ReplicaSet>,
        candidates: Vec<Arc<Pod>>,
    ) -> Result<Vec<Arc<Pod>>, ReplicaSetError> {
        let key = key_of(&set.metadata);
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let selector = set
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let deleting = set.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for pod in candidates {
            let matches = selects(&selector, pod.metadata.labels.as_ref());
            match controller_of(&pod.metadata) {
                Some(reference) if reference.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        self.set_owners(&pod, |refs| refs.retain(|r| r.uid != uid))
                            .await
                            .map_err(Self::failed(&key, "release a pod"))?;
                    }
                }
                Some(_) => {}
                None if matches && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                    let reference = controller_reference(set.as_ref());
                    match self.set_owners(&pod, |refs| refs.push(reference)).await {
                        Ok(Some(adopted)) => owned.push(Arc::new(adopted)),
                        Ok(None) => {}
                        Err(error) => return Err(Self::failed(&key, "adopt a pod")(error)),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Rewrites a pod's owner references, if it has not changed since read.
    async fn set_owners(
        &self,
        pod: &Pod,
        change: impl FnOnce(&mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>),
    ) -> Result<Option<Pod>, ClientError> {
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        change(&mut refs);
        pods::patch_metadata(&self.client, pod, json!({"ownerReferences": refs})).await
    }

    /// Creates or deletes pods to reach `spec.replicas`. On failure, the
    /// error and the reason for the ReplicaFailure condition.
    async fn manage(
        &self,
        key: &str,
        set: &Arc<ReplicaSet>,
        mut owned: Vec<Arc<Pod>>,
    ) -> Result<(), (ReplicaSetError, String)> {
        let spec = set.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        let namespace = set.metadata.namespace.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        if owned.len() < replicas {
            let missing = (replicas - owned.len()).min(BURST);
            self.expectations.expect_creations(key, missing);
            let template = spec.template.clone().unwrap_or_default();
            let reference = controller_reference(set.as_ref());
            let pods = (0..missing)
                .map(|_| from_template(&template, &name, reference.clone()))
                .collect();
            let creator = pods::Creator {
                client: &self.client,
                recorder: &self.recorder,
                expectations: &self.expectations,
                key,
            };
            let (_, failed) =
                pods::create_in_batches(creator, set.as_ref(), &namespace, pods).await;
            if let Some(error) = failed {
                return Err((
                    Self::failed(key, "create pods")(error),
                    "FailedCreate".into(),
                ));
            }
        } else if owned.len() > replicas {
            let excess = (owned.len() - replicas).min(BURST);
            deletion_order(&mut owned, Utc::now());
            let doomed: Vec<Arc<Pod>> = owned.into_iter().take(excess).collect();
            self.expectations
                .expect_deletions(key, doomed.iter().map(|p| key_of(&p.metadata)));
            let deletions = doomed.iter().map(|pod| {
                let client = self.client.clone();
                let namespace = namespace.clone();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let uid = pod.metadata.uid.clone();
                async move {
                    let options = DeleteOptions {
                        uid,
                        ..DeleteOptions::default()
                    };
                    (
                        name.clone(),
                        client
                            .delete::<Pod>(Some(&namespace), &name, &options)
                            .await,
                    )
                }
            });
            let mut failed = None;
            for (pod, outcome) in join_all(deletions).await {
                match outcome {
                    Ok(()) => self.recorder.record(
                        set.as_ref(),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {pod}"),
                    ),
                    Err(error) if error.is_not_found() => {}
                    Err(error) => {
                        self.expectations
                            .deletion_observed(key, &format!("{namespace}/{pod}"));
                        self.recorder.record(
                            set.as_ref(),
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {error}"),
                        );
                        failed = Some(error);
                    }
                }
            }
            if let Some(error) = failed {
                return Err((
                    Self::failed(key, "delete pods")(error),
                    "FailedDelete".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The status `set` should show with `owned` pods.
fn status_of(set: &ReplicaSet, owned: &[Arc<Pod>], failure: Option<&str>) -> ReplicaSetStatus {
    let spec = set.spec.clone().unwrap_or_default();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let now = Utc::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| owned.iter().filter(|p| f(p)).count() as i32;
    let fully_labeled = count(&|p| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let mut conditions: Vec<ReplicaSetCondition> = set
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    match failure {
        Some(reason) => {
            if !conditions.iter().any(|c| c.type_ == "ReplicaFailure") {
                conditions.push(ReplicaSetCondition {
                    type_: "ReplicaFailure".into(),
                    status: "True".into(),
                    reason: Some(reason.to_owned()),
                    message: Some(format!("{reason} pods for ReplicaSet")),
                    last_transition_time: Some(Time(now)),
                });
            }
        }
        None => conditions.retain(|c| c.type_ != "ReplicaFailure"),
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    ReplicaSetStatus {
        replicas: owned.len() as i32,
        fully_labeled_replicas: nonzero(fully_labeled),
        ready_replicas: nonzero(count(&|p| pods::is_ready(p))),
        available_replicas: nonzero(count(&|p| pods::is_available(p, min_ready, now))),
        observed_generation: set.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
    }
}
