//! Pod workers: one sync per pod at a time, driven by the watch of the
//! pods bound to this node.
//!
//! ```text
//!  pods (fieldSelector spec.nodeName=NODE) ─► queue(pod key) ─► sync:
//!     runtime.list ─► plan(pod, sandbox, backoff) ─► run the actions ─► again until nothing to do
//!     ─► status (patch if changed) ─► deleted and stopped? remove the sandbox, delete the pod (grace 0)
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod};
use keelson_control::client::{Client, ClientError, DeleteOptions, Patch};
use keelson_control::runtime::{Action as Next, Event, Informer, Queue, key_of, split_key};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::runtime::{
    ContainerConfig, ContainerRun, Runtime, RuntimeError, SandboxConfig, SandboxState,
};

pub mod env;
pub mod plan;
pub mod status;

use plan::{Action, Backoff};

/// Syncs in a row for one pod before its status is written.
const MAX_STEPS: usize = 16;

/// Why a pod could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("pod {pod}: runtime")]
    Runtime {
        pod: String,
        #[source]
        source: RuntimeError,
    },
    #[error("pod {pod}: {action}")]
    Api {
        pod: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

/// The pod workers of one node.
#[derive(Debug)]
pub struct PodWorkers<R> {
    client: Client,
    runtime: Arc<R>,
    pods: Informer<Pod>,
    queue: Queue<String>,
    backoff: Mutex<Backoff>,
    host_ip: String,
    /// What the node has, for `resourceFieldRef`s of unset limits.
    allocatable: env::Allocatable,
}

fn sandbox_config(pod: &Pod) -> SandboxConfig {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    SandboxConfig {
        pod_uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        hostname: spec
            .and_then(|s| s.hostname.clone())
            .or_else(|| meta.name.clone())
            .unwrap_or_default(),
    }
}

/// The container `name` of `pod` (an init container if `init`).
fn container_of<'a>(pod: &'a Pod, name: &str, init: bool) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    if init {
        spec.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
    } else {
        spec.containers.iter().find(|c| c.name == name)
    }
}

/// The container resolved for the runtime, with its environment `env`.
fn container_config(
    container: &Container,
    attempt: u32,
    env: Vec<(String, String)>,
) -> ContainerConfig {
    ContainerConfig {
        name: container.name.clone(),
        attempt,
        image: container.image.clone().unwrap_or_default(),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        env,
        working_dir: container.working_dir.clone(),
        resources: crate::runtime::Resources::of(container.resources.as_ref()),
    }
}

impl<R: Runtime> PodWorkers<R> {
    pub fn new(
        client: Client,
        runtime: Arc<R>,
        pods: &Informer<Pod>,
        host_ip: String,
        allocatable: env::Allocatable,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let workers = Arc::new(Self {
            client,
            runtime,
            pods: pods.clone(),
            queue: Queue::new("kubelet_pod_worker", shutdown),
            backoff: Mutex::new(Backoff::default()),
            host_ip,
            allocatable,
        });
        let queue = workers.queue.clone();
        pods.on_event(move |event| {
            let (Event::Added(pod) | Event::Updated { new: pod, .. } | Event::Deleted(pod)) = event;
            queue.add(key_of(&pod.metadata));
        });
        workers
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn run(self: Arc<Self>, workers: usize, shutdown: CancellationToken) {
        if !self.pods.wait_synced(&shutdown).await {
            return;
        }
        // Sandboxes of pods that are no longer bound here (deleted while
        // the agent was away) are cleaned up once.
        if let Ok(sandboxes) = self.runtime.list().await {
            for sandbox in sandboxes {
                self.queue.add(format!(
                    "{}/{}",
                    sandbox.config.namespace, sandbox.config.name
                ));
            }
        }
        // What the runtime reports changes without the API knowing (a
        // container exits): relist every second, and sync the pods whose
        // containers changed, as the kubelet's PLEG does.
        let relister = self.clone();
        let relist_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut seen: std::collections::HashMap<String, String> =
                std::collections::HashMap::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = relist_shutdown.cancelled() => return,
                }
                let Ok(sandboxes) = relister.runtime.list().await else {
                    continue;
                };
                let mut now = std::collections::HashMap::new();
                for sandbox in sandboxes {
                    let key = format!("{}/{}", sandbox.config.namespace, sandbox.config.name);
                    let print = format!(
                        "{}{:?}",
                        sandbox.ready,
                        sandbox
                            .containers
                            .iter()
                            .map(|c| (&c.id, &c.run))
                            .collect::<Vec<_>>()
                    );
                    if seen.get(&key) != Some(&print) {
                        relister.queue.add(key.clone());
                    }
                    now.insert(key, print);
                }
                seen = now;
            }
        });
        let this = self.clone();
        keelson_control::runtime::run_workers(
            "kubelet_pod_worker",
            self.queue.clone(),
            workers,
            move |key| {
                let this = this.clone();
                async move { this.sync(&key).await }
            },
        )
        .await;
    }

    fn runtime_failed(pod: &str) -> impl FnOnce(RuntimeError) -> SyncError {
        let pod = pod.to_owned();
        move |source| SyncError::Runtime { pod, source }
    }

    /// The sandboxes of the pod `key`, newest first.
    async fn sandboxes_of(&self, key: &str) -> Result<Vec<SandboxState>, SyncError> {
        let (namespace, name) = split_key(key);
        let mut sandboxes: Vec<SandboxState> = self
            .runtime
            .list()
            .await
            .map_err(Self::runtime_failed(key))?
            .into_iter()
            .filter(|s| Some(s.config.namespace.as_str()) == namespace && s.config.name == name)
            .collect();
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(sandboxes)
    }

    async fn sync(&self, key: &str) -> Result<Next, SyncError> {
        let started = Instant::now();
        let pod = self.pods.get(key);
        let mut sandboxes = self.sandboxes_of(key).await?;
        let uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        // Sandboxes of another pod of the same name (or of none): stop and remove.
        for stale in sandboxes
            .iter()
            .filter(|s| Some(&s.config.pod_uid) != uid.as_ref())
        {
            self.runtime
                .stop_sandbox(&stale.id, Duration::ZERO)
                .await
                .map_err(Self::runtime_failed(key))?;
            self.runtime
                .remove_sandbox(&stale.id)
                .await
                .map_err(Self::runtime_failed(key))?;
            self.backoff().forget(&stale.config.pod_uid);
        }
        sandboxes.retain(|s| Some(&s.config.pod_uid) == uid.as_ref());
        let Some(pod) = pod else {
            return Ok(Next::Done);
        };
        let mut sandbox = sandboxes.into_iter().next();
        let mut waiting = Vec::new();
        for _ in 0..MAX_STEPS {
            let plan = plan::plan(&pod, sandbox.as_ref(), &self.backoff(), Utc::now());
            waiting = plan.waiting;
            if plan.actions.is_empty() {
                break;
            }
            let mut blocked = false;
            for action in plan.actions {
                if let Some(why) = self
                    .act(&pod, sandbox.as_ref(), action)
                    .await
                    .map_err(Self::runtime_failed(key))?
                {
                    waiting.push(why);
                    blocked = true;
                }
            }
            if blocked {
                break;
            }
            sandbox = self.sandboxes_of(key).await?.into_iter().next();
        }
        let status =
            status::pod_status(&pod, sandbox.as_ref(), &waiting, &self.host_ip, Utc::now());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let stopped = sandbox.as_ref().is_none_or(|s| {
            !s.ready
                && s.containers
                    .iter()
                    .all(|c| matches!(c.run, ContainerRun::Exited { .. }))
        });
        if deleting && stopped {
            if let Some(s) = &sandbox {
                self.runtime
                    .remove_sandbox(&s.id)
                    .await
                    .map_err(Self::runtime_failed(key))?;
            }
            self.backoff().forget(uid.as_deref().unwrap_or_default());
            let (namespace, name) = split_key(key);
            let options = DeleteOptions {
                uid: uid.clone(),
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            };
            return match self.client.delete::<Pod>(namespace, name, &options).await {
                Ok(()) => Ok(Next::Done),
                Err(error) if error.is_not_found() || error.is_conflict() => Ok(Next::Done),
                Err(source) => Err(SyncError::Api {
                    pod: key.to_owned(),
                    action: "delete",
                    source,
                }),
            };
        }
        let current = pod.status.clone().unwrap_or_default();
        if serde_json::to_value(&current).ok() != serde_json::to_value(&status).ok() {
            let first_run = current.phase.as_deref() != Some("Running")
                && status.phase.as_deref() == Some("Running");
            let (namespace, name) = split_key(key);
            match self
                .client
                .patch::<Pod>(
                    namespace,
                    name,
                    Some("status"),
                    Patch::Merge,
                    &json!({"status": status}),
                )
                .await
            {
                Ok(_) => {}
                Err(error) if error.is_not_found() => return Ok(Next::Done),
                Err(source) => {
                    return Err(SyncError::Api {
                        pod: key.to_owned(),
                        action: "report status",
                        source,
                    });
                }
            }
            if first_run && let Some(created) = pod.metadata.creation_timestamp.as_ref() {
                let seconds = (Utc::now() - created.0).num_milliseconds() as f64 / 1000.0;
                metrics::histogram!("kubelet_pod_start_duration_seconds").record(seconds.max(0.0));
            }
        }
        metrics::histogram!("kubelet_pod_worker_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        // Come back when a backoff ends.
        let now = Utc::now();
        Ok(waiting
            .iter()
            .map(|w| (w.until - now).to_std().unwrap_or(Duration::ZERO))
            .min()
            .map_or(Next::Done, |d| {
                Next::RequeueAfter(d + Duration::from_millis(50))
            }))
    }

    /// Carries out one action; `Some` when a container cannot start for a
    /// reason its status should show (its configuration, its image).
    async fn act(
        &self,
        pod: &Pod,
        sandbox: Option<&SandboxState>,
        action: Action,
    ) -> Result<Option<plan::Waiting>, RuntimeError> {
        let operation = match &action {
            Action::CreateSandbox => "run_sandbox",
            Action::KillPod { .. } => "stop_sandbox",
            Action::Start { .. } => "start_container",
        };
        metrics::counter!("kubelet_runtime_operations_total", "operation_type" => operation)
            .increment(1);
        let outcome = match action {
            Action::CreateSandbox => self
                .runtime
                .run_sandbox(&sandbox_config(pod))
                .await
                .map(drop),
            Action::KillPod { grace } => match sandbox {
                Some(s) => self.runtime.stop_sandbox(&s.id, grace).await,
                None => Ok(()),
            },
            Action::Start {
                name,
                init,
                attempt,
            } => {
                let (Some(sandbox), Some(container)) = (sandbox, container_of(pod, &name, init))
                else {
                    return Ok(None);
                };
                let retry = Utc::now() + chrono::Duration::seconds(2);
                let env = match env::resolve(&self.client, pod, container, self.allocatable).await {
                    Ok(env) => env,
                    Err(error) => {
                        return Ok(Some(plan::Waiting {
                            name,
                            reason: "CreateContainerConfigError",
                            message: error.to_string(),
                            until: retry,
                        }));
                    }
                };
                let config = container_config(container, attempt, env);
                if attempt > 0
                    && let Some(ContainerRun::Exited {
                        started, finished, ..
                    }) = sandbox.latest(&name).map(|c| c.run.clone())
                {
                    self.backoff()
                        .restarted(&sandbox.config.pod_uid, &name, started, finished);
                }
                match self.runtime.start_container(&sandbox.id, &config).await {
                    Err(RuntimeError::Image { image, reason }) => {
                        metrics::counter!("kubelet_runtime_operations_errors_total", "operation_type" => operation).increment(1);
                        return Ok(Some(plan::Waiting {
                            name,
                            reason: "ErrImagePull",
                            message: format!("image {image:?}: {reason}"),
                            until: retry,
                        }));
                    }
                    other => other.map(drop),
                }
            }
        };
        if outcome.is_err() {
            metrics::counter!("kubelet_runtime_operations_errors_total", "operation_type" => operation).increment(1);
        }
        outcome.map(|()| None)
    }

    /// Pods and containers running on this node, for the kubelet gauges.
    pub async fn count_running(&self) {
        if let Ok(sandboxes) = self.runtime.list().await {
            let pods = sandboxes.iter().filter(|s| s.ready).count();
            let containers = sandboxes
                .iter()
                .flat_map(|s| &s.containers)
                .filter(|c| matches!(c.run, ContainerRun::Running { .. }))
                .count();
            metrics::gauge!("kubelet_running_pods").set(pods as f64);
            metrics::gauge!("kubelet_running_containers", "container_state" => "running")
                .set(containers as f64);
        }
    }
}
