//! The controllers and the scheduler against a three-member control plane,
//! with simulated nodes (see `common/nodes.rs`) playing the node agents.
//!
//! Driven with the real `kubectl`; availability during rollouts is sampled
//! through the API. Every wait is on a condition, with a deadline.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Member};
use common::nodes::SimulatedNodes;
use common::wait_until;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use keelson_control::client::{Client, ListParams};

/// How long a controller may take to converge after a change.
const CONVERGE: Duration = Duration::from_secs(60);

fn list<K>(nodes: &SimulatedNodes, client: &Client, selector: &str) -> Vec<K>
where
    K: k8s_openapi::Resource + k8s_openapi::serde::de::DeserializeOwned,
{
    let params = ListParams {
        label_selector: Some(selector.to_owned()),
        ..ListParams::default()
    };
    nodes
        .block_on(client.list::<K>(Some("default"), &params))
        .map(|l| l.items)
        .unwrap_or_default()
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
}

fn image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Waits until `app`'s pods are exactly `count`, all ready, of `image`;
/// says what there was instead if they are not.
fn await_pods(
    nodes: &SimulatedNodes,
    client: &Client,
    app: &str,
    count: usize,
    with_image: &str,
) -> Vec<Pod> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let pods = list::<Pod>(nodes, client, &format!("app={app}"));
        if pods.len() == count && pods.iter().all(|p| ready(p) && image(p) == with_image) {
            return pods;
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = pods
                .iter()
                .map(|p| {
                    format!(
                        "{} {} node={} ready={} deleting={}",
                        p.metadata.name.as_deref().unwrap_or_default(),
                        image(p),
                        node_of(p),
                        ready(p),
                        !live(p)
                    )
                })
                .collect();
            let sets: Vec<String> = list::<ReplicaSet>(nodes, client, &format!("app={app}"))
                .iter()
                .map(|rs| {
                    format!(
                        "{} spec={:?} status={:?}",
                        rs.metadata.name.as_deref().unwrap_or_default(),
                        rs.spec.as_ref().and_then(|s| s.replicas),
                        rs.status
                    )
                })
                .collect();
            panic!(
                "timed out waiting for {count} ready {with_image} pods of {app}; pods:\n{}\nreplica sets:\n{}",
                seen.join("\n"),
                sets.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The revision numbers `kubectl rollout history` lists.
fn revisions(history: &str) -> Vec<&str> {
    history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The identity of the member holding the controllers' lease (`m1_…`).
fn holder(member: &Member) -> Option<String> {
    let output = member.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "keelson-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

#[test]
fn deployments_roll_out_scale_and_roll_back() {
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let nodes = SimulatedNodes::start(&m0.kubeconfig(), &["node-a", "node-b", "node-c"]);
    let client = nodes.client();

    m0.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=4",
    ]);
    let status = m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let pods = await_pods(&nodes, &client, "web", 4, "nginx:1.25");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for pod in &pods {
        *per_node.entry(node_of(pod)).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "one owner's pods spread over every node: {per_node:?}"
    );

    // Scaling, to zero too.
    m0.kubectl_ok(&["scale", "deployment/web", "--replicas=6"]);
    await_pods(&nodes, &client, "web", 6, "nginx:1.25");
    m0.kubectl_ok(&["scale", "deployment/web", "--replicas=0"]);
    await_pods(&nodes, &client, "web", 0, "nginx:1.25");
    wait_until(CONVERGE, "the Deployment to report 0 replicas", || {
        m0.kubectl_ok(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.status.replicas}/{.spec.replicas}",
        ])
        .trim()
            == "/0"
    });
    m0.kubectl_ok(&["scale", "deployment/web", "--replicas=4"]);
    await_pods(&nodes, &client, "web", 4, "nginx:1.25");
    m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // A rolling update never goes below 4 - 25% available, nor above 4 + 25% pods.
    m0.kubectl_ok(&["set", "image", "deployment/web", "nginx=nginx:1.26"]);
    let (mut fewest_ready, mut most_live, mut samples) = (usize::MAX, 0, 0);
    wait_until(CONVERGE, "the rolling update to finish", || {
        let pods = list::<Pod>(&nodes, &client, "app=web");
        fewest_ready = fewest_ready.min(pods.iter().filter(|p| ready(p)).count());
        most_live = most_live.max(pods.iter().filter(|p| live(p)).count());
        samples += 1;
        pods.len() == 4 && pods.iter().all(|p| ready(p) && image(p) == "nginx:1.26")
    });
    assert!(
        fewest_ready >= 3,
        "availability fell to {fewest_ready} (over {samples} samples)"
    );
    assert!(
        most_live <= 5,
        "{most_live} pods at once (over {samples} samples)"
    );
    let status = m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");

    let history = m0.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert_eq!(revisions(&history), ["1", "2"], "{history}");

    // Back to the first template: its ReplicaSet comes back as revision 3.
    m0.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    await_pods(&nodes, &client, "web", 4, "nginx:1.25");
    let sets = list::<ReplicaSet>(&nodes, &client, "app=web");
    assert_eq!(sets.len(), 2, "the undo reuses the first ReplicaSet");
    let history = m0.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert_eq!(revisions(&history), ["2", "3"], "{history}");

    // Paused, a template change rolls nothing out until resumed.
    m0.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    m0.kubectl_ok(&["set", "image", "deployment/web", "nginx=nginx:1.27"]);
    wait_until(CONVERGE, "the paused condition", || {
        m0.kubectl_ok(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ])
        .trim()
            == "DeploymentPaused"
    });
    assert!(
        list::<Pod>(&nodes, &client, "app=web")
            .iter()
            .all(|p| image(p) == "nginx:1.25")
    );
    m0.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let before = await_pods(&nodes, &client, "web", 4, "nginx:1.27");

    // A restart replaces every pod with the same template, restamped.
    m0.kubectl_ok(&["rollout", "restart", "deployment/web"]);
    m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let after = await_pods(&nodes, &client, "web", 4, "nginx:1.27");
    assert!(after.iter().all(|p| {
        !before.iter().any(|b| b.metadata.uid == p.metadata.uid)
            && p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
    }));

    let described = m0.kubectl_ok(&["describe", "deployment/web"]);
    assert!(described.contains("ScalingReplicaSet"), "{described}");
    assert!(described.contains("NewReplicaSetAvailable"), "{described}");
}

#[test]
fn deleting_a_deployment_follows_its_propagation_policy() {
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let nodes = SimulatedNodes::start(&m0.kubeconfig(), &["node-a", "node-b"]);
    let client = nodes.client();
    for app in ["background", "orphan", "foreground"] {
        m0.kubectl_ok(&[
            "create",
            "deployment",
            app,
            "--image=nginx:1.25",
            "--replicas=2",
        ]);
    }
    for app in ["background", "orphan", "foreground"] {
        await_pods(&nodes, &client, app, 2, "nginx:1.25");
    }

    // Background: the Deployment goes at once, its ReplicaSet and pods after.
    m0.kubectl_ok(&["delete", "deployment/background", "--cascade=background"]);
    wait_until(
        CONVERGE,
        "the background deletion to take everything",
        || {
            list::<ReplicaSet>(&nodes, &client, "app=background").is_empty()
                && list::<Pod>(&nodes, &client, "app=background").is_empty()
        },
    );

    // Orphan: the ReplicaSet and its pods stay, owned by nobody.
    m0.kubectl_ok(&["delete", "deployment/orphan", "--cascade=orphan"]);
    wait_until(
        CONVERGE,
        "the orphaned ReplicaSet to lose its owner",
        || {
            let sets = list::<ReplicaSet>(&nodes, &client, "app=orphan");
            m0.kubectl(&["get", "deployment/orphan"]).status.code() == Some(1)
                && sets.len() == 1
                && sets[0]
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(Vec::is_empty)
        },
    );
    let pods = list::<Pod>(&nodes, &client, "app=orphan");
    assert_eq!(
        pods.iter().filter(|p| ready(p)).count(),
        2,
        "the orphans keep running"
    );
    let set_uid = list::<ReplicaSet>(&nodes, &client, "app=orphan")[0]
        .metadata
        .uid
        .clone();
    assert!(pods.iter().all(|p| {
        p.metadata
            .owner_references
            .as_ref()
            .is_some_and(|r| r.len() == 1 && Some(&r[0].uid) == set_uid.as_ref())
    }));

    // Foreground: the Deployment waits, deleting, until its dependents are gone.
    m0.kubectl_ok(&[
        "delete",
        "deployment/foreground",
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_until(CONVERGE, "the foreground deletion to finish", || {
        let seen = m0.kubectl_ok(&[
            "get",
            "deployment/foreground",
            "--ignore-not-found",
            "-o",
            "jsonpath={.metadata.name} {.metadata.finalizers}",
        ]);
        if !seen.is_empty() {
            // While it exists, it carries the finalizer that makes it wait.
            assert!(seen.contains("foregroundDeletion"), "{seen}");
            return false;
        }
        // Gone: its dependents went first.
        assert!(list::<ReplicaSet>(&nodes, &client, "app=foreground").is_empty());
        assert!(list::<Pod>(&nodes, &client, "app=foreground").is_empty());
        true
    });
    assert!(list::<ReplicaSet>(&nodes, &client, "app=foreground").is_empty());
    assert!(list::<Pod>(&nodes, &client, "app=foreground").is_empty());
}

#[test]
fn a_silent_node_is_tainted_and_its_pods_are_replaced_elsewhere() {
    let plane = Cluster::start_control_plane_with(&[
        "--node-monitor-grace-period",
        "3s",
        "--default-unreachable-toleration-seconds",
        "2",
    ]);
    let m0 = plane.member(0);
    let nodes = SimulatedNodes::start(&m0.kubeconfig(), &["node-a", "node-b", "node-c"]);
    let client = nodes.client();
    wait_until(CONVERGE, "every node to get a pod CIDR", || {
        let cidrs = m0.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
        let mut cidrs: Vec<&str> = cidrs.split_whitespace().collect();
        cidrs.sort_unstable();
        cidrs == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
    });
    m0.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=6",
    ]);
    let pods = await_pods(&nodes, &client, "web", 6, "nginx:1.25");
    assert!(pods.iter().any(|p| node_of(p) == "node-a"));

    nodes.stop("node-a");
    let stopped = Instant::now();
    wait_until(
        CONVERGE,
        "node-a to turn Unknown and be tainted unreachable",
        || {
            let state = m0.kubectl_ok(&[
                "get",
                "node/node-a",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints[*].key}",
            ]);
            state.starts_with("Unknown") && state.contains("node.kubernetes.io/unreachable")
        },
    );
    let listed = m0.kubectl_ok(&["get", "nodes"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("node-a") && l.contains("NotReady")),
        "{listed}"
    );
    wait_until(CONVERGE, "6 ready pods on the live nodes", || {
        let pods = list::<Pod>(&nodes, &client, "app=web");
        let running: Vec<&Pod> = pods.iter().filter(|p| ready(p)).collect();
        running.len() == 6 && running.iter().all(|p| node_of(p) != "node-a")
    });
    eprintln!(
        "replaced node-a's pods {:?} after it went silent",
        stopped.elapsed()
    );
    let events = m0.kubectl_ok(&["get", "events", "-A"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
}

#[test]
fn a_pod_that_fits_nowhere_waits_for_a_node_that_fits() {
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let nodes = SimulatedNodes::start(&m0.kubeconfig(), &["node-a", "node-b"]);
    m0.kubectl_ok(&["run", "big", "--image=busybox:1.36", "--overrides",
        r#"{"spec":{"containers":[{"name":"big","image":"busybox:1.36","resources":{"requests":{"cpu":"16"}}}]}}"#]);
    wait_until(CONVERGE, "big to be reported unschedulable", || {
        let condition = m0.kubectl_ok(&["get", "pod/big", "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}: {.status.conditions[?(@.type==\"PodScheduled\")].message}"]);
        condition.trim() == "Unschedulable: 0/2 nodes are available: 2 Insufficient cpu."
    });
    let described = m0.kubectl_ok(&["describe", "pod/big"]);
    assert!(described.contains("FailedScheduling"), "{described}");
    assert!(
        described.contains("0/2 nodes are available: 2 Insufficient cpu."),
        "{described}"
    );
    assert!(m0.kubectl_ok(&["get", "pod/big"]).contains("Pending"));

    // A node change that still leaves no room: retried, and the same event
    // counted again rather than written twice (one event; a slow machine
    // may also see the periodic retry count it).
    m0.kubectl_ok(&["label", "node", "node-a", "disk=ssd"]);
    wait_until(
        CONVERGE,
        "the FailedScheduling event to be counted again",
        || {
            let counts = m0.kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "reason=FailedScheduling",
                "-o",
                "jsonpath={.items[*].count}",
            ]);
            let counts: Vec<&str> = counts.split_whitespace().collect();
            counts.len() == 1 && counts[0].parse::<u32>().is_ok_and(|n| n >= 2)
        },
    );
    let events = m0.kubectl_ok(&["events", "--for", "pod/big"]);
    assert!(
        events.contains("FailedScheduling") && events.contains("(x") && events.contains(" over "),
        "{events}"
    );

    nodes.add("node-big", "32");
    wait_until(CONVERGE, "big to land on node-big and run", || {
        m0.kubectl_ok(&[
            "get",
            "pod/big",
            "-o",
            "jsonpath={.spec.nodeName} {.status.phase}",
        ])
        .trim()
            == "node-big Running"
    });
}

#[test]
fn the_controllers_move_when_their_member_dies_mid_rollout() {
    let mut plane = Cluster::start_control_plane();
    let mut leader = String::new();
    wait_until(CONVERGE, "a member to hold the controllers' lease", || {
        holder(plane.member(0)).map(|h| leader = h).is_some()
    });
    let dying = (0..3)
        .find(|&i| leader.starts_with(&format!("{}_", plane.member(i).name())))
        .expect("the holder is a member");
    let survivor = (dying + 1) % 3;
    let nodes = SimulatedNodes::start(
        &plane.member(survivor).kubeconfig(),
        &["node-a", "node-b", "node-c"],
    );
    let client = nodes.client();
    let m = plane.member(survivor);
    m.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=6",
    ]);
    await_pods(&nodes, &client, "web", 6, "nginx:1.25");

    m.kubectl_ok(&["set", "image", "deployment/web", "nginx=nginx:1.26"]);
    wait_until(CONVERGE, "the rollout to start", || {
        list::<Pod>(&nodes, &client, "app=web")
            .iter()
            .any(|p| image(p) == "nginx:1.26")
    });
    plane.member_mut(dying).kill();
    let killed = Instant::now();
    let m = plane.member(survivor);
    let mut next = String::new();
    wait_until(CONVERGE, "another member to take the lease", || {
        holder(m).is_some_and(|h| {
            h != leader && {
                next = h;
                true
            }
        })
    });
    let takeover = killed.elapsed();
    eprintln!("{next} took over {takeover:?} after {leader} was killed");
    // How fast is measured by deploy/bench-controller-failover.sh; here, a
    // bound that only a broken election would exceed (three lease durations).
    assert!(
        takeover <= Duration::from_secs(9),
        "took {takeover:?} to take over"
    );

    m.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let pods = await_pods(&nodes, &client, "web", 6, "nginx:1.26");

    // The new holder's metrics, as `kubectl get --raw /metrics` shows them.
    let holder = (0..3)
        .find(|&i| next.starts_with(&format!("{}_", plane.member(i).name())))
        .expect("the new holder is a member");
    let metrics = plane
        .member(holder)
        .kubectl_ok(&["get", "--raw", "/metrics"]);
    for series in [
        "leader_election_master_status{name=\"keelson-controller-manager\"} 1",
        "workqueue_depth{name=\"deployment\"}",
        "workqueue_adds_total{name=\"replicaset\"}",
        "workqueue_queue_duration_seconds_bucket{name=\"deployment\"",
        "workqueue_work_duration_seconds_bucket{name=\"replicaset\"",
        "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"}",
        "scheduler_scheduling_attempt_duration_seconds_bucket{result=\"scheduled\"",
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
    assert_eq!(pods.len(), 6);
    let deployment: Deployment = nodes
        .block_on(client.get(Some("default"), "web"))
        .expect("the Deployment");
    let status = deployment.status.expect("status");
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.available_replicas
        ),
        (Some(6), Some(6), Some(6))
    );
}

#[test]
fn services_track_their_pods_and_namespaces_empty_before_they_go() {
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let nodes = SimulatedNodes::start(&m0.kubeconfig(), &["node-a", "node-b"]);
    let client = nodes.client();

    m0.kubectl_ok(&["create", "namespace", "shop"]);
    wait_until(
        CONVERGE,
        "the default ServiceAccount in a new namespace",
        || {
            m0.kubectl(&["get", "serviceaccount", "default", "-n", "shop"])
                .status
                .success()
        },
    );

    m0.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=3",
        "--port=80",
    ]);
    m0.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--port=8080",
        "--target-port=80",
    ]);
    let pods = await_pods(&nodes, &client, "web", 3, "nginx:1.25");
    let mut ips: Vec<String> = pods
        .iter()
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .map(|ip| format!("{ip}:80"))
        .collect();
    ips.sort();
    wait_until(CONVERGE, "the Endpoints to list the three pods", || {
        let listed = m0.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={range .subsets[*].addresses[*]}{.ip}{\"\\n\"}{end}",
        ]);
        let mut got: Vec<String> = listed.lines().map(|ip| format!("{ip}:80")).collect();
        got.sort();
        got == ips
    });
    let slices = m0.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[*].endpoints[*].conditions.ready} {.items[*].ports[*].port}",
    ]);
    assert_eq!(slices.trim(), "true true true 80", "{slices}");

    // Scaled down: the Endpoints follow.
    m0.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    wait_until(CONVERGE, "the Endpoints to list one pod", || {
        m0.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .split_whitespace()
        .count()
            == 1
    });

    // A namespace goes only once what is in it has gone.
    m0.kubectl_ok(&[
        "create",
        "deployment",
        "cart",
        "-n",
        "shop",
        "--image=nginx:1.25",
        "--replicas=2",
    ]);
    wait_until(CONVERGE, "cart's pods to run", || {
        m0.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ])
        .trim()
            == "Running Running"
    });
    m0.kubectl_ok(&["delete", "namespace", "shop", "--wait=false"]);
    assert!(
        m0.kubectl_ok(&["get", "namespace", "shop"])
            .contains("Terminating")
    );
    wait_until(CONVERGE, "the namespace and its pods to go", || {
        m0.kubectl_ok(&["get", "namespace", "shop", "--ignore-not-found"])
            .is_empty()
    });
    assert_eq!(
        m0.kubectl_ok(&["get", "pods", "-n", "shop", "-o", "name"]),
        ""
    );
    let refused = m0.kubectl_err(&["delete", "namespace", "kube-system"]);
    assert!(
        refused.contains("this namespace may not be deleted"),
        "{refused}"
    );
}
