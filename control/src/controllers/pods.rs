//! What controllers ask of pods: active, ready, available, which to
//! delete first, and creating many without failing many times.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};

use super::expectations::Expectations;
use crate::client::{Client, ClientError, Patch};
use crate::runtime::events::{EventType, Recorder};

/// Merges `metadata` (owner references, finalizers) into `pod`'s, as a
/// compare-and-set on the resourceVersion it was read at: the pod as
/// written, or `None` when it is gone.
pub async fn patch_metadata(
    client: &Client,
    pod: &Pod,
    mut metadata: serde_json::Value,
) -> Result<Option<Pod>, ClientError> {
    metadata["resourceVersion"] = serde_json::json!(pod.metadata.resource_version);
    let patch = serde_json::json!({ "metadata": metadata });
    let namespace = pod.metadata.namespace.as_deref();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match client
        .patch::<Pod>(namespace, name, None, Patch::Merge, &patch)
        .await
    {
        Ok(pod) => Ok(Some(pod)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Who creates pods, for [`create_in_batches`].
#[derive(Clone, Copy, Debug)]
pub struct Creator<'a> {
    pub client: &'a Client,
    pub recorder: &'a Recorder,
    pub expectations: &'a Expectations,
    /// The owner's key in `expectations`.
    pub key: &'a str,
}

/// Creates `pods` in `namespace` in slow-start batches (1, 2, 4, …), so a
/// template the API refuses fails once rather than once per pod; records
/// `SuccessfulCreate`/`FailedCreate` on `owner`, and tells the
/// expectations (set for all of them by the caller) of every creation that
/// will not come. How many were created, and the first failure.
pub async fn create_in_batches<K: Resource + Metadata<Ty = ObjectMeta>>(
    creator: Creator<'_>,
    owner: &K,
    namespace: &str,
    pods: Vec<Pod>,
) -> (usize, Option<ClientError>) {
    let mut remaining = pods.into_iter();
    let mut left = remaining.len();
    let mut batch = 1;
    let mut created = 0;
    while left > 0 {
        let size = batch.min(left);
        let creations = remaining
            .by_ref()
            .take(size)
            .map(|pod| async move { creator.client.create(Some(namespace), &pod).await });
        let mut failure = None;
        for outcome in join_all(creations).await {
            match outcome {
                Ok(pod) => {
                    created += 1;
                    creator.recorder.record(
                        owner,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.metadata.name.unwrap_or_default()),
                    );
                }
                Err(error) => {
                    creator.expectations.creation_observed(creator.key);
                    creator.recorder.record(
                        owner,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {error}"),
                    );
                    failure = Some(error);
                }
            }
        }
        left -= size;
        if let Some(error) = failure {
            // What was not attempted will not appear either.
            for _ in 0..left {
                creator.expectations.creation_observed(creator.key);
            }
            return (created, Some(error));
        }
        batch *= 2;
    }
    (created, None)
}

/// Not finished and not being deleted: counts towards replicas.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), Some("Succeeded" | "Failed"))
}

pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// When the pod last became Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<Option<DateTime<Utc>>> {
    let condition = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))?;
    (condition.status == "True").then(|| condition.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: DateTime<Utc>) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since + chrono::Duration::seconds(min_ready_seconds.into()) <= now,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

fn log2_bucket(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    since.map_or(i64::MAX, |t| {
        let seconds = (now - t).num_seconds().max(1);
        63 - i64::from(seconds.leading_zeros())
    })
}

/// Orders pods so that those best deleted first come first, as Kubernetes
/// does: unscheduled before scheduled; pending before unknown before
/// running; not ready before ready; more pods of the same owner on the
/// node first; ready for a shorter time first; more restarts first;
/// newer first (times compared on a logarithmic scale).
pub fn deletion_order(pods: &mut [std::sync::Arc<Pod>], now: DateTime<Utc>) {
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for pod in pods.iter() {
        if let Some(node) = node_of(pod) {
            *per_node.entry(node.to_owned()).or_default() += 1;
        }
    }
    let rank = |p: &Pod| node_of(p).map_or(0, |n| per_node.get(n).copied().unwrap_or(0));
    let phase_rank = |p: &Pod| match phase(p) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    };
    pods.sort_by(|a, b| {
        let scheduled = |p: &Pod| node_of(p).is_some();
        scheduled(a)
            .cmp(&scheduled(b))
            .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
            .then_with(|| is_ready(a).cmp(&is_ready(b)))
            .then_with(|| rank(b).cmp(&rank(a)))
            .then_with(|| {
                if is_ready(a) && is_ready(b) {
                    let since = |p: &Pod| ready_since(p).flatten();
                    log2_bucket(since(a), now).cmp(&log2_bucket(since(b), now))
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| restarts(b).cmp(&restarts(a)))
            .then_with(|| {
                let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                log2_bucket(created(a), now).cmp(&log2_bucket(created(b), now))
            })
    });
}

pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// A new pod from `template`, owned by `owner`, named `prefix-xxxxx`.
pub fn from_template(template: &PodTemplateSpec, prefix: &str, owner: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut prefix = prefix.to_owned();
    // Kubernetes keeps generated names within 63 characters.
    if prefix.len() > 57 {
        prefix.truncate(57);
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::sync::Arc;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, age_seconds: i64) -> Arc<Pod> {
        let now = Utc::now();
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(now - chrono::Duration::seconds(age_seconds))),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(now - chrono::Duration::seconds(age_seconds))),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        })
    }

    #[test]
    fn the_least_useful_pods_go_first() {
        let mut pods = vec![
            pod("old-ready", Some("n1"), "Running", true, 10_000),
            pod("new-ready", Some("n2"), "Running", true, 10),
            pod("unscheduled", None, "Pending", false, 5),
            pod("not-ready", Some("n3"), "Running", false, 100),
            pod("pending", Some("n4"), "Pending", false, 100),
        ];
        deletion_order(&mut pods, Utc::now());
        let names: Vec<&str> = pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", Some("n"), "Running", true, 5);
        assert!(is_available(&p, 0, Utc::now()));
        assert!(!is_available(&p, 10, Utc::now()));
        assert!(is_available(&p, 3, Utc::now()));
    }
}
