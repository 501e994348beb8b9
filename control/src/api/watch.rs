//! Watches: the current state (unless a version is given), then every
//! change from the store's watch, as `{"type", "object"}` lines (or one-row
//! tables for `kubectl get -w`), filtered by the request's selectors.

use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use hyper::{Response, header};
use serde_json::{Value, json};

use super::request::Query;
use super::{Api, Codec, Target};
use crate::object::with_version;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::storage::{Change, Store, WatchBatch};
use crate::table;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// How long a watch runs when the client names no `timeoutSeconds`.
const DEFAULT_WATCH_SECONDS: u64 = 1800;

impl Api {
    /// `?watch=true`: a stream of `{"type", "object"}` lines.
    pub(super) fn watch(
        &self,
        target: &Target,
        query: &Query,
        table: bool,
    ) -> Result<Response<Body>> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let from =
            match query.get("resourceVersion") {
                None | Some("0") => None,
                Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
            };
        let seconds = query
            .number("timeoutSeconds")?
            .map_or(DEFAULT_WATCH_SECONDS, |s| s.max(1) as u64);
        let watcher = Watcher {
            store: self.store.clone(),
            codec: self.codec.clone(),
            resource: target.resource,
            prefix: target.resource.prefix(target.namespace.as_deref()),
            labels,
            fields,
            bookmarks: query.flag("allowWatchBookmarks"),
            table,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let shutdown = self.shutdown.clone();
        let (lines, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        tokio::spawn(async move {
            tokio::select! {
                () = watcher.run(from, &lines) => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = shutdown.cancelled() => {}
            }
        });
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
    store: Store,
    codec: Codec,
    resource: &'static Resource,
    prefix: String,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    table: bool,
}

fn event_line(kind: &str, object: &Value) -> Vec<u8> {
    let mut line = json!({"type": kind, "object": object})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

impl Watcher {
    /// An event about `object`: the object, or a one-row table of it when
    /// the client asked for tables (`kubectl get -w`).
    fn line(&self, kind: &str, object: &Value) -> Vec<u8> {
        if self.table {
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            let table = table::table(self.resource.kind, std::slice::from_ref(object), rv, None);
            return event_line(kind, &table);
        }
        event_line(kind, object)
    }

    fn selected(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// Sends events until the client goes away or the store ends the watch.
    async fn run(self, from: Option<i64>, lines: &tokio::sync::mpsc::Sender<Vec<u8>>) {
        if let Err(error) = self.events(from, lines).await {
            let error = ApiError::from(error);
            let status = if error.code == 410 {
                ApiError::gone(format!("too old resource version: {}", from.unwrap_or(0)))
                    .to_status()
            } else {
                error.to_status()
            };
            drop(lines.send(event_line("ERROR", &status)).await);
        }
    }

    async fn events(
        &self,
        from: Option<i64>,
        lines: &tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> std::result::Result<(), crate::storage::StoreError> {
        // Without a version, the watch starts with the current state.
        let start = match from {
            Some(rv) => rv + 1,
            None => {
                let page = self.store.list(self.prefix.as_bytes(), None, 0, 0).await?;
                for stored in &page.items {
                    let Ok(object) = self.codec.decode(self.resource, stored) else {
                        continue;
                    };
                    if self.selected(&object)
                        && lines.send(self.line("ADDED", &object)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                page.revision + 1
            }
        };
        let mut watch = self.store.watch(self.prefix.as_bytes(), start).await?;
        loop {
            let batch = watch.next().await?;
            let events: Vec<Vec<u8>> = match batch {
                WatchBatch::Progress(revision) if self.bookmarks => {
                    let bookmark = json!({
                        "kind": self.resource.kind,
                        "apiVersion": self.resource.api_version(),
                        "metadata": {"resourceVersion": revision.to_string()},
                    });
                    vec![event_line("BOOKMARK", &bookmark)]
                }
                WatchBatch::Progress(_) => Vec::new(),
                WatchBatch::Changes(changes) => {
                    changes.iter().filter_map(|c| self.event(c)).collect()
                }
            };
            for line in events {
                if lines.send(line).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// A change as the event a client with this watch's selectors sees.
    fn event(&self, change: &Change) -> Option<Vec<u8>> {
        match change {
            Change::Put {
                kv,
                created,
                previous,
            } => {
                let object = self.codec.decode(self.resource, kv).ok()?;
                let was = previous
                    .as_ref()
                    .and_then(|p| self.codec.decode(self.resource, p).ok())
                    .is_some_and(|p| self.selected(&p));
                match (was && !created, self.selected(&object)) {
                    (false, true) => Some(self.line("ADDED", &object)),
                    (true, true) => Some(self.line("MODIFIED", &object)),
                    (true, false) => Some(self.line("DELETED", &object)),
                    (false, false) => None,
                }
            }
            Change::Deleted { previous, revision } => {
                let object = with_version(
                    self.codec.decode(self.resource, previous.as_ref()?).ok()?,
                    *revision,
                );
                self.selected(&object)
                    .then(|| self.line("DELETED", &object))
            }
        }
    }
}
