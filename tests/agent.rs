//! `keelson agent` against a three-member control plane. These agents use
//! the fake runtime (hollow nodes): pods "run" without processes, which is
//! enough to check registration, heartbeats, status reporting, deletion
//! and what the control plane does when an agent dies.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{Cluster, Member};
use common::{Background, spawn_background, wait_until};

const CONVERGE: Duration = Duration::from_secs(60);

/// A hollow agent named `name` talking to `member`'s API.
fn hollow_agent(member: &Member, name: &str) -> Background {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keelson"));
    command
        .args([
            "agent",
            "--runtime",
            "fake",
            "--node-name",
            name,
            "--node-ip",
            "192.0.2.10",
        ])
        .args(["--node-lease-renew-interval", "500ms", "--port", "0"])
        .arg("--kubeconfig")
        .arg(member.kubeconfig());
    spawn_background(command, format!("keelson agent {name}"))
}

/// `NAME PHASE NODE IP` for each pod of `app`, sorted.
fn pods(member: &Member, app: &str) -> Vec<String> {
    let text = member.kubectl_ok(&[
        "get", "pods", "-l", &format!("app={app}"), "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName} {.status.podIP} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn hollow_agents_run_pods_and_the_loss_of_one_is_healed() {
    let plane = Cluster::start_control_plane_with(&[
        "--node-monitor-grace-period",
        "3s",
        "--default-unreachable-toleration-seconds",
        "2",
    ]);
    let m0 = plane.member(0);
    let a = hollow_agent(m0, "hollow-a");
    let _b = hollow_agent(plane.member(1), "hollow-b");
    wait_until(CONVERGE, "both nodes Ready with pod CIDRs", || {
        let nodes = m0.kubectl_ok(&["get", "nodes", "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}/{.spec.podCIDR} {end}"]);
        nodes
            .split_whitespace()
            .filter(|n| n.contains("=True/10.42."))
            .count()
            == 2
    });
    let info = m0.kubectl_ok(&["get", "node", "hollow-a", "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion} {.status.nodeInfo.kubeletVersion} {.status.capacity.pods}"]);
    assert!(
        info.starts_with("fake://") && info.ends_with("v1.32.0-keelson 110"),
        "{info}"
    );
    assert_eq!(
        m0.kubectl_ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "hollow-a",
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ]),
        "hollow-a"
    );

    m0.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=4",
    ]);
    m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    wait_until(
        CONVERGE,
        "4 running pods with addresses from their nodes' CIDRs",
        || {
            let pods = pods(m0, "web");
            pods.len() == 4
                && pods
                    .iter()
                    .all(|p| p.contains(" Running ") && p.contains(" 10.42."))
        },
    );
    let ready = m0.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready.trim(), "True True True True");

    // A deleted pod is stopped by its agent, which then finishes the deletion.
    let victim = pods(m0, "web")[0]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    m0.kubectl_ok(&["delete", "pod", &victim, "--wait=true", "--timeout=30s"]);
    assert!(
        m0.kubectl_ok(&["get", "pod", &victim, "--ignore-not-found"])
            .is_empty()
    );

    // The agent of hollow-a dies: its pods move to hollow-b.
    drop(a);
    wait_until(CONVERGE, "4 running pods, all on hollow-b", || {
        let pods = pods(m0, "web");
        let live: Vec<&String> = pods
            .iter()
            .filter(|p| p.split_whitespace().count() == 4)
            .collect();
        live.len() == 4 && live.iter().all(|p| p.contains(" Running hollow-b "))
    });
    let node = m0.kubectl_ok(&["get", "nodes"]);
    assert!(
        node.lines()
            .any(|l| l.starts_with("hollow-a") && l.contains("NotReady")),
        "{node}"
    );
}
