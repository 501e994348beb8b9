//! Events, as `kubectl describe` and `kubectl events` show them: recorded
//! without blocking the caller, and a repeat of the same event (same
//! object, type, reason and message) counted on the existing Event rather
//! than written anew.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Patch};

/// Events waiting to be written; beyond this they are dropped (and counted).
const BACKLOG: usize = 1024;
/// Events remembered for counting repeats.
const REMEMBERED: usize = 4096;

/// An event's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
struct Record {
    object: ObjectReference,
    kind: EventType,
    reason: &'static str,
    message: String,
}

/// Records events for one component (`deployment-controller`,
/// `default-scheduler`, …). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    component: &'static str,
    sender: mpsc::Sender<Record>,
}

/// A reference to `object`, for events about it.
pub fn reference<K: Resource + Metadata<Ty = ObjectMeta>>(object: &K) -> ObjectReference {
    let meta = object.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.to_owned()),
        kind: Some(K::KIND.to_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    }
}

impl Recorder {
    /// A recorder, and the task that writes its events through `client`
    /// until `shutdown`. `instance` names the process (the member).
    pub fn new(
        client: Client,
        component: &'static str,
        instance: String,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        let writer = Writer {
            client,
            component,
            instance,
            seen: HashMap::new(),
        };
        (Self { component, sender }, writer.run(receiver, shutdown))
    }

    /// Records an event about `object`.
    pub fn record<K: Resource + Metadata<Ty = ObjectMeta>>(
        &self,
        object: &K,
        kind: EventType,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        self.record_for(reference(object), kind, reason, message);
    }

    pub fn record_for(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &'static str,
        message: impl Into<String>,
    ) {
        let record = Record {
            object,
            kind,
            reason,
            message: message.into(),
        };
        if self.sender.try_send(record).is_err() {
            metrics::counter!("keelson_events_dropped_total", "component" => self.component)
                .increment(1);
        }
    }
}

/// What identifies repeats of one event.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Identity {
    uid: String,
    namespace: String,
    name: String,
    kind: &'static str,
    reason: &'static str,
    message: String,
}

struct Writer {
    client: Client,
    component: &'static str,
    instance: String,
    /// Each event written: its name and count.
    seen: HashMap<Identity, (String, i32)>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Record>, shutdown: CancellationToken) {
        loop {
            let record = tokio::select! {
                record = receiver.recv() => record,
                () = shutdown.cancelled() => return,
            };
            let Some(record) = record else { return };
            self.write(record).await;
        }
    }

    async fn write(&mut self, record: Record) {
        let namespace = record
            .object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let identity = Identity {
            uid: record.object.uid.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: record.object.name.clone().unwrap_or_default(),
            kind: record.kind.as_str(),
            reason: record.reason,
            message: record.message.clone(),
        };
        let now = chrono::Utc::now();
        if let Some((name, count)) = self.seen.get(&identity).cloned() {
            let patch = json!({"count": count + 1, "lastTimestamp": Time(now)});
            match self
                .client
                .patch::<Event>(Some(&namespace), &name, None, Patch::Merge, &patch)
                .await
            {
                Ok(_) => {
                    self.seen.insert(identity, (name, count + 1));
                    return;
                }
                Err(error) if error.is_not_found() => {}
                Err(error) => {
                    tracing::debug!(%error, "could not count a repeated event");
                    return;
                }
            }
        }
        let name = format!(
            "{}.{:x}",
            identity.name,
            now.timestamp_nanos_opt().unwrap_or_default()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: record.object,
            type_: Some(record.kind.as_str().to_owned()),
            reason: Some(record.reason.to_owned()),
            message: Some(record.message),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(self.component.to_owned()),
                host: None,
            }),
            reporting_component: Some(self.component.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        match self.client.create(Some(&namespace), &event).await {
            Ok(_) => {
                if self.seen.len() >= REMEMBERED {
                    self.seen.clear();
                }
                self.seen.insert(identity, (name, 1));
            }
            Err(error) => tracing::debug!(%error, "could not write an event"),
        }
    }
}
