//! The PersistentVolume controller: binds claims to volumes, provisions
//! local-path volumes on the node a claim's first pod was scheduled to, and
//! releases or deletes volumes whose claims are gone.
//!
//! ```text
//!  claim, no class ───────────► the default StorageClass written in (as 1.28+ does retroactively)
//!  claim Pending ─► WaitForFirstConsumer and no selected node? ─► wait (event WaitForFirstConsumer)
//!                ─► an Available volume fits? (class, modes, size, node) ─► bind: volume.claimRef,
//!                                                                           claim.volumeName, both Bound
//!                ─► class provisioner keelson.io/local-path ─► PV pvc-UID: hostPath under the
//!                   node's local-path directory, node affinity to it, claimRef to the claim ─► bind
//!  volume, claim gone ─► Retain: Released │ Delete: volume deleted (the node's agent removes the
//!                                            directory, then its finalizer)
//! ```
//!
//! The smallest fitting volume wins, as Kubernetes' binder picks it. Every
//! write is a compare-and-set on the cached resourceVersion: a conflict is
//! retried with fresh caches, so two binds of one volume cannot both land.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, DeleteOptions, Patch};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Action, Event, Informer, Queue, key_of, split_key};

/// A StorageClass annotation: claims without a class get this one.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// A claim annotation the scheduler writes: the node its first pod went to.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner of Keelson's built-in local-path StorageClass.
pub const LOCAL_PATH: &str = "keelson.io/local-path";
/// A Node annotation each agent writes: where its local-path volumes live.
pub const LOCAL_PATH_DIR: &str = "keelson.io/local-path-dir";
/// On provisioned volumes: the node's agent removes their directory, then
/// this, once the volume is deleted.
pub const CLEANUP_FINALIZER: &str = "keelson.io/local-path-cleanup";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{object}: {action}")]
    Api {
        object: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

fn failed(object: &str, action: &'static str) -> impl FnOnce(ClientError) -> VolumeError {
    let object = object.to_owned();
    move |source| VolumeError::Api {
        object,
        action,
        source,
    }
}

/// A write's outcome when the object may have changed meanwhile: a conflict
/// or a missing object is looked at again, not an error.
fn settled<T>(result: Result<T, ClientError>) -> Result<bool, ClientError> {
    match result {
        Ok(_) => Ok(true),
        Err(error) if error.is_conflict() || error.is_not_found() => Ok(false),
        Err(error) => Err(error),
    }
}

/// Bytes of a `storage` quantity (0 when absent or unreadable).
fn bytes(resources: Option<&BTreeMap<String, Quantity>>) -> i64 {
    resources
        .and_then(|r| r.get("storage"))
        .and_then(|q| crate::quantity::value(&q.0))
        .unwrap_or(0)
}

fn class_of_claim(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
}

fn requested(claim: &PersistentVolumeClaim) -> i64 {
    bytes(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

fn modes(modes: Option<&Vec<String>>) -> Vec<&str> {
    modes.into_iter().flatten().map(String::as_str).collect()
}

/// Whether `volume`'s node affinity admits `node` (no affinity admits all).
pub fn admits(spec: &PersistentVolumeSpec, node: &Node) -> bool {
    let Some(required) = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    required.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        !expressions.is_empty()
            && expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                let values = r.values.as_deref().unwrap_or_default();
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    })
}

/// The volume a claim is bound to or that fits it best: the smallest
/// Available one of the claim's class with its access modes, volume mode
/// and size, admitting `node` when the claim waits for its consumer.
pub fn best_fit<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [std::sync::Arc<PersistentVolume>],
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let class = spec.storage_class_name.as_deref().unwrap_or_default();
    let want_modes = modes(spec.access_modes.as_ref());
    let want_mode = spec.volume_mode.as_deref().unwrap_or("Filesystem");
    let size = requested(claim);
    volumes
        .iter()
        .map(|v| v.as_ref())
        .filter(|v| v.metadata.deletion_timestamp.is_none())
        .filter(|v| {
            let Some(vs) = v.spec.as_ref() else {
                return false;
            };
            let free = match &vs.claim_ref {
                None => true,
                // Pre-bound to this very claim.
                Some(r) => {
                    r.name.as_deref() == claim.metadata.name.as_deref()
                        && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
                        && r.uid
                            .as_deref()
                            .is_none_or(|uid| Some(uid) == claim.metadata.uid.as_deref())
                }
            };
            let have_modes = modes(vs.access_modes.as_ref());
            free && vs.storage_class_name.as_deref().unwrap_or_default() == class
                && want_modes.iter().all(|m| have_modes.contains(m))
                && vs.volume_mode.as_deref().unwrap_or("Filesystem") == want_mode
                && bytes(vs.capacity.as_ref()) >= size
                && node.is_none_or(|n| admits(vs, n))
        })
        .min_by_key(|v| {
            (
                bytes(v.spec.as_ref().and_then(|s| s.capacity.as_ref())),
                v.metadata.name.clone(),
            )
        })
}

/// What becomes of a claim's volume when the claim is gone.
fn reclaim_policy(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

fn phase_of_volume(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// The controller.
#[derive(Clone, Debug)]
pub struct VolumeController {
    client: Client,
    claims: Informer<PersistentVolumeClaim>,
    volumes: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    nodes: Informer<Node>,
    queue: Queue<String>,
    recorder: Recorder,
}

impl VolumeController {
    pub fn new(
        client: Client,
        claims: &Informer<PersistentVolumeClaim>,
        volumes: &Informer<PersistentVolume>,
        classes: &Informer<StorageClass>,
        nodes: &Informer<Node>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            claims: claims.clone(),
            volumes: volumes.clone(),
            classes: classes.clone(),
            nodes: nodes.clone(),
            queue: Queue::new("persistentvolume-binder", shutdown),
            recorder,
        };
        let c = controller.clone();
        claims.on_event(move |event| {
            let (Event::Added(claim) | Event::Updated { new: claim, .. } | Event::Deleted(claim)) =
                event;
            c.queue.add(format!("claim:{}", key_of(&claim.metadata)));
            if let Some(volume) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) {
                c.queue.add(format!("volume:{volume}"));
            }
        });
        let c = controller.clone();
        volumes.on_event(move |event| {
            let (Event::Added(v) | Event::Updated { new: v, .. } | Event::Deleted(v)) = event;
            c.queue.add(format!(
                "volume:{}",
                v.metadata.name.as_deref().unwrap_or_default()
            ));
            if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                c.queue.add(format!(
                    "claim:{}/{}",
                    r.namespace.as_deref().unwrap_or_default(),
                    r.name.as_deref().unwrap_or_default()
                ));
            }
            // A volume freed or added may fit a waiting claim.
            c.enqueue_pending();
        });
        let c = controller.clone();
        classes.on_event(move |_| c.enqueue_pending());
        let c = controller.clone();
        nodes.on_event(move |event| {
            if let Event::Updated { old, new } = event
                && old
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LOCAL_PATH_DIR))
                    != new
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(LOCAL_PATH_DIR))
            {
                c.enqueue_pending();
            }
        });
        controller
    }

    fn enqueue_pending(&self) {
        for claim in self.claims.list() {
            if claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_none()
            {
                self.queue.add(format!("claim:{}", key_of(&claim.metadata)));
            }
        }
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        for synced in [
            self.claims.wait_synced(&shutdown).await,
            self.volumes.wait_synced(&shutdown).await,
            self.classes.wait_synced(&shutdown).await,
            self.nodes.wait_synced(&shutdown).await,
        ] {
            if !synced {
                return;
            }
        }
        let this = self.clone();
        crate::runtime::run_workers(
            "persistentvolume-binder",
            self.queue.clone(),
            workers,
            move |key| {
                let this = this.clone();
                async move {
                    match key.split_once(':') {
                        Some(("claim", key)) => this.sync_claim(key).await,
                        Some(("volume", name)) => this.sync_volume(name).await,
                        _ => Ok(Action::Done),
                    }
                }
            },
        )
        .await;
    }

    fn default_class(&self) -> Option<String> {
        // Of several defaults, the newest wins (as Kubernetes decides).
        self.classes
            .list()
            .into_iter()
            .filter(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS))
                    .is_some_and(|v| v == "true")
            })
            .max_by_key(|c| {
                (
                    c.metadata.creation_timestamp.clone().map(|t| t.0),
                    c.metadata.name.clone(),
                )
            })
            .and_then(|c| c.metadata.name.clone())
    }

    async fn sync_claim(&self, key: &str) -> Result<Action, VolumeError> {
        let Some(claim) = self.claims.get(key) else {
            return Ok(Action::Done);
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let (namespace, name) = split_key(key);
        let Some(spec) = claim.spec.as_ref() else {
            return Ok(Action::Done);
        };
        // No class at all (not ""): the default one, written in.
        if spec.storage_class_name.is_none()
            && let Some(default) = self.default_class()
        {
            let patch = json!({"spec": {"storageClassName": default}});
            self.client
                .patch::<PersistentVolumeClaim>(namespace, name, None, Patch::Merge, &patch)
                .await
                .map(drop)
                .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
                .map_err(failed(key, "set the default StorageClass"))?;
            return Ok(Action::Done);
        }
        if let Some(volume_name) = spec.volume_name.as_deref() {
            return match self.volumes.get(volume_name) {
                Some(volume) => self.bind(&claim, &volume).await,
                None => {
                    if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                        self.recorder.record(
                            claim.as_ref(),
                            EventType::Warning,
                            "ClaimLost",
                            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                        );
                        self.claim_status(key, json!({"phase": "Lost"}), "mark the claim Lost")
                            .await?;
                    }
                    Ok(Action::Done)
                }
            };
        }
        let class_name = class_of_claim(&claim).unwrap_or_default().to_owned();
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(&class_name))
            .flatten();
        let waits = class
            .as_ref()
            .and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        let selected = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SELECTED_NODE))
            .cloned();
        if waits && selected.is_none() {
            self.recorder.record(
                claim.as_ref(),
                EventType::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            );
            return Ok(Action::Done);
        }
        let node = selected.as_deref().and_then(|n| self.nodes.get(n));
        let volumes = self.volumes.list();
        if let Some(volume) = best_fit(&claim, &volumes, node.as_deref()) {
            return self.bind(&claim, volume).await;
        }
        let Some(class) = class else {
            let message = if class_name.is_empty() {
                "no persistent volumes available for this claim and no storage class is set"
                    .to_owned()
            } else {
                format!("storageclass.storage.k8s.io \"{class_name}\" not found")
            };
            self.recorder
                .record(claim.as_ref(), EventType::Warning, "FailedBinding", message);
            return Ok(Action::Done);
        };
        if class.provisioner != LOCAL_PATH {
            self.recorder.record(
                claim.as_ref(),
                EventType::Normal,
                "ExternalProvisioning",
                format!(
                    "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator",
                    class.provisioner
                ),
            );
            return Ok(Action::Done);
        }
        self.provision(&claim, &class, node.as_deref(), selected.as_deref())
            .await
    }

    /// Makes the claim's local-path volume on its selected node.
    async fn provision(
        &self,
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
        node: Option<&Node>,
        selected: Option<&str>,
    ) -> Result<Action, VolumeError> {
        let key = key_of(&claim.metadata);
        let refuse = |message: String| {
            self.recorder
                .record(claim, EventType::Warning, "ProvisioningFailed", message);
            Ok(Action::RequeueAfter(std::time::Duration::from_secs(10)))
        };
        let Some(node_name) = selected else {
            return refuse(format!(
                "local-path volumes are made on the node a claim's first pod is scheduled to: StorageClass {:?} needs volumeBindingMode WaitForFirstConsumer",
                class.metadata.name.as_deref().unwrap_or_default()
            ));
        };
        let Some(node) = node else {
            return refuse(format!("the selected node {node_name:?} does not exist"));
        };
        let Some(dir) = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LOCAL_PATH_DIR))
        else {
            return refuse(format!(
                "node {node_name:?} has no local-path directory (its agent writes the {LOCAL_PATH_DIR} annotation)"
            ));
        };
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        let namespace = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let volume_name = format!("pvc-{uid}");
        let spec = claim.spec.clone().unwrap_or_default();
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .cloned()
            .unwrap_or_else(|| Quantity("0".into()));
        let volume = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": volume_name,
                "annotations": {PROVISIONED_BY: LOCAL_PATH},
                "finalizers": [CLEANUP_FINALIZER],
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes.clone().unwrap_or_default(),
                "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
                "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
                "storageClassName": class.metadata.name,
                "hostPath": {"path": format!("{}/{volume_name}_{namespace}_{name}", dir.trim_end_matches('/')), "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}]}},
                "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": namespace, "name": name, "uid": uid},
            },
        });
        let volume: PersistentVolume = match serde_json::from_value(volume) {
            Ok(volume) => volume,
            Err(error) => return refuse(format!("cannot describe the volume: {error}")),
        };
        match self.client.create(None, &volume).await {
            Ok(_) => {
                self.recorder.record(
                    claim,
                    EventType::Normal,
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {volume_name}"),
                );
                let patch = json!({"metadata": {"annotations": {STORAGE_PROVISIONER: LOCAL_PATH}}});
                settled(
                    self.client
                        .patch::<PersistentVolumeClaim>(
                            Some(&namespace),
                            &name,
                            None,
                            Patch::Merge,
                            &patch,
                        )
                        .await,
                )
                .map_err(failed(&key, "annotate the claim"))?;
                Ok(Action::Done)
            }
            // Made by an earlier attempt: binding follows its event.
            Err(error) if error.is_already_exists() => Ok(Action::Done),
            Err(error) => Err(failed(&key, "create its PersistentVolume")(error)),
        }
    }

    /// Binds `claim` and `volume` to each other: the volume first (its
    /// claimRef is what makes the pair exclusive), then the claim, then
    /// both statuses.
    async fn bind(
        &self,
        claim: &PersistentVolumeClaim,
        volume: &PersistentVolume,
    ) -> Result<Action, VolumeError> {
        let key = key_of(&claim.metadata);
        let volume_name = volume.metadata.name.clone().unwrap_or_default();
        let Some(vspec) = volume.spec.as_ref() else {
            return Ok(Action::Done);
        };
        let claim_uid = claim.metadata.uid.clone();
        match &vspec.claim_ref {
            Some(r) if r.uid.is_some() && r.uid != claim_uid => {
                // Taken by another claim meanwhile (or the claim was
                // recreated): the claim waits for another volume.
                return Ok(Action::Done);
            }
            Some(r) if r.uid == claim_uid => {}
            _ => {
                let mut updated = volume.clone();
                let spec = updated.spec.get_or_insert_with(Default::default);
                spec.claim_ref = Some(ObjectReference {
                    kind: Some("PersistentVolumeClaim".into()),
                    api_version: Some("v1".into()),
                    namespace: claim.metadata.namespace.clone(),
                    name: claim.metadata.name.clone(),
                    uid: claim_uid.clone(),
                    resource_version: claim.metadata.resource_version.clone(),
                    ..ObjectReference::default()
                });
                updated
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
                if !settled(self.client.replace(&updated).await)
                    .map_err(failed(&key, "bind its PersistentVolume"))?
                {
                    return Ok(Action::Done);
                }
                return Ok(Action::Done);
            }
        }
        if phase_of_volume(volume) != "Bound" {
            self.volume_status(
                &volume_name,
                json!({"phase": "Bound"}),
                "mark its PersistentVolume Bound",
            )
            .await?;
        }
        let spec = claim.spec.clone().unwrap_or_default();
        let completed = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BIND_COMPLETED))
            .is_some();
        if spec.volume_name.as_deref() != Some(volume_name.as_str()) || !completed {
            let mut updated = claim.clone();
            updated
                .spec
                .get_or_insert_with(Default::default)
                .volume_name = Some(volume_name.clone());
            let annotations = updated
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert(BIND_COMPLETED.into(), "yes".into());
            if spec.volume_name.is_none() {
                annotations.insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            settled(self.client.replace(&updated).await).map_err(failed(&key, "bind the claim"))?;
            return Ok(Action::Done);
        }
        let bound = claim
            .status
            .as_ref()
            .is_some_and(|s| s.phase.as_deref() == Some("Bound") && s.capacity.is_some());
        if !bound {
            let status = json!({
                "phase": "Bound",
                "capacity": vspec.capacity,
                "accessModes": vspec.access_modes,
            });
            self.claim_status(&key, status, "mark the claim Bound")
                .await?;
        }
        Ok(Action::Done)
    }

    /// Merges `status` into the claim's status (gone or moved: looked at
    /// again with the next event).
    async fn claim_status(
        &self,
        key: &str,
        status: serde_json::Value,
        action: &'static str,
    ) -> Result<(), VolumeError> {
        let (namespace, name) = split_key(key);
        let patch = json!({ "status": status });
        settled(
            self.client
                .patch::<PersistentVolumeClaim>(
                    namespace,
                    name,
                    Some("status"),
                    Patch::Merge,
                    &patch,
                )
                .await,
        )
        .map(drop)
        .map_err(failed(key, action))
    }

    async fn volume_status(
        &self,
        name: &str,
        status: serde_json::Value,
        action: &'static str,
    ) -> Result<(), VolumeError> {
        let patch = json!({ "status": status });
        settled(
            self.client
                .patch::<PersistentVolume>(None, name, Some("status"), Patch::Merge, &patch)
                .await,
        )
        .map(drop)
        .map_err(failed(name, action))
    }

    async fn sync_volume(&self, name: &str) -> Result<Action, VolumeError> {
        let Some(volume) = self.volumes.get(name) else {
            return Ok(Action::Done);
        };
        if volume.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Some(claim_ref) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            if phase_of_volume(&volume) != "Available" {
                self.volume_status(
                    name,
                    json!({"phase": "Available"}),
                    "mark the volume Available",
                )
                .await?;
            }
            return Ok(Action::Done);
        };
        let claim_key = format!(
            "{}/{}",
            claim_ref.namespace.as_deref().unwrap_or_default(),
            claim_ref.name.as_deref().unwrap_or_default()
        );
        let claim = self.claims.get(&claim_key);
        let same = claim
            .as_ref()
            .is_some_and(|c| claim_ref.uid.is_none() || c.metadata.uid == claim_ref.uid);
        if same {
            // The claim's sync completes the binding.
            return Ok(Action::Done);
        }
        // Its claim is gone: the volume is released, and reclaimed.
        match reclaim_policy(&volume) {
            "Delete" => {
                match self
                    .client
                    .delete::<PersistentVolume>(None, name, &DeleteOptions::default())
                    .await
                {
                    Ok(()) => {}
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return Err(failed(name, "delete a released volume")(error)),
                }
            }
            _ => {
                if phase_of_volume(&volume) != "Released" {
                    self.volume_status(
                        name,
                        json!({"phase": "Released"}),
                        "mark the volume Released",
                    )
                    .await?;
                }
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn claim(class: &str, size: &str, modes: &[&str]) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "c1"},
            "spec": {"storageClassName": class, "accessModes": modes,
                     "resources": {"requests": {"storage": size}}}}))
        .unwrap()
    }

    fn volume(
        name: &str,
        class: &str,
        size: &str,
        modes: &[&str],
        node: Option<&str>,
    ) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"storageClassName": class, "accessModes": modes,
                     "capacity": {"storage": size}, "hostPath": {"path": "/x"}}});
        if let Some(node) = node {
            v["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name}}}))
        .unwrap()
    }

    #[test]
    fn the_smallest_fitting_volume_is_chosen() {
        let volumes = vec![
            volume("big", "manual", "10Gi", &["ReadWriteOnce"], None),
            volume("small", "manual", "1Gi", &["ReadWriteOnce"], None),
            volume("tiny", "manual", "500Mi", &["ReadWriteOnce"], None),
            volume("other-class", "fast", "1Gi", &["ReadWriteOnce"], None),
            volume("read-only", "manual", "1Gi", &["ReadOnlyMany"], None),
        ];
        let pick = |c: &PersistentVolumeClaim| {
            best_fit(c, &volumes, None).and_then(|v| v.metadata.name.clone())
        };
        assert_eq!(
            pick(&claim("manual", "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("small")
        );
        assert_eq!(
            pick(&claim("manual", "2Gi", &["ReadWriteOnce"])).as_deref(),
            Some("big")
        );
        assert_eq!(pick(&claim("manual", "20Gi", &["ReadWriteOnce"])), None);
        assert_eq!(
            pick(&claim("fast", "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("other-class")
        );
        assert_eq!(pick(&claim("manual", "1Gi", &["ReadWriteMany"])), None);
    }

    #[test]
    fn volumes_pinned_to_a_node_fit_only_there() {
        let volumes = vec![volume(
            "on-a",
            "local",
            "1Gi",
            &["ReadWriteOnce"],
            Some("a"),
        )];
        let c = claim("local", "1Gi", &["ReadWriteOnce"]);
        assert!(best_fit(&c, &volumes, Some(&node("a"))).is_some());
        assert!(best_fit(&c, &volumes, Some(&node("b"))).is_none());
        assert!(admits(volumes[0].spec.as_ref().unwrap(), &node("a")));
    }

    #[test]
    fn a_volume_bound_elsewhere_is_not_offered() {
        let mut taken = (*volume("taken", "manual", "1Gi", &["ReadWriteOnce"], None)).clone();
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("default".into()),
            name: Some("someone-else".into()),
            uid: Some("c9".into()),
            ..ObjectReference::default()
        });
        let volumes = vec![Arc::new(taken)];
        assert!(best_fit(&claim("manual", "1Gi", &["ReadWriteOnce"]), &volumes, None).is_none());
    }
}
