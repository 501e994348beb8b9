//! The Job controller: runs a Job's pods until `completions` of them have
//! succeeded (each index once, in an Indexed Job), `parallelism` at a time;
//! fails it after more than `backoffLimit` failures or past
//! `activeDeadlineSeconds`; stops its pods while it is suspended.
//!
//! ```text
//!  job/pod events ─► queue(job key) ─► reconcile: claim pods (adopt orphans, release strays)
//!                                         ├─ finishing? ─► delete the active pods
//!                                         ├─ expectations met? ─► create / delete (state::manage),
//!                                         │                      creations held back by the failure backoff
//!                                         └─ count finished pods (state::account):
//!                                              status with them uncounted ─► remove their finalizers
//!                                              ─► status with them counted (+ Complete / Failed)
//!  pods left with the tracking finalizer by a gone or finished Job ─► orphan queue ─► finalizer removed
//! ```
//!
//! Pods carry the `batch.kubernetes.io/job-tracking` finalizer until the
//! Job has counted them, so a pod deleted right after it finishes (by the
//! pod garbage collector, by hand) is still counted, and counted once: a
//! pod is first listed in `status.uncountedTerminatedPods`, then loses
//! its finalizer, then moves into `succeeded` or `failed`. As in
//! Kubernetes 1.32, `Complete` and `Failed` come only once every pod has
//! stopped, after the interim `SuccessCriteriaMet` or `FailureTarget`.
//!
//! Every status write is a compare-and-set on the Job's
//! `resourceVersion`; a reconcile that sees an older version of the Job
//! than its own last write waits for the cache to catch up rather than
//! act on counts it knows are stale.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio_util::sync::CancellationToken;

use super::expectations::Expectations;
use crate::client::{Client, ClientError};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Action, Event, Informer, Queue, controller_of, key_of, selects};

pub mod backoff;
pub mod indexes;
mod pods;
pub mod state;
pub mod ttl;

use state::{Spec, has_tracking_finalizer, uid};

/// The value of `spec.managedBy` that means this controller.
const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// A Job held back by the failure backoff is looked at again after at
/// least this long, as in Kubernetes.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// Why a Job could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("Job {job}: {action}")]
    Api {
        job: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("pod {pod}: removing the {finalizer} finalizer", finalizer = state::TRACKING_FINALIZER)]
    Finalizer {
        pod: String,
        #[source]
        source: ClientError,
    },
}

/// Pods whose tracking finalizer the controller removed, per Job, until
/// the cache shows it gone: they are counted already, whatever the cache
/// still says.
#[derive(Debug, Default)]
struct Removals {
    map: Mutex<HashMap<String, HashSet<String>>>,
}

impl Removals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, key: &str, uid: &str) {
        self.lock()
            .entry(key.to_owned())
            .or_default()
            .insert(uid.to_owned());
    }

    fn observed(&self, key: &str, uid: &str) {
        let mut map = self.lock();
        if let Some(set) = map.get_mut(key) {
            set.remove(uid);
            if set.is_empty() {
                map.remove(key);
            }
        }
    }

    fn expected(&self, key: &str) -> HashSet<String> {
        self.lock().get(key).cloned().unwrap_or_default()
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The controller and its handlers.
#[derive(Clone, Debug)]
pub struct JobController {
    client: Client,
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    queue: Queue<String>,
    /// Pods whose tracking finalizer no Job will remove.
    orphans: Queue<String>,
    expectations: Arc<Expectations>,
    removals: Arc<Removals>,
    /// The `resourceVersion` of each Job's last status write.
    written: Arc<Mutex<HashMap<String, i64>>>,
    recorder: Recorder,
}

fn revision(job: &Job) -> Option<i64> {
    job.metadata.resource_version.as_deref()?.parse().ok()
}

fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

impl JobController {
    pub fn new(
        client: Client,
        jobs: &Informer<Job>,
        pods: &Informer<Pod>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            jobs: jobs.clone(),
            pods: pods.clone(),
            queue: Queue::new("job", shutdown.clone()),
            orphans: Queue::new("job_orphan_pod", shutdown),
            expectations: Arc::default(),
            removals: Arc::default(),
            written: Arc::default(),
            recorder,
        };
        let c = controller.clone();
        jobs.on_event(move |event| c.job_changed(event));
        let c = controller.clone();
        pods.on_event(move |event| c.pod_changed(event));
        controller
    }

    fn job_changed(&self, event: &Event<'_, Job>) {
        match event {
            Event::Added(job) => self.queue.add(key_of(&job.metadata)),
            Event::Updated { new, .. } => {
                self.queue.add(key_of(&new.metadata));
                // A finished Job removes no more finalizers: a pod that
                // still has one lost its chance to be counted.
                if state::is_finished(new) {
                    self.release_pods_of(new);
                }
            }
            Event::Deleted(job) => {
                let key = key_of(&job.metadata);
                self.expectations.forget(&key);
                self.removals.forget(&key);
                self.written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                self.queue.add(key);
                self.release_pods_of(job);
            }
        }
    }

    /// Queues the pods of `job` that still carry the tracking finalizer.
    fn release_pods_of(&self, job: &Job) {
        let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
        let uid = job.metadata.uid.as_deref().unwrap_or_default();
        for pod in self.pods.list_in(namespace) {
            if has_tracking_finalizer(&pod)
                && controller_of(&pod.metadata).is_some_and(|r| r.uid == uid)
            {
                self.orphans.add(key_of(&pod.metadata));
            }
        }
    }

    /// The Job that controls `pod`, if it is in the cache.
    fn owner_of(&self, pod: &Pod) -> Option<Arc<Job>> {
        self.jobs.controller_of(&pod.metadata)
    }

    /// Every Job whose selector matches an orphan pod: one may adopt it.
    fn enqueue_matching(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        for job in self.jobs.list_in(namespace) {
            if let Some(selector) = job.spec.as_ref().and_then(|s| s.selector.as_ref())
                && selects(selector, pod.metadata.labels.as_ref())
            {
                self.queue.add(key_of(&job.metadata));
            }
        }
    }

    fn pod_changed(&self, event: &Event<'_, Pod>) {
        match event {
            Event::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    // A controller restarted mid-deletion: not a creation.
                    return self.pod_deleted(pod, false);
                }
                if let Some(job) = self.owner_of(pod) {
                    let key = key_of(&job.metadata);
                    self.expectations.creation_observed(&key);
                    self.queue.add(key);
                    return;
                }
                if has_tracking_finalizer(pod) {
                    self.orphans.add(key_of(&pod.metadata));
                }
                if controller_of(&pod.metadata).is_none() {
                    self.enqueue_matching(pod);
                }
            }
            Event::Updated { old, new } => {
                if new.metadata.deletion_timestamp.is_some() {
                    return self.pod_deleted(new, false);
                }
                let released = !has_tracking_finalizer(new);
                let old_owner = self.owner_of(old);
                let new_owner = self.owner_of(new);
                if let Some(job) = &old_owner
                    && new_owner.as_ref().map(|j| &j.metadata.uid) != Some(&job.metadata.uid)
                {
                    let key = key_of(&job.metadata);
                    if released {
                        self.removals.observed(&key, uid(new));
                    }
                    self.queue.add(key);
                }
                if let Some(job) = new_owner {
                    let key = key_of(&job.metadata);
                    if released {
                        self.removals.observed(&key, uid(new));
                    }
                    self.queue.add(key);
                    return;
                }
                if has_tracking_finalizer(new) {
                    self.orphans.add(key_of(&new.metadata));
                }
                let reference_changed = controller_of(&old.metadata).map(|r| &r.uid)
                    != controller_of(&new.metadata).map(|r| &r.uid);
                if controller_of(&new.metadata).is_none()
                    && (old.metadata.labels != new.metadata.labels || reference_changed)
                {
                    self.enqueue_matching(new);
                }
            }
            Event::Deleted(pod) => self.pod_deleted(pod, true),
        }
    }

    /// `pod` is going (`gone`: it has gone).
    fn pod_deleted(&self, pod: &Pod, gone: bool) {
        let Some(job) = self.owner_of(pod).filter(|j| !state::is_finished(j)) else {
            if !gone && has_tracking_finalizer(pod) {
                self.orphans.add(key_of(&pod.metadata));
            }
            return;
        };
        let key = key_of(&job.metadata);
        self.expectations
            .deletion_observed(&key, &key_of(&pod.metadata));
        if gone || !has_tracking_finalizer(pod) {
            self.removals.observed(&key, uid(pod));
        }
        self.queue.add(key);
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        if !self.jobs.wait_synced(&shutdown).await || !self.pods.wait_synced(&shutdown).await {
            return;
        }
        let this = self.clone();
        let jobs = crate::runtime::run_workers("job", self.queue.clone(), workers, move |key| {
            let this = this.clone();
            async move { this.reconcile(&key).await }
        });
        let this = self.clone();
        let orphans =
            crate::runtime::run_workers("job_orphan_pod", self.orphans.clone(), 1, move |key| {
                let this = this.clone();
                async move { this.release_orphan(&key).await }
            });
        tokio::join!(jobs, orphans);
    }

    fn failed(job: &str, action: &'static str) -> impl FnOnce(ClientError) -> JobError {
        let job = job.to_owned();
        move |source| JobError::Api {
            job,
            action,
            source,
        }
    }

    /// Removes the tracking finalizer from a pod no running Job will count.
    async fn release_orphan(&self, key: &str) -> Result<Action, JobError> {
        let Some(pod) = self.pods.get(key) else {
            return Ok(Action::Done);
        };
        if !has_tracking_finalizer(&pod) {
            return Ok(Action::Done);
        }
        if let Some(reference) = controller_of(&pod.metadata) {
            if reference.kind != "Job" || reference.api_version != "batch/v1" {
                return Ok(Action::Done);
            }
            if self
                .owner_of(&pod)
                .is_some_and(|job| !state::is_finished(&job))
            {
                // Adopted or still counted by its Job.
                return Ok(Action::Done);
            }
        }
        self.remove_finalizer(&pod).await.map(|_| Action::Done)
    }

    /// Whether the cache still shows `job` older than this controller's
    /// last write of it; forgets the write once the cache has caught up.
    fn lags(&self, key: &str, job: &Job) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match (written.get(key), revision(job)) {
            (Some(last), Some(cached)) if cached < *last => true,
            (Some(_), _) => {
                written.remove(key);
                false
            }
            _ => false,
        }
    }

    async fn reconcile(&self, key: &str) -> Result<Action, JobError> {
        let Some(job) = self.jobs.get(key) else {
            self.expectations.forget(key);
            self.removals.forget(key);
            return Ok(Action::Done);
        };
        // The write's own Updated event queues the Job again.
        if self.lags(key, &job) || state::is_finished(&job) {
            return Ok(Action::Done);
        }
        let job_spec = job.spec.as_ref();
        if job_spec
            .and_then(|s| s.managed_by.as_deref())
            .is_some_and(|m| m != MANAGED_BY)
        {
            return Ok(Action::Done);
        }
        if !matches!(
            job_spec.and_then(|s| s.completion_mode.as_deref()),
            None | Some("NonIndexed" | "Indexed")
        ) {
            self.recorder.record(
                job.as_ref(),
                EventType::Warning,
                "UnknownCompletionMode",
                "Skipped Job sync because completion mode is unknown",
            );
            return Ok(Action::Done);
        }
        let started = std::time::Instant::now();
        let outcome = self.sync(key, &job).await;
        let result = if outcome.is_ok() { "success" } else { "error" };
        metrics::histogram!("job_controller_job_sync_duration_seconds", "result" => result)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// One pass over a Job that is not finished (Kubernetes' `syncJob`).
    async fn sync(&self, key: &str, job: &Arc<Job>) -> Result<Action, JobError> {
        let spec = Spec::of(job);
        let now = Utc::now();
        // Read before the pods, so that a pod created after this cannot
        // slip into the count unexpected.
        let satisfied = self.expectations.satisfied(key);
        let pods = self.claim(key, job).await?;
        let expected = self.removals.expected(key);
        let mut status = job.status.clone().unwrap_or_default();
        let uncounted = status
            .uncounted_terminated_pods
            .get_or_insert_default()
            .clone();
        let (active_pods, terminating_pods) = state::active_and_terminating(&pods);
        let mut active = active_pods.len() as i32;
        let mut ready = state::ready(&active_pods);
        let mut terminating = terminating_pods.len() as i32;
        let (new_succeeded, new_failed) = state::new_finished(&spec, &pods, &uncounted, &expected);
        let listed = |l: &Option<Vec<String>>| l.as_ref().map_or(0, Vec::len) as i32;
        let mut succeeded =
            status.succeeded.unwrap_or(0) + new_succeeded as i32 + listed(&uncounted.succeeded);
        let failed = status.failed.unwrap_or(0) + new_failed as i32 + listed(&uncounted.failed);
        if status.start_time.is_none() && !spec.suspended {
            status.start_time = Some(Time(now));
        }
        let mut requeue: Option<Duration> = None;
        let mut wait = |d: Duration| {
            requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
        };
        let mut finishing = state::finishing(&spec, &status, failed, &pods, now);
        if finishing.is_none()
            && let Some(left) = state::deadline_left(&spec, &status, now)
        {
            // Look again when the deadline passes.
            wait(left + Duration::from_millis(100));
        }
        let (previous_indexes, succeeded_indexes) = if spec.indexed {
            let (previous, current) = state::succeeded_indexes(&spec, &status, &pods);
            succeeded = current.total() as i32;
            (previous, current)
        } else {
            Default::default()
        };

        let mut manage_error = None;
        if finishing.is_some() {
            let (deleted, deleted_ready, error) = self.delete_active(job, &active_pods).await;
            if deleted != active || !satisfied {
                // Not finished while pods may remain that it has not seen.
                finishing = None;
            }
            active -= deleted;
            terminating += deleted;
            ready -= deleted_ready;
            manage_error = error;
        } else {
            let mut managed = false;
            if satisfied && job.metadata.deletion_timestamp.is_none() {
                managed = true;
                let record = backoff::record(pods.iter().filter_map(|p| {
                    if state::succeeded(p) {
                        Some((backoff::finished_at(p), true))
                    } else if state::failed_for_backoff(p, &spec) {
                        Some((backoff::finished_at(p), false))
                    } else {
                        None
                    }
                }));
                let plan = state::manage(
                    &spec,
                    &active_pods,
                    &terminating_pods,
                    succeeded,
                    &succeeded_indexes,
                    backoff::remaining(record, now),
                    now,
                );
                if !plan.delete.is_empty() {
                    let (deleted, deleted_ready, error) =
                        self.delete_pods(key, job, &plan.delete).await;
                    active -= deleted;
                    terminating += deleted;
                    ready -= deleted_ready;
                    manage_error = error;
                } else if let Some(delay) = plan.wait {
                    tracing::debug!(
                        job = key,
                        ?delay,
                        "pod creation held back by the failure backoff"
                    );
                    wait(delay.max(MIN_WAIT));
                } else if !plan.create.is_empty() {
                    let (created, error) = self.create_pods(key, job, plan.create).await;
                    active += created;
                    manage_error = error;
                }
            }
            if state::complete(&spec, succeeded, active) {
                finishing = Some(state::success(now));
            } else if managed {
                let changed = if spec.suspended {
                    state::ensure(
                        &mut status,
                        state::SUSPENDED,
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        now,
                    )
                } else {
                    state::ensure(
                        &mut status,
                        state::SUSPENDED,
                        "False",
                        "JobResumed",
                        "Job resumed",
                        now,
                    )
                };
                if changed && spec.suspended {
                    self.recorder.record(
                        job.as_ref(),
                        EventType::Normal,
                        "Suspended",
                        "Job suspended",
                    );
                } else if changed {
                    self.recorder
                        .record(job.as_ref(), EventType::Normal, "Resumed", "Job resumed");
                    // activeDeadlineSeconds counts the time a Job runs
                    // without a break: it starts again on resume.
                    status.start_time = Some(Time(now));
                }
            }
        }
        status.active = nonzero(active);
        status.ready = Some(ready);
        status.terminating = Some(terminating);

        let accounting = state::account(
            &spec,
            &mut status,
            &pods,
            &expected,
            finishing,
            job.metadata.deletion_timestamp.is_some(),
            &previous_indexes,
            &succeeded_indexes,
            now,
        );
        self.track(key, job, status, accounting, terminating)
            .await?;
        match manage_error {
            Some(error) => Err(error),
            None => Ok(requeue.map_or(Action::Done, Action::RequeueAfter)),
        }
    }

    /// Writes the status that lists the newly finished pods, removes their
    /// finalizers, then writes them counted, with the terminal condition if
    /// the Job is done (Kubernetes' `trackJobStatusAndRemoveFinalizers`).
    async fn track(
        &self,
        key: &str,
        job: &Arc<Job>,
        mut status: JobStatus,
        mut accounting: state::Accounting,
        terminating: i32,
    ) -> Result<(), JobError> {
        let original = job.status.clone().unwrap_or_default();
        let mut current = (**job).clone();
        if status != original {
            match self.write_status(key, &current, &status).await? {
                Some(written) => current = written,
                None => return Ok(()),
            }
        }
        let mut release_error = None;
        if !accounting.release.is_empty() {
            let removals = accounting.release.iter().map(|pod| async move {
                self.removals.expect(key, uid(pod));
                let outcome = self.remove_finalizer(pod).await;
                if outcome.is_err() {
                    // No update will show it: do not wait for one.
                    self.removals.observed(key, uid(pod));
                }
                (uid(pod).to_owned(), outcome)
            });
            for (uid, outcome) in join_all(removals).await {
                match outcome {
                    Ok(()) => {
                        accounting.with_finalizer.remove(&uid);
                    }
                    Err(error) => release_error = Some(error),
                }
            }
        }
        let changed = state::settle_uncounted(&mut status, &accounting.with_finalizer);
        if let Some(error) = release_error {
            // Keep what did get counted.
            if changed && self.write_status(key, &current, &status).await?.is_some() {
                self.count_finished_pods(job, &original, &status);
            }
            return Err(error);
        }
        let finished = !accounting.full
            && state::enact(
                &mut status,
                accounting.terminal.as_ref(),
                terminating,
                Utc::now(),
            );
        if changed || finished {
            if self.write_status(key, &current, &status).await?.is_none() {
                return Ok(());
            }
            if finished && let Some(terminal) = &accounting.terminal {
                self.finished(job, &status, terminal);
            }
        }
        self.count_finished_pods(job, &original, &status);
        Ok(())
    }

    fn count_finished_pods(&self, job: &Job, before: &JobStatus, after: &JobStatus) {
        let mode = if Spec::of(job).indexed {
            "Indexed"
        } else {
            "NonIndexed"
        };
        let succeeded = after.succeeded.unwrap_or(0) - before.succeeded.unwrap_or(0);
        let failed = after.failed.unwrap_or(0) - before.failed.unwrap_or(0);
        if succeeded > 0 {
            metrics::counter!("job_controller_job_pods_finished_total", "completion_mode" => mode, "result" => "succeeded")
                .increment(succeeded as u64);
        }
        if failed > 0 {
            metrics::counter!("job_controller_job_pods_finished_total", "completion_mode" => mode, "result" => "failed")
                .increment(failed as u64);
        }
    }

    /// Events and metrics of a Job that just finished.
    fn finished(&self, job: &Job, status: &JobStatus, terminal: &JobCondition) {
        let mode = if Spec::of(job).indexed {
            "Indexed"
        } else {
            "NonIndexed"
        };
        let reason = terminal.reason.clone().unwrap_or_default();
        if terminal.type_ == state::COMPLETE {
            let completions = job.spec.as_ref().and_then(|s| s.completions);
            if completions.is_some_and(|c| status.succeeded.unwrap_or(0) > c) {
                self.recorder.record(
                    job,
                    EventType::Warning,
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached",
                );
            }
            self.recorder
                .record(job, EventType::Normal, "Completed", "Job completed");
            metrics::counter!("job_controller_jobs_finished_total", "completion_mode" => mode, "result" => "succeeded", "reason" => "")
                .increment(1);
        } else {
            let event_reason = match reason.as_str() {
                "BackoffLimitExceeded" => "BackoffLimitExceeded",
                "DeadlineExceeded" => "DeadlineExceeded",
                _ => "Failed",
            };
            self.recorder.record(
                job,
                EventType::Warning,
                event_reason,
                terminal.message.clone().unwrap_or_default(),
            );
            metrics::counter!("job_controller_jobs_finished_total", "completion_mode" => mode, "result" => "failed", "reason" => reason)
                .increment(1);
        }
    }

    /// Replaces the Job's status if the Job is unchanged since `base` was
    /// read; `None` if the Job is gone.
    async fn write_status(
        &self,
        key: &str,
        base: &Job,
        status: &JobStatus,
    ) -> Result<Option<Job>, JobError> {
        let mut updated = base.clone();
        updated.status = Some(status.clone());
        match self.client.replace_status(&updated).await {
            Ok(written) => {
                if let Some(revision) = revision(&written) {
                    self.written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.to_owned(), revision);
                }
                Ok(Some(written))
            }
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(Self::failed(key, "update status")(error)),
        }
    }
}
