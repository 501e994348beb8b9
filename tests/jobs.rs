//! Jobs end to end, as root (as CI runs): a local cluster of three members
//! and two nodes runs real containers for Jobs that complete in parallel,
//! fail and back off, run indexed, overrun their deadline, expire after
//! their TTL, and wait suspended, and a CronJob that starts one every
//! minute; driven and checked with `kubectl`.
//!
//! Every Job is created at once and they run side by side; one poll loop
//! watches them all (checking the parallelism limit at every poll) until
//! each has reached its end.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::profile::{IMAGE, Profile};
use common::{holds_within, wait_until};
use serde_json::{Value, json};

/// How long all the Jobs together may take.
const ALL_DONE: Duration = Duration::from_secs(300);
const CONVERGE: Duration = Duration::from_secs(120);

/// A Job running `script` in the test image, with `spec` merged into its
/// spec (restartPolicy Never unless `spec` says otherwise).
fn job(name: &str, script: &str, spec: Value) -> Value {
    let mut job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}}]}}}});
    for (key, value) in spec.as_object().into_iter().flatten() {
        if key == "restartPolicy" {
            job["spec"]["template"]["spec"]["restartPolicy"] = value.clone();
        } else {
            job["spec"][key] = value.clone();
        }
    }
    job
}

fn list(profile: &Profile, kind: &str) -> Vec<Value> {
    profile
        .try_kubectl(&["get", kind, "-o", "json"])
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|list| list["items"].as_array().cloned())
        .unwrap_or_default()
}

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|i| i["metadata"]["name"] == name)
}

fn pods_of<'a>(pods: &'a [Value], job: &str) -> Vec<&'a Value> {
    pods.iter()
        .filter(|p| p["metadata"]["labels"]["job-name"] == job)
        .collect()
}

/// Not finished and not being deleted: what the Job counts as active.
fn active(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

/// The reason of the Job's condition `kind` if it is True.
fn condition(job: Option<&Value>, kind: &str) -> Option<String> {
    job?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("a time: {v}"))
}

/// The first row of `kubectl get` output whose first cell is `name`.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().is_some_and(|c| c == name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

/// `text` with every run of blanks made one space.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn jobs_complete_fail_back_off_expire_and_suspend_and_cronjobs_run_them() {
    let started = Instant::now();
    let profile = Profile::up(2, &[]);
    eprintln!("cluster up in {} s", started.elapsed().as_secs());
    // First, as it runs only at the turn of each minute.
    profile.apply(&json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "hello"},
        "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "hello", "image": IMAGE,
                    "command": ["sh", "-c", "echo hello from the cron"]}]}}}}}}));

    profile.apply(&job(
        "parallel",
        "sleep 2; echo done",
        json!({"completions": 5, "parallelism": 2}),
    ));
    profile.apply(&job(
        "failing",
        "echo attempt; exit 3",
        json!({"backoffLimit": 2}),
    ));
    profile.apply(&job(
        "indexed",
        "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
    ));
    profile.apply(&job(
        "deadline",
        "sleep 600",
        json!({"activeDeadlineSeconds": 5}),
    ));
    profile.apply(&job(
        "ttl",
        "echo short-lived",
        json!({"ttlSecondsAfterFinished": 8}),
    ));
    profile.apply(&job(
        "restarts",
        "exit 1",
        json!({"backoffLimit": 1, "restartPolicy": "OnFailure"}),
    ));
    profile.apply(&job("suspended", "echo resumed", json!({"suspend": true})));
    for doomed in ["doomed-background", "doomed-foreground"] {
        profile.apply(&job(
            doomed,
            "sleep 600",
            json!({"parallelism": 2, "completions": 4}),
        ));
    }

    // Watch them all; the parallel Job never runs more than two pods.
    let mut most_parallel = 0;
    let mut ttl_seen_complete = false;
    let mut failing_pods: BTreeMap<String, Value> = BTreeMap::new();
    let everything_done = holds_within(ALL_DONE, || {
        let jobs = list(&profile, "jobs");
        let pods = list(&profile, "pods");
        let running = pods_of(&pods, "parallel")
            .into_iter()
            .filter(|p| active(p))
            .count();
        most_parallel = most_parallel.max(running);
        assert!(running <= 2, "{running} pods of a Job of parallelism 2");
        let reported =
            named(&jobs, "parallel").map_or(0, |j| j["status"]["active"].as_i64().unwrap_or(0));
        assert!(reported <= 2, "status.active {reported} with parallelism 2");
        for pod in pods_of(&pods, "failing") {
            failing_pods.insert(
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                pod.clone(),
            );
        }
        let ttl = named(&jobs, "ttl");
        ttl_seen_complete |= condition(ttl, "Complete").is_some();
        condition(named(&jobs, "parallel"), "Complete").is_some()
            && condition(named(&jobs, "indexed"), "Complete").is_some()
            && condition(named(&jobs, "failing"), "Failed").is_some()
            && condition(named(&jobs, "deadline"), "Failed").is_some()
            && condition(named(&jobs, "restarts"), "Failed").is_some()
            && condition(named(&jobs, "suspended"), "Suspended").is_some()
            && pods_of(&pods, "deadline").is_empty()
            && ["doomed-background", "doomed-foreground"]
                .iter()
                .all(|doomed| {
                    pods_of(&pods, doomed)
                        .iter()
                        .filter(|p| p["status"]["phase"] == "Running")
                        .count()
                        == 2
                })
            && ttl_seen_complete
            && ttl.is_none()
            && pods_of(&pods, "ttl").is_empty()
    });
    let jobs = list(&profile, "jobs");
    let pods = list(&profile, "pods");
    assert!(
        everything_done,
        "not every Job reached its end in {ALL_DONE:?}:\n{}\n{}",
        profile.kubectl(&["get", "jobs", "-o", "wide"]),
        profile.kubectl(&["get", "pods", "-o", "wide"])
    );

    // completions 5, parallelism 2: five successes, two at a time.
    let parallel = named(&jobs, "parallel").expect("the parallel Job");
    assert_eq!(parallel["status"]["succeeded"], 5, "{parallel}");
    assert_eq!(most_parallel, 2, "it did run two at a time");
    assert!(parallel["status"]["completionTime"].is_string());
    assert_eq!(
        condition(Some(parallel), "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    assert_eq!(pods_of(&pods, "parallel").len(), 5);
    for pod in pods_of(&pods, "parallel") {
        let labels = &pod["metadata"]["labels"];
        for key in [
            "job-name",
            "batch.kubernetes.io/job-name",
            "controller-uid",
            "batch.kubernetes.io/controller-uid",
        ] {
            assert!(labels[key].is_string(), "{key} on {pod}");
        }
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["controller"]),
            (&json!("Job"), &json!(true))
        );
        assert!(
            pod["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "a counted pod keeps no tracking finalizer: {pod}"
        );
    }
    // Compared with runs of blanks made one, as kubectl aligns its columns.
    let described = words(&profile.kubectl(&["describe", "job", "parallel"]));
    for expected in [
        "Pods Statuses: 0 Active (0 Ready) / 5 Succeeded / 0 Failed",
        "SuccessfulCreate",
        "Completed",
    ] {
        assert!(described.contains(expected), "{expected:?} in\n{described}");
    }

    // backoffLimit 2: three attempts, each after a longer wait.
    let failing = named(&jobs, "failing").expect("the failing Job");
    assert_eq!(
        condition(Some(failing), "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(failing["status"]["failed"], 3, "{failing}");
    for pod in pods_of(&pods, "failing") {
        failing_pods.insert(
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pod.clone(),
        );
    }
    let mut attempts: Vec<&Value> = failing_pods.values().collect();
    assert_eq!(attempts.len(), 3, "three attempts: {attempts:?}");
    attempts.sort_by_key(|p| time(&p["metadata"]["creationTimestamp"]));
    let finished =
        |p: &Value| time(&p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]);
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| (time(&w[1]["metadata"]["creationTimestamp"]) - finished(w[0])).num_seconds())
        .collect();
    eprintln!("waits between attempts: {gaps:?} s");
    assert!(
        gaps[0] >= 5,
        "a backoff before the second attempt: {gaps:?}"
    );
    assert!(gaps[1] > gaps[0], "the backoff grows: {gaps:?}");
    for pod in &attempts {
        assert_eq!(pod["status"]["phase"], "Failed");
    }
    let described = profile.kubectl(&["describe", "job", "failing"]);
    assert!(
        described.contains("BackoffLimitExceeded")
            && described.contains("Job has reached the specified backoff limit"),
        "{described}"
    );

    // restartPolicy OnFailure: container restarts count against the limit.
    let restarts = named(&jobs, "restarts").expect("the restarts Job");
    assert_eq!(
        condition(Some(restarts), "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );

    // Indexed: every pod has its index, in its environment and hostname.
    let waited = profile.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=60s",
    ]);
    assert!(waited.contains("condition met"), "{waited}");
    let indexed = named(&jobs, "indexed").expect("the indexed Job");
    assert_eq!(indexed["status"]["completedIndexes"], "0-2", "{indexed}");
    let mut seen = BTreeSet::new();
    for pod in pods_of(&pods, "indexed") {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or_else(|| panic!("an index on {name}"));
        assert_eq!(
            pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"],
            index
        );
        assert!(name.starts_with(&format!("indexed-{index}-")), "{name}");
        let logs = profile.kubectl(&["logs", name]);
        assert_eq!(
            logs.trim(),
            format!("index={index} host=indexed-{index}"),
            "{name}"
        );
        seen.insert(index.to_owned());
    }
    assert_eq!(seen, BTreeSet::from(["0".into(), "1".into(), "2".into()]));

    // activeDeadlineSeconds: failed, and its pod deleted.
    let deadline = named(&jobs, "deadline").expect("the deadline Job");
    assert_eq!(
        condition(Some(deadline), "Failed").as_deref(),
        Some("DeadlineExceeded")
    );
    assert!(
        profile
            .kubectl(&["describe", "job", "deadline"])
            .contains("Job was active longer than specified deadline")
    );

    // kubectl get jobs: STATUS, COMPLETIONS, DURATION, AGE.
    let table = profile.kubectl(&["get", "jobs"]);
    let header = table.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{table}"
    );
    assert_eq!(row(&table, "parallel")[1..3], ["Complete", "5/5"]);
    assert_eq!(row(&table, "failing")[1..3], ["Failed", "0/1"]);
    assert_eq!(row(&table, "indexed")[1..3], ["Complete", "3/3"]);
    assert_eq!(row(&table, "deadline")[1..3], ["Failed", "0/1"]);
    assert_eq!(row(&table, "suspended")[1..3], ["Suspended", "0/1"]);
    assert_eq!(
        row(&table, "suspended").len(),
        4,
        "no duration before it starts"
    );
    let duration = &row(&table, "parallel")[3];
    assert!(
        duration.ends_with('s') || duration.ends_with('m'),
        "{table}"
    );
    let wide = profile.kubectl(&["get", "jobs", "-o", "wide"]);
    let parallel_row = row(&wide, "parallel");
    assert_eq!(parallel_row[5..7], ["main", IMAGE]);
    assert!(
        parallel_row[7].starts_with("batch.kubernetes.io/controller-uid="),
        "{wide}"
    );

    // A running Job deleted either way takes its pods with it: the
    // finalizers that would have let it count them do not hold them.
    for (doomed, policy) in [
        ("doomed-background", "background"),
        ("doomed-foreground", "foreground"),
    ] {
        let running = pods_of(&pods, doomed)
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        assert_eq!(running, 2, "{doomed} runs two pods");
        profile.kubectl(&["delete", "job", doomed, &format!("--cascade={policy}")]);
        wait_until(CONVERGE, &format!("{doomed} and its pods to go"), || {
            named(&list(&profile, "jobs"), doomed).is_none()
                && pods_of(&list(&profile, "pods"), doomed).is_empty()
        });
    }

    // Suspended: no pods until resumed, then it runs to completion.
    assert!(pods_of(&pods, "suspended").is_empty());
    profile.kubectl(&[
        "patch",
        "job",
        "suspended",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_until(CONVERGE, "the resumed Job to complete", || {
        condition(named(&list(&profile, "jobs"), "suspended"), "Complete").is_some()
    });
    let resumed = named(&list(&profile, "jobs"), "suspended").cloned();
    assert!(
        condition(resumed.as_ref(), "Suspended").is_none(),
        "{resumed:?}"
    );
    let described = profile.kubectl(&["describe", "job", "suspended"]);
    assert!(
        described.contains("Suspended") && described.contains("Resumed"),
        "{described}"
    );

    // The CronJob: a Job each minute, named by its minute; only the
    // latest successful one kept.
    let table = profile.kubectl(&["get", "cronjobs"]);
    assert_eq!(
        words(table.lines().next().unwrap_or_default()),
        "NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE",
        "{table}"
    );
    assert!(
        words(&table).contains("hello * * * * * <none> False"),
        "{table}"
    );
    let mut runs = BTreeSet::new();
    wait_until(
        Duration::from_secs(180),
        "two runs of the CronJob, one kept",
        || {
            let jobs = list(&profile, "jobs");
            let mine: Vec<&Value> = jobs
                .iter()
                .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == "hello")
                .collect();
            for job in &mine {
                runs.insert(
                    job["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            let cronjob = list(&profile, "cronjobs");
            let status = &named(&cronjob, "hello").expect("the CronJob")["status"];
            runs.len() >= 2
                && status["lastSuccessfulTime"].is_string()
                && mine.len() == 1
                && condition(Some(mine[0]), "Complete").is_some()
        },
    );
    for run in &runs {
        let minutes: i64 = run
            .strip_prefix("hello-")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("a Job named by its minute: {run}"));
        assert!((minutes * 60 - Utc::now().timestamp()).abs() < 600, "{run}");
    }
    let described = words(&profile.kubectl(&["describe", "cronjob", "hello"]));
    for expected in [
        "SuccessfulCreate",
        "Created job hello-",
        "SawCompletedJob",
        "SuccessfulDelete",
    ] {
        assert!(described.contains(expected), "{expected:?} in\n{described}");
    }
    let kept = list(&profile, "jobs");
    let kept = kept
        .iter()
        .find(|j| j["metadata"]["ownerReferences"][0]["name"] == "hello")
        .expect("the kept run");
    let scheduled =
        kept["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .unwrap_or_default();
    assert_eq!(time(&json!(scheduled)).timestamp() % 60, 0, "{scheduled}");
}
