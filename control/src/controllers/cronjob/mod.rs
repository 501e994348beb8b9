//! The CronJob controller: creates a Job from a CronJob's template at each
//! time of its schedule, as `concurrencyPolicy` allows, and keeps the last
//! `successfulJobsHistoryLimit` and `failedJobsHistoryLimit` finished Jobs.
//!
//! ```text
//!  cronjob/job events ─► queue(cronjob key) ─► reconcile:
//!     status.active ◄── its Jobs (finished ones leave it; lastSuccessfulTime)
//!     most recent unmet time ≤ now ─► too late? (startingDeadlineSeconds) ─► MissSchedule
//!                                  ─► Forbid and one runs? ─► JobAlreadyActive
//!                                  ─► Replace? ─► delete the running Jobs
//!                                  ─► create Job NAME-<minutes since epoch> (the name makes it once only)
//!     delete the oldest finished Jobs beyond the history limits
//!     ─► look again at the next time of the schedule
//! ```
//!
//! A Job's name comes from its scheduled time, so a controller that dies
//! between creating the Job and recording it in the CronJob's status finds
//! the Job already there on its next try and records it then.
//!
//! Only UTC is supported as `spec.timeZone` (or none, which is UTC here
//! too): Keelson carries no time zone database. A CronJob naming another
//! zone gets an `UnknownTimeZone` event and is not scheduled.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio_util::sync::CancellationToken;

use super::job::state::{self, COMPLETE, FAILED};
use crate::client::{Client, ClientError, DeleteOptions};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Action, Event, Informer, Queue, controller_of, controller_reference, key_of};

pub mod schedule;

use schedule::Schedule;

/// The annotation a created Job records its scheduled time in.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Look again this long after the next scheduled time, so as to be past it.
const DELTA: Duration = Duration::from_millis(100);
/// More missed times than this get a warning.
const TOO_MANY_MISSED: u32 = 100;

/// Why a CronJob could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    #[error("CronJob {cronjob}: {action}")]
    Api {
        cronjob: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

/// The time zones this controller can schedule in.
fn is_utc(zone: &str) -> bool {
    matches!(
        zone,
        "" | "UTC" | "Etc/UTC" | "Etc/UCT" | "UCT" | "Zulu" | "Etc/Zulu"
    )
}

/// The scheduled time a CronJob should act on now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    /// The most recent scheduled time not yet acted on, at or before now.
    pub time: Option<DateTime<Utc>>,
    /// How many scheduled times were missed (counted up to 101).
    pub missed: u32,
}

/// The scheduled times since the CronJob last acted (or was created; with
/// `startingDeadlineSeconds`, no earlier than that long ago).
pub fn due(cronjob: &CronJob, schedule: &Schedule, now: DateTime<Utc>) -> Due {
    let status = cronjob.status.as_ref();
    let mut earliest = status
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cronjob.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    if let Some(deadline) = cronjob
        .spec
        .as_ref()
        .and_then(|s| s.starting_deadline_seconds)
    {
        earliest = earliest.max(now - chrono::Duration::seconds(deadline));
    }
    let mut missed = 0;
    let mut time = None;
    let mut next = schedule.next(earliest);
    while let Some(at) = next.filter(|t| *t <= now) {
        missed += 1;
        time = Some(at);
        if missed > TOO_MANY_MISSED {
            // Counting further tells nothing more; find the last directly.
            time = schedule.previous(now);
            break;
        }
        next = schedule.next(at);
    }
    Due { time, missed }
}

/// The name of the Job for `scheduled`: unique per scheduled minute.
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp().div_euclid(60))
}

/// The Job a CronJob creates for `scheduled`.
pub fn job_for(cronjob: &CronJob, scheduled: DateTime<Utc>) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.to_owned(),
        scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cronjob.metadata.name.as_deref().unwrap_or_default(),
                scheduled,
            )),
            namespace: cronjob.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_reference(cronjob)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// `Complete` or `Failed`, if the Job has finished.
pub fn finished(job: &Job) -> Option<&'static str> {
    let status = job.status.as_ref()?;
    [COMPLETE, FAILED]
        .into_iter()
        .find(|kind| state::is_true(status, kind))
}

/// The finished Jobs to delete so that at most `keep` remain: the oldest
/// by start time (those never started last), then by name.
pub fn beyond_history(mut finished: Vec<Arc<Job>>, keep: i32) -> Vec<Arc<Job>> {
    let keep = keep.max(0) as usize;
    if finished.len() <= keep {
        return Vec::new();
    }
    finished.sort_by(|a, b| {
        let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.clone());
        match (start(a), start(b)) {
            (Some(x), Some(y)) if x != y => x.0.cmp(&y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            _ => a.metadata.name.cmp(&b.metadata.name),
        }
    });
    let excess = finished.len() - keep;
    finished.truncate(excess);
    finished
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The controller and its handlers.
#[derive(Clone, Debug)]
pub struct CronJobController {
    client: Client,
    cronjobs: Informer<CronJob>,
    jobs: Informer<Job>,
    queue: Queue<String>,
    recorder: Recorder,
}

impl CronJobController {
    pub fn new(
        client: Client,
        cronjobs: &Informer<CronJob>,
        jobs: &Informer<Job>,
        recorder: Recorder,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            cronjobs: cronjobs.clone(),
            jobs: jobs.clone(),
            queue: Queue::new("cronjob", shutdown),
            recorder,
        };
        let c = controller.clone();
        cronjobs.on_event(move |event| {
            if let Event::Added(cronjob) | Event::Updated { new: cronjob, .. } = event {
                c.queue.add(key_of(&cronjob.metadata));
            }
        });
        let c = controller.clone();
        jobs.on_event(move |event| {
            let (Event::Added(job) | Event::Updated { new: job, .. } | Event::Deleted(job)) = event;
            if let Some(owner) = controller_of(&job.metadata).filter(|r| r.kind == "CronJob") {
                let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
                c.queue.add(format!("{namespace}/{}", owner.name));
            }
        });
        controller
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        if !self.cronjobs.wait_synced(&shutdown).await || !self.jobs.wait_synced(&shutdown).await {
            return;
        }
        let this = self.clone();
        crate::runtime::run_workers("cronjob", self.queue.clone(), workers, move |key| {
            let this = this.clone();
            async move { this.reconcile(&key).await }
        })
        .await;
    }

    fn failed(key: &str, action: &'static str) -> impl FnOnce(ClientError) -> CronJobError {
        let cronjob = key.to_owned();
        move |source| CronJobError::Api {
            cronjob,
            action,
            source,
        }
    }

    async fn reconcile(&self, key: &str) -> Result<Action, CronJobError> {
        let Some(cronjob) = self.cronjobs.get(key) else {
            return Ok(Action::Done);
        };
        let now = Utc::now();
        let namespace = cronjob.metadata.namespace.clone().unwrap_or_default();
        let uid = cronjob.metadata.uid.clone().unwrap_or_default();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .list_in(&namespace)
            .into_iter()
            .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        let original = cronjob.status.clone().unwrap_or_default();
        let mut status = original.clone();
        let mut active = status.active.take().unwrap_or_default();
        for job in &jobs {
            let name = job.metadata.name.clone().unwrap_or_default();
            let listed = active.iter().any(|r| r.uid == job.metadata.uid);
            match (listed, finished(job)) {
                (false, None) => self.recorder.record(
                    cronjob.as_ref(),
                    EventType::Warning,
                    "UnexpectedJob",
                    format!("Saw a job that the controller did not create or forgot: {name}"),
                ),
                (true, Some(condition)) => {
                    active.retain(|r| r.uid != job.metadata.uid);
                    self.recorder.record(
                        cronjob.as_ref(),
                        EventType::Normal,
                        "SawCompletedJob",
                        format!("Saw completed job: {name}, condition: {condition}"),
                    );
                }
                _ => {}
            }
            if finished(job) == Some(COMPLETE)
                && let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.clone())
                && status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|t| t.0 < done.0)
            {
                status.last_successful_time = Some(done);
            }
        }
        // A Job in the list that the cache does not have may be too new
        // for it: only one the API does not know either leaves the list.
        let mut gone = Vec::new();
        for r in &active {
            if jobs.iter().any(|j| j.metadata.uid == r.uid) {
                continue;
            }
            let name = r.name.clone().unwrap_or_default();
            match self.client.get::<Job>(Some(&namespace), &name).await {
                Ok(job) if job.metadata.uid == r.uid => {}
                Ok(_) => gone.push(r.uid.clone()),
                Err(error) if error.is_not_found() => gone.push(r.uid.clone()),
                Err(error) => return Err(Self::failed(key, "read a Job")(error)),
            }
        }
        active.retain(|r| !gone.contains(&r.uid));

        let mut next = None;
        let mut outcome = Ok(());
        if cronjob.metadata.deletion_timestamp.is_none() {
            match self
                .schedule(key, &cronjob, &mut active, &mut status, now)
                .await
            {
                Ok(wait) => next = wait,
                Err(error) => outcome = Err(error),
            }
        }
        status.active = (!active.is_empty()).then_some(active);
        if status != original {
            let mut updated = (*cronjob).clone();
            updated.status = Some(status);
            match self.client.replace_status(&updated).await {
                Ok(_) => {}
                Err(error) if error.is_not_found() => return Ok(Action::Done),
                Err(error) => return Err(Self::failed(key, "update status")(error)),
            }
        }
        outcome?;
        self.clean_up(key, &cronjob, &jobs).await?;
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }

    /// Creates the Job for the most recent unmet scheduled time, if it is
    /// still time and the concurrency policy allows. How long until the
    /// next scheduled time.
    async fn schedule(
        &self,
        key: &str,
        cronjob: &Arc<CronJob>,
        active: &mut Vec<ObjectReference>,
        status: &mut CronJobStatus,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, CronJobError> {
        let spec = cronjob.spec.clone().unwrap_or_default();
        let warn = |reason: &'static str, message: String| {
            self.recorder
                .record(cronjob.as_ref(), EventType::Warning, reason, message);
        };
        if let Some(zone) = spec.time_zone.as_deref().filter(|z| !is_utc(z)) {
            warn(
                "UnknownTimeZone",
                format!("invalid timeZone: {zone:?}: only UTC is supported"),
            );
            return Ok(None);
        }
        if spec.suspend == Some(true) {
            return Ok(None);
        }
        let schedule: Schedule = match spec.schedule.parse() {
            Ok(schedule) => schedule,
            Err(error) => {
                warn(
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {error}", spec.schedule),
                );
                return Ok(None);
            }
        };
        let next = schedule
            .next(now)
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO) + DELTA);
        let due = due(cronjob, &schedule, now);
        if due.missed > TOO_MANY_MISSED {
            warn(
                "TooManyMissedTimes",
                format!(
                    "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                    due.missed
                ),
            );
        }
        let Some(scheduled) = due.time else {
            return Ok(next);
        };
        if let Some(deadline) = spec.starting_deadline_seconds
            && scheduled + chrono::Duration::seconds(deadline) < now
        {
            warn(
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    scheduled.format("%a, %d %b %Y %H:%M:%S %z")
                ),
            );
            return Ok(next);
        }
        let name = job_name(
            cronjob.metadata.name.as_deref().unwrap_or_default(),
            scheduled,
        );
        if active.iter().any(|r| r.name.as_deref() == Some(&name))
            || status.last_schedule_time.as_ref().map(|t| t.0) == Some(scheduled)
        {
            return Ok(next);
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.recorder.record(
                    cronjob.as_ref(),
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                );
                return Ok(next);
            }
            Some("Replace") => {
                for running in std::mem::take(active) {
                    let job = running.name.clone().unwrap_or_default();
                    self.delete_job(key, cronjob, &job).await?;
                }
            }
            _ => {}
        }
        let namespace = cronjob.metadata.namespace.clone();
        let job = job_for(cronjob, scheduled);
        let created = match self.client.create(namespace.as_deref(), &job).await {
            Ok(created) => {
                self.recorder.record(
                    cronjob.as_ref(),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                );
                if let Some(at) = created.metadata.creation_timestamp.as_ref() {
                    metrics::histogram!("cronjob_controller_job_creation_skew_duration_seconds")
                        .record((at.0 - scheduled).num_milliseconds() as f64 / 1000.0);
                }
                created
            }
            Err(error) if error.is_already_exists() => {
                // Created by an earlier try whose status write was lost:
                // record it now. One that is not ours is left alone.
                let existing = self
                    .client
                    .get::<Job>(namespace.as_deref(), &name)
                    .await
                    .map_err(Self::failed(key, "read a Job"))?;
                if controller_of(&existing.metadata).map(|r| &r.uid)
                    != cronjob.metadata.uid.as_ref()
                {
                    return Err(Self::failed(key, "create a Job")(error));
                }
                existing
            }
            Err(error) => {
                self.recorder.record(
                    cronjob.as_ref(),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating job: {error}"),
                );
                return Err(Self::failed(key, "create a Job")(error));
            }
        };
        active.push(reference(&created));
        status.last_schedule_time = Some(Time(scheduled));
        Ok(next)
    }

    /// Deletes the Job and, in the background, its pods.
    async fn delete_job(
        &self,
        key: &str,
        cronjob: &CronJob,
        name: &str,
    ) -> Result<(), CronJobError> {
        let options = DeleteOptions {
            propagation: Some("Background"),
            ..DeleteOptions::default()
        };
        match self
            .client
            .delete::<Job>(cronjob.metadata.namespace.as_deref(), name, &options)
            .await
        {
            Ok(()) => {
                self.recorder.record(
                    cronjob,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted job {name}"),
                );
                Ok(())
            }
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => {
                self.recorder.record(
                    cronjob,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Deleted job: {error}"),
                );
                Err(Self::failed(key, "delete a Job")(error))
            }
        }
    }

    /// Deletes the oldest finished Jobs beyond the history limits.
    async fn clean_up(
        &self,
        key: &str,
        cronjob: &CronJob,
        jobs: &[Arc<Job>],
    ) -> Result<(), CronJobError> {
        let spec = cronjob.spec.clone().unwrap_or_default();
        for (kind, limit) in [
            (COMPLETE, spec.successful_jobs_history_limit),
            (FAILED, spec.failed_jobs_history_limit),
        ] {
            let Some(limit) = limit else { continue };
            let finished: Vec<Arc<Job>> = jobs
                .iter()
                .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
                .cloned()
                .collect();
            for job in beyond_history(finished, limit) {
                let name = job.metadata.name.clone().unwrap_or_default();
                self.delete_job(key, cronjob, &name).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobSpec, JobStatus, JobTemplateSpec};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn cronjob(created: &str, last: Option<&str>, deadline: Option<i64>) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("hello".into()),
                namespace: Some("default".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(utc(created))),
                ..ObjectMeta::default()
            },
            spec: Some(CronJobSpec {
                schedule: "*/5 * * * *".into(),
                starting_deadline_seconds: deadline,
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_owned(), "hello".to_owned())].into()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(JobSpec {
                        backoff_limit: Some(2),
                        ..JobSpec::default()
                    }),
                },
                ..CronJobSpec::default()
            }),
            status: Some(CronJobStatus {
                last_schedule_time: last.map(|t| Time(utc(t))),
                ..CronJobStatus::default()
            }),
        }
    }

    #[test]
    fn the_most_recent_unmet_time_is_due() {
        let every5: Schedule = "*/5 * * * *".parse().unwrap();
        let now = utc("2024-05-01T10:12:00Z");
        // Created at 10:01: 10:05 and 10:10 passed; 10:10 is due.
        let d = due(&cronjob("2024-05-01T10:01:00Z", None, None), &every5, now);
        assert_eq!(
            d,
            Due {
                time: Some(utc("2024-05-01T10:10:00Z")),
                missed: 2
            }
        );
        // Already run at 10:10: nothing due.
        let d = due(
            &cronjob("2024-05-01T10:01:00Z", Some("2024-05-01T10:10:00Z"), None),
            &every5,
            now,
        );
        assert_eq!(
            d,
            Due {
                time: None,
                missed: 0
            }
        );
        // A day missed, but a deadline of 3 minutes: only 10:10 counts.
        let d = due(
            &cronjob("2024-04-30T10:00:00Z", None, Some(180)),
            &every5,
            now,
        );
        assert_eq!(d.time, Some(utc("2024-05-01T10:10:00Z")));
        assert_eq!(d.missed, 1);
        // Without one, the count stops past a hundred.
        let d = due(&cronjob("2024-04-30T10:00:00Z", None, None), &every5, now);
        assert_eq!(d.time, Some(utc("2024-05-01T10:10:00Z")));
        assert_eq!(d.missed, TOO_MANY_MISSED + 1);
    }

    #[test]
    fn jobs_are_named_and_annotated_by_their_scheduled_minute() {
        let at = utc("2024-05-01T10:10:00Z");
        let job = job_for(&cronjob("2024-05-01T10:01:00Z", None, None), at);
        assert_eq!(job.metadata.name.as_deref(), Some("hello-28575970"));
        let annotations = job.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(SCHEDULED_TIMESTAMP).map(String::as_str),
            Some("2024-05-01T10:10:00Z")
        );
        assert_eq!(
            job.metadata
                .labels
                .unwrap_or_default()
                .get("app")
                .map(String::as_str),
            Some("hello")
        );
        let owner = &job.metadata.owner_references.unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
        assert_eq!(job.spec.and_then(|s| s.backoff_limit), Some(2));
    }

    #[test]
    fn the_oldest_finished_jobs_go_beyond_the_limit() {
        let job = |name: &str, start: Option<&str>| {
            Arc::new(Job {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                status: Some(JobStatus {
                    start_time: start.map(|s| Time(utc(s))),
                    ..JobStatus::default()
                }),
                ..Job::default()
            })
        };
        let jobs = vec![
            job("c", Some("2024-05-01T10:10:00Z")),
            job("never", None),
            job("a", Some("2024-05-01T10:00:00Z")),
            job("b", Some("2024-05-01T10:05:00Z")),
        ];
        let names = |v: Vec<Arc<Job>>| {
            v.into_iter()
                .filter_map(|j| j.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(beyond_history(jobs.clone(), 3)), ["a"]);
        assert_eq!(names(beyond_history(jobs.clone(), 1)), ["a", "b", "c"]);
        assert!(beyond_history(jobs.clone(), 4).is_empty());
        assert_eq!(beyond_history(jobs, 0).len(), 4);
    }

    #[test]
    fn only_utc_is_a_known_zone() {
        assert!(is_utc("Etc/UTC") && is_utc("UTC"));
        assert!(!is_utc("Europe/Paris"));
    }
}
