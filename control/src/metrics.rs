//! The help text of every metric the control plane records, named as
//! Kubernetes names them so existing dashboards and alerts work.
//!
//! ```text
//!  describe()          API server · its storage client · scheduler · controllers
//!   └─ describe_runtime()   work queues · event recorder · leader election
//!                           (the agent's pod workers share these)
//! ```
//!
//! Descriptions go to the recorder installed when they are made: call these
//! after installing it. A metric appears in `/metrics` only once recorded.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes the metrics of the API server, the scheduler and the
/// controllers, and [`describe_runtime`]'s.
pub fn describe() {
    describe_runtime();
    describe_counter!(
        "apiserver_request_total",
        "API requests, by verb, resource and HTTP response code."
    );
    describe_histogram!(
        "apiserver_request_duration_seconds",
        Unit::Seconds,
        "API request latency, by verb and resource (watches excluded)."
    );
    describe_gauge!(
        "apiserver_storage_objects",
        "Objects stored, by resource, at the last count."
    );
    describe_histogram!(
        "etcd_request_duration_seconds",
        Unit::Seconds,
        "Latency of the API server's requests to its store, by operation and type."
    );
    describe_counter!(
        "scheduler_schedule_attempts_total",
        "Attempts to schedule a pod, by result (scheduled, unschedulable, error)."
    );
    describe_histogram!(
        "scheduler_scheduling_attempt_duration_seconds",
        Unit::Seconds,
        "Latency of one scheduling attempt (filter, score, bind), by result."
    );
    describe_histogram!(
        "job_controller_job_sync_duration_seconds",
        Unit::Seconds,
        "Latency of one sync of a Job, by result."
    );
    describe_counter!(
        "job_controller_job_pods_finished_total",
        "Pods of Jobs that finished, by completion mode and result."
    );
    describe_counter!(
        "job_controller_jobs_finished_total",
        "Jobs that finished, by completion mode, result and reason."
    );
    describe_histogram!(
        "cronjob_controller_job_creation_skew_duration_seconds",
        Unit::Seconds,
        "How long after its scheduled time a CronJob's Job was created."
    );
    describe_histogram!(
        "ttl_after_finished_controller_job_deletion_duration_seconds",
        Unit::Seconds,
        "How long after its TTL expired a finished Job was deleted."
    );
}

/// Describes the metrics of the runtime pieces every component uses: work
/// queues (client-go's names), the event recorder and leader election.
pub fn describe_runtime() {
    describe_counter!("workqueue_adds_total", "Keys added to a work queue.");
    describe_gauge!("workqueue_depth", "Keys waiting in a work queue.");
    describe_counter!(
        "workqueue_retries_total",
        "Keys put back in a work queue after a failure, with backoff."
    );
    describe_histogram!(
        "workqueue_queue_duration_seconds",
        Unit::Seconds,
        "How long a key waited in a work queue before it was handled."
    );
    describe_histogram!(
        "workqueue_work_duration_seconds",
        Unit::Seconds,
        "How long handling a key from a work queue took."
    );
    describe_counter!(
        "keelson_events_dropped_total",
        "Events not recorded because the recorder's queue was full, by component."
    );
    describe_gauge!(
        "leader_election_master_status",
        "Whether this process holds the named leader-election lease (1) or not (0)."
    );
}
