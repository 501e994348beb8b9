//! What a pod worker does next, as a pure function of the pod's spec, what
//! the runtime reports and the restart backoff: Kubernetes'
//! `computePodActions`.
//!
//! ```text
//!  deleting or finished ─► kill the pod (if anything runs)
//!  no ready sandbox     ─► make one
//!  init containers, in order: not started ─► start; exited ≠ 0 ─► restart (backoff) or fail the pod
//!  containers: not started ─► start; exited ─► restart as restartPolicy says, after the backoff
//! ```

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::{ContainerRun, SandboxState};

/// The first restart delay after a crash; each crash in a row doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts its backoff afresh.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// One step towards the pod's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CreateSandbox,
    /// Stop everything of the pod, giving its containers `grace` to exit.
    KillPod {
        grace: Duration,
    },
    /// Stop one container (its liveness or startup probe failed), giving
    /// it `grace`; it is then restarted as the restart policy says.
    KillContainer {
        id: String,
        name: String,
        grace: Duration,
    },
    /// Create and start the container (`init`: one of the init containers).
    Start {
        name: String,
        init: bool,
        attempt: u32,
    },
}

/// Why a container is not running, for its `waiting` state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub name: String,
    pub reason: &'static str,
    pub message: String,
    /// When it may be started.
    pub until: DateTime<Utc>,
}

/// The plan for one sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub waiting: Vec<Waiting>,
}

/// The first delay after a failed image pull; each failure doubles it.
pub const IMAGE_BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest delay between image pulls.
pub const IMAGE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Restart delays per container (pod uid + container name), and pull
/// delays per image (pod uid + image).
#[derive(Debug, Default)]
pub struct Backoff {
    /// The current delay, and when the container last finished.
    entries: HashMap<(String, String), (Duration, DateTime<Utc>)>,
    /// The current delay, and when the image may be pulled again.
    images: HashMap<(String, String), (Duration, DateTime<Utc>)>,
}

impl Backoff {
    /// When the container, which finished at `finished` after running
    /// since `started`, may be started again.
    fn allowed_at(&self, key: &(String, String), finished: DateTime<Utc>) -> DateTime<Utc> {
        match self.entries.get(key) {
            Some((delay, _)) => finished + chrono::Duration::from_std(*delay).unwrap_or_default(),
            None => finished,
        }
    }

    /// Records a restart of the container that finished at `finished`.
    pub fn restarted(
        &mut self,
        pod_uid: &str,
        name: &str,
        started: Option<DateTime<Utc>>,
        finished: DateTime<Utc>,
    ) {
        let key = (pod_uid.to_owned(), name.to_owned());
        let ran_long = started.is_some_and(|s| {
            finished - s >= chrono::Duration::from_std(BACKOFF_RESET).unwrap_or_default()
        });
        let delay = match self.entries.get(&key) {
            Some((delay, _)) if !ran_long => (*delay * 2).min(BACKOFF_MAX),
            _ => BACKOFF_BASE,
        };
        self.entries.insert(key, (delay, finished));
    }

    /// Forgets a pod's containers and images.
    pub fn forget(&mut self, pod_uid: &str) {
        self.entries.retain(|(uid, _), _| uid != pod_uid);
        self.images.retain(|(uid, _), _| uid != pod_uid);
    }

    /// Until when a pull of the image (pod uid, image) must wait, if it must.
    pub fn image_waits_until(
        &self,
        key: &(String, String),
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.images
            .get(key)
            .map(|(_, until)| *until)
            .filter(|until| *until > now)
    }

    /// Records a failed pull at `now`; when the next may start.
    pub fn image_failed(&mut self, key: (String, String), now: DateTime<Utc>) -> DateTime<Utc> {
        let delay = match self.images.get(&key) {
            Some((delay, _)) => (*delay * 2).min(IMAGE_BACKOFF_MAX),
            None => IMAGE_BACKOFF_BASE,
        };
        let until = now + chrono::Duration::from_std(delay).unwrap_or_default();
        self.images.insert(key, (delay, until));
        until
    }

    /// A pull succeeded: its backoff starts afresh.
    pub fn image_pulled(&mut self, key: &(String, String)) {
        self.images.remove(key);
    }
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// `first`'s grace period, else the pod's `terminationGracePeriodSeconds`
/// (30 s by default).
fn grace_or_pods(pod: &Pod, first: Option<i64>) -> Duration {
    let seconds = first
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// The grace period a deletion gives the pod.
pub fn grace_period(pod: &Pod) -> Duration {
    grace_or_pods(pod, pod.metadata.deletion_grace_period_seconds)
}

/// Whether the pod has finished for good: every container exited and none
/// will be restarted.
pub fn finished(pod: &Pod, sandbox: Option<&SandboxState>) -> Option<bool> {
    let sandbox = sandbox?;
    let spec = pod.spec.as_ref()?;
    let policy = restart_policy(pod);
    let mut succeeded = true;
    for container in &spec.containers {
        match sandbox.latest(&container.name).map(|c| &c.run) {
            Some(ContainerRun::Exited { exit_code, .. }) => {
                if policy == "Always" || (policy == "OnFailure" && *exit_code != 0) {
                    return None;
                }
                succeeded &= *exit_code == 0;
            }
            _ => return None,
        }
    }
    Some(succeeded)
}

/// An init container that failed for good (restartPolicy Never).
pub fn init_failed(pod: &Pod, sandbox: Option<&SandboxState>) -> bool {
    let (Some(sandbox), Some(spec)) = (sandbox, pod.spec.as_ref()) else {
        return false;
    };
    restart_policy(pod) == "Never"
        && spec.init_containers.iter().flatten().any(|c| {
            matches!(sandbox.latest(&c.name).map(|c| &c.run), Some(ContainerRun::Exited { exit_code, .. }) if *exit_code != 0)
        })
}

/// The grace period a container killed for failing its `probe` gets: the
/// probe's own, else the pod's.
pub fn probe_grace_period(
    pod: &Pod,
    probe: Option<&k8s_openapi::api::core::v1::Probe>,
) -> Duration {
    grace_or_pods(pod, probe.and_then(|p| p.termination_grace_period_seconds))
}

/// The next steps for `pod`, whose sandbox (if any) is `sandbox`;
/// `unhealthy`: running containers (runtime ids) whose liveness or startup
/// probe failed.
pub fn plan(
    pod: &Pod,
    sandbox: Option<&SandboxState>,
    backoff: &Backoff,
    unhealthy: &[String],
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = pod.spec.as_ref() else {
        return plan;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let anything_runs = sandbox.is_some_and(|s| {
        s.ready
            || s.containers
                .iter()
                .any(|c| matches!(c.run, ContainerRun::Running { .. } | ContainerRun::Created))
    });
    if pod.metadata.deletion_timestamp.is_some()
        || finished(pod, sandbox).is_some()
        || init_failed(pod, sandbox)
    {
        if anything_runs {
            plan.actions.push(Action::KillPod {
                grace: grace_period(pod),
            });
        }
        return plan;
    }
    let Some(sandbox) = sandbox.filter(|s| s.ready) else {
        plan.actions.push(Action::CreateSandbox);
        return plan;
    };
    let policy = restart_policy(pod);
    // Start (or restart) `container`, unless its backoff says wait.
    let start = |plan: &mut Plan, container: &Container, init: bool| match sandbox
        .latest(&container.name)
    {
        None => plan.actions.push(Action::Start {
            name: container.name.clone(),
            init,
            attempt: 0,
        }),
        Some(state) => {
            let ContainerRun::Exited { finished, .. } = state.run else {
                return;
            };
            let key = (uid.clone(), container.name.clone());
            let at = backoff.allowed_at(&key, finished);
            if at > now {
                let delay = backoff.entries.get(&key).map_or(BACKOFF_BASE, |(d, _)| *d);
                plan.waiting.push(Waiting {
                    name: container.name.clone(),
                    reason: "CrashLoopBackOff",
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}_{}({uid})",
                        delay.as_secs(),
                        container.name,
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                    ),
                    until: at,
                });
            } else {
                plan.actions.push(Action::Start {
                    name: container.name.clone(),
                    init,
                    attempt: state.attempt + 1,
                });
            }
        }
    };
    for init in spec.init_containers.iter().flatten() {
        match sandbox.latest(&init.name).map(|c| &c.run) {
            Some(ContainerRun::Exited { exit_code: 0, .. }) => continue,
            Some(ContainerRun::Running { .. } | ContainerRun::Created) => return plan,
            _ => {
                start(&mut plan, init, true);
                return plan;
            }
        }
    }
    for container in &spec.containers {
        let latest = sandbox.latest(&container.name);
        match latest.map(|c| &c.run) {
            None => start(&mut plan, container, false),
            Some(ContainerRun::Exited { exit_code, .. }) => {
                if policy == "Always" || (policy == "OnFailure" && *exit_code != 0) {
                    start(&mut plan, container, false);
                }
            }
            Some(ContainerRun::Running { .. }) => {
                if let Some(latest) = latest.filter(|l| unhealthy.contains(&l.id)) {
                    let probe = container
                        .liveness_probe
                        .as_ref()
                        .or(container.startup_probe.as_ref());
                    plan.actions.push(Action::KillContainer {
                        id: latest.id.clone(),
                        name: container.name.clone(),
                        grace: probe_grace_period(pod, probe),
                    });
                }
            }
            Some(ContainerRun::Created) => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerState, SandboxConfig};
    use serde_json::json;

    fn pod(restart_policy: &str, init: bool) -> Pod {
        let mut spec = json!({"restartPolicy": restart_policy, "containers": [{"name": "app", "image": "busybox"}]});
        if init {
            spec["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
        }
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec}),
        )
        .unwrap()
    }

    fn sandbox(containers: Vec<(&str, u32, ContainerRun)>) -> SandboxState {
        SandboxState {
            id: "s".into(),
            config: SandboxConfig {
                pod_uid: "u1".into(),
                namespace: "ns".into(),
                name: "p".into(),
                hostname: "p".into(),
                host_ports: Vec::new(),
            },
            ready: true,
            ip: None,
            created: Utc::now(),
            containers: containers
                .into_iter()
                .map(|(name, attempt, run)| ContainerState {
                    id: format!("{name}-{attempt}"),
                    name: name.into(),
                    attempt,
                    image: "busybox".into(),
                    image_id: String::new(),
                    run,
                })
                .collect(),
        }
    }

    fn exited(code: i32, finished: DateTime<Utc>) -> ContainerRun {
        ContainerRun::Exited {
            exit_code: code,
            reason: "Error".into(),
            started: Some(finished),
            finished,
        }
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_then_its_containers_in_order() {
        let now = Utc::now();
        let p = pod("Always", true);
        assert_eq!(
            plan(&p, None, &Backoff::default(), &[], now).actions,
            [Action::CreateSandbox]
        );
        let empty = sandbox(vec![]);
        assert_eq!(
            plan(&p, Some(&empty), &Backoff::default(), &[], now).actions,
            [Action::Start {
                name: "setup".into(),
                init: true,
                attempt: 0
            }]
        );
        let init_running = sandbox(vec![("setup", 0, ContainerRun::Running { started: now })]);
        assert!(
            plan(&p, Some(&init_running), &Backoff::default(), &[], now)
                .actions
                .is_empty()
        );
        let init_done = sandbox(vec![("setup", 0, exited(0, now))]);
        assert_eq!(
            plan(&p, Some(&init_done), &Backoff::default(), &[], now).actions,
            [Action::Start {
                name: "app".into(),
                init: false,
                attempt: 0
            }]
        );
    }

    #[test]
    fn crashes_back_off_ten_seconds_doubling() {
        let now = Utc::now();
        let p = pod("Always", false);
        let mut backoff = Backoff::default();
        let crashed = sandbox(vec![("app", 0, exited(1, now))]);
        // The first restart is at once.
        assert_eq!(
            plan(&p, Some(&crashed), &backoff, &[], now).actions,
            [Action::Start {
                name: "app".into(),
                init: false,
                attempt: 1
            }]
        );
        backoff.restarted("u1", "app", Some(now), now);
        let again = sandbox(vec![("app", 1, exited(1, now))]);
        let waiting = plan(&p, Some(&again), &backoff, &[], now);
        assert!(waiting.actions.is_empty());
        assert_eq!(waiting.waiting[0].reason, "CrashLoopBackOff");
        assert!(
            waiting.waiting[0]
                .message
                .starts_with("back-off 10s restarting failed container=app")
        );
        let later = now + chrono::Duration::seconds(11);
        assert_eq!(
            plan(&p, Some(&again), &backoff, &[], later).actions.len(),
            1
        );
        backoff.restarted("u1", "app", Some(now), now);
        assert_eq!(
            backoff.entries[&("u1".into(), "app".into())].0,
            Duration::from_secs(20)
        );
        for _ in 0..10 {
            backoff.restarted("u1", "app", Some(now), now);
        }
        assert_eq!(backoff.entries[&("u1".into(), "app".into())].0, BACKOFF_MAX);
        let long_ago = now - chrono::Duration::seconds(700);
        backoff.restarted("u1", "app", Some(long_ago), now);
        assert_eq!(
            backoff.entries[&("u1".into(), "app".into())].0,
            BACKOFF_BASE,
            "ten minutes of running resets it"
        );
    }

    #[test]
    fn restart_policies_decide_what_comes_back() {
        let now = Utc::now();
        let done = sandbox(vec![("app", 0, exited(0, now))]);
        let failed = sandbox(vec![("app", 0, exited(3, now))]);
        let starts = |policy: &str, s: &SandboxState| {
            plan(&pod(policy, false), Some(s), &Backoff::default(), &[], now)
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Start { .. }))
                .count()
        };
        assert_eq!(starts("Always", &done), 1);
        assert_eq!(starts("OnFailure", &done), 0);
        assert_eq!(starts("OnFailure", &failed), 1);
        assert_eq!(starts("Never", &failed), 0);
        // A pod that has finished has its sandbox taken down.
        assert_eq!(
            plan(
                &pod("Never", false),
                Some(&failed),
                &Backoff::default(),
                &[],
                now
            )
            .actions,
            [Action::KillPod {
                grace: Duration::from_secs(30)
            }]
        );
        assert_eq!(finished(&pod("Never", false), Some(&failed)), Some(false));
        assert_eq!(finished(&pod("OnFailure", false), Some(&done)), Some(true));
        assert_eq!(finished(&pod("Always", false), Some(&done)), None);
    }

    #[test]
    fn a_deleted_pod_is_killed_with_its_grace_period() {
        let now = Utc::now();
        let mut p = pod("Always", false);
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        p.metadata.deletion_grace_period_seconds = Some(5);
        let running = sandbox(vec![("app", 0, ContainerRun::Running { started: now })]);
        assert_eq!(
            plan(&p, Some(&running), &Backoff::default(), &[], now).actions,
            [Action::KillPod {
                grace: Duration::from_secs(5)
            }]
        );
        let mut stopped = sandbox(vec![("app", 0, exited(137, now))]);
        stopped.ready = false;
        assert!(
            plan(&p, Some(&stopped), &Backoff::default(), &[], now)
                .actions
                .is_empty()
        );
    }

    #[test]
    fn a_container_failing_its_liveness_probe_is_killed() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"terminationGracePeriodSeconds": 7, "containers": [{"name": "app", "image": "busybox",
                "livenessProbe": {"exec": {"command": ["false"]}, "terminationGracePeriodSeconds": 2}}]}
        }))
        .unwrap();
        let now = Utc::now();
        let running = sandbox(vec![("app", 0, ContainerRun::Running { started: now })]);
        assert!(
            plan(&p, Some(&running), &Backoff::default(), &[], now)
                .actions
                .is_empty()
        );
        assert_eq!(
            plan(
                &p,
                Some(&running),
                &Backoff::default(),
                &["app-0".into()],
                now
            )
            .actions,
            vec![Action::KillContainer {
                id: "app-0".into(),
                name: "app".into(),
                grace: Duration::from_secs(2)
            }]
        );
    }

    #[test]
    fn failed_pulls_back_off_ten_seconds_doubling_to_five_minutes() {
        let mut backoff = Backoff::default();
        let key = ("u1".to_owned(), "registry.test/app:1".to_owned());
        let now = Utc::now();
        assert_eq!(backoff.image_waits_until(&key, now), None);
        let first = backoff.image_failed(key.clone(), now);
        assert_eq!(first - now, chrono::Duration::seconds(10));
        assert_eq!(backoff.image_waits_until(&key, now), Some(first));
        assert_eq!(
            backoff.image_waits_until(&key, first),
            None,
            "over at its end"
        );
        assert_eq!(
            backoff.image_failed(key.clone(), first) - first,
            chrono::Duration::seconds(20)
        );
        for _ in 0..10 {
            backoff.image_failed(key.clone(), now);
        }
        assert_eq!(
            backoff.image_failed(key.clone(), now) - now,
            chrono::Duration::seconds(300)
        );
        backoff.image_pulled(&key);
        assert_eq!(backoff.image_waits_until(&key, now), None);
    }
}
