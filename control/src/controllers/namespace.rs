//! The namespace controller: empties a namespace being deleted, through
//! the API (so pods terminate gracefully and finalizers run), then lets it
//! go; and gives every namespace its `default` ServiceAccount.
//!
//! ```text
//!  namespace with deletionTimestamp ─► delete every namespaced collection in it
//!       ├─ something remains ─► NamespaceContentRemaining=True, look again shortly
//!       └─ empty ─► PUT …/finalize without `kubernetes` ─► the API server deletes it
//!  active namespace without `default` ServiceAccount ─► create it
//! ```

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, ListParams, Patch};
use crate::resources::{RESOURCES, Resource};
use crate::runtime::{Action, Event, Informer, Queue};

/// The finalizer that keeps a namespace until it is empty.
const FINALIZER: &str = "kubernetes";
/// How soon a namespace still emptying is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a namespace could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace {namespace}: {action}")]
    Api {
        namespace: String,
        action: String,
        #[source]
        source: ClientError,
    },
}

fn failed(namespace: &str, action: String) -> impl FnOnce(ClientError) -> NamespaceError {
    let namespace = namespace.to_owned();
    move |source| NamespaceError::Api {
        namespace,
        action,
        source,
    }
}

/// One version of each namespaced resource, as a collection path in `namespace`.
fn namespaced() -> Vec<&'static Resource> {
    let mut seen = HashSet::new();
    RESOURCES
        .iter()
        .filter(|r| r.namespaced)
        .filter(|r| seen.insert(r.prefix(None)))
        .collect()
}

fn collection(resource: &Resource, namespace: &str) -> String {
    let root = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    format!("{root}/namespaces/{namespace}/{}", resource.plural)
}

#[derive(Clone, Debug)]
pub struct NamespaceController {
    client: Client,
    namespaces: Informer<Namespace>,
    accounts: Informer<ServiceAccount>,
    queue: Queue<String>,
}

impl NamespaceController {
    pub fn new(
        client: Client,
        namespaces: &Informer<Namespace>,
        accounts: &Informer<ServiceAccount>,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            namespaces: namespaces.clone(),
            accounts: accounts.clone(),
            queue: Queue::new("namespace", shutdown),
        };
        let c = controller.clone();
        namespaces.on_event(move |event| {
            if let Event::Added(ns) | Event::Updated { new: ns, .. } = event
                && let Some(name) = ns.metadata.name.clone()
            {
                c.queue.add(name);
            }
        });
        let c = controller.clone();
        accounts.on_event(move |event| {
            if let Event::Deleted(account) = event
                && account.metadata.name.as_deref() == Some("default")
                && let Some(namespace) = account.metadata.namespace.clone()
            {
                c.queue.add(namespace);
            }
        });
        controller
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        if !self.namespaces.wait_synced(&shutdown).await
            || !self.accounts.wait_synced(&shutdown).await
        {
            return;
        }
        let this = self.clone();
        crate::runtime::run_workers("namespace", self.queue.clone(), workers, move |name| {
            let this = this.clone();
            async move { this.reconcile(&name).await }
        })
        .await;
    }

    async fn reconcile(&self, name: &str) -> Result<Action, NamespaceError> {
        let Some(namespace) = self.namespaces.get(name) else {
            return Ok(Action::Done);
        };
        if namespace.metadata.deletion_timestamp.is_some() {
            return self.empty(&namespace).await;
        }
        if self.accounts.get_in(Some(name), "default").is_none() {
            let account = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    namespace: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            match self.client.create(Some(name), &account).await {
                Ok(_) => {}
                // Already there, or the namespace began terminating meanwhile.
                Err(error) if error.is_already_exists() || error.code() == Some(403) => {}
                Err(error) => {
                    return Err(failed(name, "create the default ServiceAccount".into())(
                        error,
                    ));
                }
            }
        }
        Ok(Action::Done)
    }

    /// Deletes what is left in a terminating namespace; finalizes it once empty.
    async fn empty(&self, namespace: &Namespace) -> Result<Action, NamespaceError> {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let mut remaining: Vec<String> = Vec::new();
        for resource in namespaced() {
            let path = collection(resource, &name);
            match self
                .client
                .request(hyper::Method::DELETE, &path, "", Vec::new())
                .await
            {
                Ok(_) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => {
                    return Err(failed(&name, format!("delete {}", resource.plural))(error));
                }
            }
            let params = ListParams {
                limit: Some(1),
                ..ListParams::default()
            };
            let left = self
                .client
                .list_at::<serde_json::Value>(&path, &params)
                .await
                .map_err(failed(&name, format!("list {}", resource.plural)))?;
            if !left.items.is_empty() {
                remaining.push(resource.plural.to_owned());
            }
        }
        if !remaining.is_empty() {
            self.report_remaining(namespace, &remaining).await?;
            return Ok(Action::RequeueAfter(RECHECK));
        }
        let finalizers: Vec<String> = namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect();
        let mut finalized = namespace.clone();
        finalized
            .spec
            .get_or_insert_with(Default::default)
            .finalizers = Some(finalizers);
        let path = format!("/api/v1/namespaces/{name}/finalize");
        let body = serde_json::to_vec(&finalized).unwrap_or_default();
        match self
            .client
            .request(hyper::Method::PUT, &path, "application/json", body)
            .await
        {
            Ok(_) => Ok(Action::Done),
            Err(error) if error.is_not_found() => Ok(Action::Done),
            Err(error) => Err(failed(&name, "finalize".into())(error)),
        }
    }

    async fn report_remaining(
        &self,
        namespace: &Namespace,
        remaining: &[String],
    ) -> Result<(), NamespaceError> {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let message = format!("Some resources are remaining: {}", remaining.join(", "));
        let current = namespace
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "NamespaceContentRemaining"));
        if current.is_some_and(|c| c.message.as_deref() == Some(message.as_str())) {
            return Ok(());
        }
        let condition = NamespaceCondition {
            type_: "NamespaceContentRemaining".into(),
            status: "True".into(),
            reason: Some("SomeResourcesRemain".into()),
            message: Some(message),
            last_transition_time: Some(Time(chrono::Utc::now())),
        };
        let patch = json!({"status": {"conditions": [condition]}});
        match self
            .client
            .patch::<Namespace>(None, &name, Some("status"), Patch::Strategic, &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(failed(&name, "report what remains".into())(error)),
        }
    }
}
