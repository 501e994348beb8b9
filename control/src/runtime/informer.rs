//! Watch caches: every object of one kind, kept current by list + watch,
//! with handlers told of each change.
//!
//! ```text
//!  list (pages of 500) ─► cache ─► handlers(Added/Updated/Deleted)
//!        ▲                  ▲
//!        │ 410 Gone         │ watch from the list's resourceVersion (bookmarks keep it fresh)
//!        └──────────────────┘
//! ```
//!
//! A relist compares what it finds with the cache and reports the
//! difference, so handlers see deletions that happened while the watch was
//! down. Handlers run on the informer's task and must only enqueue work.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ListParams, WatchEvent};

/// A change the cache saw.
#[derive(Debug)]
pub enum Event<'a, K> {
    Added(&'a Arc<K>),
    Updated { old: &'a Arc<K>, new: &'a Arc<K> },
    Deleted(&'a Arc<K>),
}

type Handler<K> = Box<dyn Fn(&Event<'_, K>) + Send + Sync>;

/// What an informer can cache: anything with object metadata.
pub trait Object: DeserializeOwned + Send + Sync + 'static {
    fn meta(&self) -> &ObjectMeta;
}

impl<K: Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static> Object for K {
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects: how caches and
/// queues name objects.
pub fn key_of(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
        _ => name.to_owned(),
    }
}

/// The namespace and name in a key.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((namespace, name)) => (Some(namespace), name),
        None => (None, key),
    }
}

/// The cached objects, with the indexes controllers look them up by.
struct Cache<K> {
    objects: HashMap<String, Arc<K>>,
    /// Keys of the objects each controller (by uid) controls.
    controlled: HashMap<String, BTreeSet<String>>,
    /// Keys of the objects without a controller, by namespace.
    orphans: HashMap<String, BTreeSet<String>>,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            controlled: HashMap::new(),
            orphans: HashMap::new(),
        }
    }
}

impl<K: Object> Cache<K> {
    /// Where `object` is indexed: its controller's uid, or its namespace as an orphan.
    fn slot(object: &K) -> (bool, String) {
        match super::controller_of(object.meta()) {
            Some(reference) => (true, reference.uid.clone()),
            None => (false, object.meta().namespace.clone().unwrap_or_default()),
        }
    }

    fn index(&mut self, key: &str, object: &K) {
        let (controlled, slot) = Self::slot(object);
        let index = if controlled {
            &mut self.controlled
        } else {
            &mut self.orphans
        };
        index.entry(slot).or_default().insert(key.to_owned());
    }

    fn unindex(&mut self, key: &str, object: &K) {
        let (controlled, slot) = Self::slot(object);
        let index = if controlled {
            &mut self.controlled
        } else {
            &mut self.orphans
        };
        if let Some(keys) = index.get_mut(&slot) {
            keys.remove(key);
            if keys.is_empty() {
                index.remove(&slot);
            }
        }
    }

    fn insert(&mut self, key: String, object: Arc<K>) -> Option<Arc<K>> {
        self.index(&key, &object);
        let old = self.objects.insert(key.clone(), object.clone());
        if let Some(old) = &old
            && Self::slot(old.as_ref()) != Self::slot(object.as_ref())
        {
            self.unindex(&key, old);
        }
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<K>> {
        let removed = self.objects.remove(key)?;
        self.unindex(key, &removed);
        Some(removed)
    }

    fn lookup(&self, keys: Option<&BTreeSet<String>>) -> Vec<Arc<K>> {
        keys.into_iter()
            .flatten()
            .filter_map(|key| self.objects.get(key).cloned())
            .collect()
    }
}

struct Inner<K> {
    kind: &'static str,
    /// The collection across all namespaces.
    path: String,
    cache: RwLock<Cache<K>>,
    handlers: Mutex<Vec<Handler<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
    field_selector: Option<String>,
}

/// A watch cache of `K`s across all namespaces. Cheap to clone.
pub struct Informer<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &self.inner.kind)
            .finish_non_exhaustive()
    }
}

impl<K: Resource + Object> Default for Informer<K> {
    fn default() -> Self {
        Self::new(None)
    }
}

impl<K: Resource + Object> Informer<K> {
    /// The cached object of this kind that controls the object with
    /// metadata `meta` (its controller reference names it, uid included).
    pub fn controller_of(&self, meta: &ObjectMeta) -> Option<Arc<K>> {
        let reference = super::controller_of(meta)?;
        if reference.kind != K::KIND {
            return None;
        }
        let owner = self.get_in(meta.namespace.as_deref(), &reference.name)?;
        (owner.meta().uid.as_deref() == Some(reference.uid.as_str())).then_some(owner)
    }

    /// A cache of every `K` (those `field_selector` selects, if given).
    pub fn new(field_selector: Option<String>) -> Self {
        Self::at(
            crate::client::collection_path::<K>(None),
            K::KIND,
            field_selector,
        )
    }
}

impl<K: Object> Informer<K> {
    /// A cache of the collection at `path` (all namespaces), of `kind`.
    pub fn at(path: String, kind: &'static str, field_selector: Option<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                path,
                cache: RwLock::new(Cache::default()),
                handlers: Mutex::new(Vec::new()),
                synced: tokio::sync::watch::channel(false).0,
                field_selector,
            }),
        }
    }

    /// Calls `handler` with every change from now on (and every object the
    /// first list finds, as `Added`).
    pub fn on_event(&self, handler: impl Fn(&Event<'_, K>) + Send + Sync + 'static) {
        self.handlers().push(Box::new(handler));
    }

    fn handlers(&self) -> std::sync::MutexGuard<'_, Vec<Handler<K>>> {
        self.inner
            .handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<K>> {
        self.inner.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache<K>> {
        self.inner.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The object cached under `key` (see [`key_of`]).
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    /// The cached objects whose controller is the object with `uid`, from
    /// an index: a controller need not scan every object to find its own.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        let cache = self.read();
        cache.lookup(cache.controlled.get(uid))
    }

    /// The cached objects of `namespace` that no controller controls.
    pub fn orphans_in(&self, namespace: &str) -> Vec<Arc<K>> {
        let cache = self.read();
        cache.lookup(cache.orphans.get(namespace))
    }

    pub fn get_in(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        match namespace {
            Some(namespace) => self.get(&format!("{namespace}/{name}")),
            None => self.get(name),
        }
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The cached objects of one namespace.
    pub fn list_in(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read()
            .objects
            .values()
            .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first list has been cached.
    pub fn has_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits for the first list; `false` if `shutdown` came first.
    pub async fn wait_synced(&self, shutdown: &CancellationToken) -> bool {
        let mut synced = self.inner.synced.subscribe();
        tokio::select! {
            result = synced.wait_for(|s| *s) => result.is_ok(),
            () = shutdown.cancelled() => false,
        }
    }

    fn notify(&self, event: &Event<'_, K>) {
        for handler in self.handlers().iter() {
            handler(event);
        }
    }

    fn upsert(&self, object: K) {
        let key = key_of(object.meta());
        let new = Arc::new(object);
        let old = self.write().insert(key, new.clone());
        match old {
            Some(old) => {
                if old.meta().resource_version != new.meta().resource_version {
                    self.notify(&Event::Updated {
                        old: &old,
                        new: &new,
                    });
                }
            }
            None => self.notify(&Event::Added(&new)),
        }
    }

    fn remove(&self, object: K) {
        let key = key_of(object.meta());
        let removed = self.write().remove(&key);
        if removed.is_some() {
            self.notify(&Event::Deleted(&Arc::new(object)));
        }
    }

    /// Replaces the cache with a fresh list, reporting what changed.
    fn replace(&self, items: Vec<K>) {
        let mut listed: HashMap<String, K> =
            items.into_iter().map(|o| (key_of(o.meta()), o)).collect();
        let gone: Vec<Arc<K>> = {
            let cache = self.read();
            cache
                .objects
                .iter()
                .filter(|(key, _)| !listed.contains_key(*key))
                .map(|(_, o)| o.clone())
                .collect()
        };
        for object in gone {
            let key = key_of(object.meta());
            self.write().remove(&key);
            self.notify(&Event::Deleted(&object));
        }
        for (_, object) in listed.drain() {
            self.upsert(object);
        }
    }

    async fn list_all(&self, client: &Client) -> crate::client::Result<String> {
        let mut params = ListParams {
            field_selector: self.inner.field_selector.clone(),
            limit: Some(500),
            ..ListParams::default()
        };
        let mut items = Vec::new();
        loop {
            let page = client.list_at::<K>(&self.inner.path, &params).await?;
            items.extend(page.items);
            match page.continue_token {
                Some(token) => params.continue_token = Some(token),
                None => {
                    self.replace(items);
                    return Ok(page.resource_version);
                }
            }
        }
    }

    /// Keeps the cache current until `shutdown`.
    pub async fn run(self, client: Client, shutdown: CancellationToken) {
        let kind = self.inner.kind;
        let mut failures = 0u32;
        let params = ListParams {
            field_selector: self.inner.field_selector.clone(),
            ..ListParams::default()
        };
        'relist: loop {
            let listed = tokio::select! {
                listed = self.list_all(&client) => listed,
                () = shutdown.cancelled() => return,
            };
            let mut version = match listed {
                Ok(version) => {
                    failures = 0;
                    self.inner.synced.send_replace(true);
                    version
                }
                Err(error) => {
                    failures += 1;
                    tracing::debug!(kind, %error, "list failed; retrying");
                    if !pause(&shutdown, failures).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                // Servers end watches after a while; a spread keeps the
                // informers of one process from reconnecting all at once.
                let timeout = 240 + (rand_u32() % 120);
                let watch = tokio::select! {
                    watch = client.watch_at::<K>(&self.inner.path, &params, &version, timeout) => watch,
                    () = shutdown.cancelled() => return,
                };
                let mut events = match watch {
                    Ok(events) => Box::pin(events),
                    Err(error) if error.is_gone() => continue 'relist,
                    Err(error) => {
                        failures += 1;
                        tracing::debug!(kind, %error, "watch failed; retrying");
                        if !pause(&shutdown, failures).await {
                            return;
                        }
                        continue;
                    }
                };
                loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        () = shutdown.cancelled() => return,
                    };
                    let Some(event) = event else { break };
                    let revision = |o: &K| o.meta().resource_version.clone();
                    match event {
                        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                            if let Some(rv) = revision(&object) {
                                version = rv;
                            }
                            self.upsert(object);
                        }
                        WatchEvent::Deleted(object) => {
                            if let Some(rv) = revision(&object) {
                                version = rv;
                            }
                            self.remove(object);
                        }
                        WatchEvent::Bookmark(rv) => version = rv,
                        WatchEvent::Error(error) if error.is_gone() => {
                            tracing::debug!(kind, "watch expired; relisting");
                            continue 'relist;
                        }
                        WatchEvent::Error(error) => {
                            tracing::debug!(kind, %error, "watch ended");
                            failures += 1;
                            if !pause(&shutdown, failures).await {
                                return;
                            }
                            break;
                        }
                    }
                    failures = 0;
                }
            }
        }
    }
}

/// Waits before a retry (100 ms doubling, at most 5 s); `false` on shutdown.
async fn pause(shutdown: &CancellationToken, failures: u32) -> bool {
    let delay = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(5));
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

/// A number that differs between calls, for spreading timers.
fn rand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pod(name: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn controllers_find_their_objects_and_orphans_by_index() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let informer: Informer<Pod> = Informer::new(None);
        let owned = |name: &str, rv: &str, owner: &str| {
            let mut p = pod(name, rv);
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: owner.into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]);
            p
        };
        informer.upsert(owned("a", "1", "rs-1"));
        informer.upsert(owned("b", "1", "rs-2"));
        informer.upsert(pod("c", "1"));
        assert_eq!(informer.controlled_by("rs-1").len(), 1);
        assert_eq!(informer.orphans_in("ns").len(), 1);
        // Adopted: it moves from the orphans to its controller.
        informer.upsert(owned("c", "2", "rs-1"));
        assert_eq!(informer.controlled_by("rs-1").len(), 2);
        assert!(informer.orphans_in("ns").is_empty());
        informer.remove(owned("a", "3", "rs-1"));
        assert_eq!(informer.controlled_by("rs-1").len(), 1);
        assert!(informer.controlled_by("rs-3").is_empty());
    }

    #[test]
    fn a_relist_reports_what_changed_while_away() {
        let informer: Informer<Pod> = Informer::new(None);
        let (added, updated, deleted) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let counters = (added.clone(), updated.clone(), deleted.clone());
        informer.on_event(move |event| {
            let counter = match event {
                Event::Added(_) => &counters.0,
                Event::Updated { .. } => &counters.1,
                Event::Deleted(_) => &counters.2,
            };
            counter.fetch_add(1, Ordering::SeqCst);
        });
        informer.replace(vec![pod("a", "1"), pod("b", "2")]);
        informer.replace(vec![pod("a", "1"), pod("c", "3")]);
        informer.upsert(pod("a", "4"));
        assert_eq!(added.load(Ordering::SeqCst), 3);
        assert_eq!(updated.load(Ordering::SeqCst), 1, "only a's new version");
        assert_eq!(deleted.load(Ordering::SeqCst), 1, "b went while away");
        assert!(informer.get("ns/b").is_none());
        assert_eq!(informer.list_in("ns").len(), 2);
        assert_eq!(split_key("ns/a"), (Some("ns"), "a"));
        assert_eq!(split_key("node-1"), (None, "node-1"));
    }
}
