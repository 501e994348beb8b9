//! The Deployment controller: rolls a Deployment's pod template out through
//! ReplicaSets, one per template, named `NAME-HASH`.
//!
//! ```text
//!  reconcile(deployment)
//!    ├─ claim ReplicaSets (adopt orphans the selector matches, release the rest)
//!    ├─ paused, or only the replica count changed ─► scale (proportionally mid-rollout) + status
//!    ├─ RollingUpdate ─► grow the new ReplicaSet within maxSurge,
//!    │                   shrink the old ones within maxUnavailable
//!    ├─ Recreate      ─► old ones to 0, wait for their pods to go, new one to full size
//!    └─ status: counts, Available and Progressing conditions, old ReplicaSets
//!       beyond revisionHistoryLimit deleted once the rollout is complete
//! ```
//!
//! `kubectl rollout undo` needs nothing here: kubectl copies the old
//! ReplicaSet's template into the Deployment, which is then rolled out as
//! any new template is.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pods::is_active;
use crate::client::{Client, ClientError, DeleteOptions, Patch};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{
    Action, Event, Informer, Queue, controller_of, controller_reference, key_of, selects,
};

pub mod util;

use util::{
    REVISION, TEMPLATE_HASH, calculate_status, complete, condition, has_progress_deadline,
    is_rolling, max_surge, max_unavailable, new_condition, new_rs_replicas, progressing,
    proportion, remove_condition, replicas, revision, rs_available, rs_replicas, same_template,
    set_condition, set_new_rs_annotations, set_replicas_annotations, template_hash, timed_out,
};

/// Why a Deployment could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("Deployment {deployment}: {action}")]
    Api {
        deployment: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
    #[error(
        "Deployment {deployment}: hash collision with ReplicaSet {rs}; retrying with a new hash"
    )]
    Collision { deployment: String, rs: String },
}

type Result<T, E = DeploymentError> = std::result::Result<T, E>;

/// The controller and its handlers.
#[derive(Clone, Debug)]
pub struct DeploymentController {
    client: Client,
    deployments: Informer<Deployment>,
    sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    queue: Queue<String>,
    recorder: Recorder,
}

/// One reconcile's working state: the Deployment as last written.
struct Sync<'a> {
    controller: &'a DeploymentController,
    key: String,
    d: Deployment,
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn by_creation(sets: &mut [ReplicaSet]) {
    sets.sort_by(|a, b| {
        let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| name_of(&a.metadata).cmp(name_of(&b.metadata)))
    });
}

impl DeploymentController {
    pub fn new(
        client: Client,
        deployments: &Informer<Deployment>,
        sets: &Informer<ReplicaSet>,
        pods: &Informer<Pod>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            deployments: deployments.clone(),
            sets: sets.clone(),
            pods: pods.clone(),
            queue: Queue::new("deployment", shutdown),
            recorder,
        };
        let c = controller.clone();
        deployments.on_event(move |event| {
            let d = match event {
                Event::Added(d) | Event::Updated { new: d, .. } | Event::Deleted(d) => d,
            };
            c.queue.add(key_of(&d.metadata));
        });
        let c = controller.clone();
        sets.on_event(move |event| match event {
            Event::Added(rs) | Event::Deleted(rs) => c.enqueue_for(rs),
            Event::Updated { old, new } => {
                if controller_of(&old.metadata) != controller_of(&new.metadata) {
                    c.enqueue_for(old);
                }
                c.enqueue_for(new);
            }
        });
        let c = controller.clone();
        pods.on_event(move |event| {
            // Recreate waits for the old pods to be gone.
            if let Event::Deleted(pod) = event
                && let Some(reference) = controller_of(&pod.metadata)
                && reference.kind == "ReplicaSet"
                && let Some(rs) = c
                    .sets
                    .get_in(pod.metadata.namespace.as_deref(), &reference.name)
            {
                c.enqueue_for(&rs);
            }
        });
        controller
    }

    /// Queues the Deployment that owns `rs`, or those that might adopt it.
    fn enqueue_for(&self, rs: &ReplicaSet) {
        let namespace = rs.metadata.namespace.as_deref().unwrap_or_default();
        match controller_of(&rs.metadata) {
            Some(reference) if reference.kind == "Deployment" => {
                if let Some(d) = self.deployments.get_in(Some(namespace), &reference.name)
                    && d.metadata.uid.as_deref() == Some(reference.uid.as_str())
                {
                    self.queue.add(key_of(&d.metadata));
                }
            }
            Some(_) => {}
            None => {
                for d in self.deployments.list_in(namespace) {
                    if let Some(spec) = d.spec.as_ref()
                        && selects(&spec.selector, rs.metadata.labels.as_ref())
                    {
                        self.queue.add(key_of(&d.metadata));
                    }
                }
            }
        }
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        for synced in [
            self.deployments.wait_synced(&shutdown).await,
            self.sets.wait_synced(&shutdown).await,
            self.pods.wait_synced(&shutdown).await,
        ] {
            if !synced {
                return;
            }
        }
        let this = self.clone();
        crate::runtime::run_workers("deployment", self.queue.clone(), workers, move |key| {
            let this = this.clone();
            async move {
                let Some(d) = this.deployments.get(&key) else {
                    return Ok(Action::Done);
                };
                let mut sync = Sync {
                    controller: &this,
                    key,
                    d: (*d).clone(),
                };
                sync.reconcile().await
            }
        })
        .await;
    }
}

impl Sync<'_> {
    fn failed(&self, action: &'static str) -> impl FnOnce(ClientError) -> DeploymentError {
        let deployment = self.key.clone();
        move |source| DeploymentError::Api {
            deployment,
            action,
            source,
        }
    }

    fn namespace(&self) -> String {
        self.d.metadata.namespace.clone().unwrap_or_default()
    }

    fn selector(&self) -> LabelSelector {
        self.d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }

    async fn reconcile(&mut self) -> Result<Action> {
        let selector = self.selector();
        if selector == LabelSelector::default() {
            self.controller.recorder.record(
                &self.d,
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            return Ok(Action::Done);
        }
        let sets = self.claim().await?;
        if self.d.metadata.deletion_timestamp.is_some() {
            let (new, old) = self.new_and_old(&sets, false).await?;
            self.sync_status(&old, new.as_ref()).await?;
            return Ok(Action::Done);
        }
        self.check_paused().await?;
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        if paused || self.scaling_event(&sets).await? {
            return self.sync(&sets).await;
        }
        if is_rolling(&self.d) {
            self.rollout_rolling(&sets).await
        } else {
            self.rollout_recreate(&sets).await
        }
    }

    /// The ReplicaSets this Deployment controls, adopting and releasing.
    async fn claim(&mut self) -> Result<Vec<ReplicaSet>> {
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let selector = self.selector();
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        let namespace = self.namespace();
        let sets = self.controller.sets.controlled_by(&uid);
        for rs in sets
            .into_iter()
            .chain(self.controller.sets.orphans_in(&namespace))
        {
            let matches = selects(&selector, rs.metadata.labels.as_ref());
            match controller_of(&rs.metadata) {
                Some(reference) if reference.uid == uid => {
                    if matches {
                        owned.push((*rs).clone());
                    } else if !deleting {
                        self.set_owners(&rs, |refs| refs.retain(|r| r.uid != uid))
                            .await
                            .map_err(self.failed("release a ReplicaSet"))?;
                    }
                }
                Some(_) => {}
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let reference = controller_reference(&self.d);
                    match self.set_owners(&rs, |refs| refs.push(reference)).await {
                        Ok(Some(adopted)) => owned.push(adopted),
                        Ok(None) => {}
                        Err(error) => return Err(self.failed("adopt a ReplicaSet")(error)),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    async fn set_owners(
        &self,
        rs: &ReplicaSet,
        change: impl FnOnce(&mut Vec<OwnerReference>),
    ) -> Result<Option<ReplicaSet>, ClientError> {
        let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
        change(&mut refs);
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": rs.metadata.resource_version,
        }});
        match self
            .controller
            .client
            .patch::<ReplicaSet>(
                Some(&self.namespace()),
                name_of(&rs.metadata),
                None,
                Patch::Merge,
                &patch,
            )
            .await
        {
            Ok(rs) => Ok(Some(rs)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn write_status(
        &mut self,
        status: k8s_openapi::api::apps::v1::DeploymentStatus,
    ) -> Result<()> {
        if self.d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = self.d.clone();
        updated.status = Some(status);
        self.d = self
            .controller
            .client
            .replace_status(&updated)
            .await
            .map_err(self.failed("update status"))?;
        Ok(())
    }

    /// Progressing=Unknown while paused, and again when resumed.
    async fn check_paused(&mut self) -> Result<()> {
        if !has_progress_deadline(&self.d) {
            return Ok(());
        }
        let mut status = self.d.status.clone().unwrap_or_default();
        let reason = condition(&status, "Progressing").and_then(|c| c.reason.clone());
        if reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Ok(());
        }
        let paused_shown = reason.as_deref() == Some("DeploymentPaused");
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let now = Utc::now();
        if paused && !paused_shown {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                    now,
                ),
            );
        } else if !paused && paused_shown {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                    now,
                ),
            );
        } else {
            return Ok(());
        }
        self.write_status(status).await
    }

    /// The ReplicaSet of the current template (created if asked and
    /// missing), and the others; revisions synced on both sides.
    async fn new_and_old(
        &mut self,
        sets: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
        let template = self
            .d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut sorted = sets.to_vec();
        by_creation(&mut sorted);
        let found = sorted.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| same_template(t, &template))
        });
        let existing = found.map(|i| sorted.remove(i));
        let old = sorted;
        let next_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        let now = Utc::now();
        if let Some(mut rs) = existing {
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let annotated = set_new_rs_annotations(&self.d, &mut rs, next_revision, true);
            let spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
            if annotated || spec.min_ready_seconds != min_ready {
                spec.min_ready_seconds = min_ready;
                rs = self
                    .controller
                    .client
                    .replace(&rs)
                    .await
                    .map_err(self.failed("update the new ReplicaSet"))?;
                return Ok((Some(rs), old));
            }
            let mut status = self.d.status.clone().unwrap_or_default();
            let mut changed = self
                .set_revision(
                    &rs.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(REVISION).cloned())
                        .unwrap_or_default(),
                )
                .await?;
            if has_progress_deadline(&self.d) && condition(&status, "Progressing").is_none() {
                let message = format!("Found new replica set {:?}", name_of(&rs.metadata));
                set_condition(
                    &mut status,
                    new_condition("Progressing", "True", "FoundNewReplicaSet", message, now),
                );
                changed = true;
            }
            if changed {
                self.write_status(status).await?;
            }
            return Ok((Some(rs), old));
        }
        if !create {
            return Ok((None, old));
        }
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&template, collisions);
        let mut rs_template = template.clone();
        rs_template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let mut selector = self.selector();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{hash}", name_of(&self.d.metadata));
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace()),
                owner_references: Some(vec![controller_reference(&self.d)]),
                labels: rs_template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(rs_template),
            }),
            status: None,
        };
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&rs)).collect();
        let size = new_rs_replicas(&self.d, &all, &rs);
        if let Some(spec) = rs.spec.as_mut() {
            spec.replicas = Some(size);
        }
        set_new_rs_annotations(&self.d, &mut rs, next_revision, false);
        let namespace = self.namespace();
        let created = match self.controller.client.create(Some(&namespace), &rs).await {
            Ok(created) => {
                if size > 0 {
                    self.controller.recorder.record(
                        &self.d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {size}"),
                    );
                }
                let mut status = self.d.status.clone().unwrap_or_default();
                self.set_revision(&next_revision.to_string()).await?;
                if has_progress_deadline(&self.d) {
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetCreated",
                            format!("Created new replica set {name:?}"),
                            now,
                        ),
                    );
                    self.write_status(status).await?;
                }
                created
            }
            Err(error) if error.is_already_exists() => {
                let existing = self
                    .controller
                    .client
                    .get::<ReplicaSet>(Some(&namespace), &name)
                    .await
                    .map_err(self.failed("read the new ReplicaSet"))?;
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| same_template(t, &template));
                if ours && same {
                    existing
                } else {
                    // Someone else's ReplicaSet has our name: pick another hash.
                    let mut status = self.d.status.clone().unwrap_or_default();
                    status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                    self.write_status(status).await?;
                    return Err(DeploymentError::Collision {
                        deployment: self.key.clone(),
                        rs: name,
                    });
                }
            }
            Err(error) => {
                if has_progress_deadline(&self.d) {
                    let mut status = self.d.status.clone().unwrap_or_default();
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "False",
                            "ReplicaSetCreateError",
                            format!("Failed to create new replica set {name:?}: {error}"),
                            now,
                        ),
                    );
                    self.write_status(status).await?;
                }
                self.controller.recorder.record(
                    &self.d,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Failed to create new replica set {name:?}: {error}"),
                );
                return Err(self.failed("create the new ReplicaSet")(error));
            }
        };
        Ok((Some(created), old))
    }

    /// Sets the Deployment's revision annotation; whether it changed (and was written).
    async fn set_revision(&mut self, revision: &str) -> Result<bool> {
        if revision.is_empty()
            || self
                .d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .map(String::as_str)
                == Some(revision)
        {
            return Ok(false);
        }
        let patch = json!({"metadata": {
            "annotations": {REVISION: revision},
            "resourceVersion": self.d.metadata.resource_version,
        }});
        self.d = self
            .controller
            .client
            .patch::<Deployment>(
                Some(&self.namespace()),
                name_of(&self.d.metadata),
                None,
                Patch::Merge,
                &patch,
            )
            .await
            .map_err(self.failed("set the revision"))?;
        Ok(true)
    }

    /// Scales `rs` to `size` (and records the Deployment's size on it);
    /// whether its size changed.
    async fn scale(&self, rs: &mut ReplicaSet, size: i32) -> Result<bool> {
        let from = rs_replicas(rs);
        let mut updated = rs.clone();
        let annotated = set_replicas_annotations(
            &mut updated,
            replicas(&self.d),
            replicas(&self.d) + max_surge(&self.d),
        );
        if from == size && !annotated {
            return Ok(false);
        }
        updated
            .spec
            .get_or_insert_with(ReplicaSetSpec::default)
            .replicas = Some(size);
        *rs = self
            .controller
            .client
            .replace(&updated)
            .await
            .map_err(self.failed("scale a ReplicaSet"))?;
        if from != size {
            let direction = if size > from { "up" } else { "down" };
            self.controller.recorder.record(
                &self.d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {size}",
                    name_of(&rs.metadata)
                ),
            );
        }
        Ok(from != size)
    }

    /// Only the replica count changed since the ReplicaSets were sized.
    async fn scaling_event(&mut self, sets: &[ReplicaSet]) -> Result<bool> {
        let (new, old) = self.new_and_old(sets, false).await?;
        let desired = replicas(&self.d);
        Ok(old
            .iter()
            .chain(new.iter())
            .filter(|rs| rs_replicas(rs) > 0)
            .any(|rs| util::desired_annotation(rs).is_some_and(|a| a != desired)))
    }

    /// Scaling and status, without rolling anything out.
    async fn sync(&mut self, sets: &[ReplicaSet]) -> Result<Action> {
        let (mut new, mut old) = self.new_and_old(sets, false).await?;
        self.scale_all(new.as_mut(), &mut old).await?;
        if self.d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            self.cleanup(&old).await?;
        }
        self.sync_status(&old, new.as_ref()).await?;
        Ok(Action::Done)
    }

    /// Brings the ReplicaSets to the Deployment's size: the one active
    /// ReplicaSet directly, several in proportion to their sizes.
    async fn scale_all(
        &mut self,
        new: Option<&mut ReplicaSet>,
        old: &mut [ReplicaSet],
    ) -> Result<()> {
        let desired = replicas(&self.d);
        let new_active = new.as_ref().is_some_and(|rs| rs_replicas(rs) > 0);
        let old_active = old.iter().filter(|rs| rs_replicas(rs) > 0).count();
        // One active (or none: the newest) takes the whole size.
        if new_active as usize + old_active <= 1 {
            let target: Option<&mut ReplicaSet> = if new_active || old_active == 0 {
                match new {
                    Some(rs) => Some(rs),
                    None => old
                        .iter_mut()
                        .max_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                }
            } else {
                old.iter_mut().find(|rs| rs_replicas(rs) > 0)
            };
            if let Some(rs) = target
                && rs_replicas(rs) != desired
            {
                self.scale(rs, desired).await?;
            }
            return Ok(());
        }
        if let Some(rs) = new.as_ref()
            && rs_replicas(rs) == desired
            && util::desired_annotation(rs) == Some(desired)
            && rs_available(rs) == desired
        {
            for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
                self.scale(rs, 0).await?;
            }
            return Ok(());
        }
        if !is_rolling(&self.d) {
            return Ok(());
        }
        let mut all: Vec<&mut ReplicaSet> =
            old.iter_mut().filter(|rs| rs_replicas(rs) > 0).collect();
        if let Some(rs) = new
            && rs_replicas(rs) > 0
        {
            all.push(rs);
        }
        let current: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
        let allowed = if desired > 0 {
            desired + max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - current;
        let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if to_add > 0 {
            // Larger first, newer first among equals.
            all.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| created(b).cmp(&created(a)))
            });
        } else {
            // Larger first, older first among equals.
            all.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| created(a).cmp(&created(b)))
            });
        }
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
        for rs in &all {
            let share = if to_add != 0 {
                proportion(rs, &self.d, to_add, added)
            } else {
                0
            };
            added += share;
            sizes.push(rs_replicas(rs) + share);
        }
        if added != to_add && !sizes.is_empty() {
            sizes[0] = (sizes[0] + to_add - added).max(0);
        }
        for (rs, size) in all.into_iter().zip(sizes) {
            self.scale(rs, size).await?;
        }
        Ok(())
    }

    async fn rollout_rolling(&mut self, sets: &[ReplicaSet]) -> Result<Action> {
        let (new, mut old) = self.new_and_old(sets, true).await?;
        let Some(mut new) = new else {
            return Ok(Action::Done);
        };
        // Grow the new ReplicaSet.
        let desired = replicas(&self.d);
        let size = rs_replicas(&new);
        let scaled_up = if size == desired {
            false
        } else if size > desired {
            self.scale(&mut new, desired).await?
        } else {
            let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
            let target = new_rs_replicas(&self.d, &all, &new);
            self.scale(&mut new, target).await?
        };
        if scaled_up {
            return self.sync_rollout_status(&old, Some(&new)).await;
        }
        // Shrink the old ones.
        if self.reconcile_old(&mut old, &new).await? {
            return self.sync_rollout_status(&old, Some(&new)).await;
        }
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
        let status = calculate_status(&all, Some(&new), &self.d, Utc::now());
        if complete(&self.d, &status) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(&old, Some(&new)).await
    }

    /// Scales old ReplicaSets down as far as availability allows: first
    /// their pods that are not available, then healthy ones.
    async fn reconcile_old(&mut self, old: &mut [ReplicaSet], new: &ReplicaSet) -> Result<bool> {
        let old_count: i32 = old.iter().map(rs_replicas).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let all_count = old_count + rs_replicas(new);
        let min_available = replicas(&self.d) - max_unavailable(&self.d);
        let new_unavailable = rs_replicas(new) - rs_available(new);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        by_creation(old);
        // Unhealthy replicas first: scaling them away costs no availability.
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let size = rs_replicas(rs);
            if size == 0 || size == rs_available(rs) {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(size - rs_available(rs));
            self.scale(rs, size - down).await?;
            cleaned += down;
        }
        // Then healthy ones, as long as enough stay available.
        let available: i32 = old.iter().map(rs_available).sum::<i32>() + rs_available(new);
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                let size = rs_replicas(rs);
                if size == 0 {
                    continue;
                }
                let down = size.min(total - scaled);
                self.scale(rs, size - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn rollout_recreate(&mut self, sets: &[ReplicaSet]) -> Result<Action> {
        let (new, mut old) = self.new_and_old(sets, false).await?;
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
            scaled_down |= self.scale(rs, 0).await?;
        }
        if scaled_down {
            return self.sync_rollout_status(&old, new.as_ref()).await;
        }
        // Wait until no old pod runs.
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        let old_running = old
            .iter()
            .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
            || old_uids.iter().any(|uid| {
                self.controller
                    .pods
                    .controlled_by(uid)
                    .iter()
                    .any(|p| is_active(p) || p.metadata.deletion_timestamp.is_some())
            });
        if old_running {
            return self.sync_rollout_status(&old, new.as_ref()).await;
        }
        let (new, old) = match new {
            Some(new) => (new, old),
            None => {
                let (new, old) = self.new_and_old(sets, true).await?;
                match new {
                    Some(new) => (new, old),
                    None => return Ok(Action::Done),
                }
            }
        };
        let mut new = new;
        self.scale(&mut new, replicas(&self.d)).await?;
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
        if complete(
            &self.d,
            &calculate_status(&all, Some(&new), &self.d, Utc::now()),
        ) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(&old, Some(&new)).await
    }

    async fn sync_status(&mut self, old: &[ReplicaSet], new: Option<&ReplicaSet>) -> Result<()> {
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let status = calculate_status(&all, new, &self.d, Utc::now());
        self.write_status(status).await
    }

    /// Status with the Progressing condition; a stuck rollout is looked at
    /// again when its deadline passes.
    async fn sync_rollout_status(
        &mut self,
        old: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<Action> {
        let now = Utc::now();
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let mut status = calculate_status(&all, new, &self.d, now);
        if !has_progress_deadline(&self.d) {
            remove_condition(&mut status, "Progressing");
        }
        let current = self
            .d
            .status
            .as_ref()
            .and_then(|s| condition(s, "Progressing"))
            .cloned();
        let done = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        let subject = match new {
            Some(rs) => format!("ReplicaSet {:?}", name_of(&rs.metadata)),
            None => format!("Deployment {:?}", name_of(&self.d.metadata)),
        };
        if has_progress_deadline(&self.d) && !done {
            if complete(&self.d, &status) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        format!("{subject} has successfully progressed."),
                        now,
                    ),
                );
            } else if progressing(&self.d, &status) {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("{subject} is progressing."),
                    now,
                );
                if let Some(current) = &current
                    && current.status == "True"
                {
                    c.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, "Progressing");
                set_condition(&mut status, c);
            } else if timed_out(&self.d, &status, now) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("{subject} has timed out progressing."),
                        now,
                    ),
                );
            }
        }
        let failure = all.iter().find_map(|rs| {
            rs.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .cloned()
        });
        match failure {
            Some(f) => set_condition(
                &mut status,
                new_condition(
                    "ReplicaFailure",
                    &f.status,
                    f.reason.as_deref().unwrap_or_default(),
                    f.message.unwrap_or_default(),
                    now,
                ),
            ),
            None => remove_condition(&mut status, "ReplicaFailure"),
        }
        if self.d.status.as_ref() == Some(&status) {
            return Ok(self.requeue_stuck(&status, now));
        }
        self.write_status(status.clone()).await?;
        Ok(self.requeue_stuck(&status, now))
    }

    /// A rollout under way is looked at again when its deadline passes, so
    /// ProgressDeadlineExceeded shows even if nothing else happens.
    fn requeue_stuck(
        &self,
        status: &k8s_openapi::api::apps::v1::DeploymentStatus,
        now: chrono::DateTime<Utc>,
    ) -> Action {
        let Some(c) = condition(status, "Progressing") else {
            return Action::Done;
        };
        if !has_progress_deadline(&self.d) || c.status != "True" || complete(&self.d, status) {
            return Action::Done;
        }
        let deadline = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        let Some(updated) = c.last_update_time.as_ref() else {
            return Action::Done;
        };
        let after = (updated.0 + chrono::Duration::seconds(deadline.into()) - now)
            .to_std()
            .unwrap_or(Duration::ZERO);
        Action::RequeueAfter(after.max(Duration::from_secs(1)))
    }

    /// Deletes the oldest empty old ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, old: &[ReplicaSet]) -> Result<()> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| {
            (
                revision(rs),
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let namespace = self.namespace();
        for rs in cleanable.into_iter().take(excess as usize) {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if rs.status.as_ref().is_some_and(|s| s.replicas != 0)
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let options = DeleteOptions {
                uid: rs.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            match self
                .controller
                .client
                .delete::<ReplicaSet>(Some(&namespace), name_of(&rs.metadata), &options)
                .await
            {
                Ok(()) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(self.failed("delete an old ReplicaSet")(error)),
            }
        }
        Ok(())
    }
}
