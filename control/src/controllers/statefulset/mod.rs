//! The StatefulSet controller: pods with stable names `SET-0 … SET-(N-1)`,
//! stable host names under the set's headless Service, a
//! PersistentVolumeClaim per pod and volume claim template that outlives
//! the pod, created and deleted in order (OrderedReady) or all at once
//! (Parallel), updated highest ordinal first (RollingUpdate, down to the
//! partition) or when deleted (OnDelete), with the template's history kept
//! as ControllerRevisions for `kubectl rollout history/undo`.
//!
//! ```text
//!  set/pod/revision/claim events ─► queue(set key) ─► reconcile:
//!    claim ControllerRevisions and pods (adopt orphans the selector matches, release strays)
//!    the template's revision: the newest (kept), an older one (renumbered: a rollback),
//!                             or a new SET-HASH (revision.rs)
//!    expectations met? ─► plan (pure, plan.rs) ─► claims, pods: create / relabel / delete
//!    status: replicas, ready, available, current/updated, revisions, observedGeneration
//!    prune revisions no pod uses beyond revisionHistoryLimit
//! ```
//!
//! As in Kubernetes, the controller sets no status condition, never
//! deletes a claim itself (the garbage collector does, for claims the
//! retention policy gives an owner), and never creates a pod while a pod
//! of the same name is still being deleted. It differs in two details:
//! `maxUnavailable` is honoured (Kubernetes' `MaxUnavailableStatefulSet`,
//! alpha in 1.32), and a pod's volumes are not rewritten when they stop
//! matching the claim templates (pod volumes cannot change; Kubernetes'
//! attempt fails validation).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::expectations::Expectations;
use super::pods;
use crate::client::{Client, ClientError};
use crate::runtime::events::Recorder;
use crate::runtime::{Action, Event, Informer, Queue, controller_of, key_of, selects, split_key};
use sync::Sync;

pub mod identity;
pub mod plan;
pub mod revision;
mod sync;
mod writes;

/// Why a StatefulSet could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    #[error("StatefulSet {set}: {action}")]
    Api {
        set: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("StatefulSet {set}: {action} {object}")]
    Object {
        set: String,
        action: &'static str,
        object: String,
        #[source]
        source: ClientError,
    },
    #[error("StatefulSet {set}: ControllerRevision {revision} does not apply to it")]
    Revision {
        set: String,
        revision: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("StatefulSet {set}: {collisions} revision name collisions; trying again later")]
    Collisions { set: String, collisions: i32 },
    #[error("StatefulSet {set}: claim {claim} of pod {pod} is being deleted")]
    ClaimDeleting {
        set: String,
        claim: String,
        pod: String,
    },
}

pub(super) type Result<T, E = StatefulSetError> = std::result::Result<T, E>;

/// The controller and its handlers.
#[derive(Clone, Debug)]
pub struct StatefulSetController {
    client: Client,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    revisions: Informer<ControllerRevision>,
    claims: Informer<PersistentVolumeClaim>,
    queue: Queue<String>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

impl StatefulSetController {
    pub fn new(
        client: Client,
        sets: &Informer<StatefulSet>,
        pods: &Informer<Pod>,
        revisions: &Informer<ControllerRevision>,
        claims: &Informer<PersistentVolumeClaim>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            sets: sets.clone(),
            pods: pods.clone(),
            revisions: revisions.clone(),
            claims: claims.clone(),
            queue: Queue::new("statefulset", shutdown),
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
        // A revision deleted or adopted elsewhere, and a claim that goes
        // (a stale one a pod waits for) or changes owners, are looked at.
        let c = controller.clone();
        revisions.on_event(move |event| {
            let (Event::Added(r) | Event::Updated { new: r, .. } | Event::Deleted(r)) = event;
            c.enqueue_for(&r.metadata);
        });
        let c = controller.clone();
        claims.on_event(move |event| {
            let (Event::Added(claim) | Event::Updated { new: claim, .. } | Event::Deleted(claim)) =
                event;
            c.enqueue_for(&claim.metadata);
        });
        controller
    }

    /// The StatefulSet that controls the object, if it is in the cache.
    fn owner_of(&self, meta: &ObjectMeta) -> Option<Arc<StatefulSet>> {
        self.sets.controller_of(meta)
    }

    /// Every StatefulSet whose selector matches these labels.
    fn enqueue_matching(&self, meta: &ObjectMeta) {
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        for set in self.sets.list_in(namespace) {
            if let Some(spec) = set.spec.as_ref()
                && selects(&spec.selector, meta.labels.as_ref())
            {
                self.queue.add(key_of(&set.metadata));
            }
        }
    }

    /// The object's StatefulSet, or those that might adopt it.
    fn enqueue_for(&self, meta: &ObjectMeta) {
        match self.owner_of(meta) {
            Some(set) => self.queue.add(key_of(&set.metadata)),
            None if controller_of(meta).is_none() => self.enqueue_matching(meta),
            None => {}
        }
    }

    fn pod_changed(&self, event: &Event<'_, Pod>) {
        match event {
            Event::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    return self.pod_deleted(pod);
                }
                match self.owner_of(&pod.metadata) {
                    Some(set) => {
                        let key = key_of(&set.metadata);
                        self.expectations.creation_observed(&key);
                        self.queue.add(key);
                    }
                    None if controller_of(&pod.metadata).is_none() => {
                        self.enqueue_matching(&pod.metadata)
                    }
                    None => {}
                }
            }
            Event::Updated { old, new } => {
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    return self.pod_deleted(new);
                }
                let old_owner = self.owner_of(&old.metadata);
                let new_owner = self.owner_of(&new.metadata);
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
                        self.enqueue_matching(&new.metadata);
                    }
                    None => {}
                }
            }
            Event::Deleted(pod) => self.pod_deleted(pod),
        }
    }

    fn pod_deleted(&self, pod: &Pod) {
        if let Some(set) = self.owner_of(&pod.metadata) {
            let key = key_of(&set.metadata);
            self.expectations
                .deletion_observed(&key, &key_of(&pod.metadata));
            self.queue.add(key);
        }
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        for synced in [
            self.sets.wait_synced(&shutdown).await,
            self.pods.wait_synced(&shutdown).await,
            self.revisions.wait_synced(&shutdown).await,
            self.claims.wait_synced(&shutdown).await,
        ] {
            if !synced {
                return;
            }
        }
        let this = self.clone();
        crate::runtime::run_workers("statefulset", self.queue.clone(), workers, move |key| {
            let this = this.clone();
            async move {
                let span = tracing::debug_span!("statefulset", set = %key);
                this.reconcile(&key).instrument(span).await
            }
        })
        .await;
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(set) = self.sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let namespace = split_key(key).0.unwrap_or_default().to_owned();
        Sync::new(self, key, namespace, set).reconcile().await
    }
}
