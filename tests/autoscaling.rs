//! The tutorial's autoscaling step on a local cluster, as root (as CI
//! runs): the bank scenario's webserver under a bounded load from inside
//! the cluster, `kubectl top` showing it, and its HorizontalPodAutoscaler
//! (10% CPU) adding replicas, then, once the load stops and the (shortened)
//! scale-down window passes, taking them away.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::time::Duration;

use common::profile::Profile;
use common::wait_until;

/// Two scrapes (15 s apart) before a rate exists, then an HPA sync.
const METRICS: Duration = Duration::from_secs(90);

/// Ready webserver pods.
fn ready_webservers(profile: &Profile) -> Vec<String> {
    profile
        .try_kubectl(&[
            "get",
            "pods",
            "-l",
            "app=webserver",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name, "True"] => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

fn desired(profile: &Profile) -> i64 {
    profile
        .try_kubectl(&[
            "get",
            "deployment",
            "webserver-deployment",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(0)
}

/// A client loop in `pod`: GET /burn?ms=200 through the Service until
/// /tmp/stop exists or three minutes pass (bounded, whatever happens).
const LOAD: &str = r"import os, time, urllib.request
end = time.time() + 180
while time.time() < end and not os.path.exists('/tmp/stop'):
    try:
        urllib.request.urlopen('http://webserver-service/burn?ms=200', timeout=5).read()
    except Exception:
        time.sleep(0.2)
";

#[test]
fn the_bank_webserver_scales_with_its_load() {
    let profile = Profile::up(
        2,
        &["--server-flag=--horizontal-pod-autoscaler-downscale-stabilization=20s"],
    );
    let name = profile.name.clone();
    profile.apply_bank();
    wait_until(
        Duration::from_secs(180),
        "the database and two webservers to be ready",
        || ready_webservers(&profile).len() == 2,
    );

    // kubectl top, once two scrapes have been taken.
    wait_until(METRICS, "kubectl top node", || {
        profile
            .try_kubectl(&["top", "node", "--no-headers"])
            .is_some_and(|t| t.lines().count() == 2 && t.contains(&name))
    });
    let nodes = profile.kubectl(&["top", "node"]);
    assert!(
        nodes.starts_with("NAME") && nodes.contains("CPU(cores)") && nodes.contains("MEMORY(%)"),
        "{nodes}"
    );
    wait_until(METRICS, "kubectl top pod", || {
        profile
            .try_kubectl(&["top", "pod", "-l", "app=webserver", "--no-headers"])
            .is_some_and(|t| t.lines().count() == 2)
    });
    let containers = profile.kubectl(&["top", "pod", "--containers", "-l", "app=webserver"]);
    assert!(containers.contains(" webserver "), "{containers}");
    wait_until(METRICS, "kubectl top pod -A to list the database", || {
        profile
            .try_kubectl(&["top", "pod", "-A"])
            .is_some_and(|all| all.starts_with("NAMESPACE") && all.contains("mysql-0"))
    });
    wait_until(METRICS, "the autoscaler to read its metric", || {
        profile
            .try_kubectl(&["get", "hpa", "webserver-autoscaler", "--no-headers"])
            .is_some_and(|row| row.contains("cpu: ") && row.contains("%/10%"))
    });
    assert_eq!(desired(&profile), 2);

    // Load from inside the cluster: the autoscaler adds replicas.
    let client = ready_webservers(&profile).remove(0);
    let mut load = common::spawn_background(
        profile.command("kubectl", &["exec", &client, "--", "python3", "-c", LOAD]),
        "the load loop".into(),
    );
    wait_until(METRICS, "the autoscaler to scale up", || {
        desired(&profile) > 2
    });
    let top = profile.kubectl(&["top", "pod", "-l", "app=webserver", "--no-headers"]);
    let busiest: i64 = top
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)?
                .trim_end_matches('m')
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest > 10,
        "a replica above 10% of its 100m request: {top}"
    );
    let described = profile.kubectl(&["describe", "hpa", "webserver-autoscaler"]);
    for text in [
        "SuccessfulRescale",
        "New size:",
        "ValidMetricFound",
        "above target",
    ] {
        assert!(described.contains(text), "{text}: {described}");
    }

    // Load gone: after the stabilization window, back to the minimum.
    profile.kubectl(&["exec", &client, "--", "sh", "-c", ": > /tmp/stop"]);
    let (stopped, _) = load.wait_for_exit();
    assert!(stopped.success(), "the load loop: {stopped}");
    wait_until(
        Duration::from_secs(180),
        "the autoscaler to scale down",
        || desired(&profile) == 2,
    );
    let hpa = profile.kubectl(&["get", "hpa", "webserver-autoscaler", "-o", "json"]);
    let hpa: serde_json::Value = serde_json::from_str(&hpa).expect("JSON");
    assert_eq!(hpa["status"]["desiredReplicas"], 2, "{hpa}");
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
}
