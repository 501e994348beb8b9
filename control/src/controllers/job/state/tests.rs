use super::*;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(2_000_000 + seconds)
}

fn spec(completions: Option<i32>, parallelism: i32) -> Spec {
    Spec {
        completions,
        parallelism,
        backoff_limit: 6,
        indexed: false,
        suspended: false,
        active_deadline: None,
        only_replace_failed: false,
        on_failure: false,
    }
}

fn indexed(completions: i32, parallelism: i32) -> Spec {
    Spec {
        indexed: true,
        ..spec(Some(completions), parallelism)
    }
}

/// A pod of phase `phase`, with the tracking finalizer if `tracked`.
fn pod(name: &str, phase: &str, tracked: bool, index: Option<u32>) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(at(0))),
            finalizers: tracked.then(|| vec![TRACKING_FINALIZER.to_owned()]),
            annotations: index.map(|i| [(COMPLETION_INDEX.to_owned(), i.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..PodStatus::default()
        }),
    })
}

fn names(pods: &[Arc<Pod>]) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn parallelism_caps_what_runs_and_completions_what_is_left() {
    let s = spec(Some(5), 2);
    assert_eq!(wanted(&s, 0, 0), 2);
    assert_eq!(wanted(&s, 4, 0), 1, "one completion left");
    assert_eq!(wanted(&s, 5, 0), 0);
    assert_eq!(wanted(&s, 7, 0), 0, "more successes than asked");
    // A work queue: parallelism pods until one succeeds, then no more.
    let queue = spec(None, 3);
    assert_eq!(wanted(&queue, 0, 1), 3);
    assert_eq!(wanted(&queue, 1, 2), 2);
}

#[test]
fn missing_pods_are_created_up_to_parallelism() {
    let s = spec(Some(5), 2);
    let one = [pod("a", "Running", true, None)];
    let plan = manage(
        &s,
        &one,
        &[],
        1,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!((plan.create.len(), plan.delete.len()), (1, 0));
    let plan = manage(
        &s,
        &one,
        &[],
        4,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!((plan.create.len(), plan.delete.len()), (0, 0));
}

#[test]
fn extra_pods_are_deleted_least_useful_first() {
    let s = spec(Some(5), 1);
    let active = [
        pod("running", "Running", true, None),
        pod("pending", "Pending", true, None),
    ];
    let plan = manage(
        &s,
        &active,
        &[],
        0,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!(names(&plan.delete), ["pending"]);
    assert!(
        plan.create.is_empty(),
        "a reconcile that deletes creates nothing"
    );
}

#[test]
fn the_backoff_holds_creations_back() {
    let s = spec(Some(3), 1);
    let plan = manage(
        &s,
        &[],
        &[],
        0,
        &Intervals::default(),
        Duration::from_secs(7),
        at(0),
    );
    assert!(plan.create.is_empty());
    assert_eq!(plan.wait, Some(Duration::from_secs(7)));
}

#[test]
fn a_suspended_job_deletes_every_active_pod() {
    let s = Spec {
        suspended: true,
        ..spec(Some(3), 3)
    };
    let active = [
        pod("a", "Running", true, None),
        pod("b", "Pending", true, None),
    ];
    let plan = manage(
        &s,
        &active,
        &[],
        0,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!(names(&plan.delete), ["a", "b"]);
    assert!(plan.create.is_empty());
}

#[test]
fn indexed_jobs_create_the_lowest_missing_indexes() {
    let s = indexed(5, 3);
    let active = [pod("one", "Running", true, Some(1))];
    let done = Intervals::default().with([0, 2]);
    let plan = manage(&s, &active, &[], 2, &done, Duration::ZERO, at(0));
    assert_eq!(plan.create, [Some(3), Some(4)]);
    // A repeated index is deleted before anything is created.
    let twice = [
        pod("a", "Running", true, Some(1)),
        pod("b", "Pending", true, Some(1)),
    ];
    let plan = manage(
        &s,
        &twice,
        &[],
        0,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!(names(&plan.delete), ["b"]);
    assert!(plan.create.is_empty());
}

#[test]
fn replacing_only_failed_pods_waits_for_terminating_ones() {
    let s = Spec {
        only_replace_failed: true,
        ..spec(Some(2), 2)
    };
    let terminating = [pod("t", "Running", true, None)];
    let plan = manage(
        &s,
        &[],
        &terminating,
        0,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!(plan.create.len(), 1);
    let s = spec(Some(2), 2);
    let plan = manage(
        &s,
        &[],
        &terminating,
        0,
        &Intervals::default(),
        Duration::ZERO,
        at(0),
    );
    assert_eq!(plan.create.len(), 2);
}

#[test]
fn a_deleted_pod_counts_as_failed_unless_only_failed_pods_are_replaced() {
    let mut deleted = (*pod("a", "Running", true, None)).clone();
    deleted.metadata.deletion_timestamp = Some(Time(at(1)));
    assert!(failed(&deleted, &spec(Some(1), 1)));
    assert!(terminating(&deleted));
    let only_failed = Spec {
        only_replace_failed: true,
        ..spec(Some(1), 1)
    };
    assert!(!failed(&deleted, &only_failed));
    deleted.status = Some(PodStatus {
        phase: Some("Succeeded".into()),
        ..PodStatus::default()
    });
    assert!(!failed(&deleted, &spec(Some(1), 1)));
    assert!(!terminating(&deleted));
}

#[test]
fn conditions_change_only_when_they_say_something_new() {
    let mut status = JobStatus::default();
    assert!(!ensure(
        &mut status,
        SUSPENDED,
        "False",
        "JobResumed",
        "Job resumed",
        at(0)
    ));
    assert!(
        status.conditions.as_ref().is_none_or(Vec::is_empty),
        "nothing to False is no change"
    );
    assert!(ensure(
        &mut status,
        SUSPENDED,
        "True",
        "JobSuspended",
        "Job suspended",
        at(1)
    ));
    assert!(!ensure(
        &mut status,
        SUSPENDED,
        "True",
        "JobSuspended",
        "Job suspended",
        at(2)
    ));
    assert_eq!(
        find(&status, SUSPENDED).and_then(|c| c.last_transition_time.clone()),
        Some(Time(at(1)))
    );
    assert!(ensure(
        &mut status,
        SUSPENDED,
        "False",
        "JobResumed",
        "Job resumed",
        at(3)
    ));
    let c = find(&status, SUSPENDED).cloned().unwrap_or_default();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
    assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1));
}

#[test]
fn failures_beyond_the_limit_or_the_deadline_fail_the_job() {
    let s = Spec {
        backoff_limit: 2,
        active_deadline: Some(30),
        ..spec(Some(1), 1)
    };
    let status = JobStatus {
        start_time: Some(Time(at(0))),
        ..JobStatus::default()
    };
    assert!(finishing(&s, &status, 2, &[], at(10)).is_none());
    let c = finishing(&s, &status, 3, &[], at(10)).unwrap_or_default();
    assert_eq!(
        (c.type_.as_str(), c.reason.as_deref(), c.message.as_deref()),
        (
            FAILURE_TARGET,
            Some("BackoffLimitExceeded"),
            Some("Job has reached the specified backoff limit")
        )
    );
    let c = finishing(&s, &status, 0, &[], at(30)).unwrap_or_default();
    assert_eq!(c.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        deadline_left(&s, &status, at(10)),
        Some(Duration::from_secs(20))
    );
    // Suspended, the deadline does not run.
    let suspended = Spec {
        suspended: true,
        ..s.clone()
    };
    assert!(finishing(&suspended, &status, 0, &[], at(100)).is_none());
    // An interim FailureTarget becomes Failed with its reason.
    let mut target = status.clone();
    target.conditions = Some(vec![condition(
        FAILURE_TARGET,
        "True",
        "DeadlineExceeded",
        "m",
        at(5),
    )]);
    let c = finishing(&s, &target, 0, &[], at(6)).unwrap_or_default();
    assert_eq!(
        (c.type_.as_str(), c.reason.as_deref()),
        (FAILED, Some("DeadlineExceeded"))
    );
}

#[test]
fn with_restart_on_failure_container_restarts_count_against_the_limit() {
    let s = Spec {
        on_failure: true,
        backoff_limit: 2,
        ..spec(Some(1), 1)
    };
    let restarted = |count| {
        let mut p = (*pod("a", "Running", true, None)).clone();
        if let Some(status) = p.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                restart_count: count,
                ..ContainerStatus::default()
            }]);
        }
        Arc::new(p)
    };
    assert!(!past_backoff_limit_on_failure(&s, &[restarted(1)]));
    assert!(past_backoff_limit_on_failure(&s, &[restarted(2)]));
    let never = Spec {
        on_failure: false,
        ..s.clone()
    };
    assert!(!past_backoff_limit_on_failure(&never, &[restarted(5)]));
    let zero = Spec {
        backoff_limit: 0,
        ..s
    };
    assert!(past_backoff_limit_on_failure(&zero, &[restarted(1)]));
}

#[test]
fn completion_needs_the_successes_and_no_active_pod() {
    assert!(complete(&spec(Some(3), 2), 3, 0));
    assert!(!complete(&spec(Some(3), 2), 3, 1));
    assert!(!complete(&spec(Some(3), 2), 2, 0));
    assert!(complete(&spec(None, 2), 1, 0));
    assert!(!complete(&spec(None, 2), 0, 0));
}

#[test]
fn finished_pods_are_listed_uncounted_then_counted_once_released() {
    let s = spec(Some(3), 2);
    let pods = [
        pod("ok", "Succeeded", true, None),
        pod("bad", "Failed", true, None),
        pod("run", "Running", true, None),
        pod("old", "Succeeded", false, None),
    ];
    let mut status = JobStatus {
        succeeded: Some(1),
        ..JobStatus::default()
    };
    let none = Intervals::default();
    let a = account(
        &s,
        &mut status,
        &pods,
        &HashSet::new(),
        None,
        false,
        &none,
        &none,
        at(0),
    );
    assert_eq!(names(&a.release), ["bad", "ok"]);
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    assert_eq!(uncounted.succeeded, Some(vec!["uid-ok".to_owned()]));
    assert_eq!(uncounted.failed, Some(vec!["uid-bad".to_owned()]));
    assert_eq!(
        (status.succeeded, status.failed),
        (Some(1), None),
        "not counted yet"
    );
    // Listing them again changes nothing.
    let before = status.clone();
    account(
        &s,
        &mut status,
        &pods,
        &HashSet::new(),
        None,
        false,
        &none,
        &none,
        at(0),
    );
    assert_eq!(status, before);
    // Their finalizers are gone: they move into the counters.
    let mut with_finalizer = a.with_finalizer.clone();
    with_finalizer.remove("uid-ok");
    with_finalizer.remove("uid-bad");
    assert!(settle_uncounted(&mut status, &with_finalizer));
    assert_eq!((status.succeeded, status.failed), (Some(2), Some(1)));
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    assert_eq!((uncounted.succeeded, uncounted.failed), (None, None));
    assert!(!settle_uncounted(&mut status, &with_finalizer));
}

#[test]
fn pods_whose_finalizer_removal_is_pending_are_not_counted_again() {
    let s = spec(Some(3), 2);
    let pods = [pod("ok", "Succeeded", true, None)];
    let expected: HashSet<String> = ["uid-ok".to_owned()].into();
    let mut status = JobStatus {
        succeeded: Some(1),
        ..JobStatus::default()
    };
    let none = Intervals::default();
    let a = account(
        &s,
        &mut status,
        &pods,
        &expected,
        None,
        false,
        &none,
        &none,
        at(0),
    );
    assert!(a.release.is_empty());
    assert_eq!(status.succeeded, Some(1));
    assert_eq!(
        new_finished(&s, &pods, &UncountedTerminatedPods::default(), &expected),
        (0, 0)
    );
}

#[test]
fn a_failing_job_counts_its_running_pods_as_failed() {
    let s = spec(Some(3), 2);
    let pods = [pod("run", "Running", true, None)];
    let mut status = JobStatus::default();
    let none = Intervals::default();
    let target = condition(FAILURE_TARGET, "True", "DeadlineExceeded", "late", at(0));
    let a = account(
        &s,
        &mut status,
        &pods,
        &HashSet::new(),
        Some(target),
        false,
        &none,
        &none,
        at(1),
    );
    assert_eq!(names(&a.release), ["run"]);
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    assert_eq!(uncounted.failed, Some(vec!["uid-run".to_owned()]));
    assert!(
        find(&status, FAILURE_TARGET).is_some(),
        "the interim condition is recorded"
    );
    let terminal = a.terminal.unwrap_or_default();
    assert_eq!(
        (terminal.type_.as_str(), terminal.reason.as_deref()),
        (FAILED, Some("DeadlineExceeded"))
    );
    // Not Failed while a pod is uncounted or still terminating.
    assert!(!enact(&mut status, Some(&terminal), 0, at(2)));
    settle_uncounted(&mut status, &HashSet::new());
    assert_eq!(status.failed, Some(1));
    assert!(!enact(&mut status, Some(&terminal), 1, at(2)));
    assert!(enact(&mut status, Some(&terminal), 0, at(3)));
    assert!(is_true(&status, FAILED));
    assert!(
        status.completion_time.is_none(),
        "only a complete Job has one"
    );
}

#[test]
fn success_goes_through_success_criteria_met_to_complete() {
    let s = spec(Some(1), 1);
    let pods = [pod("ok", "Succeeded", true, None)];
    let mut status = JobStatus::default();
    let none = Intervals::default();
    let a = account(
        &s,
        &mut status,
        &pods,
        &HashSet::new(),
        Some(success(at(0))),
        false,
        &none,
        &none,
        at(1),
    );
    let met = find(&status, SUCCESS_CRITERIA_MET)
        .cloned()
        .unwrap_or_default();
    assert_eq!(met.reason.as_deref(), Some("CompletionsReached"));
    let terminal = a.terminal.unwrap_or_default();
    assert_eq!(terminal.type_, COMPLETE);
    settle_uncounted(&mut status, &HashSet::new());
    assert!(enact(&mut status, Some(&terminal), 0, at(2)));
    assert!(is_true(&status, COMPLETE));
    assert_eq!(status.completion_time, Some(Time(at(2))));
    assert_eq!(status.succeeded, Some(1));
}

#[test]
fn indexed_successes_go_into_completed_indexes() {
    let s = indexed(5, 5);
    let pods = [
        pod("i0", "Succeeded", true, Some(0)),
        pod("i1", "Succeeded", true, Some(1)),
        pod("i4", "Succeeded", true, Some(4)),
        pod("i2", "Running", true, Some(2)),
        pod("i9", "Succeeded", true, Some(9)),
    ];
    let mut status = JobStatus {
        completed_indexes: Some("2".into()),
        succeeded: Some(1),
        ..JobStatus::default()
    };
    let (previous, now) = succeeded_indexes(&s, &status, &pods);
    assert_eq!(now.to_string(), "0-2,4");
    account(
        &s,
        &mut status,
        &pods,
        &HashSet::new(),
        None,
        false,
        &previous,
        &now,
        at(0),
    );
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2,4"));
    assert_eq!(status.succeeded, Some(4));
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    assert_eq!(uncounted.succeeded, None, "indexes need no uids");
}

#[test]
fn new_pods_carry_the_finalizer_owner_and_index() {
    let job = Job {
        metadata: ObjectMeta {
            name: Some("work".into()),
            namespace: Some("default".into()),
            uid: Some("job-uid".into()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some([("job-name".to_owned(), "work".to_owned())].into()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![
                        Container {
                            name: "a".into(),
                            ..Container::default()
                        },
                        Container {
                            name: "b".into(),
                            env: Some(vec![EnvVar {
                                name: INDEX_ENV.into(),
                                value: Some("mine".into()),
                                value_from: None,
                            }]),
                            ..Container::default()
                        },
                    ],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    let plain = new_pod(&job, None);
    assert_eq!(plain.metadata.generate_name.as_deref(), Some("work-"));
    assert_eq!(
        plain.metadata.finalizers,
        Some(vec![TRACKING_FINALIZER.to_owned()])
    );
    let owner = plain.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        (
            owner[0].kind.as_str(),
            owner[0].uid.as_str(),
            owner[0].controller
        ),
        ("Job", "job-uid", Some(true))
    );
    assert!(plain.metadata.annotations.is_none());

    let third = new_pod(&job, Some(3));
    assert_eq!(third.metadata.generate_name.as_deref(), Some("work-3-"));
    let labels = third.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(COMPLETION_INDEX).map(String::as_str), Some("3"));
    assert_eq!(labels.get("job-name").map(String::as_str), Some("work"));
    let annotations = third.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(COMPLETION_INDEX).map(String::as_str),
        Some("3")
    );
    let spec = third.spec.clone().unwrap_or_default();
    assert_eq!(spec.hostname.as_deref(), Some("work-3"));
    let env = |c: &Container| c.env.clone().unwrap_or_default();
    let a = env(&spec.containers[0]);
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.labels['batch.kubernetes.io/job-completion-index']")
    );
    // A container that sets the variable itself keeps its own.
    assert_eq!(env(&spec.containers[1]).len(), 1);
    assert_eq!(env(&spec.containers[1])[0].value.as_deref(), Some("mine"));
}

#[test]
fn generated_names_stay_short_enough() {
    let long = "j".repeat(70);
    assert_eq!(generate_name(&long, None).len(), 58);
    let named = generate_name(&long, Some(12));
    assert!(named.ends_with("-12-") && named.len() == 58, "{named}");
}

#[test]
fn ready_counts_ready_pods() {
    let mut p = (*pod("a", "Running", true, None)).clone();
    if let Some(s) = p.status.as_mut() {
        s.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]);
    }
    assert_eq!(ready(&[Arc::new(p), pod("b", "Running", true, None)]), 1);
}
