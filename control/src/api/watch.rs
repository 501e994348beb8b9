//! Watches, served from the resource's watch cache: the current state
//! (unless a version is given), then every change, as `{"type", "object"}`
//! lines (or one-row tables for `kubectl get -w`), filtered by the
//! request's selectors.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use hyper::{Response, header};
use serde_json::json;

use super::cache::{
    Cached, CachedEvent, EventType, From, Item, Selection, Subscription, encoded_event_line,
    event_line,
};
use super::request::Query;
use super::{Api, Target};
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::table;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// How long a watch runs when the client names no `timeoutSeconds`.
const DEFAULT_WATCH_SECONDS: u64 = 1800;

/// Where a request wants its read to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadAt {
    /// No `resourceVersion`: at least everything written before the request.
    Consistent,
    /// `resourceVersion=0`: whatever the cache has.
    Any,
    /// At least this version.
    NotOlderThan(i64),
}

impl ReadAt {
    pub(super) fn of(query: &Query) -> Result<Self> {
        match query.get("resourceVersion") {
            None | Some("") => Ok(ReadAt::Consistent),
            Some("0") => Ok(ReadAt::Any),
            Some(rv) => rv
                .parse::<i64>()
                .ok()
                .filter(|rv| *rv > 0)
                .map(ReadAt::NotOlderThan)
                .ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))),
        }
    }
}

impl Api {
    /// The cache of `resource`, once it can answer a read at `at`.
    pub(super) async fn cache_at(
        &self,
        resource: &'static Resource,
        at: ReadAt,
    ) -> Result<std::sync::Arc<super::cache::WatchCache>> {
        let at_least = match at {
            ReadAt::Consistent => None,
            ReadAt::Any => Some(1),
            ReadAt::NotOlderThan(rv) => Some(rv),
        };
        self.caches
            .current(resource, at_least)
            .await?
            .ok_or_else(|| {
                ApiError::timeout(match at {
                    ReadAt::NotOlderThan(rv) => format!("Too large resource version: {rv}"),
                    _ => "the watch cache has not caught up with the store".to_owned(),
                })
            })
    }

    /// `?watch=true`: a stream of `{"type", "object"}` lines.
    pub(super) async fn watch(
        &self,
        target: &Target,
        query: &Query,
        table: bool,
    ) -> Result<Response<Body>> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let at = ReadAt::of(query)?;
        let seconds = query
            .number("timeoutSeconds")?
            .map_or(DEFAULT_WATCH_SECONDS, |s| s.max(1) as u64);
        let resource = target.resource;
        let node = (resource.plural == "pods")
            .then(|| fields.pinned("spec.nodeName").map(str::to_owned))
            .flatten();
        let prefix = resource.prefix(target.namespace.as_deref());
        let bookmarks = query.flag("allowWatchBookmarks");
        let from = match at {
            ReadAt::NotOlderThan(rv) => From::After(rv),
            ReadAt::Consistent | ReadAt::Any => From::Now,
        };
        let subscription = match self.cache_at(resource, at).await {
            Ok(cache) => cache.subscribe(from, prefix.as_bytes(), node.as_deref(), bookmarks),
            Err(error) => Err(error),
        };
        let (lines, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
        match subscription {
            // Kubernetes answers a watch it cannot start with an ERROR event.
            Err(error) => drop(lines.try_send(event_line("ERROR", &error.to_status()).into())),
            Ok(subscription) => {
                let watcher = Watcher {
                    resource,
                    selection: Selection::new(labels, fields),
                    bookmarks,
                    table,
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = watcher.run(subscription, &lines) => {}
                        () = tokio::time::sleep_until(deadline) => {}
                        () = shutdown.cancelled() => {}
                    }
                });
            }
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver)
            .map(Ok::<_, std::convert::Infallible>);
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

/// Feeds one watch.
struct Watcher {
    resource: &'static Resource,
    selection: Selection,
    bookmarks: bool,
    table: bool,
}

impl Watcher {
    /// An event about `cached` for this client: the object, or a one-row
    /// table of it for `kubectl get -w`.
    fn line(&self, kind: EventType, cached: &Cached) -> Bytes {
        if !self.table {
            return encoded_event_line(kind.name(), &cached.json).into();
        }
        let object = cached.object();
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        let table = table::table(self.resource.kind, std::slice::from_ref(&object), rv, None);
        event_line(kind.name(), &table).into()
    }

    /// Sends events until the client goes away, the cache ends the watch
    /// (the client was too slow, or the cache reloaded), or it times out.
    async fn run(self, mut subscription: Subscription, lines: &tokio::sync::mpsc::Sender<Bytes>) {
        for cached in std::mem::take(&mut subscription.initial) {
            if !self.selection.selects(&cached) {
                continue;
            }
            if lines
                .send(self.line(EventType::Added, &cached))
                .await
                .is_err()
            {
                return;
            }
        }
        for event in std::mem::take(&mut subscription.backlog) {
            if let Some(line) = self.event(&event)
                && lines.send(line).await.is_err()
            {
                return;
            }
        }
        while let Some(item) = subscription.receiver.recv().await {
            let line = match item {
                Item::Event(event) => self.event(&event),
                Item::Bookmark(revision) if self.bookmarks => {
                    let bookmark = json!({
                        "kind": self.resource.kind,
                        "apiVersion": self.resource.api_version(),
                        "metadata": {"resourceVersion": revision.to_string()},
                    });
                    Some(event_line("BOOKMARK", &bookmark).into())
                }
                Item::Bookmark(_) => None,
            };
            if let Some(line) = line
                && lines.send(line).await.is_err()
            {
                return;
            }
        }
    }

    /// A change as the event a client with this watch's selectors sees: an
    /// object that stops matching is `DELETED` for it, one that starts is `ADDED`.
    fn event(&self, event: &CachedEvent) -> Option<Bytes> {
        let was = event
            .previous
            .as_ref()
            .is_some_and(|p| self.selection.selects(p));
        let kind = if event.deleted {
            was.then_some(EventType::Deleted)?
        } else {
            match (was, self.selection.selects(&event.object)) {
                (false, true) => EventType::Added,
                (true, true) => EventType::Modified,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            }
        };
        Some(self.line(kind, &event.object))
    }
}
