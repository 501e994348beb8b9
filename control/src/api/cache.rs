//! The watch cache: what the API server serves watches and lists from.
//!
//! ```text
//!  store ──one watch per resource──► WatchCache ─┬─ objects: key → object, at `revision`
//!                                                ├─ events: the last minutes, to resume watches
//!                                                └─ watchers ◄── indexed by spec.nodeName (pods)
//! ```
//!
//! One cache per resource, started by the resource's first request: it
//! lists the store once, in pages at one revision, then follows one store
//! watch. Every REST watch of the resource is fed from it, so a thousand
//! watchers cost the store one watch, and an event is decoded and encoded
//! once however many watchers get it. Kubernetes' cacher is the model:
//!
//! - **Resuming:** a watch from `resourceVersion` N replays the retained
//!   events after N; older than the oldest retained is `410 Gone`, and the
//!   client relists (from the cache).
//! - **Consistent reads:** a list without `resourceVersion` reads the
//!   store's current revision (a linearizable read), then waits until the
//!   cache has caught up to it; a progress request makes the store say so
//!   when nothing under the prefix changed. So a list sees every write
//!   acknowledged before it began, as a read from the store would.
//! - **Slow watchers never stall writers:** each watcher has a bounded
//!   queue; a watcher whose queue is full is ended (its client resumes from
//!   the last version it saw), never waited for.
//! - **Indexes:** pods are indexed by `spec.nodeName`, for objects and for
//!   watchers, so each node's agent costs a pod event only when the pod is
//!   its own.
//! - **Memory:** an object is kept encoded (as clients receive it), with
//!   its labels and the fields Kubernetes allows selecting on beside it;
//!   a decoded `serde_json::Value` of a pod is about six times its JSON.
//!   Lists and watch events are written from the encoded bytes; only a
//!   selector on another field, or a table, decodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Codec;
use crate::object::with_version;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::storage::{Change, Store, StoreError, Stored, WatchBatch, prefix_end};

/// Keys read per page while the cache loads.
const LOAD_PAGE: i64 = 5_000;
/// Events kept this long (Kubernetes' cache keeps 75 s), so watchers can resume.
const RETAIN: Duration = Duration::from_secs(75);
/// Events kept at most, however young: a watcher further behind relists.
const RETAIN_MAX: usize = 100_000;
/// Changes a watcher may have queued before it counts as too slow.
const WATCHER_QUEUE: usize = 1_024;
/// How often watchers that asked for them get a bookmark.
const BOOKMARK_PERIOD: Duration = Duration::from_secs(30);
/// How long a read waits for the cache to reach the revision it needs.
pub(super) const CATCH_UP: Duration = Duration::from_secs(3);

/// The fields Kubernetes lets clients select on (`fieldSelector`), kept
/// beside each object so a selection needs no decoding.
const SELECTABLE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.unschedulable",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
    "status.replicas",
    "status.successful",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// An object as the cache holds it, shared by every reader.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) key: Vec<u8>,
    /// The object as its clients see it (`metadata.resourceVersion` set), encoded.
    pub(super) json: Bytes,
    /// `metadata.labels`.
    labels: Value,
    /// The [`SELECTABLE`] fields it has, at their paths.
    fields: Value,
    /// `spec.nodeName`, for pods.
    node: Option<String>,
}

impl Cached {
    fn new(key: Vec<u8>, object: &Value, index_node: bool) -> Self {
        let mut fields = Value::Object(serde_json::Map::new());
        for path in SELECTABLE {
            let mut at = object;
            for step in path.split('.') {
                at = &at[step];
            }
            if at.is_null() {
                continue;
            }
            let mut into = &mut fields;
            for step in path.split('.') {
                into = &mut into[step];
            }
            *into = at.clone();
        }
        Cached {
            key,
            // Encoding a `Value` cannot fail.
            json: serde_json::to_vec(object).unwrap_or_default().into(),
            labels: object["metadata"]["labels"].clone(),
            fields,
            node: index_node
                .then(|| object["spec"]["nodeName"].as_str().map(str::to_owned))
                .flatten(),
        }
    }

    /// The object, decoded.
    pub(super) fn object(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// A request's label and field selectors, tested on cached objects.
#[derive(Debug)]
pub(super) struct Selection {
    labels: LabelSelector,
    fields: FieldSelector,
    /// Every field it tests is one the cache keeps beside the object.
    kept: bool,
}

impl Selection {
    pub(super) fn new(labels: LabelSelector, fields: FieldSelector) -> Self {
        let kept = fields.fields().all(|f| SELECTABLE.contains(&f));
        Self {
            labels,
            fields,
            kept,
        }
    }

    pub(super) fn selects(&self, cached: &Cached) -> bool {
        if !self.labels.matches_labels(&cached.labels) {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        if self.kept {
            self.fields.matches(&cached.fields)
        } else {
            self.fields.matches(&cached.object())
        }
    }
}

/// One change, as every watcher of the cache receives it.
#[derive(Debug)]
pub(super) struct CachedEvent {
    pub(super) revision: i64,
    pub(super) key: Vec<u8>,
    /// The object after the change; for a deletion, the object as it was
    /// last, carrying the deletion's revision.
    pub(super) object: Arc<Cached>,
    /// The object before the change, if there was one.
    pub(super) previous: Option<Arc<Cached>>,
    pub(super) deleted: bool,
}

/// The watch events Kubernetes sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(super) fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// `{"type": kind, "object": object}` and a newline.
pub(super) fn event_line(kind: &str, object: &Value) -> Vec<u8> {
    let mut json = Vec::with_capacity(1024);
    // Encoding a `Value` cannot fail.
    drop(serde_json::to_writer(&mut json, object));
    encoded_event_line(kind, &json)
}

/// `{"type": kind, "object": …}` around an object already encoded.
pub(super) fn encoded_event_line(kind: &str, json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    line
}

/// What a watcher's queue carries.
#[derive(Debug)]
pub(super) enum Item {
    Event(Arc<CachedEvent>),
    /// Every change up to this revision has been sent.
    Bookmark(i64),
}

struct Watcher {
    sender: mpsc::Sender<Item>,
    /// Only keys under it (a namespace's prefix, or the resource's).
    prefix: Vec<u8>,
    node: Option<String>,
    bookmarks: bool,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Vec<u8>, Arc<Cached>>,
    /// Pods' keys by `spec.nodeName`.
    on_node: HashMap<String, BTreeSet<Vec<u8>>>,
    /// Retained events, oldest first, with when they arrived.
    events: VecDeque<(Instant, Arc<CachedEvent>)>,
    /// Events after this revision are all retained.
    oldest: i64,
    /// Every change up to here is in `objects`.
    revision: i64,
    watchers: HashMap<u64, Watcher>,
    /// Watchers by the node their selector pins.
    watching_node: HashMap<String, HashSet<u64>>,
    /// Watchers of every node.
    watching_all: HashSet<u64>,
    next_watcher: u64,
    last_bookmark: Option<Instant>,
}

impl State {
    fn insert(&mut self, cached: Arc<Cached>) -> Option<Arc<Cached>> {
        if let Some(node) = &cached.node {
            self.on_node
                .entry(node.clone())
                .or_default()
                .insert(cached.key.clone());
        }
        let previous = self.objects.insert(cached.key.clone(), cached.clone());
        if let Some(previous) = &previous
            && previous.node != cached.node
        {
            self.unindex(previous);
        }
        previous
    }

    fn remove(&mut self, key: &[u8]) -> Option<Arc<Cached>> {
        let removed = self.objects.remove(key)?;
        self.unindex(&removed);
        Some(removed)
    }

    fn unindex(&mut self, cached: &Cached) {
        if let Some(node) = &cached.node
            && let Some(keys) = self.on_node.get_mut(node)
        {
            keys.remove(&cached.key);
            if keys.is_empty() {
                self.on_node.remove(node);
            }
        }
    }

    fn forget_watcher(&mut self, id: u64) {
        if let Some(watcher) = self.watchers.remove(&id) {
            match watcher.node {
                Some(node) => {
                    if let Some(ids) = self.watching_node.get_mut(&node) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            self.watching_node.remove(&node);
                        }
                    }
                }
                None => {
                    self.watching_all.remove(&id);
                }
            }
        }
    }

    /// Queues `event` for every watcher it may concern; ends the watchers
    /// whose queue is full or whose client has gone.
    fn dispatch(&mut self, resource: &str, event: &Arc<CachedEvent>) {
        let mut targets: Vec<u64> = self.watching_all.iter().copied().collect();
        for node in [
            event.object.node.as_ref(),
            event.previous.as_ref().and_then(|p| p.node.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(ids) = self.watching_node.get(node) {
                targets.extend(ids.iter().copied());
            }
        }
        targets.sort_unstable();
        targets.dedup();
        let mut ended = Vec::new();
        for id in targets {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            if !event.key.starts_with(&watcher.prefix) {
                continue;
            }
            match watcher.sender.try_send(Item::Event(event.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("apiserver_terminated_watchers_total", "resource" => resource.to_owned())
                        .increment(1);
                    ended.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => ended.push(id),
            }
        }
        for id in ended {
            self.forget_watcher(id);
        }
    }

    /// Drops events older than [`RETAIN`] (or beyond [`RETAIN_MAX`]),
    /// whole revisions at a time.
    fn trim(&mut self, now: Instant) {
        while let Some((at, front)) = self.events.front() {
            let old = now.duration_since(*at) > RETAIN || self.events.len() > RETAIN_MAX;
            if !old {
                break;
            }
            let revision = front.revision;
            while self
                .events
                .front()
                .is_some_and(|(_, e)| e.revision == revision)
            {
                self.events.pop_front();
            }
            self.oldest = revision;
        }
    }
}

/// One resource's cache.
pub(super) struct WatchCache {
    resource: &'static Resource,
    state: RwLock<State>,
    /// The cache's revision, for readers waiting on it (0: not loaded).
    revision: tokio::sync::watch::Sender<i64>,
    /// Asks the store for a progress notification.
    progress: Notify,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache")
            .field("resource", &self.resource.plural)
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

/// A watcher's start: what it must send first, then its queue.
pub(super) struct Subscription {
    cache: Arc<WatchCache>,
    id: u64,
    /// The objects that exist (a watch without a version starts with them).
    pub(super) initial: Vec<Arc<Cached>>,
    /// Retained events after the version the watch resumes from.
    pub(super) backlog: Vec<Arc<CachedEvent>>,
    pub(super) receiver: mpsc::Receiver<Item>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut state) = self.cache.state.write() {
            state.forget_watcher(self.id);
        }
    }
}

/// A list as the cache answers it.
pub(super) struct Listed {
    pub(super) items: Vec<Arc<Cached>>,
    pub(super) revision: i64,
    /// The key after the last item, when more keys follow it.
    pub(super) next: Option<Vec<u8>>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum From {
    /// With the objects that exist now.
    Now,
    /// After this version: the retained events since, then live ones.
    After(i64),
}

impl WatchCache {
    fn new(resource: &'static Resource) -> Arc<Self> {
        Arc::new(Self {
            resource,
            state: RwLock::new(State::default()),
            revision: tokio::sync::watch::channel(0).0,
            progress: Notify::new(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many objects the cache holds.
    pub(super) fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Waits until the cache has every change up to `revision`, asking the
    /// store how far it is when nothing arrives; `false` after `within`.
    pub(super) async fn caught_up(&self, revision: i64, within: Duration) -> bool {
        let mut current = self.revision.subscribe();
        if *current.borrow() >= revision.max(1) {
            return true;
        }
        self.progress.notify_one();
        tokio::time::timeout(within, current.wait_for(|r| *r >= revision.max(1)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The objects under `prefix`, from `start` on, that `select` keeps; at
    /// most `limit` (0: all).
    pub(super) fn list(
        &self,
        prefix: &[u8],
        node: Option<&str>,
        limit: usize,
        selection: &Selection,
    ) -> Listed {
        let state = self.read();
        let mut items = Vec::new();
        let mut next = None;
        let mut take = |cached: &Arc<Cached>, next: &mut Option<Vec<u8>>| -> bool {
            if limit > 0 && items.len() == limit {
                let mut key = items
                    .last()
                    .map_or_else(Vec::new, |c: &Arc<Cached>| c.key.clone());
                key.push(0);
                *next = Some(key);
                return false;
            }
            if selection.selects(cached) {
                items.push(cached.clone());
            }
            true
        };
        match node {
            Some(node) => {
                let keys = state.on_node.get(node);
                for key in keys.into_iter().flatten() {
                    if key.starts_with(prefix)
                        && let Some(cached) = state.objects.get(key)
                        && !take(cached, &mut next)
                    {
                        break;
                    }
                }
            }
            None => {
                let end = prefix_end(prefix);
                let range = (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
                for (_, cached) in state.objects.range(range) {
                    if !take(cached, &mut next) {
                        break;
                    }
                }
            }
        }
        Listed {
            items,
            revision: state.revision,
            next,
        }
    }

    /// One object, as the cache has it.
    pub(super) fn get(&self, key: &[u8]) -> Option<Arc<Cached>> {
        self.read().objects.get(key).cloned()
    }

    /// Registers a watcher of the keys under `prefix` (of one node's pods
    /// only, with `node`). A watch resuming from a version older than the
    /// retained events is `410 Gone`.
    pub(super) fn subscribe(
        self: &Arc<Self>,
        from: From,
        prefix: &[u8],
        node: Option<&str>,
        bookmarks: bool,
    ) -> Result<Subscription, ApiError> {
        let mut state = self.write();
        let (initial, backlog) = match from {
            From::Now => {
                let end = prefix_end(prefix);
                let range = (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
                let initial = match node {
                    Some(node) => state
                        .on_node
                        .get(node)
                        .into_iter()
                        .flatten()
                        .filter(|k| k.starts_with(prefix))
                        .filter_map(|k| state.objects.get(k).cloned())
                        .collect(),
                    None => state.objects.range(range).map(|(_, c)| c.clone()).collect(),
                };
                (initial, Vec::new())
            }
            From::After(version) => {
                if version < state.oldest {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {version} ({})",
                        state.oldest
                    )));
                }
                let first = state.events.partition_point(|(_, e)| e.revision <= version);
                let backlog = state
                    .events
                    .range(first..)
                    .map(|(_, e)| e.clone())
                    .filter(|e| e.key.starts_with(prefix))
                    .collect();
                (Vec::new(), backlog)
            }
        };
        let (sender, receiver) = mpsc::channel(WATCHER_QUEUE);
        let id = state.next_watcher;
        state.next_watcher += 1;
        match node {
            Some(node) => {
                state
                    .watching_node
                    .entry(node.to_owned())
                    .or_default()
                    .insert(id);
            }
            None => {
                state.watching_all.insert(id);
            }
        }
        state.watchers.insert(
            id,
            Watcher {
                sender,
                prefix: prefix.to_vec(),
                node: node.map(str::to_owned),
                bookmarks,
            },
        );
        Ok(Subscription {
            cache: self.clone(),
            id,
            initial,
            backlog,
            receiver,
        })
    }

    fn decode(&self, codec: &Codec, stored: &Stored) -> Option<Arc<Cached>> {
        match codec.decode(self.resource, stored) {
            Ok(object) => Some(Arc::new(Cached::new(
                stored.key.clone(),
                &object,
                self.resource.plural == "pods",
            ))),
            Err(error) => {
                tracing::warn!(resource = self.resource.plural, key = %String::from_utf8_lossy(&stored.key), error = %error.message, "the cache skips an object it cannot decode");
                None
            }
        }
    }

    /// Applies one batch of the store's changes and sends them on.
    fn apply(&self, codec: &Codec, changes: Vec<Change>) {
        let now = Instant::now();
        let mut state = self.write();
        for change in changes {
            let event = match change {
                Change::Put { kv, .. } => {
                    let revision = kv.mod_revision;
                    let Some(cached) = self.decode(codec, &kv) else {
                        state.revision = state.revision.max(revision);
                        continue;
                    };
                    let previous = state.insert(cached.clone());
                    CachedEvent {
                        revision,
                        key: kv.key,
                        object: cached,
                        previous,
                        deleted: false,
                    }
                }
                Change::Deleted { key, revision, .. } => {
                    state.revision = state.revision.max(revision);
                    let Some(previous) = state.remove(&key) else {
                        continue;
                    };
                    let object = Arc::new(Cached::new(
                        key.clone(),
                        &with_version(previous.object(), revision),
                        previous.node.is_some(),
                    ));
                    CachedEvent {
                        revision,
                        key,
                        object,
                        previous: Some(previous),
                        deleted: true,
                    }
                }
            };
            state.revision = state.revision.max(event.revision);
            let event = Arc::new(event);
            state.dispatch(self.resource.plural, &event);
            state.events.push_back((now, event));
        }
        state.trim(now);
        let revision = state.revision;
        drop(state);
        self.publish(revision);
    }

    /// The store says every change up to `revision` has been delivered.
    fn advance(&self, revision: i64) {
        let now = Instant::now();
        let mut state = self.write();
        state.revision = state.revision.max(revision);
        let due = state
            .last_bookmark
            .is_none_or(|at| now.duration_since(at) >= BOOKMARK_PERIOD);
        if due {
            state.last_bookmark = Some(now);
            let revision = state.revision;
            let ended: Vec<u64> = state
                .watchers
                .iter()
                .filter(|(_, w)| w.bookmarks)
                .filter(|(_, w)| {
                    matches!(
                        w.sender.try_send(Item::Bookmark(revision)),
                        Err(mpsc::error::TrySendError::Closed(_))
                    )
                })
                .map(|(id, _)| *id)
                .collect();
            for id in ended {
                state.forget_watcher(id);
            }
        }
        state.trim(now);
        let revision = state.revision;
        drop(state);
        self.publish(revision);
    }

    /// Tells readers waiting on the cache that it has reached `revision`.
    fn publish(&self, revision: i64) {
        self.revision.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }

    /// Replaces everything with a fresh load at `revision`; every watcher
    /// is ended (its client resumes, or relists when too far behind).
    fn reset(&self, objects: Vec<Arc<Cached>>, revision: i64) {
        let mut state = self.write();
        let fresh = State {
            oldest: revision,
            revision,
            next_watcher: state.next_watcher,
            ..State::default()
        };
        *state = fresh;
        for cached in objects {
            state.insert(cached);
        }
        drop(state);
        self.revision.send_replace(revision);
    }

    /// Loads the resource, then follows the store until `shutdown`;
    /// reloads when the store's watch ends.
    async fn run(self: Arc<Self>, store: Store, codec: Codec, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.follow(&store, &codec, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(resource = self.resource.plural, %error, "the watch cache reloads");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(
        &self,
        store: &Store,
        codec: &Codec,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let prefix = self.resource.prefix(None);
        let mut objects = Vec::new();
        let mut revision = 0;
        let mut start: Option<Vec<u8>> = None;
        loop {
            let page = store
                .list(prefix.as_bytes(), start.as_deref(), LOAD_PAGE, revision)
                .await?;
            revision = page.revision;
            if let Some(last) = page.items.last() {
                let mut after = last.key.clone();
                after.push(0);
                start = Some(after);
            }
            objects.extend(page.items.iter().filter_map(|s| self.decode(codec, s)));
            if !page.more {
                break;
            }
        }
        let mut watch = store.watch(prefix.as_bytes(), revision + 1).await?;
        tracing::debug!(
            resource = self.resource.plural,
            objects = objects.len(),
            revision,
            "the watch cache is loaded"
        );
        self.reset(objects, revision);
        let progress = watch.progress_requests();
        let mut ticker = tokio::time::interval(BOOKMARK_PERIOD);
        loop {
            tokio::select! {
                batch = watch.next() => match batch? {
                    WatchBatch::Changes(changes) => self.apply(codec, changes),
                    WatchBatch::Progress(revision) => self.advance(revision),
                },
                () = self.progress.notified() => progress.request(),
                _ = ticker.tick() => progress.request(),
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// The API server's caches, one per resource, each started by the
/// resource's first request.
pub(super) struct Caches {
    caches: std::sync::Mutex<HashMap<usize, Arc<WatchCache>>>,
    store: Store,
    codec: Codec,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

impl Caches {
    pub(super) fn new(store: Store, codec: Codec, shutdown: CancellationToken) -> Self {
        Self {
            caches: std::sync::Mutex::default(),
            store,
            codec,
            shutdown,
        }
    }

    /// `resource`'s cache, started if it was not.
    pub(super) fn of(&self, resource: &'static Resource) -> Arc<WatchCache> {
        let id = std::ptr::from_ref(resource) as usize;
        let mut caches = self
            .caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        caches
            .entry(id)
            .or_insert_with(|| {
                let cache = WatchCache::new(resource);
                tokio::spawn(cache.clone().run(
                    self.store.clone(),
                    self.codec.clone(),
                    self.shutdown.clone(),
                ));
                cache
            })
            .clone()
    }

    /// `resource`'s cache if it has been started.
    pub(super) fn started(&self, resource: &'static Resource) -> Option<Arc<WatchCache>> {
        let id = std::ptr::from_ref(resource) as usize;
        self.caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// `resource`'s cache once it has every change up to a revision the
    /// store has just read (a consistent read), or up to `at_least`;
    /// `None` when it could not catch up in time.
    pub(super) async fn current(
        &self,
        resource: &'static Resource,
        at_least: Option<i64>,
    ) -> Result<Option<Arc<WatchCache>>, StoreError> {
        let cache = self.of(resource);
        let revision = match at_least {
            Some(revision) => revision,
            None => self.store.current_revision().await?,
        };
        Ok(cache.caught_up(revision, CATCH_UP).await.then_some(cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cached(key: &str, node: Option<&str>, rv: i64) -> Arc<Cached> {
        let object = json!({"metadata": {"name": key, "resourceVersion": rv.to_string(),
                                         "labels": {"app": "web"}},
                            "spec": {"nodeName": node}});
        Arc::new(Cached::new(key.as_bytes().to_vec(), &object, true))
    }

    fn selection(labels: &str, fields: &str) -> Selection {
        Selection::new(
            LabelSelector::parse(labels).unwrap(),
            FieldSelector::parse(fields).unwrap(),
        )
    }

    fn event(key: &str, node: Option<&str>, rv: i64) -> Arc<CachedEvent> {
        Arc::new(CachedEvent {
            revision: rv,
            key: key.as_bytes().to_vec(),
            object: cached(key, node, rv),
            previous: None,
            deleted: false,
        })
    }

    fn cache() -> Arc<WatchCache> {
        let pods = crate::resources::find("", "v1", "pods").unwrap();
        WatchCache::new(pods)
    }

    #[test]
    fn the_node_index_follows_moves_and_removals() {
        let mut state = State::default();
        state.insert(cached("/p/a", Some("n1"), 1));
        state.insert(cached("/p/b", Some("n1"), 2));
        state.insert(cached("/p/a", Some("n2"), 3));
        assert_eq!(state.on_node["n1"].len(), 1);
        assert_eq!(state.on_node["n2"].len(), 1);
        state.remove(b"/p/b");
        assert!(!state.on_node.contains_key("n1"));
    }

    #[tokio::test]
    async fn watchers_get_only_their_nodes_events_and_resume_from_retained_ones() {
        let cache = cache();
        cache.reset(vec![cached("/p/a", Some("n1"), 5)], 5);
        let mut one = cache
            .subscribe(From::Now, b"/p/", Some("n1"), false)
            .unwrap();
        let mut all = cache.subscribe(From::Now, b"/p/", None, false).unwrap();
        assert_eq!(one.initial.len(), 1);
        {
            let mut state = cache.write();
            for e in [event("/p/b", Some("n2"), 6), event("/p/c", Some("n1"), 7)] {
                state.dispatch("pods", &e);
                state.revision = e.revision;
                state.events.push_back((Instant::now(), e));
            }
        }
        let Item::Event(e) = one.receiver.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(e.key, b"/p/c");
        assert!(
            one.receiver.try_recv().is_err(),
            "n2's pod is not n1's business"
        );
        assert_eq!(all.receiver.len(), 2);
        drop(all.receiver.try_recv());
        let resumed = cache
            .subscribe(From::After(6), b"/p/", None, false)
            .unwrap();
        assert_eq!(
            resumed
                .backlog
                .iter()
                .map(|e| e.revision)
                .collect::<Vec<_>>(),
            [7]
        );
        let gone = cache.subscribe(From::After(4), b"/p/", None, false);
        assert_eq!(gone.err().map(|e| e.code), Some(410));
        drop(one);
        assert_eq!(
            cache.read().watchers.len(),
            2,
            "a dropped subscription unregisters"
        );
    }

    #[tokio::test]
    async fn a_full_queue_ends_the_watcher_instead_of_waiting() {
        let cache = cache();
        cache.reset(Vec::new(), 1);
        let slow = cache.subscribe(From::Now, b"/p/", None, false).unwrap();
        let mut state = cache.write();
        for rv in 2..(WATCHER_QUEUE as i64 + 3) {
            state.dispatch("pods", &event("/p/x", None, rv));
        }
        assert!(state.watchers.is_empty(), "the slow watcher was ended");
        drop(state);
        drop(slow);
    }

    #[test]
    fn lists_page_and_use_the_node_index() {
        let cache = cache();
        let objects = (0..10)
            .map(|i| {
                cached(
                    &format!("/p/{i}"),
                    Some(if i % 2 == 0 { "even" } else { "odd" }),
                    1,
                )
            })
            .collect();
        cache.reset(objects, 9);
        let everything = selection("", "");
        let page = cache.list(b"/p/", None, 4, &everything);
        assert_eq!(page.items.len(), 4);
        assert_eq!(page.next.as_deref(), Some(&b"/p/3\0"[..]));
        let odd = cache.list(b"/p/", Some("odd"), 0, &everything);
        assert_eq!(odd.items.len(), 5);
        assert!(odd.next.is_none());
        assert_eq!(odd.revision, 9);
    }

    #[test]
    fn selections_use_the_kept_fields_and_decode_for_others() {
        let pod = cached("/p/a", Some("n1"), 3);
        assert!(selection("app=web", "spec.nodeName=n1").selects(&pod));
        assert!(!selection("app=db", "").selects(&pod));
        assert!(!selection("", "spec.nodeName=n2").selects(&pod));
        assert!(
            selection("", "metadata.resourceVersion=3").selects(&pod),
            "decoded"
        );
        assert_eq!(pod.object()["metadata"]["name"], "/p/a");
        let line = encoded_event_line("ADDED", b"{}");
        assert_eq!(line, b"{\"type\":\"ADDED\",\"object\":{}}\n");
    }

    #[test]
    fn trimming_keeps_whole_revisions_and_moves_the_oldest() {
        let mut state = State::default();
        let long_ago = Instant::now();
        let now = long_ago + RETAIN + Duration::from_secs(1);
        for (rv, at) in [(2, long_ago), (2, long_ago), (3, now)] {
            state.events.push_back((at, event("/p/a", None, rv)));
        }
        state.trim(now);
        assert_eq!(state.oldest, 2);
        assert_eq!(state.events.len(), 1);
    }
}
