//! What a StatefulSet does next, decided from a snapshot of its pods and
//! claims with no I/O: Kubernetes' `updateStatefulSet`, step for step.
//!
//! ```text
//!  slots start..start+replicas ──► for each, lowest first:
//!    missing            ─► Create (OrderedReady: and stop)
//!    Failed/Succeeded   ─► Delete; recreated once gone
//!    Pending            ─► its missing claims
//!    terminating, not Running+Ready, not available ─► OrderedReady stops here
//!    identity / claim owners off ─► Relabel / ClaimOwners
//!  pods beyond the range ──► claim owners for whenScaled, then delete the
//!                           highest (OrderedReady: one at a time, each gone first)
//!  RollingUpdate ──► delete up to maxUnavailable pods of an old revision,
//!                    highest ordinal first, none below the partition
//! ```
//!
//! A pod being deleted always keeps its ordinal until it is gone from the
//! API: nothing is created in its place before, so no ordinal ever has two
//! pods (a pod on an unreachable node waits for the node or for a
//! force delete, as in Kubernetes).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::identity::{
    claim_is_stale, claim_owners_up_to_date, claims_for, identity_matches, ordinal_of, pod_name,
    replicas, revision_of, start_ordinal,
};
use crate::controllers::deployment::util::scaled;
use crate::controllers::pods::{is_available, is_ready, phase};

/// What the caches show of one StatefulSet.
#[derive(Debug)]
pub struct Input<'a> {
    pub set: &'a StatefulSet,
    /// The pods the set controls.
    pub pods: &'a [Arc<Pod>],
    /// The claims of the set's namespace, by name.
    pub claims: &'a HashMap<String, Arc<PersistentVolumeClaim>>,
    pub current_revision: &'a str,
    pub update_revision: &'a str,
    pub now: DateTime<Utc>,
}

/// Which revision's template a new pod is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    Current,
    Update,
}

/// Why a pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// It failed or finished; it comes back under the same name.
    Finished,
    /// Its ordinal is beyond `replicas`.
    ScaleDown,
    /// It is of an old revision.
    Update,
}

/// One write, in the order the plan lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the pod of `ordinal` (its missing claims first).
    Create {
        ordinal: i32,
        template: Template,
    },
    /// Create the missing claims of a pending pod.
    CreateClaims {
        pod: String,
    },
    /// Give the pod's claims the owners the retention policy asks for.
    ClaimOwners {
        pod: String,
    },
    /// Put back the pod's identity labels.
    Relabel {
        pod: String,
    },
    Delete {
        pod: String,
        why: Why,
    },
}

/// What holds the set back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// This pod is being deleted (and the set is ordered, or the pod holds
    /// the ordinal).
    Terminating(String),
    /// OrderedReady: this pod is not yet Running and Ready.
    Ready(String),
    /// OrderedReady: this pod has not been Ready for `minReadySeconds`.
    Available(String),
    /// A claim of an earlier pod of this name is still to be deleted.
    StaleClaim(String),
    /// A rolling update has this many pods unavailable already.
    Unavailable(usize),
}

/// The writes to make, and what the set waits for after them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub wait: Option<Wait>,
}

impl Plan {
    /// Pods deleted because they are of an old revision.
    pub fn updates(&self) -> i32 {
        self.steps
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::Delete {
                        why: Why::Update,
                        ..
                    }
                )
            })
            .count() as i32
    }

    fn wait(mut self, wait: Wait) -> Self {
        self.wait = Some(wait);
        self
    }
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && is_ready(pod)
}

/// OrderedReady (the default) waits for each pod; Parallel does not.
pub fn is_ordered(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        != Some("Parallel")
}

fn is_on_delete(set: &StatefulSet) -> bool {
    strategy_type(set) == Some("OnDelete")
}

fn strategy_type(set: &StatefulSet) -> Option<&str> {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
}

fn rolling_update(
    set: &StatefulSet,
) -> Option<&k8s_openapi::api::apps::v1::RollingUpdateStatefulSetStrategy> {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
}

fn partition(set: &StatefulSet) -> i32 {
    rolling_update(set).and_then(|r| r.partition).unwrap_or(0)
}

/// `maxUnavailable` of `replicas` (1 by default, percentages rounded down,
/// at least 1).
pub fn max_unavailable(set: &StatefulSet) -> usize {
    let value = rolling_update(set)
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    scaled(Some(&value), replicas(set), false).max(1) as usize
}

fn min_ready_seconds(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// The template a new pod of `ordinal` gets: the current revision's below
/// the partition (or, with no `rollingUpdate`, among the first
/// `currentReplicas`), the update revision's otherwise.
pub fn template_for(set: &StatefulSet, ordinal: i32) -> Template {
    let start = start_ordinal(set);
    let current_replicas = set
        .status
        .as_ref()
        .and_then(|s| s.current_replicas)
        .unwrap_or(0);
    let current = match rolling_update(set) {
        None => {
            strategy_type(set).unwrap_or("RollingUpdate") == "RollingUpdate"
                && ordinal < start.saturating_add(current_replicas)
        }
        Some(_) => ordinal < start.saturating_add(partition(set)),
    };
    if current {
        Template::Current
    } else {
        Template::Update
    }
}

impl Input<'_> {
    fn available(&self, pod: &Pod) -> bool {
        is_available(pod, min_ready_seconds(self.set), self.now)
    }

    fn unavailable(&self, pod: Option<&Arc<Pod>>) -> bool {
        pod.is_none_or(|p| !self.available(p) || terminating(p))
    }

    fn claims_of(
        &self,
        ordinal: i32,
    ) -> impl Iterator<Item = (String, Option<&Arc<PersistentVolumeClaim>>)> {
        claims_for(self.set, ordinal).into_iter().map(|c| {
            let name = c.metadata.name.unwrap_or_default();
            let existing = self.claims.get(&name);
            (name, existing)
        })
    }

    fn claims_missing(&self, ordinal: i32) -> bool {
        self.claims_of(ordinal).any(|(_, c)| c.is_none())
    }

    fn claim_owners_stale(&self, pod: &Pod, ordinal: i32, scaled_down: bool) -> bool {
        self.claims_of(ordinal).any(|(_, c)| {
            c.is_some_and(|c| !claim_owners_up_to_date(c, self.set, pod, scaled_down))
        })
    }

    fn claim_stale(&self, ordinal: i32) -> bool {
        let pod = pod_name(self.set, ordinal);
        self.claims_of(ordinal)
            .any(|(_, c)| c.is_some_and(|c| claim_is_stale(c, self.set, &pod)))
    }
}

/// What `input`'s set does next.
pub fn plan(input: &Input<'_>) -> Plan {
    let set = input.set;
    let mut plan = Plan::default();
    if set.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let ordered = is_ordered(set);
    let start = start_ordinal(set);
    let mut slots: Vec<Option<&Arc<Pod>>> = vec![None; replicas(set) as usize];
    let mut condemned: Vec<(i32, &Arc<Pod>)> = Vec::new();
    for pod in input.pods {
        let Some(ordinal) = ordinal_of(set, pod) else {
            continue;
        };
        match usize::try_from(i64::from(ordinal) - i64::from(start)) {
            Ok(i) if i < slots.len() => slots[i] = Some(pod),
            _ => condemned.push((ordinal, pod)),
        }
    }
    condemned.sort_by_key(|(ordinal, _)| Reverse(*ordinal));
    // The lowest unavailable pod, which an ordered scale-down may delete.
    let first_unhealthy: Option<String> = slots
        .iter()
        .enumerate()
        .find(|(_, p)| input.unavailable(**p))
        .map(|(i, p)| p.map_or_else(|| pod_name(set, start + i as i32), |p| name(p)))
        .or_else(|| {
            condemned
                .iter()
                .rev()
                .find(|(_, p)| input.unavailable(Some(p)))
                .map(|(_, p)| name(p))
        });

    for (i, slot) in slots.iter().enumerate() {
        let ordinal = start + i as i32;
        let Some(pod) = slot else {
            if input.claim_stale(ordinal) {
                let wait = Wait::StaleClaim(pod_name(set, ordinal));
                if ordered {
                    return plan.wait(wait);
                }
                plan.wait.get_or_insert(wait);
                continue;
            }
            plan.steps.push(Step::Create {
                ordinal,
                template: template_for(set, ordinal),
            });
            if ordered {
                return plan;
            }
            continue;
        };
        let pod_name = name(pod);
        if matches!(phase(pod), Some("Failed" | "Succeeded")) {
            if terminating(pod) {
                plan.wait.get_or_insert(Wait::Terminating(pod_name.clone()));
            } else {
                plan.steps.push(Step::Delete {
                    pod: pod_name.clone(),
                    why: Why::Finished,
                });
            }
            if ordered {
                return plan.wait(Wait::Terminating(pod_name));
            }
            continue;
        }
        let pending = phase(pod) == Some("Pending");
        if pending {
            if input.claims_missing(ordinal) {
                plan.steps.push(Step::CreateClaims {
                    pod: pod_name.clone(),
                });
            }
            if input.claim_owners_stale(pod, ordinal, false) {
                plan.steps.push(Step::ClaimOwners {
                    pod: pod_name.clone(),
                });
            }
        }
        if terminating(pod) {
            if ordered {
                return plan.wait(Wait::Terminating(pod_name));
            }
            continue;
        }
        if ordered && !running_and_ready(pod) {
            return plan.wait(Wait::Ready(pod_name));
        }
        if ordered && !input.available(pod) {
            return plan.wait(Wait::Available(pod_name));
        }
        if !identity_matches(set, pod) {
            plan.steps.push(Step::Relabel {
                pod: pod_name.clone(),
            });
        }
        if !pending && input.claim_owners_stale(pod, ordinal, false) {
            plan.steps.push(Step::ClaimOwners { pod: pod_name });
        }
    }

    for (ordinal, pod) in &condemned {
        if input.claim_owners_stale(pod, *ordinal, true) {
            plan.steps.push(Step::ClaimOwners { pod: name(pod) });
        }
    }
    for (_, pod) in &condemned {
        let pod_name = name(pod);
        if terminating(pod) {
            if ordered {
                return plan.wait(Wait::Terminating(pod_name));
            }
            continue;
        }
        if ordered && first_unhealthy.as_deref() != Some(pod_name.as_str()) {
            let unhealthy = first_unhealthy.clone().unwrap_or_default();
            if !running_and_ready(pod) {
                return plan.wait(Wait::Ready(unhealthy));
            }
            if !input.available(pod) {
                return plan.wait(Wait::Available(unhealthy));
            }
        }
        plan.steps.push(Step::Delete {
            pod: pod_name,
            why: Why::ScaleDown,
        });
        if ordered {
            return plan;
        }
    }

    if is_on_delete(set) {
        return plan;
    }
    let budget = max_unavailable(set);
    let unavailable = slots.iter().filter(|p| input.unavailable(**p)).count();
    if unavailable > budget {
        return plan.wait(Wait::Unavailable(unavailable));
    }
    let mut budget = budget - unavailable;
    let lowest = usize::try_from(partition(set)).unwrap_or(0);
    for pod in slots.iter().skip(lowest).rev().flatten() {
        if budget == 0 {
            break;
        }
        if revision_of(pod) != Some(input.update_revision) && !terminating(pod) {
            plan.steps.push(Step::Delete {
                pod: name(pod),
                why: Why::Update,
            });
            budget -= 1;
        }
    }
    if plan.wait.is_none() && unavailable > 0 {
        plan.wait = Some(Wait::Unavailable(unavailable));
    }
    plan
}

/// The status the set has with `input`'s pods, `updates` of them just
/// deleted for a rolling update, and `collisions` hash collisions.
/// A rolling update whose every replica is updated and ready is complete:
/// the update revision becomes the current one.
pub fn status(input: &Input<'_>, updates: i32, collisions: i32) -> StatefulSetStatus {
    let set = input.set;
    let (mut replicas_now, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for pod in input.pods.iter().filter(|p| ordinal_of(set, p).is_some()) {
        let created = phase(pod).is_some_and(|p| !p.is_empty());
        if created {
            replicas_now += 1;
        }
        if running_and_ready(pod) {
            ready += 1;
            if input.available(pod) {
                available += 1;
            }
        }
        if created && !terminating(pod) {
            let revision = revision_of(pod);
            if revision == Some(input.current_revision) {
                current += 1;
            }
            if revision == Some(input.update_revision) {
                updated += 1;
            }
        }
    }
    current -= updates;
    let mut current_revision = input.current_revision;
    let wanted = replicas(set);
    if !is_on_delete(set) && updated == wanted && ready == wanted && replicas_now == wanted {
        current = updated;
        current_revision = input.update_revision;
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    StatefulSetStatus {
        replicas: replicas_now,
        ready_replicas: nonzero(ready),
        current_replicas: nonzero(current),
        updated_replicas: nonzero(updated),
        available_replicas: Some(available),
        current_revision: Some(current_revision.to_owned()),
        update_revision: Some(input.update_revision.to_owned()),
        collision_count: Some(collisions),
        observed_generation: set.metadata.generation,
        // Kubernetes sets no StatefulSet condition; any someone else set stays.
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const OLD: &str = "web-old";
    const NEW: &str = "web-new";

    fn set(replicas: i32, extra: Value) -> StatefulSet {
        let mut set = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "set-uid", "generation": 2},
            "spec": {"replicas": replicas, "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "podManagementPolicy": "OrderedReady",
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "template": {"metadata": {"labels": {"app": "web"}}}},
        });
        json_patch::merge(&mut set, &extra);
        serde_json::from_value(set).unwrap()
    }

    /// `state`: Pending, Running (not ready), Ready, Failed, Terminating.
    fn pod(name: &str, state: &str, revision: &str) -> Arc<Pod> {
        let (ordinal, labelled) = match name.rsplit_once('-') {
            Some((_, o)) => (o.to_owned(), true),
            None => (String::new(), false),
        };
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                "labels": {"app": "web", "controller-revision-hash": revision}},
            "status": {"phase": match state { "Ready" | "Running" | "Terminating" => "Running", other => other },
                "conditions": [{"type": "Ready", "status": if matches!(state, "Ready" | "Terminating") { "True" } else { "False" }}]},
        });
        if labelled {
            pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(ordinal);
        }
        if state == "Terminating" {
            pod["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(pod).unwrap())
    }

    fn run(set: &StatefulSet, pods: &[Arc<Pod>]) -> Plan {
        run_with(set, pods, &HashMap::new())
    }

    fn run_with(
        set: &StatefulSet,
        pods: &[Arc<Pod>],
        claims: &HashMap<String, Arc<PersistentVolumeClaim>>,
    ) -> Plan {
        plan(&Input {
            set,
            pods,
            claims,
            current_revision: OLD,
            update_revision: NEW,
            now: Utc::now(),
        })
    }

    fn create(ordinal: i32) -> Step {
        Step::Create {
            ordinal,
            template: Template::Update,
        }
    }

    fn delete(pod: &str, why: Why) -> Step {
        Step::Delete {
            pod: pod.into(),
            why,
        }
    }

    #[test]
    fn ordered_ready_creates_one_pod_at_a_time_in_order() {
        let s = set(3, json!({}));
        assert_eq!(run(&s, &[]).steps, [create(0)]);
        let plan = run(&s, &[pod("web-0", "Pending", NEW)]);
        assert_eq!(plan.steps, []);
        assert_eq!(plan.wait, Some(Wait::Ready("web-0".into())));
        let plan = run(&s, &[pod("web-0", "Running", NEW)]);
        assert_eq!(
            plan.wait,
            Some(Wait::Ready("web-0".into())),
            "ready, not only running"
        );
        assert_eq!(run(&s, &[pod("web-0", "Ready", NEW)]).steps, [create(1)]);
        // A gap is filled before anything above it moves.
        let plan = run(
            &s,
            &[pod("web-0", "Ready", NEW), pod("web-2", "Ready", NEW)],
        );
        assert_eq!(plan.steps, [create(1)]);
        let all = [
            pod("web-0", "Ready", NEW),
            pod("web-1", "Ready", NEW),
            pod("web-2", "Ready", NEW),
        ];
        assert_eq!(run(&s, &all), Plan::default());
    }

    #[test]
    fn parallel_creates_and_deletes_everything_at_once() {
        let s = set(3, json!({"spec": {"podManagementPolicy": "Parallel"}}));
        assert_eq!(run(&s, &[]).steps, [create(0), create(1), create(2)]);
        let plan = run(&s, &[pod("web-1", "Pending", NEW)]);
        assert_eq!(plan.steps, [create(0), create(2)]);
        let s = set(1, json!({"spec": {"podManagementPolicy": "Parallel"}}));
        let pods = [
            pod("web-0", "Pending", NEW),
            pod("web-1", "Pending", NEW),
            pod("web-2", "Ready", NEW),
        ];
        assert_eq!(
            run(&s, &pods).steps,
            [
                delete("web-2", Why::ScaleDown),
                delete("web-1", Why::ScaleDown)
            ]
        );
    }

    #[test]
    fn ordered_scale_down_goes_highest_first_one_at_a_time() {
        let s = set(2, json!({}));
        let ready: Vec<Arc<Pod>> = (0..5)
            .map(|i| pod(&format!("web-{i}"), "Ready", NEW))
            .collect();
        assert_eq!(run(&s, &ready).steps, [delete("web-4", Why::ScaleDown)]);
        // web-4 terminating: nothing more until it is gone.
        let mut pods = ready.clone();
        pods[4] = pod("web-4", "Terminating", NEW);
        let plan = run(&s, &pods);
        assert_eq!(plan.steps, []);
        assert_eq!(plan.wait, Some(Wait::Terminating("web-4".into())));
        pods.pop();
        assert_eq!(run(&s, &pods).steps, [delete("web-3", Why::ScaleDown)]);
        // An unhealthy pod beyond the range blocks all but itself.
        pods[3] = pod("web-3", "Running", NEW);
        assert_eq!(run(&s, &pods).steps, [delete("web-3", Why::ScaleDown)]);
        pods[2] = pod("web-2", "Running", NEW);
        let plan = run(&s, &pods);
        assert_eq!(plan.steps, []);
        assert_eq!(plan.wait, Some(Wait::Ready("web-2".into())));
    }

    #[test]
    fn a_pod_being_deleted_keeps_its_ordinal_until_it_is_gone() {
        for policy in ["OrderedReady", "Parallel"] {
            let s = set(3, json!({"spec": {"podManagementPolicy": policy}}));
            let pods = [
                pod("web-0", "Ready", NEW),
                pod("web-1", "Terminating", NEW),
                pod("web-2", "Ready", NEW),
            ];
            let plan = run(&s, &pods);
            assert!(
                !plan.steps.iter().any(|s| matches!(s, Step::Create { .. })),
                "{policy}: {plan:?}"
            );
            if policy == "OrderedReady" {
                assert_eq!(plan.wait, Some(Wait::Terminating("web-1".into())));
            }
        }
    }

    #[test]
    fn finished_pods_are_deleted_then_replaced() {
        let s = set(2, json!({}));
        let pods = [pod("web-0", "Failed", NEW), pod("web-1", "Ready", NEW)];
        let plan = run(&s, &pods);
        assert_eq!(plan.steps, [delete("web-0", Why::Finished)]);
        let pods = [pod("web-0", "Succeeded", NEW), pod("web-1", "Ready", NEW)];
        assert_eq!(run(&s, &pods).steps, [delete("web-0", Why::Finished)]);
        assert_eq!(run(&s, &pods[1..]).steps, [create(0)]);
    }

    #[test]
    fn rolling_updates_go_down_from_the_top_and_stop_at_the_partition() {
        let s = set(3, json!({}));
        let old: Vec<Arc<Pod>> = (0..3)
            .map(|i| pod(&format!("web-{i}"), "Ready", OLD))
            .collect();
        assert_eq!(run(&s, &old).steps, [delete("web-2", Why::Update)]);
        let mut pods = old.clone();
        pods[2] = pod("web-2", "Running", NEW);
        let plan = run(&s, &pods);
        assert_eq!(plan.steps, [], "the updated pod is not ready yet");
        pods[2] = pod("web-2", "Ready", NEW);
        assert_eq!(run(&s, &pods).steps, [delete("web-1", Why::Update)]);

        let partitioned = set(
            3,
            json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}}),
        );
        assert_eq!(run(&partitioned, &pods).steps, []);
        assert_eq!(
            run(&partitioned, &old).steps,
            [delete("web-2", Why::Update)]
        );
        assert_eq!(template_for(&partitioned, 1), Template::Current);
        assert_eq!(template_for(&partitioned, 2), Template::Update);
        let s1 = set(
            2,
            json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 1}}}}),
        );
        assert_eq!(
            run(&s1, &old[..1]).steps,
            [Step::Create {
                ordinal: 1,
                template: Template::Update
            }]
        );

        let on_delete = set(
            3,
            json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
        );
        assert_eq!(run(&on_delete, &old).steps, []);
        assert_eq!(template_for(&on_delete, 0), Template::Update);
    }

    #[test]
    fn max_unavailable_bounds_a_parallel_update() {
        let s = set(
            4,
            json!({"spec": {"podManagementPolicy": "Parallel",
                "updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}}),
        );
        let old: Vec<Arc<Pod>> = (0..4)
            .map(|i| pod(&format!("web-{i}"), "Ready", OLD))
            .collect();
        assert_eq!(
            run(&s, &old).steps,
            [delete("web-3", Why::Update), delete("web-2", Why::Update)]
        );
        let mut pods = old.clone();
        pods[3] = pod("web-3", "Pending", NEW);
        assert_eq!(run(&s, &pods).steps, [delete("web-2", Why::Update)]);
        assert_eq!(
            max_unavailable(&set(
                10,
                json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "25%"}}}})
            )),
            2
        );
        assert_eq!(
            max_unavailable(&set(
                2,
                json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}}})
            )),
            1
        );
        assert_eq!(max_unavailable(&set(2, json!({}))), 1);
    }

    #[test]
    fn claims_are_made_for_pending_pods_and_stale_ones_waited_for() {
        let claims_set = |policy: &str| {
            set(
                2,
                json!({"spec": {
                    "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {}}],
                    "persistentVolumeClaimRetentionPolicy": {"whenScaled": policy, "whenDeleted": "Retain"}}}),
            )
        };
        let s = claims_set("Retain");
        let plan = run(&s, &[pod("web-0", "Pending", NEW)]);
        assert_eq!(
            plan.steps,
            [Step::CreateClaims {
                pod: "web-0".into()
            }]
        );
        let claim = |name: &str, owner: Option<&str>| {
            let mut claim = json!({"metadata": {"name": name}});
            if let Some(uid) = owner {
                claim["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Pod",
                    "name": name.trim_start_matches("www-"), "uid": uid, "controller": true}]);
            }
            (
                name.to_owned(),
                Arc::new(serde_json::from_value(claim).unwrap()),
            )
        };
        let claims: HashMap<_, _> = [claim("www-web-0", None)].into();
        assert_eq!(
            run_with(&s, &[pod("web-0", "Pending", NEW)], &claims).steps,
            []
        );

        // whenScaled: Delete — a claim still owned by the old web-1 blocks it.
        let s = claims_set("Delete");
        let claims: HashMap<_, _> =
            [claim("www-web-0", None), claim("www-web-1", Some("gone"))].into();
        let plan = run_with(&s, &[pod("web-0", "Ready", NEW)], &claims);
        assert_eq!(plan.steps, []);
        assert_eq!(plan.wait, Some(Wait::StaleClaim("web-1".into())));
        // And a scaled-down pod's claim is given to the pod before it goes.
        let s1 = set(
            1,
            json!({"spec": {
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {}}],
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"}}}),
        );
        let claims: HashMap<_, _> = [claim("www-web-0", None), claim("www-web-1", None)].into();
        let pods = [pod("web-0", "Ready", NEW), pod("web-1", "Ready", NEW)];
        assert_eq!(
            run_with(&s1, &pods, &claims).steps,
            [
                Step::ClaimOwners {
                    pod: "web-1".into()
                },
                delete("web-1", Why::ScaleDown)
            ]
        );
    }

    #[test]
    fn lost_identity_labels_are_put_back() {
        let s = set(1, json!({}));
        let unlabelled = pod("web-0", "Ready", NEW);
        let mut bare = (*unlabelled).clone();
        bare.metadata.labels = Some(
            [
                ("app".into(), "web".into()),
                ("controller-revision-hash".into(), NEW.into()),
            ]
            .into(),
        );
        assert_eq!(
            run(&s, &[Arc::new(bare)]).steps,
            [Step::Relabel {
                pod: "web-0".into()
            }]
        );
    }

    #[test]
    fn a_set_being_deleted_only_reports() {
        let s = set(
            3,
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
        );
        assert_eq!(run(&s, &[]), Plan::default());
    }

    #[test]
    fn status_counts_and_completes_a_rolling_update() {
        let s = set(3, json!({}));
        let pods = [
            pod("web-0", "Ready", OLD),
            pod("web-1", "Ready", NEW),
            pod("web-2", "Running", NEW),
            pod("other", "Ready", NEW),
        ];
        let input = Input {
            set: &s,
            pods: &pods,
            claims: &HashMap::new(),
            current_revision: OLD,
            update_revision: NEW,
            now: Utc::now(),
        };
        let status = status(&input, 0, 0);
        assert_eq!(status.replicas, 3, "only pods with an ordinal count");
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.available_replicas, Some(2));
        assert_eq!(status.current_replicas, Some(1));
        assert_eq!(status.updated_replicas, Some(2));
        assert_eq!(status.current_revision.as_deref(), Some(OLD));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.collision_count, Some(0));

        let done = [
            pod("web-0", "Ready", NEW),
            pod("web-1", "Ready", NEW),
            pod("web-2", "Ready", NEW),
        ];
        let status = super::status(
            &Input {
                pods: &done,
                ..input
            },
            0,
            1,
        );
        assert_eq!(status.current_revision.as_deref(), Some(NEW));
        assert_eq!(status.current_replicas, Some(3));
        assert_eq!(status.collision_count, Some(1));
    }
}
