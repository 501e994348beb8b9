//! The Job controller's decisions, free of I/O: what a Job's spec asks,
//! which of its pods count as what, which condition it is heading for,
//! which pods to create or delete next, and how finished pods move from
//! `status.uncountedTerminatedPods` into the counters.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::indexes::{self, COMPLETION_INDEX, Intervals};
use crate::controllers::pods::{self, deletion_order, is_active, phase};
use crate::runtime::controller_reference;

/// Holds a finished pod until the controller has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The variable every container of an Indexed Job's pod gets its index in.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// At most this many pods wait in `uncountedTerminatedPods` at once (as in
/// Kubernetes, so the status stays well below 20 KB).
pub const MAX_UNCOUNTED: usize = 500;
/// At most this many pods are created or deleted per reconcile.
pub const BURST: usize = 500;

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const SUSPENDED: &str = "Suspended";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";

/// What a Job's spec asks, with Kubernetes' defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub completions: Option<i32>,
    pub parallelism: i32,
    pub backoff_limit: i32,
    pub indexed: bool,
    pub suspended: bool,
    pub active_deadline: Option<i64>,
    /// `podReplacementPolicy: Failed`: a pod being deleted is replaced only
    /// once it has failed, and does not count as failed before.
    pub only_replace_failed: bool,
    pub on_failure: bool,
}

impl Spec {
    pub fn of(job: &Job) -> Self {
        let spec = job.spec.as_ref();
        Self {
            completions: spec.and_then(|s| s.completions),
            parallelism: spec.and_then(|s| s.parallelism).unwrap_or(1).max(0),
            backoff_limit: spec.and_then(|s| s.backoff_limit).unwrap_or(6),
            indexed: spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed"),
            suspended: spec.and_then(|s| s.suspend) == Some(true),
            active_deadline: spec.and_then(|s| s.active_deadline_seconds),
            only_replace_failed: spec.and_then(|s| s.pod_replacement_policy.as_deref())
                == Some("Failed"),
            on_failure: spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure"),
        }
    }

    /// The number of indexes of an Indexed Job.
    pub fn index_count(&self) -> u32 {
        self.completions.unwrap_or(0).max(0) as u32
    }
}

pub fn has_tracking_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

fn terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

pub fn succeeded(pod: &Pod) -> bool {
    phase(pod) == Some("Succeeded")
}

/// Being deleted and not finished yet.
pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !terminal(pod)
}

/// Failed, or (unless only failed pods are replaced) deleted before it
/// could succeed: an orphaned or evicted pod never reaches `Failed`.
pub fn failed(pod: &Pod, spec: &Spec) -> bool {
    phase(pod) == Some("Failed")
        || (!spec.only_replace_failed
            && pod.metadata.deletion_timestamp.is_some()
            && !succeeded(pod))
}

/// Whether `pod` counts in the backoff as a failure.
pub fn failed_for_backoff(pod: &Pod, spec: &Spec) -> bool {
    phase(pod) == Some("Failed") || (has_tracking_finalizer(pod) && failed(pod, spec))
}

pub fn find<'a>(status: &'a JobStatus, kind: &str) -> Option<&'a JobCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == kind)
}

pub fn is_true(status: &JobStatus, kind: &str) -> bool {
    find(status, kind).is_some_and(|c| c.status == "True")
}

/// Complete or Failed: nothing more to do.
pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| is_true(s, COMPLETE) || is_true(s, FAILED))
}

pub fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> JobCondition {
    JobCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
        message: (!message.is_empty()).then(|| message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets condition `kind` to `status`, unless it already says so; a
/// condition that does not exist is not added as `False`. Whether anything
/// changed.
pub fn ensure(
    status: &mut JobStatus,
    kind: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> bool {
    let conditions = status.conditions.get_or_insert_default();
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(existing) => {
            if existing.status == value
                && existing.reason.as_deref().unwrap_or_default() == reason
                && existing.message.as_deref().unwrap_or_default() == message
            {
                return false;
            }
            *existing = condition(kind, value, reason, message, now);
            true
        }
        None if value == "False" => false,
        None => {
            conditions.push(condition(kind, value, reason, message, now));
            true
        }
    }
}

/// With restartPolicy OnFailure pods do not fail, their containers
/// restart: the Job fails once the running pods' restarts reach the limit.
pub fn past_backoff_limit_on_failure(spec: &Spec, pods: &[Arc<Pod>]) -> bool {
    if !spec.on_failure {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), Some("Running" | "Pending")))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if spec.backoff_limit == 0 {
        restarts > 0
    } else {
        restarts >= spec.backoff_limit
    }
}

/// How long the Job may still run before `activeDeadlineSeconds`; `None`
/// without a deadline, or while suspended.
pub fn deadline_left(spec: &Spec, status: &JobStatus, now: DateTime<Utc>) -> Option<Duration> {
    let deadline = spec.active_deadline?;
    if spec.suspended {
        return None;
    }
    let started = status.start_time.as_ref()?.0;
    let end = started + chrono::Duration::seconds(deadline);
    Some((end - now).to_std().unwrap_or(Duration::ZERO))
}

/// The condition a Job that is not finished is heading for: one recorded
/// already (the interim `SuccessCriteriaMet`, or `Failed` after an interim
/// `FailureTarget`), or a new `FailureTarget` when it has failed too often
/// or run too long.
pub fn finishing(
    spec: &Spec,
    status: &JobStatus,
    failed: i32,
    pods: &[Arc<Pod>],
    now: DateTime<Utc>,
) -> Option<JobCondition> {
    if let Some(met) = find(status, SUCCESS_CRITERIA_MET).filter(|c| c.status == "True") {
        return Some(met.clone());
    }
    if let Some(target) = find(status, FAILURE_TARGET).filter(|c| c.status == "True") {
        return Some(condition(
            FAILED,
            "True",
            target.reason.as_deref().unwrap_or_default(),
            target.message.as_deref().unwrap_or_default(),
            now,
        ));
    }
    if failed > spec.backoff_limit || past_backoff_limit_on_failure(spec, pods) {
        return Some(condition(
            FAILURE_TARGET,
            "True",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            now,
        ));
    }
    if deadline_left(spec, status, now) == Some(Duration::ZERO) {
        return Some(condition(
            FAILURE_TARGET,
            "True",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            now,
        ));
    }
    None
}

/// The interim condition of a Job whose pods all succeeded.
pub fn success(now: DateTime<Utc>) -> JobCondition {
    condition(
        SUCCESS_CRITERIA_MET,
        "True",
        "CompletionsReached",
        "Reached expected number of succeeded pods",
        now,
    )
}

/// Whether a Job that has created what it wanted has succeeded.
pub fn complete(spec: &Spec, succeeded: i32, active: i32) -> bool {
    active == 0
        && match spec.completions {
            // Any success ends a work-queue Job, once the rest have stopped.
            None => succeeded > 0,
            Some(completions) => succeeded >= completions,
        }
}

/// What to do about a Job's pods now.
#[derive(Debug, Default)]
pub struct Manage {
    /// Active pods to delete, least useful first.
    pub delete: Vec<Arc<Pod>>,
    /// Pods to create: their completion index in an Indexed Job.
    pub create: Vec<Option<u32>>,
    /// Pods are missing but the failure backoff holds them back this long.
    pub wait: Option<Duration>,
}

/// How many pods should run: `parallelism`, but never more than the
/// completions still missing; a work-queue Job that has seen a success
/// starts no more.
pub fn wanted(spec: &Spec, succeeded: i32, active: usize) -> usize {
    match spec.completions {
        None if succeeded > 0 => active,
        None => spec.parallelism as usize,
        Some(completions) => (completions - succeeded).clamp(0, spec.parallelism) as usize,
    }
}

/// Which pods to create or delete. Deletions come first: a reconcile that
/// deletes creates nothing.
pub fn manage(
    spec: &Spec,
    active: &[Arc<Pod>],
    terminating: &[Arc<Pod>],
    succeeded: i32,
    succeeded_indexes: &Intervals,
    backoff_left: Duration,
    now: DateTime<Utc>,
) -> Manage {
    let order = |pods: &mut [Arc<Pod>]| deletion_order(pods, now);
    let mut plan = Manage::default();
    if spec.suspended {
        plan.delete = removal(spec, active, active.len(), order);
        return plan;
    }
    let want = wanted(spec, succeeded, active.len());
    let excess = active.len().saturating_sub(want);
    plan.delete = removal(spec, active, excess, order);
    plan.delete.truncate(BURST);
    if !plan.delete.is_empty() {
        return plan;
    }
    let replacing = if spec.only_replace_failed {
        terminating.len()
    } else {
        0
    };
    let missing = want.saturating_sub(active.len() + replacing).min(BURST);
    if missing == 0 {
        return plan;
    }
    if !backoff_left.is_zero() {
        plan.wait = Some(backoff_left);
        return plan;
    }
    plan.create = if spec.indexed {
        let mut taken = succeeded_indexes.with(active.iter().filter_map(|p| indexes::index_of(p)));
        if spec.only_replace_failed {
            taken = taken.with(terminating.iter().filter_map(|p| indexes::index_of(p)));
        }
        taken
            .first_missing(missing, spec.index_count())
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; missing]
    };
    plan
}

/// The active pods to delete to leave at most `active.len() - at_least`:
/// in an Indexed Job, pods repeating an index or without a valid one
/// first; then the least useful.
fn removal(
    spec: &Spec,
    active: &[Arc<Pod>],
    at_least: usize,
    order: impl Fn(&mut [Arc<Pod>]),
) -> Vec<Arc<Pod>> {
    let (mut remove, mut left) = if spec.indexed {
        indexes::duplicates(active, spec.index_count(), &order)
    } else {
        (Vec::new(), active.to_vec())
    };
    if remove.len() < at_least {
        order(&mut left);
        remove.extend(left.into_iter().take(at_least - remove.len()));
    }
    remove
}

/// Terminated pods the Job has not counted: still carrying the tracking
/// finalizer, not already in `uncounted`, not expected to lose the
/// finalizer; in an Indexed Job, with a valid index. `(succeeded, failed)`.
pub fn new_finished(
    spec: &Spec,
    pods: &[Arc<Pod>],
    uncounted: &UncountedTerminatedPods,
    expected: &HashSet<String>,
) -> (usize, usize) {
    let listed =
        |list: &Option<Vec<String>>, pod: &Pod| list.iter().flatten().any(|u| u == uid(pod));
    let valid = |pod: &Pod| {
        has_tracking_finalizer(pod)
            && !expected.contains(uid(pod))
            && (!spec.indexed || indexes::index_of(pod).is_some_and(|i| i < spec.index_count()))
    };
    let succeeded = pods
        .iter()
        .filter(|p| valid(p) && succeeded(p) && !listed(&uncounted.succeeded, p))
        .count();
    let failed = pods
        .iter()
        .filter(|p| valid(p) && failed(p, spec) && !listed(&uncounted.failed, p))
        .count();
    (succeeded, failed)
}

/// The indexes an Indexed Job has completed: those its status records,
/// and those of succeeded pods not counted yet.
pub fn succeeded_indexes(
    spec: &Spec,
    status: &JobStatus,
    pods: &[Arc<Pod>],
) -> (Intervals, Intervals) {
    let previous = Intervals::parse(
        status.completed_indexes.as_deref().unwrap_or_default(),
        spec.index_count(),
    );
    let now = previous.with(
        pods.iter()
            .filter(|p| succeeded(p) && has_tracking_finalizer(p))
            .filter_map(|p| indexes::index_of(p))
            .filter(|i| *i < spec.index_count()),
    );
    (previous, now)
}

/// What [`account`] found.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Pods whose tracking finalizer can go once the status lists them.
    pub release: Vec<Arc<Pod>>,
    /// Uids of pods that still carry the finalizer.
    pub with_finalizer: HashSet<String>,
    /// `uncountedTerminatedPods` is full: the Job cannot finish this time.
    pub full: bool,
    /// The terminal condition to set once every pod is counted and gone.
    pub terminal: Option<JobCondition>,
}

/// Moves pods whose finalizer is gone from the uncounted lists into the
/// counters. Whether anything moved.
pub fn settle_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let uncounted = status.uncounted_terminated_pods.get_or_insert_default();
    let mut moved = (0, 0);
    for (list, count) in [
        (&mut uncounted.succeeded, &mut moved.0),
        (&mut uncounted.failed, &mut moved.1),
    ] {
        if let Some(uids) = list {
            let before = uids.len();
            uids.retain(|u| with_finalizer.contains(u));
            *count = (before - uids.len()) as i32;
            if uids.is_empty() {
                *list = None;
            }
        }
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    if moved.0 > 0 {
        status.succeeded = nonzero(status.succeeded.unwrap_or(0) + moved.0);
    }
    if moved.1 > 0 {
        status.failed = nonzero(status.failed.unwrap_or(0) + moved.1);
    }
    moved != (0, 0)
}

/// Records the Job's terminated pods in `status` before their finalizers
/// go, as Kubernetes does since 1.26, so that a pod is counted exactly
/// once even if the controller stops half way:
///
/// 1. finished pods still carrying the finalizer are listed in
///    `uncountedTerminatedPods` (an Indexed Job's successes go straight
///    into `completedIndexes`), and an interim condition
///    (`FailureTarget`, `SuccessCriteriaMet`) is recorded;
/// 2. (the caller writes that status, then removes the finalizers);
/// 3. [`settle_uncounted`] moves the pods whose finalizer is gone into
///    `succeeded` and `failed`.
///
/// Pods listed in `expected` already lost their finalizer in a write the
/// cache has not shown yet: they are counted already.
#[allow(clippy::too_many_arguments)]
pub fn account(
    spec: &Spec,
    status: &mut JobStatus,
    pods: &[Arc<Pod>],
    expected: &HashSet<String>,
    finishing: Option<JobCondition>,
    deleting: bool,
    previous_indexes: &Intervals,
    succeeded_indexes: &Intervals,
    now: DateTime<Utc>,
) -> Accounting {
    let mut result = Accounting {
        with_finalizer: pods
            .iter()
            .filter(|p| has_tracking_finalizer(p) && !expected.contains(uid(p)))
            .map(|p| uid(p).to_owned())
            .collect(),
        ..Accounting::default()
    };
    settle_uncounted(status, &result.with_finalizer);
    let failing = finishing
        .as_ref()
        .is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET);
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    if spec.indexed {
        sorted.sort_by_key(|p| indexes::index_of(p).unwrap_or(u32::MAX));
    }
    let mut uncounted = status.uncounted_terminated_pods.take().unwrap_or_default();
    let mut new_indexes = Vec::new();
    for pod in sorted {
        if !result.with_finalizer.contains(uid(pod)) {
            continue;
        }
        let failed = failed(pod, spec);
        if !(deleting || finishing.is_some() || succeeded(pod) || failed) {
            continue;
        }
        result.release.push(pod.clone());
        let uid = uid(pod).to_owned();
        let listed = |list: &Option<Vec<String>>| list.iter().flatten().any(|u| *u == uid);
        let index = indexes::index_of(pod).filter(|i| *i < spec.index_count());
        if succeeded(pod) && !listed(&uncounted.failed) {
            if spec.indexed {
                if index.is_some_and(|i| !previous_indexes.has(i)) {
                    new_indexes.extend(index);
                }
            } else if !listed(&uncounted.succeeded) {
                uncounted.succeeded.get_or_insert_default().push(uid);
            }
        } else if (failed || failing)
            && !listed(&uncounted.failed)
            && (!spec.indexed || index.is_some())
        {
            uncounted.failed.get_or_insert_default().push(uid);
        }
        let waiting = new_indexes.len()
            + uncounted.succeeded.as_ref().map_or(0, Vec::len)
            + uncounted.failed.as_ref().map_or(0, Vec::len);
        if waiting >= MAX_UNCOUNTED {
            // The rest wait for the next reconcile, which the writes
            // this one makes will trigger.
            result.full = true;
            break;
        }
    }
    status.uncounted_terminated_pods = Some(uncounted);
    if spec.indexed {
        let indexes = succeeded_indexes.with(new_indexes);
        status.succeeded = Some(indexes.total() as i32).filter(|n| *n != 0);
        let text = indexes.to_string();
        status.completed_indexes = (!text.is_empty()).then_some(text);
    }
    result.terminal = match finishing {
        Some(c) if c.type_ == FAILURE_TARGET => {
            status.conditions.get_or_insert_default().push(c.clone());
            Some(condition(
                FAILED,
                "True",
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default(),
                now,
            ))
        }
        Some(c) if c.type_ == SUCCESS_CRITERIA_MET => {
            if find(status, SUCCESS_CRITERIA_MET).is_none() {
                status.conditions.get_or_insert_default().push(c.clone());
            }
            Some(condition(
                COMPLETE,
                "True",
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default(),
                now,
            ))
        }
        other => other,
    };
    result
}

/// Sets the terminal condition once every finished pod is counted and no
/// pod is still terminating. Whether the Job is now finished.
pub fn enact(
    status: &mut JobStatus,
    terminal: Option<&JobCondition>,
    terminating: i32,
    now: DateTime<Utc>,
) -> bool {
    let Some(terminal) = terminal else {
        return false;
    };
    let uncounted = status.uncounted_terminated_pods.as_ref();
    let waiting = uncounted.map_or(0, |u| {
        u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len)
    });
    if waiting > 0 || terminating > 0 {
        return false;
    }
    ensure(
        status,
        &terminal.type_,
        &terminal.status,
        terminal.reason.as_deref().unwrap_or_default(),
        terminal.message.as_deref().unwrap_or_default(),
        now,
    );
    if terminal.type_ == COMPLETE {
        status.completion_time =
            find(status, COMPLETE).and_then(|c| c.last_transition_time.clone());
    }
    true
}

/// The prefix of a pod's generated name: `JOB-` or, in an Indexed Job,
/// `JOB-INDEX-`, the Job's name cut so that the whole stays within the 58
/// characters a generated name may start with.
fn generate_name(job: &str, index: Option<u32>) -> String {
    const MAX: usize = 58;
    let suffix = index.map_or_else(|| "-".to_owned(), |i| format!("-{i}-"));
    let keep = MAX.saturating_sub(suffix.len());
    let mut name = job.to_owned();
    if name.len() > keep {
        let mut cut = keep;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name + &suffix
}

/// A new pod of `job` from its template: owned by it, held by the
/// tracking finalizer and, in an Indexed Job, given its index (annotation,
/// label, `JOB_COMPLETION_INDEX`, hostname `JOB-INDEX`).
pub fn new_pod(job: &Job, index: Option<u32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.to_owned());
    }
    let mut spec = template.spec.unwrap_or_default();
    if let Some(index) = index {
        annotations.insert(COMPLETION_INDEX.to_owned(), index.to_string());
        labels.insert(COMPLETION_INDEX.to_owned(), index.to_string());
        spec.hostname = Some(format!("{name}-{index}"));
        let containers = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for container in containers {
            let env = container.env.get_or_insert_default();
            if !env.iter().any(|e| e.name == INDEX_ENV) {
                env.push(EnvVar {
                    name: INDEX_ENV.to_owned(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".to_owned()),
                            field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                        }),
                        ..EnvVarSource::default()
                    }),
                });
            }
        }
    }
    let some = |map: BTreeMap<String, String>| (!map.is_empty()).then_some(map);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&name, index)),
            labels: some(labels),
            annotations: some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_reference(job)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Active pods that are Ready.
pub fn ready(active: &[Arc<Pod>]) -> i32 {
    active.iter().filter(|p| pods::is_ready(p)).count() as i32
}

/// Splits pods into active and terminating ones.
pub fn active_and_terminating(pods: &[Arc<Pod>]) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    (
        pods.iter().filter(|p| is_active(p)).cloned().collect(),
        pods.iter().filter(|p| terminating(p)).cloned().collect(),
    )
}

#[cfg(test)]
mod tests;
