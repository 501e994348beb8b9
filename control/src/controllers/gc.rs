//! The garbage collector: objects whose owners are gone are deleted, and
//! owners deleted in the foreground or with orphaning get their
//! dependents deleted first or set free.
//!
//! ```text
//!  informers of every resource (metadata only) ─► graph: uid → owners, owner uid → dependents
//!                                                   │
//!   an owner goes ─► its dependents are checked ─►  all owners gone (verified live) ─► delete (background,
//!                                                   │                                  or foreground if it has dependents
//!                                                   │                                  and an owner waits for them)
//!                                                   └ some owners remain ─► drop the references to the gone ones
//!   owner with `foregroundDeletion` ─► delete its blocking dependents; none left ─► remove the finalizer
//!   owner with `orphan` ─► remove the references to it from its dependents ─► remove the finalizer
//! ```
//!
//! An owner missing from the graph is looked up through the API before
//! anything is deleted on its account, so a cache that lags cannot cost a
//! dependent its life.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, DeleteOptions, Patch};
use crate::resources::{RESOURCES, Resource};
use crate::runtime::informer::Object;
use crate::runtime::{Action, Event, Informer, Queue};

/// An object's metadata, whatever its kind.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PartialObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

impl Object for PartialObject {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// Why an object could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{action} {kind} {name}")]
    Api {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: ClientError,
    },
}

/// One object in the graph.
#[derive(Clone, Debug)]
struct Item {
    resource: &'static Resource,
    namespace: Option<String>,
    name: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Item {
    fn path(&self) -> String {
        object_path(self.resource, self.namespace.as_deref(), &self.name)
    }

    fn has(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }
}

fn collection_path(resource: &Resource, namespace: Option<&str>) -> String {
    let mut path = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    if let Some(namespace) = namespace.filter(|_| resource.namespaced) {
        path.push_str("/namespaces/");
        path.push_str(namespace);
    }
    path.push('/');
    path.push_str(resource.plural);
    path
}

fn object_path(resource: &Resource, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path(resource, namespace))
}

/// The resource an owner reference points at.
fn resource_of(reference: &OwnerReference) -> Option<&'static Resource> {
    let (group, version) = reference
        .api_version
        .split_once('/')
        .unwrap_or(("", reference.api_version.as_str()));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == reference.kind)
        .or_else(|| {
            RESOURCES
                .iter()
                .find(|r| r.group == group && r.kind == reference.kind)
        })
}

/// The resources whose objects can own or be owned: one version of each
/// stored resource, events aside.
fn collected() -> Vec<&'static Resource> {
    let mut seen = HashSet::new();
    RESOURCES
        .iter()
        .filter(|r| r.plural != "events")
        .filter(|r| seen.insert(r.prefix(None)))
        .collect()
}

#[derive(Debug, Default)]
struct Graph {
    items: HashMap<String, Item>,
    /// Owner uid → dependent uids (the owner may not be in `items`).
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn link(&mut self, uid: &str, owners: &[OwnerReference]) {
        for owner in owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.to_owned());
        }
    }

    fn unlink(&mut self, uid: &str, owners: &[OwnerReference]) {
        for owner in owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The collector and its handlers.
#[derive(Clone, Debug)]
pub struct GarbageCollector {
    client: Client,
    informers: Vec<Informer<PartialObject>>,
    graph: Arc<Mutex<Graph>>,
    queue: Queue<String>,
}

enum Owner {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Being deleted in the foreground: waits for its dependents.
    Waiting,
    Gone,
}

impl GarbageCollector {
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        let mut gc = Self {
            client,
            informers: Vec::new(),
            graph: Arc::default(),
            queue: Queue::new("garbage_collector_attempt_to_delete", shutdown),
        };
        for resource in collected() {
            let informer =
                Informer::<PartialObject>::at(collection_path(resource, None), resource.kind, None);
            let this = gc.clone();
            informer.on_event(move |event| this.changed(resource, event));
            gc.informers.push(informer);
        }
        gc
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, resource: &'static Resource, event: &Event<'_, PartialObject>) {
        match event {
            Event::Added(object) | Event::Updated { new: object, .. } => {
                let meta = &object.metadata;
                let Some(uid) = meta.uid.clone() else { return };
                let item = Item {
                    resource,
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone().unwrap_or_default(),
                    resource_version: meta.resource_version.clone(),
                    owners: meta.owner_references.clone().unwrap_or_default(),
                    deleting: meta.deletion_timestamp.is_some(),
                    finalizers: meta.finalizers.clone().unwrap_or_default(),
                };
                let mut graph = self.graph();
                let previous = graph.items.insert(uid.clone(), item.clone());
                let interesting = match &previous {
                    None => !item.owners.is_empty() || item.has(FOREGROUND) || item.has(ORPHAN),
                    Some(old) => {
                        old.owners != item.owners
                            || old.deleting != item.deleting
                            || old.finalizers != item.finalizers
                    }
                };
                if let Some(old) = &previous {
                    graph.unlink(&uid, &old.owners);
                }
                graph.link(&uid, &item.owners);
                // Owners that lost this dependent, or wait for it.
                let mut owners: Vec<String> = previous
                    .iter()
                    .flat_map(|old| old.owners.iter().map(|o| o.uid.clone()))
                    .collect();
                if item.deleting {
                    owners.extend(item.owners.iter().map(|o| o.uid.clone()));
                }
                drop(graph);
                if interesting {
                    self.queue.add(uid);
                    for owner in owners {
                        self.queue.add(owner);
                    }
                }
            }
            Event::Deleted(object) => {
                let Some(uid) = object.metadata.uid.clone() else {
                    return;
                };
                let mut graph = self.graph();
                let Some(item) = graph.items.remove(&uid) else {
                    return;
                };
                graph.unlink(&uid, &item.owners);
                let dependents = graph.dependents_of(&uid);
                drop(graph);
                for dependent in dependents {
                    self.queue.add(dependent);
                }
                for owner in item.owners {
                    self.queue.add(owner.uid);
                }
            }
        }
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for informer in &self.informers {
            tasks.spawn(informer.clone().run(self.client.clone(), shutdown.clone()));
        }
        for informer in &self.informers {
            if !informer.wait_synced(&shutdown).await {
                return;
            }
        }
        let this = self.clone();
        tasks.spawn(crate::runtime::run_workers(
            "garbagecollector",
            self.queue.clone(),
            workers,
            move |uid| {
                let this = this.clone();
                async move { this.reconcile(&uid).await }
            },
        ));
        while tasks.join_next().await.is_some() {}
    }

    fn failed(item: &Item, action: &'static str) -> impl FnOnce(ClientError) -> GcError {
        let (kind, name) = (item.resource.kind, item.name.clone());
        move |source| GcError::Api {
            action,
            kind,
            name,
            source,
        }
    }

    async fn reconcile(&self, uid: &str) -> Result<Action, GcError> {
        let Some(item) = self.graph().items.get(uid).cloned() else {
            return Ok(Action::Done);
        };
        if item.deleting {
            if item.has(ORPHAN) {
                self.orphan_dependents(uid).await?;
                self.remove_finalizer(&item, ORPHAN).await?;
            } else if item.has(FOREGROUND) {
                self.delete_blocking_dependents(uid, &item).await?;
            }
            return Ok(Action::Done);
        }
        if item.owners.is_empty() {
            return Ok(Action::Done);
        }
        let (mut solid, mut waiting, mut gone) = (0, Vec::new(), Vec::new());
        for reference in &item.owners {
            match self.owner(&item, reference).await? {
                Owner::Solid => solid += 1,
                Owner::Waiting => waiting.push(reference.uid.clone()),
                Owner::Gone => gone.push(reference.uid.clone()),
            }
        }
        if solid > 0 {
            if waiting.is_empty() && gone.is_empty() {
                return Ok(Action::Done);
            }
            let kept: Vec<&OwnerReference> = item
                .owners
                .iter()
                .filter(|o| !waiting.contains(&o.uid) && !gone.contains(&o.uid))
                .collect();
            self.patch_owners(&item, &kept).await?;
            return Ok(Action::Done);
        }
        let has_dependents = !self.graph().dependents_of(uid).is_empty();
        let policy = if !waiting.is_empty() && has_dependents {
            "Foreground"
        } else if item.has(ORPHAN) {
            "Orphan"
        } else if item.has(FOREGROUND) {
            "Foreground"
        } else {
            "Background"
        };
        let options = DeleteOptions {
            uid: Some(uid.to_owned()),
            propagation: Some(policy),
            ..DeleteOptions::default()
        };
        tracing::debug!(kind = item.resource.kind, name = %item.name, policy, "deleting an object whose owners are gone");
        match self.client.delete_at(&item.path(), &options).await {
            Ok(()) => Ok(Action::Done),
            Err(error) if error.is_not_found() => Ok(Action::Done),
            Err(error) => Err(Self::failed(&item, "delete")(error)),
        }
    }

    /// What became of `reference`'s owner: looked up through the API when
    /// the graph does not know it.
    async fn owner(&self, item: &Item, reference: &OwnerReference) -> Result<Owner, GcError> {
        let known = self.graph().items.get(&reference.uid).cloned();
        let waiting = |owner: &Item| owner.deleting && owner.has(FOREGROUND);
        if let Some(owner) = known {
            return Ok(if waiting(&owner) {
                Owner::Waiting
            } else {
                Owner::Solid
            });
        }
        let Some(resource) = resource_of(reference) else {
            // An owner of a kind this server does not serve: never assume it gone.
            return Ok(Owner::Solid);
        };
        let path = object_path(resource, item.namespace.as_deref(), &reference.name);
        match self.client.get_at::<PartialObject>(&path).await {
            Ok(owner) if owner.metadata.uid.as_deref() == Some(reference.uid.as_str()) => {
                let foreground = owner.metadata.deletion_timestamp.is_some()
                    && owner
                        .metadata
                        .finalizers
                        .iter()
                        .flatten()
                        .any(|f| f == FOREGROUND);
                Ok(if foreground {
                    Owner::Waiting
                } else {
                    Owner::Solid
                })
            }
            Ok(_) => Ok(Owner::Gone),
            Err(error) if error.is_not_found() => Ok(Owner::Gone),
            Err(error) => Err(Self::failed(item, "look up an owner of")(error)),
        }
    }

    async fn patch_owners(&self, item: &Item, owners: &[&OwnerReference]) -> Result<(), GcError> {
        self.patch_metadata(
            item,
            json!({"ownerReferences": owners}),
            "update the owners of",
        )
        .await
    }

    async fn remove_finalizer(&self, item: &Item, finalizer: &str) -> Result<(), GcError> {
        let kept: Vec<&String> = item.finalizers.iter().filter(|f| *f != finalizer).collect();
        self.patch_metadata(item, json!({"finalizers": kept}), "remove a finalizer of")
            .await
    }

    /// Merges `fields` into the item's metadata, if it has not changed
    /// since the graph saw it.
    async fn patch_metadata(
        &self,
        item: &Item,
        mut fields: serde_json::Value,
        action: &'static str,
    ) -> Result<(), GcError> {
        fields["resourceVersion"] = json!(item.resource_version);
        let patch = json!({ "metadata": fields });
        match self
            .client
            .patch_at::<PartialObject>(&item.path(), Patch::Merge, &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(Self::failed(item, action)(error)),
        }
    }

    /// Removes the references to `uid` from its dependents.
    async fn orphan_dependents(&self, uid: &str) -> Result<(), GcError> {
        let dependents: Vec<Item> = {
            let graph = self.graph();
            graph
                .dependents_of(uid)
                .iter()
                .filter_map(|d| graph.items.get(d).cloned())
                .collect()
        };
        for dependent in dependents {
            let kept: Vec<&OwnerReference> =
                dependent.owners.iter().filter(|o| o.uid != uid).collect();
            self.patch_owners(&dependent, &kept).await?;
        }
        Ok(())
    }

    /// Deletes the dependents that block `item`'s deletion; when none is
    /// left, lets `item` go.
    async fn delete_blocking_dependents(&self, uid: &str, item: &Item) -> Result<(), GcError> {
        let blocking: Vec<String> = {
            let graph = self.graph();
            graph
                .dependents_of(uid)
                .into_iter()
                .filter(|d| {
                    graph.items.get(d).is_some_and(|dep| {
                        dep.owners
                            .iter()
                            .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
                    })
                })
                .collect()
        };
        if blocking.is_empty() {
            return self.remove_finalizer(item, FOREGROUND).await;
        }
        // Each dependent sees its owner waiting and is deleted; its
        // deletion brings the owner back here.
        for dependent in blocking {
            self.queue.add(dependent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_references_resolve_to_served_resources() {
        let reference = |api_version: &str, kind: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            ..OwnerReference::default()
        };
        let rs = resource_of(&reference("apps/v1", "ReplicaSet")).unwrap();
        assert_eq!(
            object_path(rs, Some("default"), "web-1"),
            "/apis/apps/v1/namespaces/default/replicasets/web-1"
        );
        let node = resource_of(&reference("v1", "Node")).unwrap();
        assert_eq!(object_path(node, Some("default"), "n1"), "/api/v1/nodes/n1");
        assert!(resource_of(&reference("example.com/v1", "Widget")).is_none());
        assert!(collected().iter().all(|r| r.plural != "events"));
    }
}
