//! Resource metrics and the HorizontalPodAutoscaler on a local cluster, as
//! root (as CI runs): `kubectl top` from the agents' cgroup figures, and a
//! Deployment scaled up under CPU load and back down once it stops.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::time::Duration;

use common::profile::{IMAGE, Profile};
use common::wait_until;
use serde_json::json;

/// Two scrapes (15 s apart) before a rate exists, then an HPA sync.
const METRICS: Duration = Duration::from_secs(90);

/// Pods of the Deployment and their phase.
fn replicas(profile: &Profile) -> Vec<String> {
    profile
        .try_kubectl(&[
            "get",
            "pods",
            "-l",
            "app=burner",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            [name, "Running"] => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

fn spec_replicas(profile: &Profile) -> i64 {
    profile
        .try_kubectl(&[
            "get",
            "deployment",
            "burner",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn top_shows_usage_and_the_autoscaler_follows_the_load() {
    // A short scale-down window, so the test sees the way back.
    let profile = Profile::up(
        2,
        &["--server-flag=--horizontal-pod-autoscaler-downscale-stabilization=20s"],
    );
    let name = profile.name.clone();
    // Burns a core while /tmp/load exists; idle otherwise.
    profile.apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "burner"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burner"}},
            "template": {"metadata": {"labels": {"app": "burner"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "burn", "image": IMAGE,
                    "command": ["sh", "-c", "while :; do while [ -f /tmp/load ]; do :; done; sleep 1; done"],
                    "resources": {"requests": {"cpu": "50m", "memory": "8Mi"}}}]}}}}));
    profile.apply(&json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "burner"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burner"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 10}}}]}}));

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
            .try_kubectl(&["top", "pod", "-l", "app=burner", "--no-headers"])
            .is_some_and(|t| t.contains("burner-"))
    });
    let containers = profile.kubectl(&["top", "pod", "--containers", "-l", "app=burner"]);
    assert!(containers.contains(" burn "), "{containers}");
    let all = profile.kubectl(&["top", "pod", "-A"]);
    assert!(
        all.contains("NAMESPACE") && all.contains("burner-"),
        "{all}"
    );
    wait_until(METRICS, "the autoscaler to read its metric", || {
        profile
            .try_kubectl(&["get", "hpa", "burner", "--no-headers"])
            .is_some_and(|row| row.contains("cpu: ") && row.contains("%/10%"))
    });

    // Load: every replica burns; the autoscaler grows the Deployment.
    let first = replicas(&profile);
    assert_eq!(first.len(), 1, "{first:?}");
    profile.kubectl(&["exec", &first[0], "--", "sh", "-c", ": > /tmp/load"]);
    wait_until(METRICS, "the autoscaler to scale up", || {
        spec_replicas(&profile) > 1
    });
    let top = profile.kubectl(&["top", "pod", &first[0], "--no-headers"]);
    let millicores: i64 = top
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.trim_end_matches('m').parse().ok())
        .unwrap_or(0);
    assert!(millicores > 100, "a busy loop uses more than 100m: {top}");
    let described = profile.kubectl(&["describe", "hpa", "burner"]);
    for text in [
        "SuccessfulRescale",
        "New size:",
        "ScalingActive",
        "ValidMetricFound",
    ] {
        assert!(described.contains(text), "{text}: {described}");
    }

    // Load gone: after the (shortened) stabilization window, back to one.
    for pod in replicas(&profile) {
        let _ = profile.try_kubectl(&["exec", &pod, "--", "busybox", "rm", "-f", "/tmp/load"]);
    }
    wait_until(
        Duration::from_secs(180),
        "the autoscaler to scale down",
        || spec_replicas(&profile) == 1,
    );
    let hpa = profile.kubectl(&["get", "hpa", "burner", "-o", "json"]);
    let hpa: serde_json::Value = serde_json::from_str(&hpa).expect("JSON");
    assert_eq!(hpa["status"]["desiredReplicas"], 1, "{hpa}");
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
}
