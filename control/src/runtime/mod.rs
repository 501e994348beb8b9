//! What every controller stands on: watch caches ([`informer`]), work
//! queues ([`queue`]), leader election ([`leader`]), events ([`events`]),
//! and the worker loop that turns queued keys into reconciles.
//!
//! ```text
//!  informer ──handler──► queue ──get──► worker: reconcile(key) ──► Done | RequeueAfter | Err (backoff)
//! ```
//!
//! A reconcile never asks why it was called: it reads the desired and the
//! observed state from the caches and moves one towards the other.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use tokio_util::sync::CancellationToken;

pub mod events;
pub mod informer;
pub mod leader;
pub mod queue;

pub use informer::{Event, Informer, key_of, split_key};
pub use queue::Queue;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    Done,
    /// Look again after this long even without a change (a deadline, a
    /// minimum ready time).
    RequeueAfter(Duration),
}

/// Runs `workers` loops that take keys from `queue` and reconcile them,
/// until the queue shuts down. A failed key is retried with backoff.
pub async fn run_workers<F, Fut, E>(
    name: &'static str,
    queue: Queue<String>,
    workers: usize,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send,
    E: std::error::Error,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (queue, reconcile) = (queue.clone(), reconcile.clone());
        tasks.spawn(async move {
            while let Some(key) = queue.get().await {
                // Every log line of a reconcile says which one it is.
                let span = tracing::debug_span!("reconcile", controller = name, key = %key);
                let outcome = tracing::Instrument::instrument(reconcile(key.clone()), span).await;
                match outcome {
                    Ok(Action::Done) => queue.forget(&key),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                    }
                    Err(error) => {
                        let error = chain(&error);
                        let failures = queue.failures(&key);
                        if failures < 3 {
                            tracing::debug!(controller = name, %key, %error, "reconcile failed; retrying");
                        } else {
                            tracing::warn!(controller = name, %key, %error, failures, "reconcile failed; retrying");
                        }
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// An error and its causes on one line: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Waits until every informer has its first list; `false` on shutdown.
pub async fn wait_all_synced(
    synced: &[&(dyn Fn() -> bool + Sync)],
    shutdown: &CancellationToken,
) -> bool {
    loop {
        if synced.iter().all(|s| s()) {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Whether `selector` selects an object with `labels`. An empty selector
/// selects everything, as in Deployments and ReplicaSets.
pub fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_label
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The selector as a `labelSelector` query string.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The owner reference that marks the object's controller.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// An owner reference to `owner` as its controller.
pub fn controller_reference<K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>>(
    owner: &K,
) -> OwnerReference {
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_owned(),
        kind: K::KIND.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_select_as_kubernetes_does() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "a".to_owned()),
        ]
        .into();
        let selector = LabelSelector {
            match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert!(selects(&selector, Some(&labels)));
        assert!(!selects(&selector, None));
        assert!(selects(&LabelSelector::default(), None));
        assert_eq!(selector_string(&selector), "app=web,tier in (a,b)");
    }
}
