//! The TTL-after-finished controller: deletes a Job
//! `ttlSecondsAfterFinished` after it completed or failed, in the
//! foreground, so that the garbage collector deletes its pods first.
//!
//! ```text
//!  job events ─► finished and has a TTL? ─► queue ─► expired? ── no ──► look again when it is
//!                                                      │ yes
//!                                                      ▼
//!                                   fresh GET, still expired ─► DELETE (Foreground, uid + resourceVersion)
//! ```
//!
//! The decision is checked again on a fresh read before the delete, and
//! the delete carries the Job's uid and resourceVersion, so a Job whose
//! TTL was changed (or that was replaced under the same name) meanwhile is
//! not deleted on the strength of a stale cache.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use tokio_util::sync::CancellationToken;

use super::state::{self, COMPLETE, FAILED};
use crate::client::{Client, ClientError, DeleteOptions};
use crate::runtime::{Action, Event, Informer, Queue, key_of, split_key};

/// Why a Job could not be cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum TtlError {
    #[error("Job {job}: {action}")]
    Api {
        job: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

/// When a finished Job with a TTL expires; `None` if it has no TTL, is
/// not finished, or is being deleted already.
pub fn expires_at(job: &Job) -> Option<DateTime<Utc>> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let status = job.status.as_ref()?;
    let finished = [COMPLETE, FAILED]
        .into_iter()
        .filter_map(|kind| state::find(status, kind))
        .find(|c| c.status == "True")?
        .last_transition_time
        .as_ref()?
        .0;
    Some(finished + chrono::Duration::seconds(ttl.into()))
}

/// The controller and its handlers.
#[derive(Clone, Debug)]
pub struct TtlAfterFinished {
    client: Client,
    jobs: Informer<Job>,
    queue: Queue<String>,
}

impl TtlAfterFinished {
    pub fn new(client: Client, jobs: &Informer<Job>, shutdown: CancellationToken) -> Self {
        let controller = Self {
            client,
            jobs: jobs.clone(),
            queue: Queue::new("ttl_jobs_to_delete", shutdown),
        };
        let c = controller.clone();
        jobs.on_event(move |event| {
            if let Event::Added(job) | Event::Updated { new: job, .. } = event
                && expires_at(job).is_some()
            {
                c.queue.add(key_of(&job.metadata));
            }
        });
        controller
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        if !self.jobs.wait_synced(&shutdown).await {
            return;
        }
        let this = self.clone();
        crate::runtime::run_workers(
            "ttl_jobs_to_delete",
            self.queue.clone(),
            workers,
            move |key| {
                let this = this.clone();
                async move { this.reconcile(&key).await }
            },
        )
        .await;
    }

    /// How long until `job` expires: `None` if it does not, zero if it has.
    fn left(job: &Job, now: DateTime<Utc>) -> Option<Duration> {
        let at = expires_at(job)?;
        Some((at - now).to_std().unwrap_or(Duration::ZERO))
    }

    async fn reconcile(&self, key: &str) -> Result<Action, TtlError> {
        let failed = |action| {
            let job = key.to_owned();
            move |source| TtlError::Api {
                job,
                action,
                source,
            }
        };
        let Some(cached) = self.jobs.get(key) else {
            return Ok(Action::Done);
        };
        match Self::left(&cached, Utc::now()) {
            None => return Ok(Action::Done),
            Some(left) if !left.is_zero() => return Ok(Action::RequeueAfter(left)),
            Some(_) => {}
        }
        // The cache may be behind a change of the TTL: decide on a fresh read.
        let (namespace, name) = split_key(key);
        let fresh = match self.client.get::<Job>(namespace, name).await {
            Ok(job) => job,
            Err(error) if error.is_not_found() => return Ok(Action::Done),
            Err(error) => return Err(failed("read")(error)),
        };
        let now = Utc::now();
        match Self::left(&fresh, now) {
            None => return Ok(Action::Done),
            Some(left) if !left.is_zero() => return Ok(Action::RequeueAfter(left)),
            Some(_) => {}
        }
        let options = DeleteOptions {
            uid: fresh.metadata.uid.clone(),
            resource_version: fresh.metadata.resource_version.clone(),
            propagation: Some("Foreground"),
            grace_period_seconds: None,
        };
        tracing::info!(job = key, "deleting a finished Job whose TTL has expired");
        match self.client.delete::<Job>(namespace, name, &options).await {
            Ok(()) => {
                if let Some(at) = expires_at(&fresh) {
                    let late = (now - at).to_std().unwrap_or(Duration::ZERO);
                    metrics::histogram!(
                        "ttl_after_finished_controller_job_deletion_duration_seconds"
                    )
                    .record(late.as_secs_f64());
                }
                Ok(Action::Done)
            }
            Err(error) if error.is_not_found() => Ok(Action::Done),
            Err(error) => Err(failed("delete")(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(ttl: Option<i32>, finished: Option<(&str, &str)>) -> Job {
        let at = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1000);
        Job {
            spec: Some(JobSpec {
                ttl_seconds_after_finished: ttl,
                ..JobSpec::default()
            }),
            status: Some(JobStatus {
                conditions: finished
                    .map(|(kind, value)| vec![state::condition(kind, value, "", "", at)]),
                completion_time: Some(Time(at)),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn finished_jobs_with_a_ttl_expire_that_long_after_finishing() {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(
            expires_at(&job(Some(30), Some((COMPLETE, "True")))),
            Some(epoch + chrono::Duration::seconds(1030))
        );
        assert_eq!(
            expires_at(&job(Some(0), Some((FAILED, "True")))),
            Some(epoch + chrono::Duration::seconds(1000))
        );
        assert_eq!(expires_at(&job(None, Some((COMPLETE, "True")))), None);
        assert_eq!(expires_at(&job(Some(30), None)), None);
        assert_eq!(expires_at(&job(Some(30), Some((COMPLETE, "False")))), None);
        let mut deleting = job(Some(30), Some((COMPLETE, "True")));
        deleting.metadata.deletion_timestamp = Some(Time(epoch));
        assert_eq!(expires_at(&deleting), None);
        let now = epoch + chrono::Duration::seconds(1010);
        assert_eq!(
            TtlAfterFinished::left(&job(Some(30), Some((COMPLETE, "True"))), now),
            Some(Duration::from_secs(20))
        );
    }
}
