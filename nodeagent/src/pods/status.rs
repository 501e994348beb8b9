//! A pod's status as its agent reports it, computed from what the runtime
//! says and what the planner decided: phase, conditions, per-container
//! states, IPs.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{self, Waiting};
use crate::runtime::{ContainerRun, ContainerState, SandboxState};

/// The `containerID` a status carries for a runtime's container.
pub fn container_id(id: &str) -> String {
    format!("keelson://{id}")
}

fn terminated(state: &ContainerState) -> Option<ContainerStateTerminated> {
    let ContainerRun::Exited {
        exit_code,
        reason,
        started,
        finished,
    } = &state.run
    else {
        return None;
    };
    Some(ContainerStateTerminated {
        exit_code: *exit_code,
        reason: Some(reason.clone()),
        started_at: started.map(Time),
        finished_at: Some(Time(*finished)),
        container_id: Some(container_id(&state.id)),
        ..ContainerStateTerminated::default()
    })
}

/// What the probes say of a running container (its runtime id):
/// `(started, ready)`.
pub type Health<'a> = &'a dyn Fn(&str, &Container) -> (bool, bool);

fn container_status(
    container: &Container,
    sandbox: Option<&SandboxState>,
    waiting: &[Waiting],
    health: Health<'_>,
) -> ContainerStatus {
    let latest = sandbox.and_then(|s| s.latest(&container.name));
    let previous = latest.and_then(|l| {
        sandbox?
            .containers
            .iter()
            .filter(|c| c.name == container.name && c.attempt < l.attempt)
            .max_by_key(|c| c.attempt)
    });
    let waiting_for = waiting.iter().find(|w| w.name == container.name);
    let mut status = ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: latest.map(|l| l.image_id.clone()).unwrap_or_default(),
        restart_count: latest.map_or(0, |l| l.attempt as i32),
        container_id: latest.map(|l| container_id(&l.id)),
        ready: false,
        started: Some(false),
        ..ContainerStatus::default()
    };
    let (state, last) = match (latest, waiting_for) {
        // Waiting to be restarted: the exit is the last state.
        (Some(l), Some(w)) => (
            K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(w.reason.into()),
                    message: Some(w.message.clone()),
                }),
                ..K8sState::default()
            },
            terminated(l),
        ),
        (None, w) => (
            K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(w.map_or("ContainerCreating", |w| w.reason).into()),
                    message: w.map(|w| w.message.clone()),
                }),
                ..K8sState::default()
            },
            None,
        ),
        (Some(l), None) => match &l.run {
            ContainerRun::Running { started } => {
                let (probed_started, probed_ready) = health(&l.id, container);
                status.ready = probed_started && probed_ready;
                status.started = Some(probed_started);
                (
                    K8sState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(*started)),
                        }),
                        ..K8sState::default()
                    },
                    previous.and_then(terminated),
                )
            }
            ContainerRun::Created => (
                K8sState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ContainerCreating".into()),
                        message: None,
                    }),
                    ..K8sState::default()
                },
                previous.and_then(terminated),
            ),
            ContainerRun::Exited { .. } => (
                K8sState {
                    terminated: terminated(l),
                    ..K8sState::default()
                },
                previous.and_then(terminated),
            ),
        },
    };
    status.state = Some(state);
    status.last_state = last.map(|t| K8sState {
        terminated: Some(t),
        ..K8sState::default()
    });
    status
}

fn phase(
    pod: &Pod,
    sandbox: Option<&SandboxState>,
    statuses: &[ContainerStatus],
    initialized: bool,
) -> &'static str {
    if plan::init_failed(pod, sandbox) {
        return "Failed";
    }
    if let Some(succeeded) = plan::finished(pod, sandbox) {
        return if succeeded { "Succeeded" } else { "Failed" };
    }
    if sandbox.is_none() || !initialized {
        return "Pending";
    }
    let ever_ran = |s: &ContainerStatus| {
        s.state
            .as_ref()
            .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            || s.last_state.is_some()
    };
    if statuses.iter().all(ever_ran) {
        "Running"
    } else {
        "Pending"
    }
}

/// The QoS class Kubernetes gives the pod's resources.
pub fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for container in containers {
        let resources = container.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        any |= !requests.is_empty() || !limits.is_empty();
        for name in ["cpu", "memory"] {
            let limit = limits.get(name);
            let request = requests.get(name).or(limit);
            guaranteed &= limit.is_some() && request == limit;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The status to report for `pod`.
pub fn pod_status(
    pod: &Pod,
    sandbox: Option<&SandboxState>,
    waiting: &[Waiting],
    health: Health<'_>,
    host_ip: &str,
    now: DateTime<Utc>,
) -> PodStatus {
    let empty = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, sandbox, waiting, health))
        .collect();
    let mut statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, sandbox, waiting, health))
        .collect();
    let incomplete: Vec<String> = init_statuses
        .iter()
        .filter(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_none_or(|t| t.exit_code != 0)
        })
        .map(|s| s.name.clone())
        .collect();
    let initialized = incomplete.is_empty();
    // An init container that finished is not "ready"; it is done.
    let init_statuses: Vec<ContainerStatus> = init_statuses
        .into_iter()
        .map(|mut s| {
            s.ready = s
                .state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0);
            s
        })
        .collect();
    let phase = phase(pod, sandbox, &statuses, initialized);
    if matches!(phase, "Succeeded" | "Failed") {
        for s in &mut statuses {
            s.ready = false;
        }
    }
    let unready: Vec<String> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.clone())
        .collect();
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |kind: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: if ok { None } else { reason.map(str::to_owned) },
            message: if ok { None } else { message },
            last_transition_time: Some(since),
            last_probe_time: None,
        }
    };
    let completed = matches!(phase, "Succeeded" | "Failed");
    let (ready_reason, ready_message) = if completed {
        ("PodCompleted", None)
    } else {
        (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let sandbox_ready = sandbox.is_some_and(|s| s.ready);
    let conditions = vec![
        condition("PodReadyToStartContainers", sandbox_ready, None, None),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        ),
        condition(
            "Ready",
            unready.is_empty() && !completed,
            Some(ready_reason),
            ready_message.clone(),
        ),
        condition(
            "ContainersReady",
            unready.is_empty() && !completed,
            Some(ready_reason),
            ready_message,
        ),
        condition("PodScheduled", true, None, None),
    ];
    let ip = sandbox.and_then(|s| s.ip.clone());
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_owned(),
        }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .or(Some(Time(now))),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        qos_class: Some(qos_class(pod).to_owned()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SandboxConfig;
    use serde_json::json;

    const HEALTHY: Health<'static> = &|_, _| (true, true);

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "app", "image": "busybox"}]}})).unwrap()
    }

    fn sandbox(run: Option<ContainerRun>) -> SandboxState {
        SandboxState {
            id: "s".into(),
            config: SandboxConfig {
                pod_uid: "u".into(),
                namespace: "ns".into(),
                name: "p".into(),
                hostname: "p".into(),
                host_ports: Vec::new(),
            },
            ready: true,
            ip: Some("10.42.0.5".into()),
            created: Utc::now(),
            containers: run
                .into_iter()
                .map(|run| ContainerState {
                    id: "c1".into(),
                    name: "app".into(),
                    attempt: 0,
                    image: "busybox".into(),
                    image_id: String::new(),
                    run,
                })
                .collect(),
        }
    }

    fn ready_of(status: &PodStatus) -> String {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
            .unwrap()
    }

    #[test]
    fn phases_follow_the_containers() {
        let now = Utc::now();
        let p = pod("Never");
        let pending = pod_status(&p, None, &[], HEALTHY, "192.0.2.1", now);
        assert_eq!(pending.phase.as_deref(), Some("Pending"));
        let creating = pod_status(&p, Some(&sandbox(None)), &[], HEALTHY, "192.0.2.1", now);
        assert_eq!(
            creating.container_statuses.as_ref().unwrap()[0]
                .state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("ContainerCreating")
        );
        let running = pod_status(
            &p,
            Some(&sandbox(Some(ContainerRun::Running { started: now }))),
            &[],
            HEALTHY,
            "192.0.2.1",
            now,
        );
        assert_eq!(
            (running.phase.as_deref(), ready_of(&running).as_str()),
            (Some("Running"), "True")
        );
        assert_eq!(running.pod_ip.as_deref(), Some("10.42.0.5"));
        // A readiness probe that has not passed keeps it unready.
        let unready = pod_status(
            &p,
            Some(&sandbox(Some(ContainerRun::Running { started: now }))),
            &[],
            &|_, _| (true, false),
            "192.0.2.1",
            now,
        );
        assert_eq!(ready_of(&unready), "False");
        assert_eq!(
            unready.container_statuses.as_ref().unwrap()[0].started,
            Some(true)
        );
        let exit = |code| ContainerRun::Exited {
            exit_code: code,
            reason: "Error".into(),
            started: Some(now),
            finished: now,
        };
        let failed = pod_status(
            &p,
            Some(&sandbox(Some(exit(2)))),
            &[],
            HEALTHY,
            "192.0.2.1",
            now,
        );
        assert_eq!(
            (failed.phase.as_deref(), ready_of(&failed).as_str()),
            (Some("Failed"), "False")
        );
        let done = pod_status(
            &p,
            Some(&sandbox(Some(exit(0)))),
            &[],
            HEALTHY,
            "192.0.2.1",
            now,
        );
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        let restarting = pod_status(
            &pod("Always"),
            Some(&sandbox(Some(exit(1)))),
            &[],
            HEALTHY,
            "192.0.2.1",
            now,
        );
        assert_eq!(restarting.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn qos_classes() {
        let with = |resources: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"spec": {"containers": [{"name": "a", "resources": resources}]}}),
            )
            .unwrap()
        };
        assert_eq!(qos_class(&with(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&with(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
    }
}
