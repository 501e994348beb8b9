//! One reconcile of one StatefulSet: its revisions and pods claimed, the
//! revision of its template found or made, the plan carried out
//! ([`super::writes`]), its status written and its history pruned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::revision::{self, Found};
use super::{Result, StatefulSetController, StatefulSetError, identity, name_of, plan};
use crate::client::{Client, ClientError, DeleteOptions, Patch};
use crate::runtime::{Action, controller_of, controller_reference, selects};

/// Name collisions tried in a row before a new revision is given up on
/// (until the next reconcile, which goes on from the count reached).
const MAX_COLLISIONS: i32 = 16;

/// The revisions of a set and the two that matter.
#[derive(Debug)]
pub(super) struct History {
    /// Oldest first.
    revisions: Vec<ControllerRevision>,
    /// What pods below the partition (all, when no update is under way) are made from.
    pub(super) current: ControllerRevision,
    /// What the set's template is now.
    pub(super) update: ControllerRevision,
    collisions: i32,
}

/// What the writes of one reconcile work from.
pub(super) struct Snapshot<'a> {
    pub(super) pods: &'a [Arc<Pod>],
    pub(super) claims: &'a HashMap<String, Arc<PersistentVolumeClaim>>,
    pub(super) history: &'a History,
    pub(super) current_template: &'a PodTemplateSpec,
    pub(super) update_template: &'a PodTemplateSpec,
}

/// One reconcile of one set.
pub(super) struct Sync<'a> {
    pub(super) controller: &'a StatefulSetController,
    pub(super) key: String,
    pub(super) namespace: String,
    pub(super) set: Arc<StatefulSet>,
    /// Whether orphans may be adopted, once asked.
    can_adopt: Option<bool>,
}

impl<'a> Sync<'a> {
    pub(super) fn new(
        controller: &'a StatefulSetController,
        key: &str,
        namespace: String,
        set: Arc<StatefulSet>,
    ) -> Self {
        Self {
            controller,
            key: key.to_owned(),
            namespace,
            set,
            can_adopt: None,
        }
    }

    fn failed(&self, action: &'static str) -> impl FnOnce(ClientError) -> StatefulSetError {
        let set = self.key.clone();
        move |source| StatefulSetError::Api {
            set,
            action,
            source,
        }
    }

    pub(super) fn failed_on(
        &self,
        action: &'static str,
        object: &str,
    ) -> impl FnOnce(ClientError) -> StatefulSetError {
        let (set, object) = (self.key.clone(), object.to_owned());
        move |source| StatefulSetError::Object {
            set,
            action,
            object,
            source,
        }
    }

    pub(super) fn client(&self) -> &Client {
        &self.controller.client
    }

    pub(super) fn set_name(&self) -> &str {
        name_of(&self.set.metadata)
    }

    pub(super) async fn reconcile(&mut self) -> Result<Action> {
        let deleting = self.set.metadata.deletion_timestamp.is_some();
        let revisions = self.claim_revisions().await?;
        let pods = self.claim_pods().await?;
        let history = self.history(revisions).await?;
        let template_of = |revision: &ControllerRevision| {
            revision::template_of(&self.set, revision).map_err(|source| {
                StatefulSetError::Revision {
                    set: self.key.clone(),
                    revision: name_of(&revision.metadata).to_owned(),
                    source,
                }
            })
        };
        let current_template = template_of(&history.current)?;
        let update_template = template_of(&history.update)?;
        let claims: HashMap<String, Arc<PersistentVolumeClaim>> = self
            .controller
            .claims
            .list_in(&self.namespace)
            .into_iter()
            .map(|c| (name_of(&c.metadata).to_owned(), c))
            .collect();
        let input = plan::Input {
            set: &self.set,
            pods: &pods,
            claims: &claims,
            current_revision: name_of(&history.current.metadata),
            update_revision: name_of(&history.update.metadata),
            now: Utc::now(),
        };
        let plan = plan::plan(&input);
        tracing::debug!(steps = plan.steps.len(), wait = ?plan.wait, "planned");
        let mut failure = None;
        let mut updates = 0;
        if !deleting && self.controller.expectations.satisfied(&self.key) {
            let snapshot = Snapshot {
                pods: &pods,
                claims: &claims,
                history: &history,
                current_template: &current_template,
                update_template: &update_template,
            };
            match self.execute(&plan.steps, &snapshot).await {
                Ok(()) => updates = plan.updates(),
                Err(error) => failure = Some(error),
            }
        }
        let status = plan::status(&input, updates, history.collisions);
        if !self.write_status(&status).await? {
            return Ok(Action::Done);
        }
        let pruned = self.prune(&history, &pods).await;
        if let Some(error) = failure {
            return Err(error);
        }
        pruned?;
        let min_ready = self
            .set
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        if min_ready > 0 && status.available_replicas != Some(identity::replicas(&self.set)) {
            return Ok(Action::RequeueAfter(Duration::from_secs(min_ready as u64)));
        }
        Ok(Action::Done)
    }

    /// Whether orphans may be adopted: the set, read afresh, is the one
    /// cached and is not being deleted (so an orphan is never given to a
    /// set that is gone or going).
    async fn can_adopt(&mut self) -> Result<bool> {
        if let Some(answer) = self.can_adopt {
            return Ok(answer);
        }
        let fresh = match self
            .client()
            .get::<StatefulSet>(Some(&self.namespace), self.set_name())
            .await
        {
            Ok(fresh) => Some(fresh),
            Err(error) if error.is_not_found() => None,
            Err(error) => return Err(self.failed("read the set before adopting")(error)),
        };
        let answer = fresh.is_some_and(|f| {
            f.metadata.uid == self.set.metadata.uid && f.metadata.deletion_timestamp.is_none()
        });
        self.can_adopt = Some(answer);
        Ok(answer)
    }

    /// Rewrites an object's owner references, if it has not changed since
    /// read; `None` if it is gone.
    pub(super) async fn set_owners<K>(
        &self,
        object: &K,
        change: impl FnOnce(&mut Vec<OwnerReference>),
    ) -> Result<Option<K>, ClientError>
    where
        K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned,
    {
        let meta = object.metadata();
        let mut refs = meta.owner_references.clone().unwrap_or_default();
        change(&mut refs);
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": meta.resource_version,
        }});
        match self
            .client()
            .patch::<K>(
                meta.namespace.as_deref(),
                name_of(meta),
                None,
                Patch::Merge,
                &patch,
            )
            .await
        {
            Ok(object) => Ok(Some(object)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn selector(&self) -> LabelSelector {
        self.set
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }

    /// The set's revisions: those it controls that its selector matches,
    /// and the orphans it matches, adopted if it may (as Kubernetes lists
    /// them: while an orphaning delete is under way the set's revisions
    /// lose their owner before the set is gone, and must still be found).
    async fn claim_revisions(&mut self) -> Result<Vec<ControllerRevision>> {
        let uid = self.set.metadata.uid.clone().unwrap_or_default();
        let selector = self.selector();
        let deleting = self.set.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for revision in self.controller.revisions.list_in(&self.namespace) {
            if !selects(&selector, revision.metadata.labels.as_ref()) {
                continue;
            }
            match controller_of(&revision.metadata) {
                Some(reference) if reference.uid == uid => owned.push((*revision).clone()),
                Some(_) => {}
                None if !deleting
                    && revision.metadata.deletion_timestamp.is_none()
                    && self.can_adopt().await? =>
                {
                    let reference = controller_reference(self.set.as_ref());
                    let name = name_of(&revision.metadata).to_owned();
                    match self
                        .set_owners(revision.as_ref(), |refs| refs.push(reference))
                        .await
                    {
                        Ok(Some(adopted)) => owned.push(adopted),
                        Ok(None) => {}
                        Err(error) => return Err(self.failed_on("adopt revision", &name)(error)),
                    }
                }
                None => owned.push((*revision).clone()),
            }
        }
        Ok(owned)
    }

    /// The set's pods, terminating and finished ones included: those it
    /// controls that its selector matches and whose name makes them its
    /// own, and orphans it adopts. Controlled pods that no longer match are
    /// released.
    async fn claim_pods(&mut self) -> Result<Vec<Arc<Pod>>> {
        let uid = self.set.metadata.uid.clone().unwrap_or_default();
        let selector = self.selector();
        let deleting = self.set.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for pod in self.controller.pods.list_in(&self.namespace) {
            let matches = selects(&selector, pod.metadata.labels.as_ref())
                && identity::is_member(&self.set, &pod);
            let name = name_of(&pod.metadata).to_owned();
            match controller_of(&pod.metadata) {
                Some(reference) if reference.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        self.set_owners(pod.as_ref(), |refs| refs.retain(|r| r.uid != uid))
                            .await
                            .map_err(self.failed_on("release pod", &name))?;
                    }
                }
                Some(_) => {}
                None if matches
                    && !deleting
                    && pod.metadata.deletion_timestamp.is_none()
                    && self.can_adopt().await? =>
                {
                    let reference = controller_reference(self.set.as_ref());
                    match self
                        .set_owners(pod.as_ref(), |refs| refs.push(reference))
                        .await
                    {
                        Ok(Some(adopted)) => owned.push(Arc::new(adopted)),
                        Ok(None) => {}
                        Err(error) => return Err(self.failed_on("adopt pod", &name)(error)),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// The set's history with the revision of its template in it: the
    /// newest if equal, an older equal one renumbered as the newest (a
    /// rollback), or a new one. A set being deleted writes no revision: it
    /// only reports, and what it would make is left for no one to collect.
    async fn history(&self, mut revisions: Vec<ControllerRevision>) -> Result<History> {
        let deleting = self.set.metadata.deletion_timestamp.is_some();
        revision::sort(&mut revisions);
        let template = self
            .set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let data = revision::data_of(&template);
        let mut collisions = self
            .set
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let next = revision::next_number(&revisions);
        let update = match revision::find(&revisions, &data) {
            Found::Latest(i) => revisions[i].clone(),
            Found::Earlier(i) if deleting => revisions[i].clone(),
            Found::New if deleting => {
                revision::new_revision(&self.set, data.clone(), next, collisions)
            }
            Found::Earlier(i) => {
                let old = &revisions[i];
                let name = name_of(&old.metadata).to_owned();
                let patch = json!({
                    "revision": next,
                    "metadata": {"resourceVersion": old.metadata.resource_version},
                });
                let renumbered = self
                    .client()
                    .patch::<ControllerRevision>(
                        Some(&self.namespace),
                        &name,
                        None,
                        Patch::Merge,
                        &patch,
                    )
                    .await
                    .map_err(self.failed_on("renumber revision", &name))?;
                tracing::info!(revision = %name, number = next, "rolled back to an earlier revision");
                revisions[i] = renumbered.clone();
                renumbered
            }
            Found::New => {
                let created = self.create_revision(&data, next, &mut collisions).await?;
                revisions.push(created.clone());
                created
            }
        };
        revision::sort(&mut revisions);
        let current_name = self
            .set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref());
        let current = revisions
            .iter()
            .find(|r| r.metadata.name.as_deref() == current_name && current_name.is_some())
            .cloned()
            .unwrap_or_else(|| update.clone());
        Ok(History {
            revisions,
            current,
            update,
            collisions,
        })
    }

    /// Creates revision `number` holding `data`, trying the next hash when
    /// the name is taken by something else.
    async fn create_revision(
        &self,
        data: &serde_json::Value,
        number: i64,
        collisions: &mut i32,
    ) -> Result<ControllerRevision> {
        let first = *collisions;
        while *collisions - first < MAX_COLLISIONS {
            let candidate = revision::new_revision(&self.set, data.clone(), number, *collisions);
            let name = name_of(&candidate.metadata).to_owned();
            match self
                .client()
                .create(Some(&self.namespace), &candidate)
                .await
            {
                Ok(created) => {
                    tracing::info!(revision = %name, number, "created a revision");
                    return Ok(created);
                }
                Err(error) if error.is_already_exists() => {
                    let existing = self
                        .client()
                        .get::<ControllerRevision>(Some(&self.namespace), &name)
                        .await
                        .map_err(self.failed_on("read revision", &name))?;
                    // Ours already (a cache that lags), or an orphan of
                    // ours to adopt on the next pass: use it.
                    let ours_or_free = controller_of(&existing.metadata)
                        .is_none_or(|r| Some(&r.uid) == self.set.metadata.uid.as_ref());
                    if ours_or_free && revision::same_data(&existing, data) {
                        return Ok(existing);
                    }
                    *collisions += 1;
                }
                Err(error) => return Err(self.failed_on("create revision", &name)(error)),
            }
        }
        Err(StatefulSetError::Collisions {
            set: self.key.clone(),
            collisions: *collisions,
        })
    }

    /// Writes `status` if it changed; `false` if the set is gone.
    async fn write_status(&self, status: &StatefulSetStatus) -> Result<bool> {
        if self.set.status.as_ref() == Some(status) {
            return Ok(true);
        }
        let mut updated = (*self.set).clone();
        updated.status = Some(status.clone());
        match self.client().replace_status(&updated).await {
            Ok(_) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(self.failed("update status")(error)),
        }
    }

    /// Deletes the oldest revisions beyond `revisionHistoryLimit` that are
    /// neither current, nor the update, nor any pod's (only the set's own,
    /// and none while it is being deleted).
    async fn prune(&self, history: &History, pods: &[Arc<Pod>]) -> Result<()> {
        if self.set.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let limit = self
            .set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let mut live: HashSet<&str> = [
            name_of(&history.current.metadata),
            name_of(&history.update.metadata),
        ]
        .into();
        live.extend(pods.iter().filter_map(|p| identity::revision_of(p)));
        let ours: Vec<ControllerRevision> = history
            .revisions
            .iter()
            .filter(|r| {
                controller_of(&r.metadata)
                    .is_some_and(|c| Some(&c.uid) == self.set.metadata.uid.as_ref())
            })
            .cloned()
            .collect();
        for revision in revision::to_prune(&ours, &live, limit) {
            let name = name_of(&revision.metadata);
            let options = DeleteOptions {
                uid: revision.metadata.uid.clone(),
                ..DeleteOptions::default()
            };
            match self
                .client()
                .delete::<ControllerRevision>(Some(&self.namespace), name, &options)
                .await
            {
                Ok(()) => tracing::debug!(revision = %name, "pruned a revision"),
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(self.failed_on("prune revision", name)(error)),
            }
        }
        Ok(())
    }
}
